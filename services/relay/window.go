package relay

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/securepay/securepay/eventstore"
)

// window tracks the events handed to the producer and not yet covered by a saved
// checkpoint. Its invariants:
//
//  1. saved <= acked: the checkpoint store never holds a position whose event, or any
//     event before it, the broker has not acknowledged.
//  2. Every position sent is in (saved, saved+size]: an event is only handed to the
//     producer once the checkpoint is within size of it, so at most size events are in
//     memory (here and in the producer's buffers), whatever the broker does, and a crash
//     re-publishes at most size events.
//  3. acked is the end of the contiguous run of acknowledged positions after saved; the
//     acknowledgements after a gap wait in ring, one slot per position of the window
//     (positions in the window are distinct modulo size).
type window struct {
	size   uint64
	signal *eventstore.Signal // broadcast when acked or saved moves

	mu    sync.Mutex
	saved uint64
	acked uint64
	ring  []bool
}

func newWindow(checkpoint uint64, size int) *window {
	return &window{size: uint64(size), signal: eventstore.NewSignal(), saved: checkpoint, acked: checkpoint, ring: make([]bool, size)}
}

// admit blocks until position may be sent (invariant 2) or ctx ends.
func (w *window) admit(ctx context.Context, position uint64) error {
	for {
		wake := w.signal.C()
		w.mu.Lock()
		ok := position <= w.saved+w.size
		w.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		}
	}
}

// ack records the broker's acknowledgement of position. An acknowledgement outside the
// window, or a second one for a position, is a bug in the relay or the producer: it is
// reported, and the caller stops rather than trust a checkpoint built on it.
func (w *window) ack(position uint64) error {
	w.mu.Lock()
	if position <= w.acked || position > w.saved+w.size {
		acked, saved := w.acked, w.saved
		w.mu.Unlock()
		return fmt.Errorf("relay: acknowledgement of position %d outside the window (acked %d, saved %d, size %d)", position, acked, saved, w.size)
	}
	slot := position % w.size
	if w.ring[slot] {
		w.mu.Unlock()
		return fmt.Errorf("relay: position %d acknowledged twice", position)
	}
	w.ring[slot] = true
	moved := false
	for next := w.acked + 1; w.ring[next%w.size]; next++ {
		w.ring[next%w.size] = false
		w.acked = next
		moved = true
	}
	w.mu.Unlock()
	if moved {
		w.signal.Broadcast()
	}
	return nil
}

// waitAcked blocks until the acknowledged run ends after saved, and returns its end; or
// returns ctx's error.
func (w *window) waitAcked(ctx context.Context) (uint64, error) {
	for {
		wake := w.signal.C()
		w.mu.Lock()
		acked, saved := w.acked, w.saved
		w.mu.Unlock()
		if acked > saved {
			return acked, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-wake:
		}
	}
}

// waitUnsaved blocks until at least n acknowledged positions are unsaved or timeout passes,
// and returns the end of the acknowledged run; or returns ctx's error.
func (w *window) waitUnsaved(ctx context.Context, n uint64, timeout time.Duration) (uint64, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		wake := w.signal.C()
		w.mu.Lock()
		acked, saved := w.acked, w.saved
		w.mu.Unlock()
		if acked-saved >= n {
			return acked, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-timer.C:
			_, acked := w.positions()
			return acked, nil
		case <-wake:
		}
	}
}

// markSaved records that the checkpoint store holds position, which frees the window up to
// position+size.
func (w *window) markSaved(position uint64) {
	w.mu.Lock()
	if position > w.acked || position < w.saved {
		w.mu.Unlock()
		panic(fmt.Sprintf("relay: saved checkpoint %d outside (saved %d, acked %d]", position, w.saved, w.acked))
	}
	w.saved = position
	w.mu.Unlock()
	w.signal.Broadcast()
}

// positions returns the saved checkpoint and the end of the acknowledged run.
func (w *window) positions() (saved, acked uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.saved, w.acked
}
