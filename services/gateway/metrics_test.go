package gateway_test

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/services/gateway"
	"github.com/securepay/securepay/services/telemetry"
)

// TestMetricsCountEdgeRefusals: the calls the gateway refuses itself (no token, the
// policy, the rate limit, the stream quota) are counted on /metrics by procedure and
// code and by reason, as well as the calls it forwards. Each principal's allowance is 4
// calls with no refill within the test, so the rate limit is reached by count, not time.
func TestMetricsCountEdgeRefusals(t *testing.T) {
	tel, err := telemetry.New(context.Background(), telemetry.Config{ServiceName: "securepay-gateway"})
	if err != nil {
		t.Fatal(err)
	}
	limiter, err := gateway.NewMemoryLimiter(gateway.Limit{Rate: 1, Burst: 4, Period: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, fixtureOptions{telemetry: tel, limiter: limiter, streams: 1})
	aliceTok, _ := f.seed(t) // the operator makes 3 calls, the treasury 2: all allowed
	ctx := context.Background()
	alice := f.as(aliceTok)

	// Allowed and forwarded.
	if _, err := alice.payments.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{
		PaymentId: "m-1", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")})); err != nil {
		t.Fatalf("alice transfers from her account: %v", err)
	}
	// The policy: bob's account is not alice's (NOT_FOUND); the log is for auditors
	// (PERMISSION_DENIED, on a stream).
	if _, err := alice.payments.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{
		PaymentId: "m-2", SourceAccountId: "bob", DestinationAccountId: "alice", Amount: usd("1.00")})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("alice transfers from bob's account: want NOT_FOUND, got %v", err)
	}
	// The stream quota: alice may hold one stream; her second is refused.
	held, err := openWatch(ctx, alice, "alice")
	if err != nil {
		t.Fatalf("alice watches her account: %v", err)
	}
	defer held.Close()
	if _, err := openWatch(ctx, alice, "alice"); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("alice's second watch with a quota of one stream: want RESOURCE_EXHAUSTED, got %v", err)
	}
	// The rate limit: that was alice's fourth call; the fifth is refused.
	if _, err := alice.balances.GetBalance(ctx, connect.NewRequest(&ledgerv1.GetBalanceRequest{AccountId: "alice"})); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("alice's fifth call with an allowance of four: want RESOURCE_EXHAUSTED, got %v", err)
	}
	// No token at all, twice; and a token that is not a bearer one.
	for range 2 {
		if _, err := f.as("").balances.GetBalance(ctx, connect.NewRequest(&ledgerv1.GetBalanceRequest{AccountId: "alice"})); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("a call without a token: want UNAUTHENTICATED, got %v", err)
		}
	}
	carol := f.as(f.issuer.token(t, "carol", []string{"customer"}, "alice"))
	s, err := carol.audit.StreamLog(ctx, connect.NewRequest(&ledgerv1.StreamLogRequest{}))
	if err == nil {
		for s.Receive() {
			t.Fatalf("a customer received log events: %v", s.Msg())
		}
		err = s.Err()
		s.Close()
	}
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("a customer's StreamLog: want PERMISSION_DENIED, got %v", err)
	}

	srv := httptest.NewServer(tel.MetricsHandler())
	defer srv.Close()
	res, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(res.Body)
	res.Body.Close()
	body := string(raw)
	const rpc = "securepay_rpc_duration_seconds_count"
	for _, want := range []string{
		`securepay_gateway_refusals_total{reason="unauthenticated"} 2`,
		`securepay_gateway_refusals_total{reason="forbidden"} 2`,
		`securepay_gateway_refusals_total{reason="rate_limited"} 1`,
		`securepay_gateway_refusals_total{reason="stream_quota"} 1`,
		`securepay_gateway_refusals_total{reason="limiter_unavailable"} 0`,
		// Forwarded: the seeding's two transfers and alice's one.
		rpc + `{code="ok",procedure="/securepay.ledger.v1.PaymentService/Transfer"} 3`,
		rpc + `{code="ok",procedure="/securepay.ledger.v1.AccountService/OpenAccount"} 3`,
		// Refused at the edge, before any forward: counted all the same.
		rpc + `{code="not_found",procedure="/securepay.ledger.v1.PaymentService/Transfer"} 1`,
		rpc + `{code="resource_exhausted",procedure="/securepay.ledger.v1.BalanceService/GetBalance"} 1`,
		rpc + `{code="resource_exhausted",procedure="/securepay.ledger.v1.BalanceService/WatchAccount"} 1`,
		rpc + `{code="unauthenticated",procedure="/securepay.ledger.v1.BalanceService/GetBalance"} 2`,
		rpc + `{code="permission_denied",procedure="/securepay.ledger.v1.AuditService/StreamLog"} 1`,
		// The six calls to payments, one after another: each Forward carried one.
		`securepay_gateway_hop_forward_calls_count 6`,
		`securepay_gateway_hop_forward_calls_sum 6`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics: want the line %q; the gateway's lines are:\n%s", want, gatewayLines(body))
		}
	}
}

// gatewayLines are the securepay_ lines of a scrape, for a failure message.
func gatewayLines(body string) string {
	var b strings.Builder
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "securepay_gateway_") || strings.HasPrefix(l, "securepay_rpc_duration_seconds_count") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}
