package gateway_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/reflect/protoreflect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/gateway"
)

// ownEndpoint is a webhook endpoint id of the right form that no test registers: the
// matrix asks only whether the role passes (a customer then gets NOT_FOUND, never
// PERMISSION_DENIED).
const ownEndpoint = "we_00000000000000000000000000000000"

// callers reaches every procedure of the API with a request about the caller's own
// objects (account "own", payment "own-pay"), so that only the role decides.
func callers(a api) map[string]func(context.Context) error {
	stream := func(s interface {
		Receive() bool
		Err() error
		Close() error
	}, err error) error {
		if err != nil {
			return err
		}
		defer s.Close()
		s.Receive()
		return s.Err()
	}
	return map[string]func(context.Context) error{
		ledgerv1connect.AccountServiceOpenAccountProcedure: func(ctx context.Context) error {
			_, err := a.accounts.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{AccountId: "own", Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER}))
			return err
		},
		ledgerv1connect.AccountServiceGetAccountProcedure: func(ctx context.Context) error {
			_, err := a.accounts.GetAccount(ctx, connect.NewRequest(&ledgerv1.GetAccountRequest{AccountId: "own"}))
			return err
		},
		ledgerv1connect.AccountServiceFreezeAccountProcedure: func(ctx context.Context) error {
			_, err := a.accounts.FreezeAccount(ctx, connect.NewRequest(&ledgerv1.FreezeAccountRequest{AccountId: "own"}))
			return err
		},
		ledgerv1connect.AccountServiceUnfreezeAccountProcedure: func(ctx context.Context) error {
			_, err := a.accounts.UnfreezeAccount(ctx, connect.NewRequest(&ledgerv1.UnfreezeAccountRequest{AccountId: "own"}))
			return err
		},
		ledgerv1connect.AccountServiceCloseAccountProcedure: func(ctx context.Context) error {
			_, err := a.accounts.CloseAccount(ctx, connect.NewRequest(&ledgerv1.CloseAccountRequest{AccountId: "own"}))
			return err
		},
		ledgerv1connect.PaymentServiceTransferProcedure: func(ctx context.Context) error {
			_, err := a.payments.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{PaymentId: "m-t", SourceAccountId: "own", DestinationAccountId: "world", Amount: usd("1.00")}))
			return err
		},
		ledgerv1connect.PaymentServiceBatchTransferProcedure: func(ctx context.Context) error {
			_, err := a.payments.BatchTransfer(ctx, connect.NewRequest(&ledgerv1.BatchTransferRequest{PaymentId: "m-b", Legs: []*ledgerv1.Leg{{SourceAccountId: "own", DestinationAccountId: "world", Amount: usd("1.00")}}}))
			return err
		},
		ledgerv1connect.PaymentServiceAuthoriseProcedure: func(ctx context.Context) error {
			_, err := a.payments.Authorise(ctx, connect.NewRequest(&ledgerv1.AuthoriseRequest{PaymentId: "m-a", SourceAccountId: "own", DestinationAccountId: "world", Amount: usd("1.00"), ExpiresAt: timestamp(time.Hour)}))
			return err
		},
		ledgerv1connect.PaymentServiceCaptureProcedure: func(ctx context.Context) error {
			_, err := a.payments.Capture(ctx, connect.NewRequest(&ledgerv1.CaptureRequest{PaymentId: "own-pay", CaptureId: "c", What: &ledgerv1.CaptureRequest_Full{Full: true}}))
			return err
		},
		ledgerv1connect.PaymentServiceVoidProcedure: func(ctx context.Context) error {
			_, err := a.payments.Void(ctx, connect.NewRequest(&ledgerv1.VoidRequest{PaymentId: "own-pay"}))
			return err
		},
		ledgerv1connect.PaymentServiceRefundProcedure: func(ctx context.Context) error {
			_, err := a.payments.Refund(ctx, connect.NewRequest(&ledgerv1.RefundRequest{PaymentId: "own-pay", RefundId: "r", Amount: usd("1.00")}))
			return err
		},
		ledgerv1connect.PaymentServiceGetPaymentProcedure: func(ctx context.Context) error {
			_, err := a.payments.GetPayment(ctx, connect.NewRequest(&ledgerv1.GetPaymentRequest{PaymentId: "own-pay"}))
			return err
		},
		ledgerv1connect.BalanceServiceGetBalanceProcedure: func(ctx context.Context) error {
			_, err := a.balances.GetBalance(ctx, connect.NewRequest(&ledgerv1.GetBalanceRequest{AccountId: "own"}))
			return err
		},
		ledgerv1connect.BalanceServiceListHistoryProcedure: func(ctx context.Context) error {
			_, err := a.balances.ListHistory(ctx, connect.NewRequest(&ledgerv1.ListHistoryRequest{AccountId: "own"}))
			return err
		},
		ledgerv1connect.BalanceServiceWatchAccountProcedure: func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return stream(a.balances.WatchAccount(ctx, connect.NewRequest(&ledgerv1.WatchAccountRequest{AccountId: "own"})))
		},
		ledgerv1connect.AuditServiceReadStreamProcedure: func(ctx context.Context) error {
			_, err := a.audit.ReadStream(ctx, connect.NewRequest(&ledgerv1.ReadStreamRequest{Stream: "account-own"}))
			return err
		},
		ledgerv1connect.AuditServiceStreamLogProcedure: func(ctx context.Context) error {
			return stream(a.audit.StreamLog(ctx, connect.NewRequest(&ledgerv1.StreamLogRequest{})))
		},
		ledgerv1connect.AuditServiceVerifyChainProcedure: func(ctx context.Context) error {
			_, err := a.audit.VerifyChain(ctx, connect.NewRequest(&ledgerv1.VerifyChainRequest{}))
			return err
		},
		ledgerv1connect.AuditServiceGetCheckpointProcedure: func(ctx context.Context) error {
			_, err := a.audit.GetCheckpoint(ctx, connect.NewRequest(&ledgerv1.GetCheckpointRequest{}))
			return err
		},
		ledgerv1connect.AuditServiceProveInclusionProcedure: func(ctx context.Context) error {
			_, err := a.audit.ProveInclusion(ctx, connect.NewRequest(&ledgerv1.ProveInclusionRequest{Target: &ledgerv1.ProveInclusionRequest_PaymentId{PaymentId: "own-pay"}}))
			return err
		},
		ledgerv1connect.AuditServiceProveConsistencyProcedure: func(ctx context.Context) error {
			_, err := a.audit.ProveConsistency(ctx, connect.NewRequest(&ledgerv1.ProveConsistencyRequest{FromSize: 1}))
			return err
		},
		ledgerv1connect.WebhookServiceRegisterEndpointProcedure: func(ctx context.Context) error {
			_, err := a.webhooks.RegisterEndpoint(ctx, connect.NewRequest(&ledgerv1.RegisterEndpointRequest{AccountId: "own", Url: "https://hooks.example/" + fmt.Sprint(time.Now().UnixNano())}))
			return err
		},
		ledgerv1connect.WebhookServiceListEndpointsProcedure: func(ctx context.Context) error {
			_, err := a.webhooks.ListEndpoints(ctx, connect.NewRequest(&ledgerv1.ListEndpointsRequest{AccountId: "own"}))
			return err
		},
		ledgerv1connect.WebhookServiceGetEndpointProcedure: func(ctx context.Context) error {
			_, err := a.webhooks.GetEndpoint(ctx, connect.NewRequest(&ledgerv1.GetEndpointRequest{EndpointId: ownEndpoint}))
			return err
		},
		ledgerv1connect.WebhookServiceDeleteEndpointProcedure: func(ctx context.Context) error {
			_, err := a.webhooks.DeleteEndpoint(ctx, connect.NewRequest(&ledgerv1.DeleteEndpointRequest{EndpointId: ownEndpoint}))
			return err
		},
		ledgerv1connect.WebhookServiceRotateSecretProcedure: func(ctx context.Context) error {
			_, err := a.webhooks.RotateSecret(ctx, connect.NewRequest(&ledgerv1.RotateSecretRequest{EndpointId: ownEndpoint}))
			return err
		},
	}
}

// TestRoleProcedureMatrix runs every role against every procedure and compares the
// outcome with the declared Policy: PERMISSION_DENIED exactly where the table has no
// entry for the role. Where the role is allowed, the call reaches the ledger (whose own
// answer, success or refusal, is not the gateway's business here).
func TestRoleProcedureMatrix(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	policy := gateway.Policy()
	// Every procedure of the API's schema is in the table: deny by default covers the
	// rest, but a new RPC missing from the table is a mistake to catch here.
	for _, file := range []protoreflect.FileDescriptor{
		ledgerv1.File_securepay_ledger_v1_accounts_proto, ledgerv1.File_securepay_ledger_v1_payments_proto,
		ledgerv1.File_securepay_ledger_v1_balances_proto, ledgerv1.File_securepay_ledger_v1_audit_proto,
		ledgerv1.File_securepay_ledger_v1_webhooks_proto,
	} {
		for i := 0; i < file.Services().Len(); i++ {
			svc := file.Services().Get(i)
			for j := 0; j < svc.Methods().Len(); j++ {
				proc := "/" + string(svc.FullName()) + "/" + string(svc.Methods().Get(j).Name())
				if _, ok := policy[proc]; !ok {
					t.Errorf("%s is not in gateway.Policy", proc)
				}
			}
		}
	}
	matrix := map[string]string{}
	for _, role := range gateway.Roles() {
		a := f.as(f.issuer.token(t, "matrix-"+string(role), []string{string(role)}, "own"))
		calls := callers(a)
		if len(calls) != len(policy) {
			t.Fatalf("the test reaches %d procedures, the policy names %d", len(calls), len(policy))
		}
		for proc, call := range calls {
			err := call(ctx)
			_, allowed := policy[proc][role]
			denied := connect.CodeOf(err) == connect.CodePermissionDenied && services.ReasonOf(err) == services.ReasonPermissionDenied
			matrix[fmt.Sprintf("%-55s %-9s", proc, role)] = fmt.Sprintf("allowed=%v got=%v", allowed, connect.CodeOf(err))
			if err == nil {
				matrix[fmt.Sprintf("%-55s %-9s", proc, role)] = fmt.Sprintf("allowed=%v got=ok", allowed)
			}
			if allowed == denied {
				t.Errorf("%s as %s: policy allows=%v, got %v", proc, role, allowed, err)
			}
			if connect.CodeOf(err) == connect.CodeUnauthenticated {
				t.Errorf("%s as %s: %v (the token is valid)", proc, role, err)
			}
		}
	}
	if t.Failed() {
		keys := make([]string, 0, len(matrix))
		for k := range matrix {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			t.Logf("%s %s", k, matrix[k])
		}
	}
	// No role at all: denied everywhere.
	none := callers(f.as(f.issuer.token(t, "nobody", nil, "own")))
	for proc, call := range none {
		if err := call(ctx); connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Errorf("%s with no role: %v, want PERMISSION_DENIED", proc, err)
		}
	}
}
