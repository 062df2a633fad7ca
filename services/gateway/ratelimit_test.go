package gateway_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/gateway"
)

// TestRateLimitSharedAcrossGateways: with an allowance of N calls per minute in Redis,
// N transfers spread over two gateway instances go through and the N+1st is refused
// with RESOURCE_EXHAUSTED and a retry-after, and appends nothing. Another principal
// is not affected.
func TestRateLimitSharedAcrossGateways(t *testing.T) {
	const n = 5
	rdb := redisClient(t)
	limiter, err := gateway.NewRedisLimiter(rdb, gateway.Limit{Rate: n, Burst: n, Period: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	// The seed's principals (operator, treasury) use a separate allowance: seed first
	// with a generous limiter, then put the strict one in front of the same ledger.
	f := newFixture(t, fixtureOptions{})
	aliceTok, bobTok := f.seed(t)
	_, url1, c1 := startGateway(t, f.issuer, f.ledger, fixtureOptions{limiter: limiter})
	_, url2, c2 := startGateway(t, f.issuer, f.ledger, fixtureOptions{limiter: limiter})
	ctx := context.Background()
	transfer := func(a api, id string) error {
		_, err := a.payments.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{PaymentId: id, SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")}))
		return err
	}
	for i := 0; i < n; i++ {
		url, c := url1, c1
		if i%2 == 1 {
			url, c = url2, c2
		}
		if err := transfer(apiAt(c, url, aliceTok), "rl-"+strconv.Itoa(i)); err != nil {
			t.Fatalf("call %d of %d: %v", i+1, n, err)
		}
	}
	head, _ := f.ledger.store.Head(ctx)
	err = transfer(apiAt(c2, url2, aliceTok), "rl-over")
	if connect.CodeOf(err) != connect.CodeResourceExhausted || services.ReasonOf(err) != services.ReasonRateLimited {
		t.Fatalf("call %d: %v, want RESOURCE_EXHAUSTED (RATE_LIMITED)", n+1, err)
	}
	if cerr := new(connect.Error); errors.As(err, &cerr) {
		secs, perr := strconv.Atoi(cerr.Meta().Get("Retry-After"))
		if perr != nil || secs < 1 || secs > 60 {
			t.Errorf("Retry-After %q, want 1..60 seconds", cerr.Meta().Get("Retry-After"))
		}
		found := false
		for _, d := range cerr.Details() {
			if v, err := d.Value(); err == nil {
				if ri, ok := v.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().AsDuration() > 0 {
					found = true
				}
			}
		}
		if !found {
			t.Error("no google.rpc.RetryInfo detail with a positive delay")
		}
	}
	if after, _ := f.ledger.store.Head(ctx); after != head {
		t.Errorf("the refused call moved the log from %d to %d", head, after)
	}
	if _, err := apiAt(c1, url1, aliceTok).payments.GetPayment(ctx, connect.NewRequest(&ledgerv1.GetPaymentRequest{PaymentId: "rl-over"})); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Errorf("alice's next call on the other gateway: %v, want RESOURCE_EXHAUSTED too (the allowance is shared)", err)
	}
	if err := transfer(apiAt(c1, url1, bobTok), "rl-bob"); connect.CodeOf(err) == connect.CodeResourceExhausted {
		t.Errorf("bob was limited by alice's calls: %v", err)
	}
}

// TestRateLimiterDownFailsClosed: a limiter that cannot answer refuses the call
// (UNAVAILABLE) instead of letting it through unlimited.
func TestRateLimiterDownFailsClosed(t *testing.T) {
	rdb := redisClient(t)
	limiter, err := gateway.NewRedisLimiter(rdb, gateway.Limit{Rate: 100, Burst: 100, Period: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, fixtureOptions{})
	aliceTok, _ := f.seed(t)
	_ = rdb.Close()
	_, url, c := startGateway(t, f.issuer, f.ledger, fixtureOptions{limiter: limiter})
	_, err = apiAt(c, url, aliceTok).balances.GetBalance(context.Background(), connect.NewRequest(&ledgerv1.GetBalanceRequest{AccountId: "alice"}))
	if connect.CodeOf(err) != connect.CodeUnavailable || services.ReasonOf(err) != services.ReasonRateLimiterDown {
		t.Errorf("with Redis closed: %v, want UNAVAILABLE (RATE_LIMITER_UNAVAILABLE)", err)
	}
}

// TestStreamQuotaPerPrincipal: one principal holds at most StreamsPerPrincipal streams;
// the next is refused with RESOURCE_EXHAUSTED; closing one frees its slot; another
// principal is not affected.
func TestStreamQuotaPerPrincipal(t *testing.T) {
	f := newFixture(t, fixtureOptions{streams: 2})
	aliceTok, bobTok := f.seed(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func(tok, account string) (*connect.ServerStreamForClient[ledgerv1.WatchAccountResponse], error) {
		s, err := f.as(tok).balances.WatchAccount(ctx, connect.NewRequest(&ledgerv1.WatchAccountRequest{AccountId: account}))
		if err != nil {
			return nil, err
		}
		if !s.Receive() { // the first message: the stream is established
			err := s.Err()
			s.Close()
			return nil, err
		}
		return s, nil
	}
	var held []*connect.ServerStreamForClient[ledgerv1.WatchAccountResponse]
	for i := 0; i < 2; i++ {
		s, err := open(aliceTok, "alice")
		if err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
		held = append(held, s)
	}
	if _, err := open(aliceTok, "alice"); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("third stream: %v, want RESOURCE_EXHAUSTED", err)
	}
	s, err := open(bobTok, "bob")
	if err != nil {
		t.Fatalf("bob's stream while alice holds hers: %v", err)
	}
	s.Close()
	held[0].Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := open(aliceTok, "alice")
		if err == nil {
			s.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a slot was not given back after closing a stream: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // the gateway sees the close asynchronously
	}
	held[1].Close()
}
