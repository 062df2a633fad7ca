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
}

func (sub *subscriber) handle(_ context.Context, batch []eventstore.RecordedEvent) error {
	sub.mu.Lock()
	defer sub.mu.Unlock()
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
// the head of the log, and one started while 16 writers commit to many streams, each see
// every position after their start exactly once, in order, with per-stream versions
// counting up, and all end on the same hash.
func testSubscribeConcurrentWriters(t *testing.T, h Harness) {
	const (
		writers     = 16
		appendsEach = 25
		streams     = 24
	)
	ctx := testContext(t)
	s := fresh(t, h)
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
		sub := &subscriber{name: name, after: after, maxBatch: maxBatch, verifier: eventstore.NewChainVerifier(after, trusted), versions: map[string]uint64{}}
		sub.last.Store(after)
		subs = append(subs, sub)
		subWG.Go(func() { subErrs <- s.Subscribe(subCtx, after, maxBatch, sub.handle) })
	}
	start("from 0", 0, 100)
	start("from the middle", 30, 7)
	start("from the head", head(t, ctx, s), eventstore.MaxReadLimit)

	var wg sync.WaitGroup
	writeErrs := make(chan error, writers)
	var started atomic.Int32
	for w := range writers {
		wg.Go(func() {
			for i := range appendsEach {
				started.Add(1)
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
	// One more subscriber joins while the writers are busy.
	for started.Load() < writers*appendsEach/3 {
		time.Sleep(time.Millisecond)
	}
	start("joined mid-write", head(t, ctx, s), 50)
	wg.Wait()
	close(writeErrs)
	for err := range writeErrs {
		t.Fatal(err)
	}

	final := head(t, ctx, s)
	deadline := time.Now().Add(15 * time.Second)
	for _, sub := range subs {
		for sub.last.Load() < final && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
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
	s := fresh(t, h)
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

	// Idle at the head: cancel must end it.
	idleCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- s.Subscribe(idleCtx, 5, 10, func(context.Context, []eventstore.RecordedEvent) error { return nil })
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("idle Subscribe after cancel returned %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("idle Subscribe did not return within 5s of its context being cancelled")
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

// testSubscribeLive: an idle subscriber receives a new commit promptly.
func testSubscribeLive(t *testing.T, h Harness) {
	ctx := testContext(t)
	s := fresh(t, h)
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
	time.Sleep(20 * time.Millisecond) // let it go idle on an empty log
	for i := range 3 {
		id := fmt.Sprintf("live-%d", i)
		sent := time.Now()
		mustAppend(t, ctx, s, one("live-1", eventstore.Any(), ev(id)))
		select {
		case e := <-got:
			if e.ID != id || e.Position != uint64(i+1) {
				t.Fatalf("live subscriber got %s at %d, want %s at %d", e.ID, e.Position, id, i+1)
			}
			t.Logf("live delivery %d after %v", i, time.Since(sent))
		case <-time.After(5 * time.Second):
			t.Fatalf("live subscriber did not receive %s within 5s of its commit", id)
		}
	}
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe returned %v after cancel, want context.Canceled", err)
	}
}
