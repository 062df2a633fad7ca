package kurrentdb

import (
	"context"
	"testing"
	"testing/synctest"

	"github.com/securepay/securepay/eventstore"
)

// TestForwardLosesNoBroadcast: every commit signalled after Subscribe took its channel
// wakes the subscription, including one signalled before the forwarding goroutine has run
// at all and ones signalled back to back.
func TestForwardLosesNoBroadcast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		from, to := eventstore.NewSignal(), eventstore.NewSignal()
		ctx, cancel := context.WithCancel(t.Context())
		c := from.C()
		woken := to.C()
		done := make(chan struct{})
		go func() {
			forward(ctx, c, from, to)
			close(done)
		}()
		from.Broadcast() // the goroutine has not run yet
		synctest.Wait()
		for i := range 4 {
			select {
			case <-woken:
			default:
				t.Fatalf("broadcast %d of the store's signal did not reach the subscription", i+1)
			}
			woken = to.C()
			from.Broadcast()
			if i%2 == 0 {
				from.Broadcast() // a second commit before the goroutine ran again
			}
			synctest.Wait()
		}
		cancel()
		synctest.Wait()
		select {
		case <-done:
		default:
			t.Fatal("forward did not end with its context")
		}
	})
}
