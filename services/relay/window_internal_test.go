package relay

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

func TestWindowAdmitsOnlyWithinSizeOfTheSavedCheckpoint(t *testing.T) {
	w := newWindow(100, 3)
	for pos := uint64(101); pos <= 103; pos++ {
		if err := w.admit(context.Background(), pos); err != nil {
			t.Fatalf("admit %d with checkpoint 100 and size 3: %v", pos, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := w.admit(ctx, 104); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("admit 104 beyond the window: %v, want it to wait until the deadline", err)
	}
	// Acknowledgements alone do not free the window: the saved checkpoint does.
	for _, pos := range []uint64{102, 101} {
		if err := w.ack(pos); err != nil {
			t.Fatal(err)
		}
	}
	if saved, acked := w.positions(); saved != 100 || acked != 102 {
		t.Fatalf("after acks 102, 101: saved %d acked %d, want 100 and 102", saved, acked)
	}
	admitted := make(chan error, 1)
	go func() { admitted <- w.admit(context.Background(), 105) }()
	select {
	case err := <-admitted:
		t.Fatalf("admit 105 returned %v before the checkpoint moved", err)
	case <-time.After(20 * time.Millisecond):
	}
	got, err := w.waitAcked(context.Background())
	if err != nil || got != 102 {
		t.Fatalf("waitAcked = %d, %v; want 102", got, err)
	}
	w.markSaved(102)
	if err := <-admitted; err != nil {
		t.Fatalf("admit 105 after saving 102: %v", err)
	}
}

func TestWindowRefusesAcknowledgementsItDidNotSend(t *testing.T) {
	w := newWindow(10, 4)
	for _, tc := range []struct {
		name string
		pos  uint64
	}{
		{"at the checkpoint", 10},
		{"beyond the window", 15},
	} {
		if err := w.ack(tc.pos); err == nil {
			t.Errorf("ack %s (%d): accepted, want an error", tc.name, tc.pos)
		}
	}
	if err := w.ack(12); err != nil {
		t.Fatal(err)
	}
	if err := w.ack(12); err == nil {
		t.Fatal("second ack of 12 accepted, want an error")
	}
}

// TestWindowOutOfOrderAcks: acknowledgements in any order move acked exactly to the end of
// the contiguous run, whatever the seed.
func TestWindowOutOfOrderAcks(t *testing.T) {
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 1))
		size := 1 + rng.IntN(64)
		w := newWindow(0, size)
		var next uint64 // highest sent
		pending := []uint64{}
		done := map[uint64]bool{}
		for step := 0; step < 2000; step++ {
			saved, _ := w.positions()
			if next < saved+uint64(size) && (len(pending) == 0 || rng.IntN(2) == 0) {
				next++
				pending = append(pending, next)
				continue
			}
			if len(pending) > 0 {
				i := rng.IntN(len(pending))
				pos := pending[i]
				pending = append(pending[:i], pending[i+1:]...)
				if err := w.ack(pos); err != nil {
					t.Fatalf("seed %d: ack %d: %v", seed, pos, err)
				}
				done[pos] = true
			}
			_, acked := w.positions()
			want := saved
			for done[want+1] {
				want++
			}
			if acked != want {
				t.Fatalf("seed %d: acked %d, want %d", seed, acked, want)
			}
			if rng.IntN(3) == 0 && acked > saved {
				w.markSaved(acked)
			}
		}
	}
}

// TestWindowWaitUnsaved: the saver's spacing ends early when enough is acknowledged and
// unsaved (the sender may be waiting on the window), and otherwise at its timeout with the
// acknowledged run so far.
func TestWindowWaitUnsaved(t *testing.T) {
	w := newWindow(0, 10)
	for pos := uint64(1); pos <= 2; pos++ {
		if err := w.ack(pos); err != nil {
			t.Fatal(err)
		}
	}
	// Two unsaved, five wanted: the timeout ends the wait, with what is acknowledged.
	if got, err := w.waitUnsaved(context.Background(), 5, 10*time.Millisecond); err != nil || got != 2 {
		t.Fatalf("waitUnsaved(5) with 2 unsaved: %d, %v; want 2 at the timeout", got, err)
	}
	// Five unsaved arrive while it waits: it returns then, long before its timeout.
	done := make(chan uint64, 1)
	go func() {
		got, _ := w.waitUnsaved(context.Background(), 5, time.Hour)
		done <- got
	}()
	for pos := uint64(3); pos <= 5; pos++ {
		if err := w.ack(pos); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case got := <-done:
		if got != 5 {
			t.Fatalf("waitUnsaved(5) returned %d, want 5", got)
		}
	case <-time.After(time.Minute):
		t.Fatal("waitUnsaved(5) still waiting with 5 acknowledged and unsaved")
	}
	// A cancelled context ends it with its error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := w.waitUnsaved(ctx, 50, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("waitUnsaved with a cancelled context: %v, want context.Canceled", err)
	}
}
