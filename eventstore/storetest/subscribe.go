package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
)

// subscriber checks, batch by batch, what one subscription delivers.
type subscriber struct {
	name     string
	after    uint64
	maxBatch int

	mu       sync.Mutex
	verifier *eventstore.ChainVerifier
	versions map[string]uint64 // last version seen per stream
	err      error             // the first violation
	last     atomic.Uint64     // last position delivered
	progress chan struct{}     // receives (without blocking the handler) after every batch
}

func newSubscriber(name string, after uint64, maxBatch int, trusted eventstore.Hash) *subscriber {
	sub := &subscriber{name: name, after: after, maxBatch: maxBatch, verifier: eventstore.NewChainVerifier(after, trusted),
		versions: map[string]uint64{}, progress: make(chan struct{}, 1)}
	sub.last.Store(after)
	return sub
}

// waitFor waits until the subscriber has delivered position, or ctx ends.
func (sub *subscriber) waitFor(ctx context.Context, position uint64) error {
	for sub.last.Load() < position {
		select {
		case <-sub.progress:
		case <-ctx.Done():
			return fmt.Errorf("subscriber %s reached position %d of %d: %w", sub.name, sub.last.Load(), position, ctx.Err())
		}
	}
	return nil
}

func (sub *subscriber) handle(_ context.Context, batch []eventstore.RecordedEvent) error {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	defer func() {
		select {
		case sub.progress <- struct{}{}:
		default: // a wake-up is already pending; the waiter re-reads last anyway
		}
	}()
	if sub.err != nil {
		return nil // keep consuming so the test's wait ends; the violation is reported
	}
	fail := func(format string, args ...any) error {
		sub.err = fmt.Errorf("subscriber %s: "+format, append([]any{sub.name}, args...)...)
		return nil
	}
	if len(batch) == 0 || len(batch) > sub.maxBatch {
		return fail("batch of %d events, want 1..%d", len(batch), sub.maxBatch)
	}
	for i := range batch {
		e := &batch[i]
		if want := sub.last.Load() + 1; e.Position != want {
			return fail("got position %d, want %d (every position exactly once, in order)", e.Position, want)
		}
		// A subscriber that started mid-log has not seen the streams' early versions, so
		// its first sighting of a stream may be any version; after that they count up.
		prev, seen := sub.versions[e.Stream]
		if (seen || sub.after == 0) && e.StreamVersion != prev+1 {
			return fail("position %d: %s version %d after version %d", e.Position, e.Stream, e.StreamVersion, prev)
		}
		sub.versions[e.Stream] = e.StreamVersion
		if err := sub.verifier.Check(e); err != nil {
			return fail("%v", err)
		}
		sub.last.Store(e.Position)
	}
	return nil
}

// testSubscribeConcurrentWriters: subscribers started from the beginning, the middle and
// the head of the log, and one that joins while 16 writers commit to many streams, each see
// every position after their start exactly once, in order, with per-stream versions
// counting up, and all end on the same hash. The store polls only every slowPollInterval,
// so every subscriber keeps up through wake-ups alone.
func testSubscribeConcurrentWriters(t *testing.T, h Harness) {
	const (
		writers     = 16
		appendsEach = 25
		joinAfter   = appendsEach / 3 // appends each writer makes before the late subscriber joins
		streams     = 24
	)
	ctx := testContext(t)
	s := freshSlowPolling(t, h)
	for i := range 30 {
		mustAppend(t, ctx, s, one(fmt.Sprintf("sub-%d", i%streams), eventstore.Any(), ev(fmt.Sprintf("pre-%d-1", i)), ev(fmt.Sprintf("pre-%d-2", i))))
	}
	subCtx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		subs    []*subscriber
		subErrs = make(chan error, 8)
		subWG   sync.WaitGroup
	)
	start := func(name string, after uint64, maxBatch int) {
		var trusted eventstore.Hash
		if after > 0 {
			page, err := s.ReadAll(ctx, after-1, 1)
			if err != nil || len(page) != 1 {
				t.Fatalf("read position %d to start subscriber %s: %d events, %v", after, name, len(page), err)
			}
			trusted = page[0].Hash
		}
		sub := newSubscriber(name, after, maxBatch, trusted)
		subs = append(subs, sub)
		subWG.Go(func() { subErrs <- s.Subscribe(subCtx, after, maxBatch, sub.handle) })
	}
	start("from 0", 0, 100)
	start("from the middle", 30, 7)
	start("from the head", head(t, ctx, s), eventstore.MaxReadLimit)

	// The writers stop at a gate after joinAfter appends each, until the late subscriber
	// has been started: so it joins with two thirds of the appends still to come, however
	// fast the store is, and its catch-up races them.
	var (
		wg        sync.WaitGroup
		atGate    sync.WaitGroup
		gate      = make(chan struct{})
		writeErrs = make(chan error, writers)
	)
	atGate.Add(writers)
	for w := range writers {
		wg.Go(func() {
			passed := false
			defer func() {
				if !passed {
					atGate.Done() // failed before the gate: do not hold the others
				}
			}()
			for i := range appendsEach {
				if i == joinAfter {
					passed = true
					atGate.Done()
					select {
					case <-gate:
					case <-ctx.Done():
						writeErrs <- fmt.Errorf("writer %d at the gate: %w", w, ctx.Err())
						return
					}
				}
				var appends []eventstore.StreamAppend
				for k := range 1 + (w*7+i)%3 {
					stream := fmt.Sprintf("sub-%d", (w*5+i*3+k)%streams)
					appends = append(appends, one(stream, eventstore.Any(), ev(fmt.Sprintf("sub-w%d-a%d-s%d", w, i, k))))
				}
				if _, err := s.Append(ctx, appends...); err != nil {
					writeErrs <- fmt.Errorf("writer %d append %d: %w", w, i, err)
					return
				}
			}
		})
	}
	atGate.Wait()
	joinedAt := head(t, ctx, s)
	start("joined mid-write", joinedAt, 50)
	close(gate)
	wg.Wait()
	close(writeErrs)
	for err := range writeErrs {
		t.Fatal(err)
	}

	final := head(t, ctx, s)
	if final <= joinedAt {
		t.Fatalf("nothing was appended after the late subscriber joined at %d", joinedAt)
	}
	waitCtx, cancelWait := context.WithTimeout(ctx, wakeDeadline)
	defer cancelWait()
	for _, sub := range subs {
		if err := sub.waitFor(waitCtx, final); err != nil {
			t.Errorf("%v: with polling every %v, only wake-ups could deliver within %v", err, slowPollInterval, wakeDeadline)
		}
	}
	stop()
	subWG.Wait()
	close(subErrs)
	for err := range subErrs {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Subscribe ended with %v, want context.Canceled", err)
		}
	}
	log := readAll(t, ctx, s, 1000)
	wantHash := log[len(log)-1].Hash
	for _, sub := range subs {
		sub.mu.Lock()
		if sub.err != nil {
			t.Error(sub.err)
		}
		if got := sub.last.Load(); got != final {
			t.Errorf("subscriber %s reached position %d, the head is %d", sub.name, got, final)
		}
		if _, h := sub.verifier.Verified(); h != wantHash {
			t.Errorf("subscriber %s ends on hash %s, the log on %s", sub.name, h, wantHash)
		}
		sub.mu.Unlock()
	}
}

// testSubscribeEnds: Subscribe returns the handler's error as is, and ctx.Err() when its
// context ends, whether it is catching up or idle.
func testSubscribeEnds(t *testing.T, h Harness) {
	ctx := testContext(t)
	s := freshSlowPolling(t, h)
	for i := range 5 {
		mustAppend(t, ctx, s, one("end-1", eventstore.Any(), ev(fmt.Sprintf("end-%d", i))))
	}

	errStop := errors.New("handler says stop")
	calls := 0
	err := s.Subscribe(ctx, 0, 2, func(_ context.Context, batch []eventstore.RecordedEvent) error {
		calls++
		return errStop
	})
	if err != errStop || calls != 1 {
		t.Fatalf("Subscribe with a failing handler returned %v after %d calls, want the handler's error as is after 1", err, calls)
	}

	// Idle at the head: cancel must end it. It starts one event short of the head, so
	// that delivering that event shows it has read the log; it then waits for a wake-up
	// that never comes or a poll a minute away, and only its context can end the wait in
	// time.
	idleCtx, cancel := context.WithCancel(ctx)
	delivered := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- s.Subscribe(idleCtx, 4, 10, func(context.Context, []eventstore.RecordedEvent) error {
			select {
			case delivered <- struct{}{}:
			default:
			}
			return nil
		})
	}()
	select {
	case <-delivered:
	case err := <-done:
		t.Fatalf("Subscribe from position 4 ended with %v before delivering position 5", err)
	case <-time.After(wakeDeadline):
		t.Fatalf("Subscribe from position 4 did not deliver position 5 within %v", wakeDeadline)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("idle Subscribe after cancel returned %v, want context.Canceled", err)
		}
	case <-time.After(wakeDeadline):
		t.Fatalf("idle Subscribe did not return within %v of its context being cancelled", wakeDeadline)
	}

	// A deadline while the handler works: the deadline's error comes back.
	dlCtx, dlCancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer dlCancel()
	err = s.Subscribe(dlCtx, 0, 1, func(ctx context.Context, _ []eventstore.RecordedEvent) error {
		<-ctx.Done()
		return nil
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Subscribe past its deadline returned %v, want context.DeadlineExceeded", err)
	}
}

// testSubscribeLive: an idle subscriber receives a new commit through the store's wake-up.
// The store polls only every slowPollInterval and each delivery must come within
// wakeDeadline, so a store that forgets to wake its subscribers fails here.
func testSubscribeLive(t *testing.T, h Harness) {
	ctx := testContext(t)
	s := freshSlowPolling(t, h)
	subCtx, stop := context.WithCancel(ctx)
	defer stop()
	got := make(chan eventstore.RecordedEvent, 10)
	done := make(chan error, 1)
	go func() {
		done <- s.Subscribe(subCtx, 0, 10, func(_ context.Context, batch []eventstore.RecordedEvent) error {
			for _, e := range batch {
				got <- e
			}
			return nil
		})
	}()
	receive := func(id string, position uint64, sent time.Time) {
		t.Helper()
		select {
		case e := <-got:
			if e.ID != id || e.Position != position {
				t.Fatalf("live subscriber got %s at %d, want %s at %d", e.ID, e.Position, id, position)
			}
			t.Logf("%s delivered %v after its append returned", id, time.Since(sent))
		case err := <-done:
			t.Fatalf("Subscribe ended with %v before delivering %s", err, id)
		case <-time.After(wakeDeadline):
			t.Fatalf("live subscriber did not receive %s within %v of its commit; the store polls every %v, so its wake-up is broken", id, wakeDeadline, slowPollInterval)
		}
	}
	// The first event may be found by the subscription's first read, if that read comes
	// after the append. Its delivery shows the subscription has read the log; from then on
	// it is idle, and each later event can reach it in time only by a wake-up.
	mustAppend(t, ctx, s, one("live-1", eventstore.Any(), ev("live-0")))
	receive("live-0", 1, time.Now())
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("live-%d", i)
		mustAppend(t, ctx, s, one("live-1", eventstore.Any(), ev(id)))
		receive(id, uint64(i+1), time.Now())
	}
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe returned %v after cancel, want context.Canceled", err)
	}
}
