package projections_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/internal/projtest"
	"github.com/securepay/securepay/projections"
)

// Read-your-writes after a view lost commits the runner saw succeed (what a PostgreSQL crash
// does to the asynchronously committed views): the runner must not answer Wait from its
// count in memory until it has re-read the checkpoint from the view. (That a read which
// waited for a position reflects it is tested with the PostgreSQL views, in projections/pg.)

// lossyView is a projector over a view in memory that can lose its last commits. Its
// Checkpoint can be held at a gate, so a test can look at Wait while the runner re-reads.
type lossyView struct {
	recheck chan struct{}
	entered chan struct{} // Checkpoint sends here when it stops at the gate

	mu       sync.Mutex
	durable  uint64
	applied  int           // events applied, re-applies included
	gate     chan struct{} // when set, Checkpoint waits until it is closed
	failNext error
}

func newLossyView() *lossyView {
	return &lossyView{recheck: make(chan struct{}, 1), entered: make(chan struct{}, 1)}
}

func (p *lossyView) Name() string             { return "lossy.v1" }
func (p *lossyView) Recheck() <-chan struct{} { return p.recheck }
func (p *lossyView) set(f func(p *lossyView)) { p.mu.Lock(); f(p); p.mu.Unlock() }
func (p *lossyView) state() (durable uint64, applied int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.durable, p.applied
}

func (p *lossyView) Checkpoint(ctx context.Context) (uint64, error) {
	p.mu.Lock()
	gate := p.gate
	p.mu.Unlock()
	if gate != nil {
		select {
		case p.entered <- struct{}{}:
		default:
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	durable, _ := p.state()
	return durable, nil
}

func (p *lossyView) Apply(ctx context.Context, batch []eventstore.RecordedEvent) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.failNext; err != nil {
		p.failNext = nil
		return err
	}
	if batch[0].Position != p.durable+1 {
		return projections.ErrCheckpointMoved
	}
	p.durable = batch[len(batch)-1].Position
	p.applied += len(batch)
	return nil
}

// waitTimesOut asserts that Wait for position does not answer within a short bound: the
// runner is held inside its checkpoint read, so nothing can confirm the position meanwhile.
func waitTimesOut(t *testing.T, r *projections.Runner, name string, position uint64, why string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := r.Wait(ctx, name, position); !errors.Is(err, projections.ErrNotCaughtUp) {
		t.Fatalf("Wait(%d) %s: err = %v; want ErrNotCaughtUp until the checkpoint is read from the view again", position, why, err)
	}
}

func TestRunnerRereadsItsCheckpointWhenAReaderFindsTheViewBehind(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	l := projtest.NewLedger(21, "rc-")
	ctx := projtest.Context(t, time.Minute)
	last, err := projtest.NewWriter(store, l).Write(ctx, 200, 10, 4)
	if err != nil {
		t.Fatalf("write log: %v", err)
	}
	p := newLossyView()
	r := projtest.StartRunner(t, store, []projections.Projector{p})
	projtest.WaitAll(t, r, last, p.Name())

	// Given the view lost its last commits, which the runner saw succeed (and no new event
	// comes that would make Apply notice).
	lostTo := last / 2
	gate := make(chan struct{})
	p.set(func(p *lossyView) { p.durable, p.applied, p.gate = lostTo, 0, gate })
	if err := r.Wait(ctx, p.Name(), last); err != nil {
		t.Fatalf("Wait(%d) before anyone noticed the loss: %v", last, err) // what readers must not trust
	}
	// When a reader finds the view behind and asks for a recheck,
	p.recheck <- struct{}{}
	select {
	case <-p.entered:
	case <-ctx.Done():
		t.Fatalf("the runner did not re-read its checkpoint after a recheck request: %v", ctx.Err())
	}
	// then Wait does not answer from the old count while the runner re-reads,
	waitTimesOut(t, r, p.Name(), last, "while the runner re-reads after a recheck request")
	// and answers once the lost events are applied again, with no new event in the log.
	close(gate)
	if err := r.Wait(ctx, p.Name(), last); err != nil {
		t.Fatalf("Wait(%d) after the re-read: %v", last, err)
	}
	if durable, applied := p.state(); durable != last || applied != int(last-lostTo) {
		t.Fatalf("after the recheck the view is at %d having applied %d events; want %d and the %d lost ones", durable, applied, last, last-lostTo)
	}
}

func TestRunnerRereadsItsCheckpointAfterApplyFails(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	l := projtest.NewLedger(22, "af-")
	w := projtest.NewWriter(store, l)
	ctx := projtest.Context(t, time.Minute)
	last, err := w.Write(ctx, 200, 10, 4)
	if err != nil {
		t.Fatalf("write log: %v", err)
	}
	p := newLossyView()
	r := projtest.StartRunner(t, store, []projections.Projector{p})
	projtest.WaitAll(t, r, last, p.Name())

	// Given a crash of the view's database: the last commits are gone and the next Apply
	// fails on the broken connection.
	lostTo := last - 50
	gate := make(chan struct{})
	p.set(func(p *lossyView) {
		p.durable, p.applied, p.gate, p.failNext = lostTo, 0, gate, errors.New("write: connection reset by peer")
	})
	next, err := w.Write(ctx, 1, 10, 1)
	if err != nil {
		t.Fatalf("write log: %v", err)
	}
	select {
	case <-p.entered:
	case <-ctx.Done():
		t.Fatalf("the runner did not re-read its checkpoint after Apply failed: %v", ctx.Err())
	}
	// Then no wait is answered from the count kept before the failure,
	waitTimesOut(t, r, p.Name(), last, "after Apply failed")
	// until the checkpoint is read again and the lost events re-applied.
	close(gate)
	if err := r.Wait(ctx, p.Name(), next); err != nil {
		t.Fatalf("Wait(%d) after the re-read: %v", next, err)
	}
	if durable, applied := p.state(); durable != next || applied != int(next-lostTo) {
		t.Fatalf("after the failure the view is at %d having applied %d events; want %d and %d", durable, applied, next, next-lostTo)
	}
}
