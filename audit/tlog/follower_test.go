package tlog

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
)

// follow runs a Follower on store until the tree holds head events or it stops, and
// returns what Run returned.
func follow(t *testing.T, store eventstore.Store, tree *Tree, head uint64) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := &Follower{Store: store, Tree: tree, Coalesce: time.Millisecond, Appended: func(size uint64) {
		if size >= head {
			cancel()
		}
	}}
	return f.Run(ctx)
}

// The follower reads only chain links, so these pin down what that still catches, on
// both backends: a log whose links no longer meet the tree's last leaf stops it (nothing
// signed over it), and an event altered before the follower read it — which the follower
// no longer recomputes — is named by verify against the checkpoint before it.
func TestFollowerReadsLinksOnlyAndStillCatchesRewrites(t *testing.T) {
	for _, be := range []struct {
		name string
		open func(t *testing.T) rawLog
	}{{"embedded", newEmbeddedRaw}, {"postgres", newPGRaw}} {
		t.Run(be.name+"/rechained under the tree stops the follower", func(t *testing.T) {
			raw := be.open(t)
			l := newTestLogOn(t, raw.store())
			appendPayments(t, raw.store(), 0, 10)
			if err := follow(t, raw.store(), l.tree, 10); err != nil {
				t.Fatalf("follow 10 events: %v", err)
			}
			events, err := raw.store().ReadAll(context.Background(), 0, 10)
			if err != nil || len(events) != 10 {
				t.Fatalf("read: %d events, %v", len(events), err)
			}
			events[4].Metadata.Actor = "mallory"
			rechain(events[4:])
			raw.put(t, events[4:], 0)
			appendPayments(t, raw.store(), 10, 1) // chained on the rewritten event 10
			err = follow(t, raw.store(), l.tree, 11)
			var brk *eventstore.ChainBreak
			if !errors.As(err, &brk) || brk.Position != 11 || !strings.Contains(brk.Reason, "previous-hash") {
				t.Fatalf("follower over a log rewritten under its tree: got %v, want a chain break at position 11 naming the previous hash", err)
			}
			if l.tree.Size() != 10 {
				t.Fatalf("tree grew to %d over a broken chain, want it to stay at 10", l.tree.Size())
			}
		})
		t.Run(be.name+"/altered before the follower read it", func(t *testing.T) {
			raw := be.open(t)
			l := newTestLogOn(t, raw.store())
			appendPayments(t, raw.store(), 0, 10)
			if err := follow(t, raw.store(), l.tree, 10); err != nil {
				t.Fatalf("follow 10 events: %v", err)
			}
			cp := l.publish(t)
			appendPayments(t, raw.store(), 10, 10)
			events, err := raw.store().ReadAll(context.Background(), 13, 1)
			if err != nil || len(events) != 1 {
				t.Fatalf("read 14: %d events, %v", len(events), err)
			}
			events[0].Metadata.Actor = "mallory" // hashes left as stored
			raw.put(t, events, 0)
			if err := follow(t, raw.store(), l.tree, 20); err != nil {
				t.Fatalf("follower over an altered event with intact links: got %v, want it to follow (verify's work)", err)
			}
			l.publish(t)
			_, err = VerifySince(context.Background(), raw.store(), cp.Note, l.verifier, VerifyOptions{Witness: l.tree})
			var tam *Tampering
			if !errors.As(err, &tam) || tam.Position != 14 || !strings.Contains(tam.What, "the event was altered") {
				t.Fatalf("verify since the checkpoint at 10: got %v, want tampering at position 14, \"the event was altered\"", err)
			}
		})
	}
}
