package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/services/ledger"
)

var (
	usd = domain.Asset{Code: "USD", Scale: 2}
	jpy = domain.Asset{Code: "JPY", Scale: 0}
)

// fixedClock is a controllable clock for expiry tests.
type fixedClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fixedClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fixedClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newProcessor(t testing.TB, store eventstore.Store, cfg ledger.Config) *ledger.Processor {
	t.Helper()
	p, err := ledger.New(store, cfg)
	if err != nil {
		t.Fatalf("new processor: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func exec(t testing.TB, p *ledger.Processor, cmd domain.Command) ledger.Result {
	t.Helper()
	res, err := p.Execute(ctxT(t), ledger.Request{Command: cmd, Meta: eventstore.Metadata{Actor: "spiffe://securepay.dev/test"}})
	if err != nil {
		t.Fatalf("execute %T: unexpected error: %v", cmd, err)
	}
	return res
}

func money(minor int64, a domain.Asset) domain.Money { return domain.Money{Asset: a, Minor: minor} }

func open(t testing.TB, p *ledger.Processor, id string, a domain.Asset, kind domain.AccountKind, limit int64) {
	t.Helper()
	exec(t, p, domain.OpenAccount{AccountID: domain.AccountID(id), Asset: a, Kind: kind, CreditLimit: limit})
}

func head(t testing.TB, s eventstore.Store) uint64 {
	t.Helper()
	h, err := s.Head(ctxT(t))
	if err != nil {
		t.Fatalf("head: %v", err)
	}
	return h
}

func TestProcessor(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			t.Run("transfer", func(t *testing.T) { testTransfer(t, b) })
			t.Run("refusals append nothing", func(t *testing.T) { testRefusals(t, b) })
			t.Run("two phase", func(t *testing.T) { testTwoPhase(t, b) })
			t.Run("hot account", func(t *testing.T) { testHotAccount(t, b) })
			t.Run("snapshots", func(t *testing.T) { testSnapshots(t, b) })
			t.Run("expirer", func(t *testing.T) { testExpirer(t, b) })
			if b.shared {
				t.Run("two processes never overdraw", func(t *testing.T) { testTwoProcesses(t, b) })
			}
		})
	}
}

func testTransfer(t *testing.T, b backend) {
	store, _ := b.open(t)
	p := newProcessor(t, store, ledger.Config{SharedStore: b.shared})
	open(t, p, "world", usd, domain.KindExternal, 0)
	open(t, p, "alice", usd, domain.KindCustomer, 0)
	open(t, p, "shop", usd, domain.KindMerchant, 0)

	fund := domain.Transfer{PaymentID: "fund-1", Source: "world", Destination: "alice", Amount: money(10_000, usd)}
	first := exec(t, p, fund)
	if first.Replayed || first.Position == 0 {
		t.Fatalf("first transfer: want a new commit with a position, got %+v", first)
	}
	if got := first.Accounts[1].Posted; got != 10_000 {
		t.Fatalf("alice after funding: want 10000, got %d", got)
	}
	before := head(t, store)
	again := exec(t, p, fund)
	if !again.Replayed || again.Position != first.Position {
		t.Fatalf("retry with same id and input: want replay at position %d, got replayed=%v position=%d", first.Position, again.Replayed, again.Position)
	}
	if h := head(t, store); h != before {
		t.Fatalf("a replay appended events: head moved from %d to %d", before, h)
	}

	pay := exec(t, p, domain.Transfer{PaymentID: "pay-1", Source: "alice", Destination: "shop", Amount: money(2_500, usd), Reference: "order 17"})
	if pay.Position <= first.Position {
		t.Fatalf("positions must grow: funding at %d, payment at %d", first.Position, pay.Position)
	}
	alice, err := p.Account(ctxT(t), "alice")
	if err != nil || alice.Posted != 7_500 || alice.Available() != 7_500 {
		t.Fatalf("alice: want posted=available=7500, got %+v err=%v", alice, err)
	}

	// The events carry the actor and a correlation id, and the log's chain verifies.
	recs, err := store.ReadStream(ctxT(t), domain.PaymentStream("pay-1"), 0, 10)
	if err != nil || len(recs) != 1 {
		t.Fatalf("payment stream: want 1 event, got %d (err %v)", len(recs), err)
	}
	if recs[0].Metadata.Actor != "spiffe://securepay.dev/test" || recs[0].Metadata.CorrelationID != "pay-1" || recs[0].Type != domain.NamePaymentTransfer {
		t.Fatalf("payment event envelope: got type %q metadata %+v", recs[0].Type, recs[0].Metadata)
	}
	if n, err := eventstore.VerifyChain(ctxT(t), store, 100, nil); err != nil || n != head(t, store) {
		t.Fatalf("verify chain: verified %d of %d, err %v", n, head(t, store), err)
	}
}

// Every invalid command gets its typed error and appends nothing.
func testRefusals(t *testing.T, b backend) {
	store, _ := b.open(t)
	p := newProcessor(t, store, ledger.Config{SharedStore: b.shared})
	open(t, p, "world", usd, domain.KindExternal, 0)
	open(t, p, "alice", usd, domain.KindCustomer, 0)
	open(t, p, "bob", usd, domain.KindCustomer, 500)
	open(t, p, "yen", jpy, domain.KindCustomer, 0)
	open(t, p, "frozen", usd, domain.KindCustomer, 0)
	exec(t, p, domain.Transfer{PaymentID: "fund", Source: "world", Destination: "alice", Amount: money(1_000, usd)})
	exec(t, p, domain.FreezeAccount{AccountID: "frozen", Reason: "kyc"})
	exec(t, p, domain.Authorise{PaymentID: "auth", Source: "alice", Destination: "bob", Amount: money(100, usd), ExpiresAt: time.Now().Add(time.Hour)})

	cases := []struct {
		name string
		cmd  domain.Command
		want error
	}{
		{"insufficient funds", domain.Transfer{PaymentID: "p1", Source: "alice", Destination: "bob", Amount: money(901, usd)}, domain.ErrInsufficientFunds},
		{"beyond credit limit", domain.Transfer{PaymentID: "p2", Source: "bob", Destination: "alice", Amount: money(501, usd)}, domain.ErrInsufficientFunds},
		{"unknown source", domain.Transfer{PaymentID: "p3", Source: "nobody", Destination: "bob", Amount: money(1, usd)}, domain.ErrAccountUnknown},
		{"unknown destination", domain.Transfer{PaymentID: "p4", Source: "alice", Destination: "nobody", Amount: money(1, usd)}, domain.ErrAccountUnknown},
		{"frozen destination", domain.Transfer{PaymentID: "p5", Source: "alice", Destination: "frozen", Amount: money(1, usd)}, domain.ErrAccountFrozen},
		{"asset mismatch", domain.Transfer{PaymentID: "p6", Source: "alice", Destination: "yen", Amount: money(1, usd)}, domain.ErrAssetMismatch},
		{"EUR between USD accounts", domain.Transfer{PaymentID: "p7", Source: "alice", Destination: "bob", Amount: money(1, domain.Asset{Code: "EUR", Scale: 2})}, domain.ErrAssetMismatch},
		{"zero amount", domain.Transfer{PaymentID: "p8", Source: "alice", Destination: "bob", Amount: money(0, usd)}, domain.ErrInvalidAmount},
		{"negative amount", domain.Transfer{PaymentID: "p9", Source: "alice", Destination: "bob", Amount: money(-5, usd)}, domain.ErrInvalidAmount},
		{"same account", domain.Transfer{PaymentID: "p10", Source: "alice", Destination: "alice", Amount: money(1, usd)}, domain.ErrInvalidInput},
		{"bad payment id", domain.Transfer{PaymentID: "no spaces", Source: "alice", Destination: "bob", Amount: money(1, usd)}, domain.ErrInvalidInput},
		{"duplicate id, other input", domain.Transfer{PaymentID: "fund", Source: "world", Destination: "alice", Amount: money(999, usd)}, domain.ErrDuplicateID},
		{"duplicate account, other settings", domain.OpenAccount{AccountID: "alice", Asset: usd, Kind: domain.KindMerchant}, domain.ErrDuplicateID},
		{"close with balance", domain.CloseAccount{AccountID: "alice"}, domain.ErrAccountNotEmpty},
		{"capture more than authorised", domain.Capture{PaymentID: "auth", CaptureID: "c1", Amount: money(101, usd)}, domain.ErrInvalidAmount},
		{"capture unknown payment", domain.Capture{PaymentID: "nope", CaptureID: "c1", Amount: money(1, usd)}, domain.ErrPaymentUnknown},
		{"refund more than captured", domain.Refund{PaymentID: "fund", RefundID: "r1", Amount: money(1_001, usd)}, domain.ErrInvalidAmount},
		{"batch with one bad leg", domain.BatchTransfer{PaymentID: "b1", Legs: []domain.Leg{
			{Source: "alice", Destination: "bob", Amount: money(1, usd)},
			{Source: "alice", Destination: "yen", Amount: money(1, usd)},
		}}, domain.ErrAssetMismatch},
		{"metadata too large", domain.Transfer{PaymentID: "p11", Source: "alice", Destination: "bob", Amount: money(1, usd), Metadata: bigMetadata()}, domain.ErrLimitExceeded},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := head(t, store)
			_, err := p.Execute(ctxT(t), ledger.Request{Command: tc.cmd})
			if !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, err)
			}
			if h := head(t, store); h != before {
				t.Fatalf("a refused command appended %d events", h-before)
			}
		})
	}
	alice, _ := p.Account(ctxT(t), "alice")
	if alice.Posted != 1_000 || alice.Held != 100 {
		t.Fatalf("alice after refusals: want posted 1000 held 100, got %d/%d", alice.Posted, alice.Held)
	}
}

func bigMetadata() domain.Metadata {
	m := domain.Metadata{}
	for i := range domain.MaxMetadataEntries + 1 {
		m[fmt.Sprintf("k%d", i)] = "v"
	}
	return m
}

func testTwoPhase(t *testing.T, b backend) {
	store, _ := b.open(t)
	clock := &fixedClock{now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	p := newProcessor(t, store, ledger.Config{Clock: clock.Now, SharedStore: b.shared})
	open(t, p, "world", usd, domain.KindExternal, 0)
	open(t, p, "card", usd, domain.KindCustomer, 0)
	open(t, p, "shop", usd, domain.KindMerchant, 0)
	exec(t, p, domain.Transfer{PaymentID: "fund", Source: "world", Destination: "card", Amount: money(10_000, usd)})

	auth := exec(t, p, domain.Authorise{PaymentID: "a1", Source: "card", Destination: "shop", Amount: money(6_000, usd), ExpiresAt: clock.Now().Add(time.Hour)})
	if card := auth.Accounts[0]; card.Posted != 10_000 || card.Available() != 4_000 {
		t.Fatalf("after authorise: want posted 10000 available 4000, got posted %d available %d", card.Posted, card.Available())
	}
	if _, err := p.Execute(ctxT(t), ledger.Request{Command: domain.Transfer{PaymentID: "t", Source: "card", Destination: "shop", Amount: money(4_001, usd)}}); !errors.Is(err, domain.ErrInsufficientFunds) {
		t.Fatalf("spending the held money: want insufficient funds, got %v", err)
	}
	c1 := exec(t, p, domain.Capture{PaymentID: "a1", CaptureID: "c1", Amount: money(2_000, usd)})
	if c1.Payment.Captured != 2_000 || c1.Payment.Status != domain.PaymentStatusAuthorised {
		t.Fatalf("partial capture: got %+v", c1.Payment)
	}
	replay := exec(t, p, domain.Capture{PaymentID: "a1", CaptureID: "c1", Amount: money(2_000, usd)})
	if !replay.Replayed || replay.Position != c1.Position {
		t.Fatalf("capture retry: want replay at %d, got replayed=%v at %d", c1.Position, replay.Replayed, replay.Position)
	}
	exec(t, p, domain.Capture{PaymentID: "a1", CaptureID: "c2", Amount: money(1_000, usd)})
	voided := exec(t, p, domain.Void{PaymentID: "a1"})
	if card := voided.Accounts[0]; card.Posted != 7_000 || card.Held != 0 || card.OpenHolds != 0 {
		t.Fatalf("after void: want posted 7000, nothing held; got %+v", card)
	}
	refund := exec(t, p, domain.Refund{PaymentID: "a1", RefundID: "r1", Amount: money(3_000, usd)})
	if refund.Payment.Refunded != 3_000 {
		t.Fatalf("refund: got %+v", refund.Payment)
	}
	if _, err := p.Execute(ctxT(t), ledger.Request{Command: domain.Refund{PaymentID: "a1", RefundID: "r2", Amount: money(1, usd)}}); !errors.Is(err, domain.ErrInvalidAmount) {
		t.Fatalf("refund beyond captured: want invalid amount, got %v", err)
	}

	// Expiry: refused before the deadline, releases the hold after it.
	exec(t, p, domain.Authorise{PaymentID: "a2", Source: "card", Destination: "shop", Amount: money(500, usd), ExpiresAt: clock.Now().Add(time.Minute)})
	if _, err := p.Execute(ctxT(t), ledger.Request{Command: domain.Expire{PaymentID: "a2"}}); !errors.Is(err, domain.ErrPaymentState) {
		t.Fatalf("expire before deadline: want payment-state error, got %v", err)
	}
	clock.Advance(2 * time.Minute)
	if _, err := p.Execute(ctxT(t), ledger.Request{Command: domain.Capture{PaymentID: "a2", CaptureID: "late", Amount: money(1, usd)}}); !errors.Is(err, domain.ErrPaymentState) {
		t.Fatalf("capture after deadline: want payment-state error, got %v", err)
	}
	expired := exec(t, p, domain.Expire{PaymentID: "a2"})
	if expired.Payment.Status != domain.PaymentStatusExpired || expired.Accounts[0].Held != 0 {
		t.Fatalf("after expiry: got payment %+v card %+v", expired.Payment, expired.Accounts[0])
	}
}

// Half of many concurrent transfers pay one merchant: all must commit, and the merchant's
// balance must be exactly the sum.
func testHotAccount(t *testing.T, b backend) {
	store, _ := b.open(t)
	p := newProcessor(t, store, ledger.Config{SharedStore: b.shared})
	open(t, p, "world", usd, domain.KindExternal, 0)
	open(t, p, "merchant", usd, domain.KindMerchant, 0)
	const payers, each = 64, 20
	for i := range payers {
		open(t, p, fmt.Sprintf("payer-%d", i), usd, domain.KindCustomer, 0)
		exec(t, p, domain.Transfer{PaymentID: domain.PaymentID(fmt.Sprintf("fund-%d", i)), Source: "world",
			Destination: domain.AccountID(fmt.Sprintf("payer-%d", i)), Amount: money(each*100, usd)})
	}
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range payers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				_, err := p.Execute(ctxT(t), ledger.Request{Command: domain.Transfer{
					PaymentID: domain.PaymentID(fmt.Sprintf("pay-%d-%d", i, j)), Source: domain.AccountID(fmt.Sprintf("payer-%d", i)),
					Destination: "merchant", Amount: money(100, usd)}})
				if err != nil {
					failed.Add(1)
					t.Errorf("payer %d transfer %d: %v", i, j, err)
				}
			}
		}()
	}
	wg.Wait()
	m, err := p.Account(ctxT(t), "merchant")
	if err != nil || m.Posted != payers*each*100 || failed.Load() != 0 {
		t.Fatalf("merchant: want %d, got %d (err %v, %d failures)", payers*each*100, m.Posted, err, failed.Load())
	}
}

// countingStore counts the events a processor reads back, to prove it does not replay a
// long stream on every command or on every start.
type countingStore struct {
	eventstore.Store
	read atomic.Int64
}

func (c *countingStore) ReadStream(ctx context.Context, stream string, after uint64, limit int) ([]eventstore.RecordedEvent, error) {
	recs, err := c.Store.ReadStream(ctx, stream, after, limit)
	c.read.Add(int64(len(recs)))
	return recs, err
}

func testSnapshots(t *testing.T, b backend) {
	store, _ := b.open(t)
	snaps, ok := store.(eventstore.SnapshotStore)
	if !ok {
		t.Fatalf("%s store does not keep snapshots", b.name)
	}
	key := snapshotKey(t)
	p := newProcessor(t, store, ledger.Config{Snapshots: snaps, SnapshotKey: key, SnapshotEvery: 50, SharedStore: b.shared})
	open(t, p, "world", usd, domain.KindExternal, 0)
	open(t, p, "merchant", usd, domain.KindMerchant, 0)
	const n = 230
	for i := range n {
		exec(t, p, domain.Transfer{PaymentID: domain.PaymentID(fmt.Sprintf("s-%d", i)), Source: "world", Destination: "merchant", Amount: money(1, usd)})
	}
	p.Close() // flushes the snapshot writer

	// A new processor (a restart) folds the merchant from its newest snapshot plus the
	// events after it, not from its first event.
	counting := &countingStore{Store: store}
	p2 := newProcessor(t, counting, ledger.Config{Snapshots: snaps, SnapshotKey: key, SnapshotEvery: 50, SharedStore: b.shared})
	m, err := p2.Account(ctxT(t), "merchant")
	if err != nil || m.Posted != n || m.Version != n+1 {
		t.Fatalf("merchant after restart: want posted %d version %d, got %+v (err %v)", n, n+1, m, err)
	}
	// Snapshot at version 200 (the last multiple of 50), then 31 more events, plus the
	// one-event check that the snapshot's version exists in the log.
	if got := counting.read.Load(); got > 40 {
		t.Fatalf("restart read %d events of a %d-event stream: snapshots were not used", got, n+1)
	}
}

// Two processors on one PostgreSQL (two service instances) drain the same accounts
// concurrently: conflicts are retried, and no account is ever overdrawn.
func testTwoProcesses(t *testing.T, b backend) {
	store, reopen := b.open(t)
	p1 := newProcessor(t, store, ledger.Config{SharedStore: true})
	p2 := newProcessor(t, reopen(), ledger.Config{SharedStore: true})
	open(t, p1, "world", usd, domain.KindExternal, 0)
	const accounts, balance = 4, 1_000
	for i := range accounts {
		open(t, p1, fmt.Sprintf("acc-%d", i), usd, domain.KindCustomer, 0)
		exec(t, p1, domain.Transfer{PaymentID: domain.PaymentID(fmt.Sprintf("fund-%d", i)), Source: "world",
			Destination: domain.AccountID(fmt.Sprintf("acc-%d", i)), Amount: money(balance, usd)})
	}
	open(t, p2, "sink", usd, domain.KindMerchant, 0)
	var accepted atomic.Int64
	var wg sync.WaitGroup
	for w := range 16 {
		p := p1
		if w%2 == 1 {
			p = p2
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 40 {
				_, err := p.Execute(ctxT(t), ledger.Request{Command: domain.Transfer{
					PaymentID: domain.PaymentID(fmt.Sprintf("drain-%d-%d", w, j)), Source: domain.AccountID(fmt.Sprintf("acc-%d", j%accounts)),
					Destination: "sink", Amount: money(30, usd)}})
				switch {
				case err == nil:
					accepted.Add(1)
				case errors.Is(err, domain.ErrInsufficientFunds), errors.Is(err, eventstore.ErrConflict):
				default:
					t.Errorf("worker %d: %v", w, err)
				}
			}
		}()
	}
	wg.Wait()
	// The truth is the log: fold it and check every account.
	final := foldLog(t, store)
	for i := range accounts {
		a := final.Accounts[domain.AccountStream(domain.AccountID(fmt.Sprintf("acc-%d", i)))]
		if a.Posted < 0 {
			t.Fatalf("acc-%d overdrawn: %d", i, a.Posted)
		}
	}
	sink := final.Accounts[domain.AccountStream("sink")]
	if sink.Posted != accepted.Load()*30 {
		t.Fatalf("sink: want %d (accepted %d transfers), got %d", accepted.Load()*30, accepted.Load(), sink.Posted)
	}
	if max := int64(accounts * (balance / 30)); accepted.Load() == 0 || accepted.Load() > max {
		t.Fatalf("%d transfers accepted; the accounts could fund at most %d", accepted.Load(), max)
	}
}

// The system expires authorisations past their deadline with a command of its own.
func testExpirer(t *testing.T, b backend) {
	store, _ := b.open(t)
	clock := &fixedClock{now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	p := newProcessor(t, store, ledger.Config{Clock: clock.Now, SharedStore: b.shared})
	open(t, p, "world", usd, domain.KindExternal, 0)
	open(t, p, "card", usd, domain.KindCustomer, 0)
	open(t, p, "shop", usd, domain.KindMerchant, 0)
	exec(t, p, domain.Transfer{PaymentID: "fund", Source: "world", Destination: "card", Amount: money(1_000, usd)})
	exec(t, p, domain.Authorise{PaymentID: "open-past", Source: "card", Destination: "shop", Amount: money(100, usd), ExpiresAt: clock.Now().Add(time.Minute)})
	exec(t, p, domain.Authorise{PaymentID: "captured", Source: "card", Destination: "shop", Amount: money(100, usd), ExpiresAt: clock.Now().Add(2 * time.Minute)})
	exec(t, p, domain.Capture{PaymentID: "captured", CaptureID: "all", Full: true})
	exec(t, p, domain.Authorise{PaymentID: "open-future", Source: "card", Destination: "shop", Amount: money(100, usd), ExpiresAt: clock.Now().Add(10 * time.Minute)})

	ctx, cancel := context.WithCancel(ctxT(t))
	x := &ledger.Expirer{Store: store, Processor: p, Clock: clock.Now, Interval: 10 * time.Millisecond}
	stopped := make(chan error, 1)
	go func() { stopped <- x.Run(ctx) }()
	clock.Advance(5 * time.Minute)

	deadline := time.Now().Add(10 * time.Second)
	for x.Expired() < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-stopped; !errors.Is(err, context.Canceled) {
		t.Fatalf("expirer stopped with %v, want context.Canceled", err)
	}
	for id, want := range map[domain.PaymentID]domain.PaymentStatus{
		"open-past": domain.PaymentStatusExpired, "captured": domain.PaymentStatusCaptured, "open-future": domain.PaymentStatusAuthorised,
	} {
		pay, err := p.Payment(ctxT(t), id)
		if err != nil || pay.Status != want {
			t.Fatalf("payment %s: want %s, got %s (err %v)", id, want, pay.Status, err)
		}
	}
	card, _ := p.Account(ctxT(t), "card")
	if card.Held != 100 || card.OpenHolds != 1 {
		t.Fatalf("card: want only the future authorisation held (100, 1 hold), got held %d holds %d", card.Held, card.OpenHolds)
	}
	recs, err := store.ReadStream(ctxT(t), domain.PaymentStream("open-past"), 1, 10)
	if err != nil || len(recs) != 1 || recs[0].Type != domain.NamePaymentExpired || recs[0].Metadata.Actor != ledger.ExpirerActor {
		t.Fatalf("expiry event: want one %s by %s, got %d events (err %v): %+v", domain.NamePaymentExpired, ledger.ExpirerActor, len(recs), err, recs)
	}
}
