package gateway_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/edge"
	"github.com/securepay/securepay/services/gateway"
	"github.com/securepay/securepay/services/mtls"
)

func usd(v string) *ledgerv1.Money { return &ledgerv1.Money{Value: v, Asset: "USD"} }

// TestTransferRecordsThePrincipalAndCorrelation: a customer's transfer goes through, and
// its events carry the token's subject as actor (not a header the client chose), the
// correlation id the client offered, and a hash of its Idempotency-Key.
func TestTransferRecordsThePrincipalAndCorrelation(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	aliceTok, _ := f.seed(t)
	ctx := context.Background()
	req := connect.NewRequest(&ledgerv1.TransferRequest{PaymentId: "p-1", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("5.00")})
	req.Header().Set("X-Correlation-Id", "order-42")
	req.Header().Set("Securepay-Principal", "mallory") // a client's claim: must be ignored
	req.Header().Set(services.IdempotencyKeyHeader, "secret-key-1")
	res, err := f.as(aliceTok).payments.Transfer(ctx, req)
	if err != nil {
		t.Fatalf("alice transfers 5.00 from her account: %v", err)
	}
	if got := res.Header().Get(gateway.ResponseCorrelationHeader); got != "order-42" {
		t.Errorf("response correlation id %q, want the client's order-42", got)
	}
	events, err := f.ledger.store.ReadAll(ctx, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, e := range events {
		if e.Position <= res.Msg.GetResult().GetPosition()-1 || !strings.Contains(string(e.Data), "p-1") {
			continue
		}
		found++
		m := e.Metadata
		if m.Actor != "alice" || m.CorrelationID != "order-42" || m.CausationID != services.CausationOfKey("alice", "secret-key-1") {
			t.Errorf("event %d %s metadata %+v: want actor alice, correlation order-42, causation CausationOfKey(alice, key)", e.Position, e.Type, m)
		}
	}
	if found == 0 {
		t.Fatalf("no event of payment p-1 in the log")
	}
}

// TestBOLA: customer A asking about B's account or payment gets exactly the answer it
// gets for one that does not exist, on every RPC that names an account or a payment,
// streams included; and nothing is appended.
func TestBOLA(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	aliceTok, bobTok := f.seed(t)
	ctx := context.Background()
	bob := f.as(bobTok)
	// Bob's own payments: a transfer, an authorisation, both of which alice must not see.
	if _, err := bob.payments.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{PaymentId: "bob-pay", SourceAccountId: "bob", DestinationAccountId: "world", Amount: usd("1.00")})); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.payments.Authorise(ctx, connect.NewRequest(&ledgerv1.AuthoriseRequest{PaymentId: "bob-auth", SourceAccountId: "bob", DestinationAccountId: "world", Amount: usd("1.00"), ExpiresAt: timestamp(time.Hour)})); err != nil {
		t.Fatal(err)
	}
	head, _ := f.ledger.store.Head(ctx)
	alice := f.as(aliceTok)

	accountCalls := map[string]func(account string) error{
		"GetAccount": func(a string) error {
			_, err := alice.accounts.GetAccount(ctx, connect.NewRequest(&ledgerv1.GetAccountRequest{AccountId: a}))
			return err
		},
		"GetBalance": func(a string) error {
			_, err := alice.balances.GetBalance(ctx, connect.NewRequest(&ledgerv1.GetBalanceRequest{AccountId: a}))
			return err
		},
		"ListHistory": func(a string) error {
			_, err := alice.balances.ListHistory(ctx, connect.NewRequest(&ledgerv1.ListHistoryRequest{AccountId: a}))
			return err
		},
		"WatchAccount": func(a string) error {
			s, err := alice.balances.WatchAccount(ctx, connect.NewRequest(&ledgerv1.WatchAccountRequest{AccountId: a}))
			if err != nil {
				return err
			}
			defer s.Close()
			for s.Receive() {
				return nil // a message: the stream was granted
			}
			return s.Err()
		},
		"Transfer": func(a string) error {
			_, err := alice.payments.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{PaymentId: "steal-" + a, SourceAccountId: a, DestinationAccountId: "alice", Amount: usd("1.00")}))
			return err
		},
		"BatchTransfer": func(a string) error {
			_, err := alice.payments.BatchTransfer(ctx, connect.NewRequest(&ledgerv1.BatchTransferRequest{PaymentId: "steal-batch-" + a, Legs: []*ledgerv1.Leg{
				{SourceAccountId: "alice", DestinationAccountId: "world", Amount: usd("1.00")},
				{SourceAccountId: a, DestinationAccountId: "alice", Amount: usd("1.00")},
			}}))
			return err
		},
		"Authorise": func(a string) error {
			_, err := alice.payments.Authorise(ctx, connect.NewRequest(&ledgerv1.AuthoriseRequest{PaymentId: "hold-" + a, SourceAccountId: a, DestinationAccountId: "alice", Amount: usd("1.00"), ExpiresAt: timestamp(time.Hour)}))
			return err
		},
	}
	for name, call := range accountCalls {
		t.Run(name, func(t *testing.T) {
			// The ids differ; everything else must be the same.
			theirs := strings.ReplaceAll(errorSummary(call("bob")), "bob", "ID")
			missing := strings.ReplaceAll(errorSummary(call("nobody")), "nobody", "ID")
			if theirs != missing || !strings.HasPrefix(theirs, "not_found|") {
				t.Errorf("alice on bob's account: %s\nalice on a missing account: %s\nwant the same NOT_FOUND", theirs, missing)
			}
		})
	}
	paymentCalls := map[string]func(id string) error{
		"GetPayment": func(id string) error {
			_, err := alice.payments.GetPayment(ctx, connect.NewRequest(&ledgerv1.GetPaymentRequest{PaymentId: id}))
			return err
		},
		"Capture": func(id string) error {
			_, err := alice.payments.Capture(ctx, connect.NewRequest(&ledgerv1.CaptureRequest{PaymentId: id, CaptureId: "c1", What: &ledgerv1.CaptureRequest_Full{Full: true}}))
			return err
		},
		"Void": func(id string) error {
			_, err := alice.payments.Void(ctx, connect.NewRequest(&ledgerv1.VoidRequest{PaymentId: id}))
			return err
		},
		"Refund": func(id string) error {
			_, err := alice.payments.Refund(ctx, connect.NewRequest(&ledgerv1.RefundRequest{PaymentId: id, RefundId: "r1", Amount: usd("1.00")}))
			return err
		},
	}
	for name, call := range paymentCalls {
		t.Run(name, func(t *testing.T) {
			for _, theirs := range []string{"bob-pay", "bob-auth"} {
				got, missing := errorSummary(call(theirs)), errorSummary(call("no-such-payment"))
				got = strings.ReplaceAll(got, theirs, "ID")
				missing = strings.ReplaceAll(missing, "no-such-payment", "ID")
				if got != missing || !strings.HasPrefix(got, "not_found|") {
					t.Errorf("alice on bob's payment %s: %s\nalice on a missing payment: %s\nwant the same NOT_FOUND", theirs, got, missing)
				}
			}
		})
	}
	if after, _ := f.ledger.store.Head(ctx); after != head {
		t.Errorf("the log moved from %d to %d while alice tried bob's objects", head, after)
	}
	// Bob himself is served: the refusals above are about ownership, not broken RPCs.
	if _, err := bob.payments.GetPayment(ctx, connect.NewRequest(&ledgerv1.GetPaymentRequest{PaymentId: "bob-pay"})); err != nil {
		t.Errorf("bob reads his own payment: %v", err)
	}
	if _, err := bob.payments.Void(ctx, connect.NewRequest(&ledgerv1.VoidRequest{PaymentId: "bob-auth"})); err != nil {
		t.Errorf("bob voids his own authorisation: %v", err)
	}
}

// TestAuditStreamIsForAuditors: the whole log is an auditor's right; a customer's stream
// is refused before it reaches the component.
func TestAuditStreamIsForAuditors(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	aliceTok, _ := f.seed(t)
	ctx := context.Background()
	s, err := f.as(aliceTok).audit.StreamLog(ctx, connect.NewRequest(&ledgerv1.StreamLogRequest{}))
	if err == nil {
		for s.Receive() {
			t.Fatalf("a customer received log events: %v", s.Msg())
		}
		err = s.Err()
		s.Close()
	}
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("customer StreamLog: %v, want PERMISSION_DENIED", err)
	}
	s, err = f.as(f.issuer.token(t, "auditor-1", []string{"auditor"})).audit.StreamLog(ctx, connect.NewRequest(&ledgerv1.StreamLogRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	n := 0
	for s.Receive() {
		n += len(s.Msg().GetEvents())
	}
	if err := s.Err(); err != nil || n == 0 {
		t.Errorf("auditor StreamLog: %d events, error %v; want the seeded log", n, err)
	}
}

// TestCustomerCannotOpenExternalOrCredit: minting through an external account or a credit
// limit is an operator's right.
func TestCustomerCannotOpenExternalOrCredit(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	c := f.as(f.issuer.token(t, "carol", []string{"customer"}, "carol", "carol-ext"))
	for _, tc := range []struct {
		name string
		req  *ledgerv1.OpenAccountRequest
		want connect.Code
	}{
		{"external", &ledgerv1.OpenAccountRequest{AccountId: "carol-ext", Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL}, connect.CodePermissionDenied},
		{"credit limit", &ledgerv1.OpenAccountRequest{AccountId: "carol", Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER, CreditLimit: "90000000000000000.00"}, connect.CodePermissionDenied},
		{"someone else's id", &ledgerv1.OpenAccountRequest{AccountId: "dave", Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER}, connect.CodePermissionDenied},
		{"own, plain", &ledgerv1.OpenAccountRequest{AccountId: "carol", Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER}, 0},
	} {
		_, err := c.accounts.OpenAccount(ctx, connect.NewRequest(tc.req))
		if got := connect.CodeOf(err); (err == nil) != (tc.want == 0) || (err != nil && got != tc.want) {
			t.Errorf("%s: %v, want code %v", tc.name, err, tc.want)
		}
	}
}

// TestRefusalsConcealTheCounterparty: a transfer to bob's frozen, closed or
// other-currency account, or to one that does not exist, gets one answer, so alice learns
// nothing of bob's state; her own account's state is still told to her in full.
func TestRefusalsConcealTheCounterparty(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	aliceTok, _ := f.seed(t)
	ctx := context.Background()
	op := f.as(f.issuer.token(t, "operator-1", []string{"operator"}))
	for _, id := range []string{"frozen-bob", "closed-bob", "euro-bob"} {
		asset := "USD"
		if id == "euro-bob" {
			asset = "EUR"
		}
		if _, err := op.accounts.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{AccountId: id, Asset: asset, Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER})); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := op.accounts.FreezeAccount(ctx, connect.NewRequest(&ledgerv1.FreezeAccountRequest{AccountId: "frozen-bob"})); err != nil {
		t.Fatal(err)
	}
	if _, err := op.accounts.CloseAccount(ctx, connect.NewRequest(&ledgerv1.CloseAccountRequest{AccountId: "closed-bob"})); err != nil {
		t.Fatal(err)
	}
	alice := f.as(aliceTok)
	answer := func(to string) string {
		_, err := alice.payments.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{PaymentId: "to-" + to, SourceAccountId: "alice", DestinationAccountId: to, Amount: usd("1.00")}))
		return strings.ReplaceAll(errorSummary(err), to, "ID")
	}
	missing := answer("nobody")
	if !strings.HasPrefix(missing, "not_found|") {
		t.Fatalf("transfer to a missing account: %s, want NOT_FOUND", missing)
	}
	for _, to := range []string{"frozen-bob", "closed-bob", "euro-bob"} {
		if got := answer(to); got != missing {
			t.Errorf("transfer to %s: %s\nto a missing account: %s\nwant the same", to, got, missing)
		}
	}
	// Her own state she is told: freeze alice, then she tries to pay.
	if _, err := op.accounts.FreezeAccount(ctx, connect.NewRequest(&ledgerv1.FreezeAccountRequest{AccountId: "alice"})); err != nil {
		t.Fatal(err)
	}
	if got := answer("bob"); !strings.Contains(got, "ACCOUNT_FROZEN") || !strings.Contains(got, "alice is frozen") {
		t.Errorf("alice paying from her own frozen account: %s, want ACCOUNT_FROZEN naming alice", got)
	}
}

// TestEdgeHeadersTrustedOnlyFromTheGateway: a component believes the principal header
// only from the gateway's SPIFFE ID. Another component (here the projector, which this
// test's policy lets call payments) that sends Securepay-Principal: alice is recorded as
// itself.
func TestEdgeHeadersTrustedOnlyFromTheGateway(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.seed(t)
	ctx := context.Background()
	src, err := f.ledger.ca.Source(f.ledger.ids.Projector)
	if err != nil {
		t.Fatal(err)
	}
	direct := ledgerv1connect.NewPaymentServiceClient(mtls.HTTPClient(src, f.ledger.ids.Payments), f.ledger.url[services.ComponentPayments])
	req := connect.NewRequest(&ledgerv1.TransferRequest{PaymentId: "forged", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")})
	edge.Set(req.Header(), edge.Identity{Principal: "alice", CorrelationID: "forged-correlation"})
	res, err := direct.Transfer(ctx, req)
	if err != nil {
		t.Fatalf("the projector's direct call (allowed by this test's policy): %v", err)
	}
	events, err := f.ledger.store.ReadAll(ctx, res.Msg.GetResult().GetPosition()-1, 100)
	if err != nil || len(events) == 0 {
		t.Fatalf("read the transfer's events: %v (%d)", err, len(events))
	}
	for _, e := range events {
		if e.Metadata.Actor != f.ledger.ids.Projector.String() || e.Metadata.CorrelationID == "forged-correlation" {
			t.Errorf("event %d: actor %q correlation %q; want the projector's SPIFFE ID and not the forged correlation", e.Position, e.Metadata.Actor, e.Metadata.CorrelationID)
		}
	}
}
