package ledger

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// ExpirerActor is the actor recorded on the Expire commands the system issues.
const ExpirerActor = "system:authorisation-expirer"

// Expirer releases authorisations past their deadline by issuing domain.Expire commands:
// the hold is released by a command in the log, decided like any other, never by a timer
// that edits state.
//
// It follows the global log to learn which authorisations are open, so its memory is
// proportional to the open authorisations, not to the log. It starts from its checkpoint
// (expirercheckpoint.go), saved every CheckpointEvery in the processor's snapshot store, so
// a restart reads only the events since then; without a snapshot store, or without a
// checkpoint that checks out, it folds the log from position 0. Several expirers (one per
// service instance) are safe together: Expire is idempotent and refused once the payment
// is captured, voided or expired, and any of their checkpoints is a fold of the log.
type Expirer struct {
	Store     eventstore.Store
	Processor *Processor
	Clock     func() time.Time // default time.Now
	// Interval bounds how late an expiry can be; default 1s.
	Interval time.Duration
	Logger   *slog.Logger
	// CheckpointEvery is how often the checkpoint is saved when the log moved; default
	// 30s. It bounds what a restart re-reads, not correctness.
	CheckpointEvery time.Duration

	mu      sync.Mutex
	open    map[domain.PaymentID]*openAuth
	queue   deadlineHeap
	expired uint64
	pos     uint64          // the last log position folded into open
	hash    eventstore.Hash // its chain hash
	saved   uint64          // the position of the last checkpoint saved (or loaded)
	started uint64          // the position the log was followed from
	torn    bool            // a batch failed half-way: the fold is not of one position, never checkpoint it
}

// Position reports the last log position this expirer has folded.
func (x *Expirer) Position() uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.pos
}

// Checkpointed reports the position of the last checkpoint this expirer saved or loaded.
func (x *Expirer) Checkpointed() uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.saved
}

// StartedAfter reports the position the current or last Run followed the log from: the
// checkpoint's, or 0 when it folded the whole log.
func (x *Expirer) StartedAfter() uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.started
}

type openAuth struct {
	expiresAt  time.Time // the authorisation's deadline, as the log says (checkpointed)
	deadline   time.Time // the next try: expiresAt, then later while refused or failing
	authorised int64
	captured   int64
}

// Expired reports how many authorisations this expirer has released.
func (x *Expirer) Expired() uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.expired
}

// Run follows the log and expires authorisations until ctx ends.
func (x *Expirer) Run(ctx context.Context) error {
	if x.Store == nil || x.Processor == nil {
		return errors.New("ledger: expirer needs a store and a processor")
	}
	clock := x.Clock
	if clock == nil {
		clock = time.Now
	}
	interval := x.Interval
	if interval <= 0 {
		interval = time.Second
	}
	logger := x.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	checkpointEvery := x.CheckpointEvery
	if checkpointEvery <= 0 {
		checkpointEvery = 30 * time.Second
	}
	snaps, key := x.Processor.cfg.Snapshots, x.Processor.snapAuth.key

	start, hash, open := uint64(0), eventstore.Hash{}, map[domain.PaymentID]*openAuth{}
	if snaps != nil {
		pos, h, o, found, reason := loadCheckpoint(ctx, x.Store, snaps, key)
		switch {
		case found:
			start, hash, open = pos, h, o
			logger.Info("expirer: resuming from its checkpoint", "position", pos, "open_authorisations", len(o))
		case reason != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			logger.Warn("expirer: checkpoint ignored: folding the log from position 0", "reason", reason.Error())
		default:
			logger.Info("expirer: no checkpoint yet: folding the log from position 0")
		}
	}
	x.mu.Lock()
	x.open, x.queue = open, nil
	for id, a := range open {
		heap.Push(&x.queue, deadlineEntry{deadline: a.deadline, id: id})
	}
	x.pos, x.hash, x.saved, x.started, x.torn = start, hash, start, start, false
	x.mu.Unlock()
	if snaps != nil {
		// A last checkpoint on the way out, so a clean restart re-reads nothing.
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), snapshotSaveTimeout)
			defer cancel()
			x.checkpoint(sctx, snaps, key, logger)
		}()
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	followErr := make(chan error, 1)
	go func() { followErr <- x.Store.Subscribe(ctx, start, 1000, x.observe) }()

	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var saveTick <-chan time.Time
	if snaps != nil {
		t := time.NewTicker(checkpointEvery)
		defer t.Stop()
		saveTick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-followErr:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("expirer: follow the log: %w", err)
		case <-ticker.C:
			for _, id := range x.due(clock(), interval) {
				x.expire(ctx, id, logger)
			}
		case <-saveTick:
			x.checkpoint(ctx, snaps, key, logger)
		}
	}
}

// checkpoint saves the fold if the log moved since the last one. The fold is copied under
// the lock at a batch boundary, so it is exactly the fold of the log up to x.pos.
func (x *Expirer) checkpoint(ctx context.Context, snaps eventstore.SnapshotStore, key []byte, logger *slog.Logger) {
	x.mu.Lock()
	if x.torn || x.pos == 0 || x.pos <= x.saved {
		x.mu.Unlock()
		return
	}
	pos, hash, open := x.pos, x.hash, checkpointOf(x.open)
	x.mu.Unlock()
	snap, err := encodeCheckpoint(key, pos, hash, open)
	if err == nil {
		err = snaps.SaveSnapshot(ctx, snap)
	}
	if err != nil {
		// Only restart time is lost: the next start folds from an older checkpoint or from 0.
		logger.Warn("expirer: save checkpoint", "position", pos, "err", err)
		return
	}
	x.mu.Lock()
	x.saved = max(x.saved, pos)
	x.mu.Unlock()
}

func (x *Expirer) expire(ctx context.Context, id domain.PaymentID, logger *slog.Logger) {
	_, err := x.Processor.Execute(ctx, Request{
		Command: domain.Expire{PaymentID: id},
		Meta:    eventstore.Metadata{Actor: ExpirerActor, CausationID: "expiry:" + string(id), CorrelationID: string(id)},
	})
	switch {
	case err == nil:
		x.mu.Lock()
		x.expired++
		x.mu.Unlock()
	case errors.Is(err, domain.ErrPaymentState):
		// Captured or voided meanwhile, or our clock is ahead of the deciding clock: the
		// log will tell us which (the entry stays until a closing event removes it).
		logger.Debug("expire refused", "payment", id, "err", err)
	default:
		logger.Warn("expire failed; will retry", "payment", id, "err", err)
	}
}

// observe updates the open authorisations from a batch of the log.
func (x *Expirer) observe(_ context.Context, batch []eventstore.RecordedEvent) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	for i := range batch {
		rec := &batch[i]
		switch rec.Type {
		case domain.NamePaymentAuthorise, domain.NamePaymentCaptured, domain.NamePaymentVoided, domain.NamePaymentExpired:
		default:
			continue // nothing else concerns authorisations: skip decoding
		}
		ev, err := domain.DecodeEvent(rec.Type, rec.Data)
		if err != nil {
			// The fold now holds part of this batch: never checkpoint it.
			x.torn = true
			return fmt.Errorf("position %d: %w", rec.Position, err)
		}
		switch e := ev.(type) {
		case domain.PaymentAuthorised:
			x.open[e.PaymentID] = &openAuth{expiresAt: e.ExpiresAt, deadline: e.ExpiresAt, authorised: e.Amount.Minor}
			heap.Push(&x.queue, deadlineEntry{deadline: e.ExpiresAt, id: e.PaymentID})
		case domain.PaymentCaptured:
			if a := x.open[e.PaymentID]; a != nil {
				a.captured = e.CapturedTotal
				if a.captured >= a.authorised {
					delete(x.open, e.PaymentID)
				}
			}
		case domain.PaymentVoided:
			delete(x.open, e.PaymentID)
		case domain.PaymentExpired:
			delete(x.open, e.PaymentID)
		}
	}
	if n := len(batch); n > 0 {
		x.pos, x.hash = batch[n-1].Position, batch[n-1].Hash
	}
	return nil
}

// maxExpiriesPerTick bounds the work of one tick; the rest waits for the next.
const maxExpiriesPerTick = 1000

// due pops the open authorisations whose deadline has passed. Entries whose payment closed
// meanwhile are dropped; due ones go back in the queue retryAfter later, so a refused or
// failed expiry is tried again until the log shows the payment closed.
func (x *Expirer) due(now time.Time, retryAfter time.Duration) []domain.PaymentID {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []domain.PaymentID
	for len(x.queue) > 0 && len(out) < maxExpiriesPerTick {
		top := x.queue[0]
		if top.deadline.After(now) {
			break
		}
		heap.Pop(&x.queue)
		a := x.open[top.id]
		if a == nil || !a.deadline.Equal(top.deadline) {
			continue // closed, or superseded by a later retry entry
		}
		out = append(out, top.id)
		a.deadline = now.Add(retryAfter)
		heap.Push(&x.queue, deadlineEntry{deadline: a.deadline, id: top.id})
	}
	return out
}

type deadlineEntry struct {
	deadline time.Time
	id       domain.PaymentID
}

type deadlineHeap []deadlineEntry

func (h deadlineHeap) Len() int           { return len(h) }
func (h deadlineHeap) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }
func (h deadlineHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *deadlineHeap) Push(v any)        { *h = append(*h, v.(deadlineEntry)) }
func (h *deadlineHeap) Pop() any {
	old := *h
	v := old[len(old)-1]
	*h = old[:len(old)-1]
	return v
}
