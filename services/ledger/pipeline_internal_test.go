package ledger

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
)

// These tests drive each branch of the pipeline (the invariants on Processor)
// deterministically: a scripted store decides what the Nth append does, and the decided
// hook tells the test when a batch is in flight. Nothing waits on time.

var usdAsset = domain.Asset{Code: "USD", Scale: 2}

var errScripted = errors.New("scripted append failure")

// appendScript is what one append does.
type appendScript struct {
	entered  chan struct{} // closed when the append starts (may be nil)
	stall    chan struct{} // the append waits until it is closed (may be nil)
	conflict bool          // answer a conflict on the first stream, append nothing
	fail     bool          // answer errScripted, append nothing
	always   bool          // this script applies to every append from the Nth on
}

// scriptedStore wraps a real store; appends without a script pass through.
type scriptedStore struct {
	eventstore.Store
	mu        sync.Mutex
	appends   int // appends attempted so far
	script    map[int]*appendScript
	maxEvents int // the most events one append carried
	// refuse, when set, may refuse an append before it reaches the store, as a store
	// refuses input it cannot record.
	refuse func([]eventstore.StreamAppend) error
}

func (s *scriptedStore) on(n int, a *appendScript) *appendScript {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.script == nil {
		s.script = map[int]*appendScript{}
	}
	s.script[n] = a
	return a
}

// next returns the number the next append will have.
func (s *scriptedStore) next() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appends + 1
}

func (s *scriptedStore) attempted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appends
}

func (s *scriptedStore) Append(ctx context.Context, appends ...eventstore.StreamAppend) (eventstore.AppendResult, error) {
	events := 0
	for _, a := range appends {
		events += len(a.Events)
	}
	s.mu.Lock()
	refuse := s.refuse
	s.mu.Unlock()
	if refuse != nil {
		if err := refuse(appends); err != nil {
			return eventstore.AppendResult{}, err
		}
	}
	s.mu.Lock()
	s.appends++
	s.maxEvents = max(s.maxEvents, events)
	a := s.script[s.appends]
	for n, sc := range s.script {
		if a == nil && sc.always && n <= s.appends {
			a = sc
		}
	}
	s.mu.Unlock()
	if a == nil {
		return s.Store.Append(ctx, appends...)
	}
	if a.entered != nil && !a.always {
		close(a.entered)
	}
	if a.stall != nil {
		<-a.stall
	}
	switch {
	case a.conflict:
		return eventstore.AppendResult{}, &eventstore.ConflictError{Stream: appends[0].Stream, Expected: appends[0].Expected}
	case a.fail:
		return eventstore.AppendResult{}, errScripted
	}
	return s.Store.Append(ctx, appends...)
}

// harness is one processor on a scripted embedded store.
type harness struct {
	t       *testing.T
	store   *scriptedStore
	p       *Processor
	decided chan int // number of calls in each batch handed to the committer
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	real, err := embedded.Open(t.TempDir(), embedded.Options{})
	if err != nil {
		t.Fatalf("open embedded store: %v", err)
	}
	t.Cleanup(func() { real.Close() })
	h := &harness{t: t, store: &scriptedStore{Store: real}, decided: make(chan int, 1<<16)} // never full: a blocked hook would stall the loop
	h.p = h.start(cfg)
	return h
}

// start opens another processor on the harness's store (a restart, or a second process).
func (h *harness) start(cfg Config) *Processor {
	h.t.Helper()
	p, err := New(h.store, cfg)
	if err != nil {
		h.t.Fatalf("new processor: %v", err)
	}
	p.hooks.decided = func(n int) { h.decided <- n }
	h.t.Cleanup(func() { p.Close() })
	return p
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func (h *harness) exec(p *Processor, cmd domain.Command) Result {
	h.t.Helper()
	res, err := p.Execute(ctxFor(h.t), Request{Command: cmd})
	if err != nil {
		h.t.Fatalf("%T %v: unexpected error %v", cmd, cmd.Payments(), err)
	}
	h.drainDecided()
	return res
}

// drainDecided forgets the batches decided so far, so the next wait sees only new ones.
func (h *harness) drainDecided() {
	for {
		select {
		case <-h.decided:
		default:
			return
		}
	}
}

// async runs a command in the background; the channel yields its outcome.
func (h *harness) async(p *Processor, cmd domain.Command) <-chan error {
	out := make(chan error, 1)
	go func() {
		_, err := p.Execute(ctxFor(h.t), Request{Command: cmd})
		out <- err
	}()
	return out
}

func (h *harness) waitDecided() {
	h.t.Helper()
	select {
	case <-h.decided:
	case <-ctxFor(h.t).Done():
		h.t.Fatal("no batch was decided")
	}
}

func (h *harness) seed(p *Processor, balances map[domain.AccountID]int64) {
	h.t.Helper()
	h.exec(p, domain.OpenAccount{AccountID: "world", Asset: usdAsset, Kind: domain.KindExternal})
	for id, minor := range balances {
		h.exec(p, domain.OpenAccount{AccountID: id, Asset: usdAsset, Kind: domain.KindCustomer})
		if minor > 0 {
			h.exec(p, transfer(domain.PaymentID("fund-"+id), "world", id, minor))
		}
	}
}

func (h *harness) posted(p *Processor, id domain.AccountID) int64 {
	h.t.Helper()
	a, err := p.Account(ctxFor(h.t), id)
	if err != nil {
		h.t.Fatalf("account %s: %v", id, err)
	}
	return a.Posted
}

func transfer(id domain.PaymentID, from, to domain.AccountID, minor int64) domain.Transfer {
	return domain.Transfer{PaymentID: id, Source: from, Destination: to, Amount: domain.Money{Asset: usdAsset, Minor: minor}}
}

func wantErr(t *testing.T, what string, got <-chan error, want error) {
	t.Helper()
	err := <-got
	switch {
	case want == nil && err != nil:
		t.Errorf("%s: want success, got %v", what, err)
	case want != nil && !errors.Is(err, want):
		t.Errorf("%s: want %v, got %v", what, want, err)
	}
}

// Invariant 2 and 8: a conflict is retried on re-read state, and only MaxAttempts times.
func TestPipelineConflict(t *testing.T) {
	t.Run("retried once and committed", func(t *testing.T) {
		h := newHarness(t, Config{})
		h.seed(h.p, map[domain.AccountID]int64{"alice": 100, "bob": 0})
		first := h.store.next()
		h.store.on(first, &appendScript{conflict: true})
		res := h.exec(h.p, transfer("t1", "alice", "bob", 40))
		if res.Replayed || h.store.attempted() != first+1 {
			t.Fatalf("after one conflict: want one more append and a new payment, got %d appends (replayed=%v)", h.store.attempted()-first+1, res.Replayed)
		}
		if got := h.posted(h.p, "bob"); got != 40 {
			t.Fatalf("bob after the retried transfer: want 40, got %d", got)
		}
	})
	t.Run("attempts exhausted", func(t *testing.T) {
		h := newHarness(t, Config{MaxAttempts: 3})
		h.seed(h.p, map[domain.AccountID]int64{"alice": 100, "bob": 0})
		first := h.store.next()
		h.store.on(first, &appendScript{conflict: true, always: true})
		_, err := h.p.Execute(ctxFor(t), Request{Command: transfer("t1", "alice", "bob", 40)})
		if !errors.Is(err, eventstore.ErrConflict) {
			t.Fatalf("every append conflicting: want an error wrapping ErrConflict, got %v", err)
		}
		if n := h.store.attempted() - first + 1; n != 3 {
			t.Fatalf("MaxAttempts 3: want 3 appends, got %d", n)
		}
	})
}

// Invariant 6: a refusal is confirmed on real state before it is returned.
func TestPipelineRefusalRecheck(t *testing.T) {
	t.Run("shared store, cached balance behind", func(t *testing.T) {
		h := newHarness(t, Config{SharedStore: true})
		h.seed(h.p, map[domain.AccountID]int64{"alice": 0, "bob": 0})
		if got := h.posted(h.p, "alice"); got != 0 { // alice is now cached at 0
			t.Fatalf("alice: want 0, got %d", got)
		}
		other := h.start(Config{SharedStore: true})
		h.exec(other, transfer("fund-later", "world", "alice", 50)) // behind the first processor's back
		// Decided on the cache, this is an overdraft; on the store it is not.
		h.exec(h.p, transfer("t1", "alice", "bob", 30))
		if got := h.posted(h.p, "bob"); got != 30 {
			t.Fatalf("bob: want 30, got %d", got)
		}
	})
	t.Run("payment assumed new is read before a refusal", func(t *testing.T) {
		h := newHarness(t, Config{})
		h.seed(h.p, map[domain.AccountID]int64{"alice": 50, "bob": 0})
		orig := h.exec(h.p, transfer("t1", "alice", "bob", 50))
		h.p.Close()
		p := h.start(Config{}) // a cold cache: t1 looks new until it is read
		res := h.exec(p, transfer("t1", "alice", "bob", 50))
		if !res.Replayed || res.Position != orig.Position {
			t.Fatalf("retry on a cold cache: want a replay at %d, got replayed=%v at %d", orig.Position, res.Replayed, res.Position)
		}
	})
}

// Invariant 7: a failed append with a speculative batch behind it. The later batch was
// decided on state that never happened; its answers must come from the real state.
func TestPipelineFailedAppendWithBatchBehind(t *testing.T) {
	t.Run("refusal behind the failure is decided again", func(t *testing.T) {
		h := newHarness(t, Config{})
		h.seed(h.p, map[domain.AccountID]int64{"alice": 50, "bob": 0, "carol": 0})
		fails := h.store.on(h.store.next(), &appendScript{entered: make(chan struct{}), stall: make(chan struct{}), fail: true})
		a := h.async(h.p, transfer("a", "alice", "bob", 50))
		h.waitDecided()
		<-fails.entered
		// Speculatively alice has 0: this is refused in the batch behind.
		b := h.async(h.p, transfer("b", "alice", "carol", 30))
		h.waitDecided()
		close(fails.stall)
		wantErr(t, "the failed append's caller", a, errScripted)
		wantErr(t, "the refusal that rested on the failed batch", b, nil)
		if got := h.posted(h.p, "carol"); got != 30 {
			t.Fatalf("carol: want 30 (alice really had 50), got %d", got)
		}
	})
	t.Run("append behind the failure conflicts and is decided again", func(t *testing.T) {
		h := newHarness(t, Config{})
		h.seed(h.p, map[domain.AccountID]int64{"alice": 50, "bob": 0, "carol": 0})
		fails := h.store.on(h.store.next(), &appendScript{entered: make(chan struct{}), stall: make(chan struct{}), fail: true})
		a := h.async(h.p, transfer("a", "alice", "bob", 50))
		h.waitDecided()
		<-fails.entered
		// Speculatively bob has 50: accepted in the batch behind, with bob's expected
		// version one past what the store will have.
		b := h.async(h.p, transfer("b", "bob", "carol", 40))
		h.waitDecided()
		// Queued behind both: decided only after the poisoned pipeline drained.
		c := h.async(h.p, transfer("c", "alice", "carol", 10))
		close(fails.stall)
		wantErr(t, "the failed append's caller", a, errScripted)
		wantErr(t, "the transfer decided on the failed batch's state", b, domain.ErrInsufficientFunds)
		wantErr(t, "the transfer queued behind", c, nil)
		if bob, carol := h.posted(h.p, "bob"), h.posted(h.p, "carol"); bob != 0 || carol != 10 {
			t.Fatalf("after the failure: want bob 0 and carol 10, got bob %d carol %d", bob, carol)
		}
	})
}

// Invariant 9: Close answers queued calls with ErrClosed and waits for the batches in flight.
func TestPipelineDrainOnClose(t *testing.T) {
	h := newHarness(t, Config{})
	h.seed(h.p, map[domain.AccountID]int64{"alice": 100, "bob": 0})
	stalls := h.store.on(h.store.next(), &appendScript{entered: make(chan struct{}), stall: make(chan struct{})})
	a := h.async(h.p, transfer("a", "alice", "bob", 10))
	h.waitDecided()
	<-stalls.entered
	b := h.async(h.p, transfer("b", "alice", "bob", 20)) // the second batch in flight
	h.waitDecided()
	c := h.async(h.p, transfer("c", "alice", "bob", 30)) // queued: no room in the pipeline
	h.until("the third call queued", func() bool {
		select {
		case err := <-c:
			t.Fatalf("a call with no room in the pipeline was answered: %v", err)
		default:
		}
		return len(h.p.queue) == 1
	})
	closed := make(chan struct{})
	go func() {
		h.p.Close()
		close(closed)
	}()
	<-h.p.closing
	select {
	case <-closed:
		t.Fatal("Close returned while a batch was still being appended")
	default:
	}
	close(stalls.stall)
	wantErr(t, "the batch being appended at Close", a, nil)
	wantErr(t, "the batch in flight behind it", b, nil)
	wantErr(t, "the call still queued at Close", c, ErrClosed)
	<-closed
	if _, err := h.p.Execute(ctxFor(t), Request{Command: transfer("d", "alice", "bob", 1)}); !errors.Is(err, ErrClosed) {
		t.Fatalf("a call after Close: want ErrClosed, got %v", err)
	}
	recs, err := h.store.ReadStream(ctxFor(t), domain.PaymentStream("c"), 0, 1)
	if err != nil || len(recs) != 0 {
		t.Fatalf("the call refused at Close: want nothing in the log, got %d events (err %v)", len(recs), err)
	}
}

// Invariant 8: commands queued behind a stalled append are batched within one append's
// event limit, so none of them fails for the size of the others.
func TestPipelineBatchWithinAppendLimit(t *testing.T) {
	h := newHarness(t, Config{})
	h.seed(h.p, map[domain.AccountID]int64{"a": 0, "b": 0})
	stalls := h.store.on(h.store.next(), &appendScript{entered: make(chan struct{}), stall: make(chan struct{})})
	first := h.async(h.p, transfer("first", "world", "a", 1))
	h.waitDecided()
	<-stalls.entered
	// 200 batches of 64 legs: 25,800 events, well over one append's 10,000.
	const n = 200
	legs := make([]domain.Leg, domain.MaxBatchLegs)
	for i := range legs {
		legs[i] = domain.Leg{Source: "world", Destination: "b", Amount: domain.Money{Asset: usdAsset, Minor: 1}}
	}
	outs := make([]<-chan error, n)
	for i := range outs {
		outs[i] = h.async(h.p, domain.BatchTransfer{PaymentID: domain.PaymentID(fmt.Sprintf("batch-%d", i)), Legs: legs})
	}
	// Wait until every batch transfer is queued or in the speculative batch behind the
	// stalled one (which holds as many as fit in one append); the one that did not fit
	// waits in the loop's backlog.
	decided := 0
	h.until("all batch transfers queued or decided", func() bool {
		for {
			select {
			case k := <-h.decided:
				decided += k
			default:
				return decided+len(h.p.queue) >= n-1
			}
		}
	})
	close(stalls.stall)
	wantErr(t, "the stalled transfer", first, nil)
	for i, out := range outs {
		wantErr(t, fmt.Sprintf("batch transfer %d", i), out, nil)
	}
	if h.store.maxEvents > eventstore.MaxEventsPerAppend {
		t.Fatalf("an append carried %d events, the store's limit is %d", h.store.maxEvents, eventstore.MaxEventsPerAppend)
	}
	if got := h.posted(h.p, "b"); got != n*domain.MaxBatchLegs {
		t.Fatalf("b: want %d, got %d", n*domain.MaxBatchLegs, got)
	}
}

// Invariant 8: when the store refuses a shared batch for one command's input, only that
// command fails; the others are tried again alone and succeed.
func TestPipelineMalformedBatchIsolated(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(fmt.Sprintf("shared=%v", shared), func(t *testing.T) {
			h := newHarness(t, Config{SharedStore: shared})
			h.seed(h.p, map[domain.AccountID]int64{"a": 0, "b": 0})
			h.store.mu.Lock()
			h.store.refuse = func(appends []eventstore.StreamAppend) error {
				for _, a := range appends {
					for _, e := range a.Events {
						if e.Metadata.Actor == "poison" {
							return fmt.Errorf("%w: the store cannot record this actor", eventstore.ErrInvalidAppend)
						}
					}
				}
				return nil
			}
			h.store.mu.Unlock()
			stalls := h.store.on(h.store.next(), &appendScript{entered: make(chan struct{}), stall: make(chan struct{})})
			first := h.async(h.p, transfer("first", "world", "a", 1))
			h.waitDecided()
			<-stalls.entered
			const good, poison = 60, 6
			var goods, poisons []<-chan error
			for i := range good + poison {
				meta := eventstore.Metadata{Actor: "client"}
				if i%((good+poison)/poison) == 0 {
					meta.Actor = "poison"
				}
				out := make(chan error, 1)
				cmd := transfer(domain.PaymentID(fmt.Sprintf("p-%d", i)), "world", "b", 1)
				go func() {
					_, err := h.p.Execute(ctxFor(t), Request{Command: cmd, Meta: meta})
					out <- err
				}()
				if meta.Actor == "poison" {
					poisons = append(poisons, out)
				} else {
					goods = append(goods, out)
				}
			}
			decided := 0
			h.until("every request queued or decided", func() bool {
				for {
					select {
					case k := <-h.decided:
						decided += k
					default:
						return decided+len(h.p.queue) >= good+poison-1
					}
				}
			})
			close(stalls.stall)
			wantErr(t, "the stalled transfer", first, nil)
			for i, out := range goods {
				wantErr(t, fmt.Sprintf("good request %d", i), out, nil)
			}
			for i, out := range poisons {
				wantErr(t, fmt.Sprintf("poison request %d", i), out, eventstore.ErrInvalidAppend)
			}
			if got := h.posted(h.p, "b"); got != int64(len(goods)) {
				t.Fatalf("b: want %d (one per good request), got %d", len(goods), got)
			}
		})
	}
}

// until polls a condition that has no channel to wait on (the queue's length), and fails
// the test if it does not hold within the test's context.
func (h *harness) until(what string, cond func() bool) {
	h.t.Helper()
	ctx := ctxFor(h.t)
	for !cond() {
		select {
		case <-ctx.Done():
			h.t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}
