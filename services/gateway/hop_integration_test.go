package gateway_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/securepay/securepay/api/gen/securepay/hop/v1/hopv1connect"
	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/services"
)

// hopCounter counts what the gateway sends payments: Forwards, and lone calls.
type hopCounter struct {
	next           http.RoundTripper
	forwards, lone atomic.Int64
}

func (c *hopCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == hopv1connect.HopServiceForwardProcedure {
		c.forwards.Add(1)
	} else {
		c.lone.Add(1)
	}
	return c.next.RoundTrip(r)
}

func countHop(c *hopCounter) func(http.RoundTripper) http.RoundTripper {
	return func(next http.RoundTripper) http.RoundTripper {
		if next == nil {
			next = http.DefaultTransport
		}
		c.next = next
		return c
	}
}

// TestHopManyPrincipalsEachGetTheirOwnAnswer: 200 customers transfer at once through one
// gateway, whose calls to payments travel in Forwards (none alone); each gets the answer
// to its own transfer, and the ledger records each transfer's actor as the customer whose
// token sent it.
func TestHopManyPrincipalsEachGetTheirOwnAnswer(t *testing.T) {
	const customers = 200
	hop := &hopCounter{}
	f := newFixture(t, fixtureOptions{paymentsTransport: countHop(hop)})
	f.seed(t)
	ctx := context.Background()
	op := f.as(f.issuer.token(t, "operator-1", []string{"operator"}))
	treasury := f.as(f.issuer.token(t, "treasury", []string{"customer"}, "world"))
	account := func(i int) string { return fmt.Sprintf("c%03d", i) }
	each := func(what string, call func(i int) error) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, customers)
		for i := range customers {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = call(i) }()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("%s %d: %v", what, i, err)
			}
		}
	}
	each("open account", func(i int) error {
		_, err := op.accounts.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{AccountId: account(i), Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER}))
		return err
	})
	each("fund", func(i int) error {
		_, err := treasury.payments.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{
			PaymentId: "fund-" + account(i), SourceAccountId: "world", DestinationAccountId: account(i), Amount: usd("10.00")}))
		return err
	})
	tokens := make([]string, customers)
	for i := range customers {
		tokens[i] = f.issuer.token(t, "cust-"+account(i), []string{"customer"}, account(i))
	}
	positions := make([]uint64, customers)
	each("transfer", func(i int) error {
		payment := "pay-" + account(i)
		req := connect.NewRequest(&ledgerv1.TransferRequest{PaymentId: payment, SourceAccountId: account(i), DestinationAccountId: "bob",
			Amount: usd(fmt.Sprintf("0.%02d", i%99+1))})
		req.Header().Set(services.IdempotencyKeyHeader, "key-"+account(i))
		res, err := f.as(tokens[i]).payments.Transfer(ctx, req)
		if err != nil {
			return err
		}
		if got := res.Msg.GetPayment().GetPaymentId(); got != payment {
			return fmt.Errorf("answered payment %q, want its own %q", got, payment)
		}
		positions[i] = res.Msg.GetResult().GetPosition()
		return nil
	})
	if n := hop.lone.Load(); n != 0 {
		t.Errorf("%d calls went to payments alone; with Hop batched (the default) every one travels in a Forward", n)
	}
	t.Logf("%d Forwards carried the seeding and the %d transfers", hop.forwards.Load(), customers)

	events, err := f.ledger.store.ReadAll(ctx, 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	seen := make([]int, customers)
	for _, e := range events {
		for i := range customers {
			if !strings.Contains(string(e.Data), "pay-"+account(i)) {
				continue
			}
			seen[i]++
			if want := "cust-" + account(i); e.Metadata.Actor != want {
				t.Errorf("event %d of pay-%s has actor %q, want %q, whose token sent it", e.Position, account(i), e.Metadata.Actor, want)
			}
			if e.Position > positions[i] {
				t.Errorf("event %d of pay-%s is after the position %d its answer named", e.Position, account(i), positions[i])
			}
		}
	}
	for i, n := range seen {
		if n == 0 {
			t.Errorf("no event of pay-%s in the log", account(i))
		}
	}
}

// TestHopPaymentsStoppedMidRun: payments goes down while callers transfer through the
// gateway. Every call cut off answers UNAVAILABLE (never INTERNAL, never an answer that
// is not its own); once payments is back, each caller's retry with the same payment id
// and Idempotency-Key succeeds, and every payment is in the log exactly once.
func TestHopPaymentsStoppedMidRun(t *testing.T) {
	const callers = 16
	f := newFixture(t, fixtureOptions{})
	alice, _ := f.seed(t)
	ctx := context.Background()
	client := f.as(alice)
	transfer := func(payment string) error {
		req := connect.NewRequest(&ledgerv1.TransferRequest{PaymentId: payment, SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("0.01")})
		req.Header().Set(services.IdempotencyKeyHeader, "key-"+payment)
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		res, err := client.payments.Transfer(cctx, req)
		if err == nil && res.Msg.GetPayment().GetPaymentId() != payment {
			return fmt.Errorf("answered payment %q, want its own %q", res.Msg.GetPayment().GetPaymentId(), payment)
		}
		return err
	}

	var (
		mu       sync.Mutex
		payments []string // every payment sent
		cut      []string // those answered UNAVAILABLE
		stopped  = make(chan struct{})
		wg       sync.WaitGroup
		sent     atomic.Int64
	)
	for w := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each caller transfers until payments is down and it has been cut off once
			// (bounded: 400 transfers each at most).
			for k := range 400 {
				payment := fmt.Sprintf("p-%02d-%03d", w, k)
				mu.Lock()
				payments = append(payments, payment)
				mu.Unlock()
				err := transfer(payment)
				sent.Add(1)
				switch {
				case err == nil:
					continue
				case connect.CodeOf(err) == connect.CodeUnavailable && services.ReasonOf(err) == services.ReasonUnavailable:
					mu.Lock()
					cut = append(cut, payment)
					mu.Unlock()
				default:
					t.Errorf("payment %s while payments goes down: %v; want success or UNAVAILABLE", payment, errorSummary(err))
				}
				select {
				case <-stopped:
					return
				default:
				}
			}
		}()
	}
	for end := time.Now().Add(30 * time.Second); sent.Load() < 2*callers; time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("after 30s only %d transfers were answered, want %d before payments goes down", sent.Load(), 2*callers)
		}
	}
	f.ledger.stop(t, services.ComponentPayments)
	close(stopped)
	wg.Wait()
	if len(cut) == 0 {
		t.Fatal("no call was cut off by payments going down")
	}
	f.ledger.start(t, services.ComponentPayments)

	// The retries: the same payment id and key. One that payments was still committing
	// when it went down answers IDEMPOTENCY_REQUEST_IN_PROGRESS (ABORTED) until it is done.
	for _, payment := range cut {
		var err error
		for range 100 {
			if err = transfer(payment); err == nil || (connect.CodeOf(err) != connect.CodeUnavailable && connect.CodeOf(err) != connect.CodeAborted) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("retry of %s after payments is back: %v", payment, errorSummary(err))
		}
	}

	// Every payment sent is in the log exactly once: as many events as the first one,
	// which nothing cut off.
	events, err := f.ledger.store.ReadAll(ctx, 0, 100000)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, e := range events {
		data := string(e.Data)
		for i := strings.Index(data, "p-"); i >= 0 && i+8 <= len(data); {
			count[data[i:i+8]]++
			j := strings.Index(data[i+8:], "p-")
			if j < 0 {
				break
			}
			i += 8 + j
		}
	}
	per := count[fmt.Sprintf("p-%02d-%03d", 0, 0)]
	if per == 0 {
		t.Fatalf("the first payment is not in the log")
	}
	for _, p := range payments {
		if count[p] != per {
			t.Errorf("payment %s appears %d times in the log's events, want %d as every other payment (committed once)", p, count[p], per)
		}
	}
	t.Logf("%d payments, %d cut off by payments going down and retried", len(payments), len(cut))
}
