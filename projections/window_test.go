package projections_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/internal/projtest"
	"github.com/securepay/securepay/projections"
)

// The gathering window (RunnerConfig.Window): a projector holds a small batch to commit
// more events in one transaction, but never past the window, never past WindowEvents or
// MaxBatch, and never while a Wait needs what it holds. These tests use windows far longer
// than any test runs where the window must not be what ends a batch, so that what they
// see cannot come from the timer, however loaded the machine.

// batchLog is a projector over a view in memory that records every batch it applies.
type batchLog struct {
	mu      sync.Mutex
	durable uint64
	batches [][2]uint64 // first and last position of each Apply
}

func (p *batchLog) Name() string { return "batchlog.v1" }

func (p *batchLog) Checkpoint(context.Context) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.durable, nil
}

func (p *batchLog) Apply(_ context.Context, batch []eventstore.RecordedEvent) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, e := range batch {
		if e.Position != p.durable+uint64(i)+1 {
			return projections.ErrCheckpointMoved
		}
	}
	p.durable = batch[len(batch)-1].Position
	p.batches = append(p.batches, [2]uint64{batch[0].Position, p.durable})
	return nil
}

func (p *batchLog) applied() [][2]uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][2]uint64(nil), p.batches...)
}

// reach polls the runner's checkpoint (Checkpoint registers no waiter, so it does not cut a
// window short) until it is at position.
func reach(t *testing.T, r *projections.Runner, name string, position uint64) {
	t.Helper()
	ctx := projtest.Context(t, time.Minute)
	for {
		cp, _ := r.Checkpoint(name)
		if cp >= position {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s stayed at %d; want it at %d without any waiter", name, cp, position)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func withWindow(window time.Duration, events, maxBatch int) func(*projections.RunnerConfig) {
	return func(c *projections.RunnerConfig) { c.Window, c.WindowEvents, c.MaxBatch = window, events, maxBatch }
}

func TestWindowHoldsASmallBatchUntilAWaiterNeedsIt(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	w := projtest.NewWriter(store, projtest.NewLedger(31, "wh-"))
	ctx := projtest.Context(t, time.Minute)
	p := &batchLog{}
	r := projtest.StartRunner(t, store, []projections.Projector{p}, withWindow(time.Minute, 1000, 0))

	first, err := w.Write(ctx, 1, 5, 1)
	if err != nil {
		t.Fatalf("write log: %v", err)
	}
	// Given a small batch held in a window of a minute,
	time.Sleep(50 * time.Millisecond) // time for the runner to take it (either way it must not apply it)
	if cp, _ := r.Checkpoint(p.Name()); cp != 0 || len(p.applied()) != 0 {
		t.Fatalf("with a window of a minute and one small batch, checkpoint %d and batches %v; want nothing applied yet", cp, p.applied())
	}
	// when more events come and a reader waits for the last of them,
	last, err := w.Write(ctx, 1, 5, 1)
	if err != nil {
		t.Fatalf("write log: %v", err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second) // half the window
	defer cancel()
	if err := r.Wait(waitCtx, p.Name(), last); err != nil {
		t.Fatalf("Wait(%d) with a window of a minute: %v; want it answered once the events are in hand", last, err)
	}
	// then the window is cut short, and everything it gathered is one transaction.
	if got := p.applied(); len(got) != 1 || got[0] != [2]uint64{1, last} {
		t.Fatalf("batches applied %v; want one, 1..%d (the first write ended at %d)", got, last, first)
	}
}

func TestWindowAppliesABatchOfWindowEventsAtOnce(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	w := projtest.NewWriter(store, projtest.NewLedger(32, "ws-"))
	ctx := projtest.Context(t, time.Minute)
	last, err := w.Write(ctx, 40, 10, 40)
	if err != nil {
		t.Fatalf("write log: %v", err)
	}
	if last < 10 {
		t.Fatalf("the log has %d events; the test needs at least WindowEvents (10)", last)
	}
	p := &batchLog{}
	r := projtest.StartRunner(t, store, []projections.Projector{p}, withWindow(time.Minute, 10, 0))
	// No waiter and a window of a minute: only the size can end the batch.
	reach(t, r, p.Name(), last)
	if got := p.applied(); len(got) != 1 || got[0] != [2]uint64{1, last} {
		t.Fatalf("batches applied %v; want the whole log (1..%d) in one, applied at once for its size", got, last)
	}
}

func TestWindowEndsAfterItsTime(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	w := projtest.NewWriter(store, projtest.NewLedger(33, "wt-"))
	ctx := projtest.Context(t, time.Minute)
	p := &batchLog{}
	r := projtest.StartRunner(t, store, []projections.Projector{p}, withWindow(20*time.Millisecond, 1000, 0))
	var last uint64
	for range 3 {
		var err error
		if last, err = w.Write(ctx, 1, 5, 1); err != nil {
			t.Fatalf("write log: %v", err)
		}
	}
	// Small batches, nobody waiting: the window alone brings the view to the head.
	reach(t, r, p.Name(), last)
}

// A waiter that makes the window take batch after batch never makes one Apply bigger than
// MaxBatch: what does not fit starts the next batch.
func TestWindowNeverExceedsMaxBatch(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	w := projtest.NewWriter(store, projtest.NewLedger(34, "wm-"))
	ctx := projtest.Context(t, time.Minute)
	const maxBatch = 7
	p := &batchLog{}
	r := projtest.StartRunner(t, store, []projections.Projector{p}, withWindow(time.Minute, maxBatch, maxBatch))
	// One command per append while the runner holds a window: small batches are held and
	// the rest waits in the log, so the waiter below makes the window take batches that
	// overflow it.
	var last uint64
	for range 30 {
		var err error
		if last, err = w.Write(ctx, 1, 10, 1); err != nil {
			t.Fatalf("write log: %v", err)
		}
	}
	if err := r.Wait(ctx, p.Name(), last); err != nil {
		t.Fatalf("Wait(%d): %v", last, err)
	}
	var next uint64 = 1
	var sizes []string
	for _, b := range p.applied() {
		if b[0] != next || b[1]-b[0]+1 > maxBatch {
			t.Fatalf("batch %d..%d after %d: want consecutive batches of at most %d events", b[0], b[1], next-1, maxBatch)
		}
		next = b[1] + 1
		sizes = append(sizes, strings.Repeat("|", int(b[1]-b[0]+1)))
	}
	if next != last+1 {
		t.Fatalf("batches end at %d; want %d", next-1, last)
	}
	t.Logf("batch sizes: %v", sizes)
}

func TestWindowOutOfRangeIsRefused(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	for _, c := range []struct {
		name   string
		window time.Duration
		events int
	}{
		{"negative window", -time.Millisecond, 0},
		{"window over a minute", time.Minute + time.Millisecond, 0},
		{"negative WindowEvents", time.Millisecond, -1},
		{"WindowEvents over the read limit", time.Millisecond, eventstore.MaxReadLimit + 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := projections.NewRunner(projections.RunnerConfig{Store: store, Projectors: []projections.Projector{&batchLog{}}, Window: c.window, WindowEvents: c.events})
			if err == nil {
				t.Fatalf("NewRunner with Window %v, WindowEvents %d: no error; want one naming the bound", c.window, c.events)
			}
		})
	}
}
