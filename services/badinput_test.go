package services_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
)

// seedLedger opens world (external), alice (funded 100.00), bob, eur-1 (EUR) and ice
// (frozen), a completed transfer tr-1 and an open authorisation auth-1 of 10.00.
func seedLedger(t *testing.T, ctx context.Context, c *client) {
	t.Helper()
	for _, a := range []struct {
		id, asset string
		kind      ledgerv1.AccountKind
	}{
		{"world", "USD", ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL},
		{"alice", "USD", ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER},
		{"bob", "USD", ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER},
		{"eur-1", "EUR", ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER},
		{"ice", "USD", ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER},
	} {
		mustCall[ledgerv1.OpenAccountRequest, ledgerv1.OpenAccountResponse](t, ctx, c, ledgerv1connect.AccountServiceOpenAccountProcedure,
			&ledgerv1.OpenAccountRequest{AccountId: a.id, Asset: a.asset, Kind: a.kind})
	}
	mustCall[ledgerv1.TransferRequest, ledgerv1.TransferResponse](t, ctx, c, ledgerv1connect.PaymentServiceTransferProcedure,
		&ledgerv1.TransferRequest{PaymentId: "tr-1", SourceAccountId: "world", DestinationAccountId: "alice", Amount: usd("100.00")})
	mustCall[ledgerv1.AuthoriseRequest, ledgerv1.AuthoriseResponse](t, ctx, c, ledgerv1connect.PaymentServiceAuthoriseProcedure,
		&ledgerv1.AuthoriseRequest{PaymentId: "auth-1", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("10.00"),
			ExpiresAt: timestamppb.New(time.Now().Add(time.Hour))})
	mustCall[ledgerv1.FreezeAccountRequest, ledgerv1.FreezeAccountResponse](t, ctx, c, ledgerv1connect.AccountServiceFreezeAccountProcedure,
		&ledgerv1.FreezeAccountRequest{AccountId: "ice", Reason: "test"})
}

type badCase struct {
	name   string
	call   func(ctx context.Context, c *client) error
	code   connect.Code
	reason services.Reason
}

func unary[Req, Res any, PRes interface {
	*Res
	proto.Message
}](procedure string, req *Req) func(ctx context.Context, c *client) error {
	return func(ctx context.Context, c *client) error {
		_, err := call[Req, Res, PRes](ctx, c, procedure, req, nil)
		return err
	}
}

// firstOfStream opens a server stream and returns the error of its first message.
func firstOfStream[Req, Res any, PRes interface {
	*Res
	proto.Message
}](procedure string, req *Req) func(ctx context.Context, c *client) error {
	return func(ctx context.Context, c *client) error {
		s, err := serverStream[Req, Res, PRes](ctx, c, procedure, req)
		if err != nil {
			return err
		}
		defer s.close()
		_, err = s.next()
		if err == io.EOF {
			return nil
		}
		return err
	}
}

func transferReq(id, from, to string, amount *ledgerv1.Money) *ledgerv1.TransferRequest {
	return &ledgerv1.TransferRequest{PaymentId: id, SourceAccountId: from, DestinationAccountId: to, Amount: amount}
}

func manyMetadata(n int) map[string]string {
	m := map[string]string{}
	for i := 0; i < n; i++ {
		m[strings.Repeat("k", i+1)] = "v"
	}
	return m
}

func badCases() []badCase {
	const (
		inv  = connect.CodeInvalidArgument
		pre  = connect.CodeFailedPrecondition
		nf   = connect.CodeNotFound
		dup  = connect.CodeAlreadyExists
		late = connect.CodeDeadlineExceeded
	)
	open := func(r *ledgerv1.OpenAccountRequest) func(context.Context, *client) error {
		return unary[ledgerv1.OpenAccountRequest, ledgerv1.OpenAccountResponse](ledgerv1connect.AccountServiceOpenAccountProcedure, r)
	}
	transfer := func(r *ledgerv1.TransferRequest) func(context.Context, *client) error {
		return unary[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ledgerv1connect.PaymentServiceTransferProcedure, r)
	}
	customer := ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER
	hour := timestamppb.New(time.Now().Add(time.Hour))
	legs := func(n int) []*ledgerv1.Leg {
		out := make([]*ledgerv1.Leg, n)
		for i := range out {
			out[i] = &ledgerv1.Leg{SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("0.01")}
		}
		return out
	}
	return []badCase{
		// AccountService
		{"open: empty id", open(&ledgerv1.OpenAccountRequest{Asset: "USD", Kind: customer}), inv, "INVALID_INPUT"},
		{"open: id with a space", open(&ledgerv1.OpenAccountRequest{AccountId: "a b", Asset: "USD", Kind: customer}), inv, "INVALID_INPUT"},
		{"open: id of 65 characters", open(&ledgerv1.OpenAccountRequest{AccountId: strings.Repeat("a", 65), Asset: "USD", Kind: customer}), inv, "INVALID_INPUT"},
		{"open: lower-case asset", open(&ledgerv1.OpenAccountRequest{AccountId: "n1", Asset: "usd", Kind: customer}), inv, "INVALID_INPUT"},
		{"open: USD with 3 decimals", open(&ledgerv1.OpenAccountRequest{AccountId: "n1", Asset: "USD/3", Kind: customer}), inv, "INVALID_INPUT"},
		{"open: unknown asset without scale", open(&ledgerv1.OpenAccountRequest{AccountId: "n1", Asset: "POINTS", Kind: customer}), inv, "INVALID_INPUT"},
		{"open: no kind", open(&ledgerv1.OpenAccountRequest{AccountId: "n1", Asset: "USD"}), inv, "INVALID_INPUT"},
		{"open: 17 metadata entries", open(&ledgerv1.OpenAccountRequest{AccountId: "n1", Asset: "USD", Kind: customer, Metadata: manyMetadata(17)}), inv, "INVALID_INPUT"},
		{"open: upper-case metadata key", open(&ledgerv1.OpenAccountRequest{AccountId: "n1", Asset: "USD", Kind: customer, Metadata: map[string]string{"Key": "v"}}), inv, "INVALID_INPUT"},
		{"open: metadata value of 257 bytes", open(&ledgerv1.OpenAccountRequest{AccountId: "n1", Asset: "USD", Kind: customer, Metadata: map[string]string{"k": strings.Repeat("v", 257)}}), inv, "INVALID_INPUT"},
		{"open: credit limit with 3 decimals", open(&ledgerv1.OpenAccountRequest{AccountId: "n1", Asset: "USD", Kind: customer, CreditLimit: "1.234"}), inv, "INVALID_AMOUNT"},
		{"open: existing id, other asset", open(&ledgerv1.OpenAccountRequest{AccountId: "alice", Asset: "EUR", Kind: customer}), dup, "DUPLICATE_ID"},
		{"get account: unknown", unary[ledgerv1.GetAccountRequest, ledgerv1.GetAccountResponse](ledgerv1connect.AccountServiceGetAccountProcedure, &ledgerv1.GetAccountRequest{AccountId: "nobody"}), nf, "ACCOUNT_UNKNOWN"},
		{"get account: bad id", unary[ledgerv1.GetAccountRequest, ledgerv1.GetAccountResponse](ledgerv1connect.AccountServiceGetAccountProcedure, &ledgerv1.GetAccountRequest{AccountId: "a/b"}), inv, "INVALID_INPUT"},
		{"freeze: unknown", unary[ledgerv1.FreezeAccountRequest, ledgerv1.FreezeAccountResponse](ledgerv1connect.AccountServiceFreezeAccountProcedure, &ledgerv1.FreezeAccountRequest{AccountId: "nobody"}), nf, "ACCOUNT_UNKNOWN"},
		{"freeze: reason of 257 bytes", unary[ledgerv1.FreezeAccountRequest, ledgerv1.FreezeAccountResponse](ledgerv1connect.AccountServiceFreezeAccountProcedure, &ledgerv1.FreezeAccountRequest{AccountId: "bob", Reason: strings.Repeat("r", 257)}), inv, "INVALID_INPUT"},
		{"unfreeze: unknown", unary[ledgerv1.UnfreezeAccountRequest, ledgerv1.UnfreezeAccountResponse](ledgerv1connect.AccountServiceUnfreezeAccountProcedure, &ledgerv1.UnfreezeAccountRequest{AccountId: "nobody"}), nf, "ACCOUNT_UNKNOWN"},
		{"close: not empty", unary[ledgerv1.CloseAccountRequest, ledgerv1.CloseAccountResponse](ledgerv1connect.AccountServiceCloseAccountProcedure, &ledgerv1.CloseAccountRequest{AccountId: "alice"}), pre, "ACCOUNT_NOT_EMPTY"},
		{"close: empty id", unary[ledgerv1.CloseAccountRequest, ledgerv1.CloseAccountResponse](ledgerv1connect.AccountServiceCloseAccountProcedure, &ledgerv1.CloseAccountRequest{}), inv, "INVALID_INPUT"},

		// PaymentService
		{"transfer: insufficient funds", transfer(transferReq("p1", "bob", "alice", usd("1.00"))), pre, "INSUFFICIENT_FUNDS"},
		{"transfer: more than available (held)", transfer(transferReq("p1", "alice", "bob", usd("90.01"))), pre, "INSUFFICIENT_FUNDS"},
		{"transfer: zero", transfer(transferReq("p1", "alice", "bob", usd("0"))), inv, "INVALID_AMOUNT"},
		{"transfer: 3 decimals in USD", transfer(transferReq("p1", "alice", "bob", usd("1.001"))), inv, "INVALID_AMOUNT"},
		{"transfer: negative", transfer(transferReq("p1", "alice", "bob", usd("-1"))), inv, "INVALID_INPUT"},
		{"transfer: exponent", transfer(transferReq("p1", "alice", "bob", usd("1e3"))), inv, "INVALID_INPUT"},
		{"transfer: leading zero", transfer(transferReq("p1", "alice", "bob", usd("01.00"))), inv, "INVALID_INPUT"},
		{"transfer: overflow", transfer(transferReq("p1", "alice", "bob", usd("99999999999999999999"))), inv, "INVALID_AMOUNT"},
		{"transfer: no amount", transfer(transferReq("p1", "alice", "bob", nil)), inv, "INVALID_INPUT"},
		{"transfer: EUR between USD accounts", transfer(transferReq("p1", "alice", "bob", &ledgerv1.Money{Value: "1.00", Asset: "EUR"})), inv, "ASSET_MISMATCH"},
		{"transfer: USD into an EUR account", transfer(transferReq("p1", "alice", "eur-1", usd("1.00"))), inv, "ASSET_MISMATCH"},
		{"transfer: from a frozen account", transfer(transferReq("p1", "ice", "bob", usd("1.00"))), pre, "ACCOUNT_FROZEN"},
		{"transfer: to an unknown account", transfer(transferReq("p1", "alice", "nobody", usd("1.00"))), nf, "ACCOUNT_UNKNOWN"},
		{"transfer: to itself", transfer(transferReq("p1", "alice", "alice", usd("1.00"))), inv, "INVALID_INPUT"},
		{"transfer: reused id, other amount", transfer(transferReq("tr-1", "world", "alice", usd("100.01"))), dup, "DUPLICATE_ID"},
		{"transfer: reference of 129 bytes", transfer(&ledgerv1.TransferRequest{PaymentId: "p1", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00"), Reference: strings.Repeat("r", 129)}), inv, "INVALID_INPUT"},
		{"transfer: bad payment id", transfer(transferReq("p 1", "alice", "bob", usd("1.00"))), inv, "INVALID_INPUT"},
		{"batch: no legs", unary[ledgerv1.BatchTransferRequest, ledgerv1.BatchTransferResponse](ledgerv1connect.PaymentServiceBatchTransferProcedure, &ledgerv1.BatchTransferRequest{PaymentId: "b1"}), inv, "INVALID_INPUT"},
		{"batch: 65 legs", unary[ledgerv1.BatchTransferRequest, ledgerv1.BatchTransferResponse](ledgerv1connect.PaymentServiceBatchTransferProcedure, &ledgerv1.BatchTransferRequest{PaymentId: "b1", Legs: legs(65)}), inv, "INVALID_INPUT"},
		{"batch: one leg overdraws", unary[ledgerv1.BatchTransferRequest, ledgerv1.BatchTransferResponse](ledgerv1connect.PaymentServiceBatchTransferProcedure, &ledgerv1.BatchTransferRequest{PaymentId: "b1", Legs: []*ledgerv1.Leg{
			{SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")},
			{SourceAccountId: "bob", DestinationAccountId: "world", Amount: usd("5.00")},
		}}), pre, "INSUFFICIENT_FUNDS"},
		{"authorise: no expiry", unary[ledgerv1.AuthoriseRequest, ledgerv1.AuthoriseResponse](ledgerv1connect.PaymentServiceAuthoriseProcedure, &ledgerv1.AuthoriseRequest{PaymentId: "a1", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")}), inv, "INVALID_INPUT"},
		{"authorise: expiry in the past", unary[ledgerv1.AuthoriseRequest, ledgerv1.AuthoriseResponse](ledgerv1connect.PaymentServiceAuthoriseProcedure, &ledgerv1.AuthoriseRequest{PaymentId: "a1", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00"), ExpiresAt: timestamppb.New(time.Now().Add(-time.Minute))}), inv, "INVALID_INPUT"},
		{"authorise: insufficient funds", unary[ledgerv1.AuthoriseRequest, ledgerv1.AuthoriseResponse](ledgerv1connect.PaymentServiceAuthoriseProcedure, &ledgerv1.AuthoriseRequest{PaymentId: "a1", SourceAccountId: "bob", DestinationAccountId: "alice", Amount: usd("1.00"), ExpiresAt: hour}), pre, "INSUFFICIENT_FUNDS"},
		{"capture: unknown payment", unary[ledgerv1.CaptureRequest, ledgerv1.CaptureResponse](ledgerv1connect.PaymentServiceCaptureProcedure, &ledgerv1.CaptureRequest{PaymentId: "nope", CaptureId: "c1", What: &ledgerv1.CaptureRequest_Full{Full: true}}), nf, "PAYMENT_UNKNOWN"},
		{"capture: neither amount nor full", unary[ledgerv1.CaptureRequest, ledgerv1.CaptureResponse](ledgerv1connect.PaymentServiceCaptureProcedure, &ledgerv1.CaptureRequest{PaymentId: "auth-1", CaptureId: "c1"}), inv, "INVALID_INPUT"},
		{"capture: full = false", unary[ledgerv1.CaptureRequest, ledgerv1.CaptureResponse](ledgerv1connect.PaymentServiceCaptureProcedure, &ledgerv1.CaptureRequest{PaymentId: "auth-1", CaptureId: "c1", What: &ledgerv1.CaptureRequest_Full{}}), inv, "INVALID_INPUT"},
		{"capture: more than authorised", unary[ledgerv1.CaptureRequest, ledgerv1.CaptureResponse](ledgerv1connect.PaymentServiceCaptureProcedure, &ledgerv1.CaptureRequest{PaymentId: "auth-1", CaptureId: "c1", What: &ledgerv1.CaptureRequest_Amount{Amount: usd("10.01")}}), inv, "INVALID_AMOUNT"},
		{"capture: a transfer", unary[ledgerv1.CaptureRequest, ledgerv1.CaptureResponse](ledgerv1connect.PaymentServiceCaptureProcedure, &ledgerv1.CaptureRequest{PaymentId: "tr-1", CaptureId: "c1", What: &ledgerv1.CaptureRequest_Full{Full: true}}), pre, "PAYMENT_STATE"},
		{"void: a transfer", unary[ledgerv1.VoidRequest, ledgerv1.VoidResponse](ledgerv1connect.PaymentServiceVoidProcedure, &ledgerv1.VoidRequest{PaymentId: "tr-1"}), pre, "PAYMENT_STATE"},
		{"void: unknown payment", unary[ledgerv1.VoidRequest, ledgerv1.VoidResponse](ledgerv1connect.PaymentServiceVoidProcedure, &ledgerv1.VoidRequest{PaymentId: "nope"}), nf, "PAYMENT_UNKNOWN"},
		{"refund: more than captured", unary[ledgerv1.RefundRequest, ledgerv1.RefundResponse](ledgerv1connect.PaymentServiceRefundProcedure, &ledgerv1.RefundRequest{PaymentId: "tr-1", RefundId: "r1", Amount: usd("100.01")}), inv, "INVALID_AMOUNT"},
		{"refund: no refund id", unary[ledgerv1.RefundRequest, ledgerv1.RefundResponse](ledgerv1connect.PaymentServiceRefundProcedure, &ledgerv1.RefundRequest{PaymentId: "tr-1", Amount: usd("1.00")}), inv, "INVALID_INPUT"},
		{"get payment: unknown", unary[ledgerv1.GetPaymentRequest, ledgerv1.GetPaymentResponse](ledgerv1connect.PaymentServiceGetPaymentProcedure, &ledgerv1.GetPaymentRequest{PaymentId: "nope"}), nf, "PAYMENT_UNKNOWN"},

		// BalanceService
		{"balance: unknown account", unary[ledgerv1.GetBalanceRequest, ledgerv1.GetBalanceResponse](ledgerv1connect.BalanceServiceGetBalanceProcedure, &ledgerv1.GetBalanceRequest{AccountId: "nobody"}), nf, "ACCOUNT_UNKNOWN"},
		{"balance: as of position 0", unary[ledgerv1.GetBalanceRequest, ledgerv1.GetBalanceResponse](ledgerv1connect.BalanceServiceGetBalanceProcedure, &ledgerv1.GetBalanceRequest{AccountId: "alice", AsOf: &ledgerv1.GetBalanceRequest_AsOfPosition{}}), inv, "INVALID_INPUT"},
		{"balance: min_position beyond the log", unary[ledgerv1.GetBalanceRequest, ledgerv1.GetBalanceResponse](ledgerv1connect.BalanceServiceGetBalanceProcedure, &ledgerv1.GetBalanceRequest{AccountId: "alice", MinPosition: 1 << 40}), late, "NOT_CAUGHT_UP"},
		{"history: page of 1001", unary[ledgerv1.ListHistoryRequest, ledgerv1.ListHistoryResponse](ledgerv1connect.BalanceServiceListHistoryProcedure, &ledgerv1.ListHistoryRequest{AccountId: "alice", PageSize: 1001}), inv, "INVALID_INPUT"},
		{"history: unknown account", unary[ledgerv1.ListHistoryRequest, ledgerv1.ListHistoryResponse](ledgerv1connect.BalanceServiceListHistoryProcedure, &ledgerv1.ListHistoryRequest{AccountId: "nobody"}), nf, "ACCOUNT_UNKNOWN"},
		{"watch: unknown account", firstOfStream[ledgerv1.WatchAccountRequest, ledgerv1.WatchAccountResponse](ledgerv1connect.BalanceServiceWatchAccountProcedure, &ledgerv1.WatchAccountRequest{AccountId: "nobody"}), nf, "ACCOUNT_UNKNOWN"},
		{"watch: bad id", firstOfStream[ledgerv1.WatchAccountRequest, ledgerv1.WatchAccountResponse](ledgerv1connect.BalanceServiceWatchAccountProcedure, &ledgerv1.WatchAccountRequest{AccountId: ""}), inv, "INVALID_INPUT"},

		// AuditService
		{"read stream: no name", unary[ledgerv1.ReadStreamRequest, ledgerv1.ReadStreamResponse](ledgerv1connect.AuditServiceReadStreamProcedure, &ledgerv1.ReadStreamRequest{}), inv, "INVALID_INPUT"},
		{"read stream: limit 1001", unary[ledgerv1.ReadStreamRequest, ledgerv1.ReadStreamResponse](ledgerv1connect.AuditServiceReadStreamProcedure, &ledgerv1.ReadStreamRequest{Stream: "account-alice", Limit: 1001}), inv, "INVALID_INPUT"},
		{"stream log: batch of 1001", firstOfStream[ledgerv1.StreamLogRequest, ledgerv1.StreamLogResponse](ledgerv1connect.AuditServiceStreamLogProcedure, &ledgerv1.StreamLogRequest{BatchSize: 1001}), inv, "INVALID_INPUT"},
	}
}

// TestBadInputs sends every RPC inputs it must refuse, over each of the three clients, and
// checks the code, the machine-readable reason, and that nothing was appended to the log.
func TestBadInputs(t *testing.T) {
	for _, kind := range allKinds {
		t.Run(string(kind), func(t *testing.T) {
			n := startNode(t, nodeOptions{readWait: 200 * time.Millisecond})
			c := newClient(t, n, kind)
			ctx := testContext(t)
			seedLedger(t, ctx, newClient(t, n, kindConnect))
			head, err := n.store.Head(ctx)
			if err != nil {
				t.Fatalf("head: %v", err)
			}
			for _, tc := range badCases() {
				err := tc.call(ctx, c)
				if err == nil {
					t.Errorf("%s: want %v %s, got success", tc.name, tc.code, tc.reason)
					continue
				}
				if codeOf(err) != tc.code || reasonOf(err) != tc.reason {
					t.Errorf("%s: want %v %s, got %v %q (%v)", tc.name, tc.code, tc.reason, codeOf(err), reasonOf(err), err)
				}
				if strings.Contains(err.Error(), "regex") || strings.Contains(err.Error(), "pattern") {
					t.Errorf("%s: refusal shows the schema's pattern instead of a sentence: %v", tc.name, err)
				}
				if strings.Contains(strings.ToLower(err.Error()), "eventstore") || strings.Contains(err.Error(), ".go:") {
					t.Errorf("%s: internal detail leaked to the client: %v", tc.name, err)
				}
			}
			after, err := n.store.Head(ctx)
			if err != nil {
				t.Fatalf("head: %v", err)
			}
			if after != head {
				t.Fatalf("refused requests changed the log: head was %d, is %d", head, after)
			}
		})
	}
}
