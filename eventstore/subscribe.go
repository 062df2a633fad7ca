package eventstore

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Signal is a broadcast "something was committed" wake-up. Backends call Broadcast after a
// commit is durable and visible; subscribers wait on C(). It never blocks a writer.
type Signal struct {
	mu sync.Mutex
	ch chan struct{}
}

// NewSignal returns a ready Signal.
func NewSignal() *Signal { return &Signal{ch: make(chan struct{})} }

// C returns a channel closed at the next Broadcast.
func (s *Signal) C() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ch
}

// Broadcast wakes every waiter.
func (s *Signal) Broadcast() {
	s.mu.Lock()
	close(s.ch)
	s.ch = make(chan struct{})
	s.mu.Unlock()
}

// PollSubscription implements Store.Subscribe on top of a ReadAll function, a commit
// Signal, and a poll interval (the safety net for commits made by other processes that
// send no signal here).
//
// It only ever hands out a contiguous run of positions starting right after the last one
// delivered. If a read returns a gap (a backend whose positions become visible out of
// order), the events after the gap are held back and read again later, so a late commit is
// never skipped and nothing is reordered.
type PollSubscription struct {
	ReadAll      func(ctx context.Context, afterPosition uint64, limit int) ([]RecordedEvent, error)
	Signal       *Signal       // may be nil: then only polling
	PollInterval time.Duration // upper bound on the wait between reads when idle
}

// Run is Store.Subscribe.
func (p PollSubscription) Run(ctx context.Context, after uint64, maxBatch int, handle func(context.Context, []RecordedEvent) error) error {
	if maxBatch <= 0 || maxBatch > MaxReadLimit {
		maxBatch = MaxReadLimit
	}
	interval := p.PollInterval
	if interval <= 0 {
		interval = 50 * time.Millisecond
	}
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for {
		var wake <-chan struct{}
		if p.Signal != nil {
			wake = p.Signal.C() // taken before the read so a commit between read and wait is not missed
		}
		batch, err := p.ReadAll(ctx, after, maxBatch)
		if err != nil {
			return fmt.Errorf("subscribe after %d: %w", after, err)
		}
		n := 0
		for n < len(batch) && batch[n].Position == after+uint64(n)+1 {
			n++
		}
		if n > 0 {
			if err := handle(ctx, batch[:n]); err != nil {
				return err
			}
			after = batch[n-1].Position
			if n == maxBatch {
				continue // more history is likely waiting
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(interval)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		case <-timer.C:
		}
	}
}
