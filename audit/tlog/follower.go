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
// like a projector tails it from its checkpoint. It checks the hash chain from the tree's
// last leaf on: a log rewritten under the tree (the next event's previous hash is not
// the tree's last leaf) stops it with a *eventstore.ChainBreak, so the signer never signs
// a tree over a log that contradicts what it signed before.
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
	v := eventstore.NewChainVerifier(size, last)
	leaves := make([]eventHash, 0, batch)
	coalesce := f.Coalesce
	if coalesce <= 0 {
		coalesce = DefaultCoalesce
	}
	stepped := time.Now()
	return f.Store.Subscribe(ctx, size, batch, func(ctx context.Context, events []eventstore.RecordedEvent) error {
		if len(events) < batch {
			// A partial batch is the live edge: let more commits gather before the next.
			if wait := coalesce - time.Since(stepped); wait > 0 {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(wait):
				}
			}
		}
		stepped = time.Now()
		leaves = leaves[:0]
		for i := range events {
			if err := v.Check(&events[i]); err != nil {
				return err
			}
			leaves = append(leaves, events[i].Hash)
		}
		if err := f.Tree.Append(leaves); err != nil {
			return err
		}
		if f.Appended != nil {
			f.Appended(f.Tree.Size())
		}
		return nil
	})
}
