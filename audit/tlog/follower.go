package tlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/securepay/securepay/eventstore"
)

// DefaultFollowBatch is how many events the follower takes per step: a bound on its
// memory (the batch and the nodes it completes) and on the work between two sizes.
const DefaultFollowBatch = 1000

// Follower extends a Tree with the events of the log, tailing it from the tree's size
// like a projector tails it from its checkpoint. It reads only the chain links (position,
// previous hash, hash) and checks their linkage from the tree's last leaf on: a log
// rewritten under the tree (the next event's previous hash is not the tree's last leaf)
// stops it with a *eventstore.ChainBreak, so the signer never signs a tree over a log that
// contradicts what it signed before. Recomputing each hash from its event is left to
// `audit verify` (see follow for why that is safe).
type Follower struct {
	Store  eventstore.Store
	Tree   *Tree
	Logger *slog.Logger
	// BatchSize bounds each step; default DefaultFollowBatch.
	BatchSize int
	// RetryWait is the first wait after a store error (doubled up to 30s); default 1s.
	RetryWait time.Duration
	// Appended is called after each step with the tree's new size (may be nil).
	Appended func(size uint64)
	// Coalesce is the least time between two steps that did not fill a batch; default
	// DefaultCoalesce. Live, the log grows by a few events per commit: waiting lets them
	// gather into one step (one write per tree level), which is what keeps the follower's
	// CPU off the writers' backs. The tree lags the log by at most about this much.
	Coalesce time.Duration
}

// DefaultCoalesce is the follower's default Coalesce: far below any checkpoint interval.
const DefaultCoalesce = 200 * time.Millisecond

// maxRetryWait bounds the wait between two attempts to read an unreachable store.
const maxRetryWait = 30 * time.Second

// Run follows the log until ctx ends (returning nil) or the chain breaks under the tree.
// Store errors are retried, with a wait that doubles up to maxRetryWait.
func (f *Follower) Run(ctx context.Context) error {
	log := f.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	wait := f.RetryWait
	if wait <= 0 {
		wait = time.Second
	}
	batch := f.BatchSize
	if batch <= 0 {
		batch = DefaultFollowBatch
	}
	batch = eventstore.ClampLimit(batch) // a read returns no more, and a short read means "live"
	for {
		err := f.follow(ctx, batch)
		var brk *eventstore.ChainBreak
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.As(err, &brk):
			log.Error("merkle tree stopped: the log contradicts the tree's last leaf; no checkpoint will be signed over it",
				"component", "tlog", "position", brk.Position, "reason", brk.Reason, "tree_size", f.Tree.Size())
			return fmt.Errorf("tlog follower: %w", err)
		}
		log.Warn("merkle tree follower: store error, retrying", "component", "tlog", "err", err, "wait", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, maxRetryWait)
	}
}

// follow extends the tree from its size on, reading only the chain links of the log
// (eventstore.ReadLinks: position, previous hash and hash — no payloads) and checking only
// their linkage: each position follows the last, and each event's stored previous hash is
// the hash of the event before it (the tree's last leaf at first). It does not recompute
// any event's hash from its contents — that cost a payload read, a decode and a SHA-256
// per event on the writers' cores — because recomputing here detects nothing that
// `audit verify` does not (docs/EVENTS.md §7):
//
//   - An event altered before the follower reads it, hashes left alone, enters the tree
//     with its original hash; verify (against the previous checkpoint, or any later one)
//     recomputes the hash from the fields and names the event.
//   - An event altered after the follower read it is a leaf of a signed tree: the
//     recomputed root differs from the signed one, and the tree as witness names it.
//   - An event altered before the follower reads it with every later hash recomputed is a
//     consistent chain nobody has witnessed yet; recomputing here would accept it too.
//   - A log rewritten under the tree so that its links no longer meet the tree's last leaf
//     stops the follower with a *eventstore.ChainBreak, so nothing is signed over it.
//
// Live, a step that did not fill a batch waits until Coalesce has passed since the last
// step before reading again, so the commits of that window are read and appended at once.
func (f *Follower) follow(ctx context.Context, batch int) error {
	size := f.Tree.Size()
	var last eventHash
	if size > 0 {
		l, err := f.Tree.Leaf(size - 1)
		if err != nil {
			return err
		}
		last = l
	}
	coalesce := f.Coalesce
	if coalesce <= 0 {
		coalesce = DefaultCoalesce
	}
	leaves := make([]eventHash, 0, batch)
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for {
		stepped := time.Now()
		links, err := eventstore.ReadLinks(ctx, f.Store, size, batch)
		if err != nil {
			return fmt.Errorf("read links after %d: %w", size, err)
		}
		leaves = leaves[:0]
		for i := range links {
			l := &links[i]
			switch {
			case l.Position != size+1:
				return &eventstore.ChainBreak{Position: size + 1, Reason: fmt.Sprintf("expected position %d, found %d (an event is missing)", size+1, l.Position)}
			case l.PrevHash != last:
				return &eventstore.ChainBreak{Position: l.Position, Reason: "stored previous-hash does not match the hash of the previous event"}
			}
			leaves = append(leaves, l.Hash)
			last = l.Hash
			size++
		}
		if len(leaves) > 0 {
			if err := f.Tree.Append(leaves); err != nil {
				return err
			}
			if f.Appended != nil {
				f.Appended(f.Tree.Size())
			}
		}
		if len(links) == batch {
			continue // history: read on at once
		}
		// The live edge: let the next commits gather before the next read.
		timer.Reset(max(coalesce-time.Since(stepped), time.Millisecond))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
	}
}
