package pg

import (
	"context"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
)

// Rebuild without downtime.
//
//  1. Shadow tables (balances_shadow, history_shadow / payments_shadow) are created like the
//     live ones, with their own checkpoint row "NAME#shadow". If they exist already, a
//     previous rebuild was killed: it resumes from the shadow checkpoint.
//  2. The log is folded into the shadow tables from the shadow checkpoint, batch after
//     batch, each batch one transaction with its checkpoint (the same code as the live
//     projector, on other tables). The live view keeps serving and keeps being updated.
//  3. Once the shadow is within SwapLag events of the head, one transaction locks the live
//     checkpoint row (the live projector's next batch waits on it), applies the last events
//     to the shadow up to the head, renames live -> old and shadow -> live, drops old, sets
//     the live checkpoint to the shadow's and removes the shadow checkpoint. Readers see
//     either the old view or the new one, never a mix or an empty table. The live projector,
//     unblocked, finds its checkpoint moved and resubscribes from the new one.

var _ projections.Rebuilder = (*Views)(nil)

// Rebuild rebuilds projector name's view from the log in store; see the comment above. It
// uses two pool connections at once (the rebuild lock and the batch transactions).
func (v *Views) Rebuild(ctx context.Context, store eventstore.Store, name string, opts projections.RebuildOptions) (projections.RebuildResult, error) {
	res := projections.RebuildResult{Name: name}
	started := time.Now()
	if opts.BatchSize <= 0 || opts.BatchSize > eventstore.MaxReadLimit {
		opts.BatchSize = 5000
	}
	if opts.SwapLag == 0 {
		opts.SwapLag = 5000
	}
	shadowT := shadowTables(v.schema)
	sp, err := v.projectorOn(name, shadowT)
	if err != nil {
		return res, err
	}
	shadow := sp.(interface {
		projections.Projector
		base() *pgBase
		writer() batchWriter
	})
	// One rebuild per projector at a time, across processes: a session advisory lock, held
	// on its own connection for the whole rebuild and freed by PostgreSQL if we are killed.
	lockConn, err := v.pool.Acquire(ctx)
	if err != nil {
		return res, fmt.Errorf("rebuild %s: %w", name, err)
	}
	defer lockConn.Release()
	h := fnv.New64a()
	h.Write([]byte("securepay/projections/rebuild/" + v.schema + "/" + name))
	lockKey := int64(h.Sum64())
	var locked bool
	if err := lockConn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, lockKey).Scan(&locked); err != nil {
		return res, fmt.Errorf("rebuild %s: lock: %w", name, err)
	}
	if !locked {
		return res, fmt.Errorf("rebuild %s: another rebuild of it is running", name)
	}
	defer func() {
		_, _ = lockConn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, lockKey)
	}()
	if err := v.prepareShadow(ctx, name); err != nil {
		return res, err
	}
	cp, err := shadow.Checkpoint(ctx)
	if err != nil {
		return res, fmt.Errorf("rebuild %s: %w", name, err)
	}
	res.ResumedFrom = cp
	prog := opts.Progress
	if prog == nil {
		prog = noProgress{}
	}
	prog.Begin(cp)
	// The log is read one page ahead of the apply (a reader goroutine, a channel of one), so
	// reading and writing overlap; memory stays at two pages.
	readCtx, stopReading := context.WithCancel(ctx)
	defer stopReading()
	pages := make(chan rebuildPage, 1)
	go readAhead(readCtx, store, cp, opts, pages)
	for p := range pages {
		if p.err != nil {
			return res, fmt.Errorf("rebuild %s: %w", name, p.err)
		}
		if p.events == nil { // the reader is done: near the head, or at StopAfter
			if opts.StopAfter > 0 && cp >= opts.StopAfter {
				prog.Finish(cp, p.head)
				return res, fmt.Errorf("rebuild %s at %d: %w", name, cp, projections.ErrRebuildStopped)
			}
			break
		}
		if err := shadow.Apply(ctx, p.events); err != nil {
			return res, fmt.Errorf("rebuild %s: %w", name, err)
		}
		cp = p.events[len(p.events)-1].Position
		res.Events += uint64(len(p.events))
		prog.Update(cp, p.head)
	}
	final, n, err := v.swap(ctx, store, name, shadow.base(), shadow.writer(), opts.BatchSize)
	if err != nil {
		return res, err
	}
	res.Events += n
	res.Position = final
	res.Elapsed = time.Since(started)
	prog.Finish(final, final)
	return res, nil
}

// noProgress reports nothing, for a rebuild nobody watches.
type noProgress struct{}

func (noProgress) Begin(uint64)          {}
func (noProgress) Update(uint64, uint64) {}
func (noProgress) Finish(uint64, uint64) {}

func (p *pgAccounts) base() *pgBase       { return &p.pgBase }
func (p *pgPayments) base() *pgBase       { return &p.pgBase }
func (p *pgAccounts) writer() batchWriter { return p.write }
func (p *pgPayments) writer() batchWriter { return p.write }

// prepareShadow creates the shadow tables and checkpoint unless a killed rebuild left them.
func (v *Views) prepareShadow(ctx context.Context, name string) error {
	live, shadow := v.live, shadowTables(v.schema)
	liveNames, shadowNames := tablesOf(name, live), tablesOf(name, shadow)
	return pgx.BeginFunc(ctx, v.pool, func(tx pgx.Tx) error {
		complete := true
		for _, t := range shadowNames {
			var exists bool
			if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, shadow.q(t)).Scan(&exists); err != nil {
				return fmt.Errorf("rebuild %s: look for %s: %w", name, t, err)
			}
			complete = complete && exists
		}
		var cpExists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+live.q("checkpoints")+` WHERE name = $1)`, name+shadowSuffix).Scan(&cpExists); err != nil {
			return fmt.Errorf("rebuild %s: look for shadow checkpoint: %w", name, err)
		}
		if complete && cpExists {
			return nil // resume
		}
		// Start over: whatever half-state exists is dropped.
		for i, t := range shadowNames {
			if _, err := tx.Exec(ctx, `DROP TABLE IF EXISTS `+shadow.q(t)); err != nil {
				return fmt.Errorf("rebuild %s: drop %s: %w", name, t, err)
			}
			if _, err := tx.Exec(ctx, `CREATE TABLE `+shadow.q(t)+` (LIKE `+live.q(liveNames[i])+` INCLUDING ALL)`); err != nil {
				return fmt.Errorf("rebuild %s: create %s: %w", name, t, err)
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+live.q("checkpoints")+` (name, position) VALUES ($1, 0)
			ON CONFLICT (name) DO UPDATE SET position = 0, error = '', error_position = 0, updated_at = now()`, name+shadowSuffix); err != nil {
			return fmt.Errorf("rebuild %s: shadow checkpoint: %w", name, err)
		}
		return nil
	})
}

// swap finishes the shadow up to the head and swaps it in, in one transaction.
func (v *Views) swap(ctx context.Context, store eventstore.Store, name string, shadow *pgBase, write batchWriter, batchSize int) (uint64, uint64, error) {
	var final, events uint64
	live := v.live
	err := pgx.BeginFunc(ctx, v.pool, func(tx pgx.Tx) error {
		// Hold the live checkpoint row: the live projector's next batch waits here, and its
		// row exists even for a projector version that never ran.
		if _, err := tx.Exec(ctx, `INSERT INTO `+live.q("checkpoints")+` (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING`, name); err != nil {
			return fmt.Errorf("rebuild %s: live checkpoint: %w", name, err)
		}
		if _, err := tx.Exec(ctx, `SELECT position FROM `+live.q("checkpoints")+` WHERE name = $1 FOR UPDATE`, name); err != nil {
			return fmt.Errorf("rebuild %s: lock live checkpoint: %w", name, err)
		}
		var cp int64
		if err := tx.QueryRow(ctx, `SELECT position FROM `+live.q("checkpoints")+` WHERE name = $1`, shadow.cpName()).Scan(&cp); err != nil {
			return fmt.Errorf("rebuild %s: shadow checkpoint: %w", name, err)
		}
		final = uint64(cp)
		// Bounded: the head is read once; events appended meanwhile are the live projector's.
		head, err := store.Head(ctx)
		if err != nil {
			return fmt.Errorf("rebuild %s: head: %w", name, err)
		}
		for final < head {
			batch, err := store.ReadAll(ctx, final, min(batchSize, int(head-final)))
			if err != nil {
				return fmt.Errorf("rebuild %s: read after %d: %w", name, final, err)
			}
			if len(batch) == 0 || batch[0].Position != final+1 {
				return fmt.Errorf("rebuild %s: position %d is below the head %d but not readable", name, final+1, head)
			}
			poison, err := shadow.applyTx(ctx, tx, batch, write)
			if err != nil {
				return fmt.Errorf("rebuild %s: %w", name, err)
			}
			if poison != nil {
				return fmt.Errorf("rebuild %s: %w", name, poison)
			}
			final = batch[len(batch)-1].Position
			events += uint64(len(batch))
		}
		for i, t := range tablesOf(name, live) {
			old := t + "_replaced"
			stmts := []string{
				`ALTER TABLE ` + live.q(t) + ` RENAME TO ` + pgx.Identifier{old}.Sanitize(),
				`ALTER TABLE ` + live.q(tablesOf(name, shadowTables(v.schema))[i]) + ` RENAME TO ` + pgx.Identifier{t}.Sanitize(),
				`DROP TABLE ` + live.q(old),
			}
			for _, s := range stmts {
				if _, err := tx.Exec(ctx, s); err != nil {
					return fmt.Errorf("rebuild %s: swap %s: %w", name, t, err)
				}
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE `+live.q("checkpoints")+` SET position = $2, error = '', error_position = 0, updated_at = now() WHERE name = $1`,
			name, int64(final)); err != nil {
			return fmt.Errorf("rebuild %s: set live checkpoint: %w", name, err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM `+live.q("checkpoints")+` WHERE name = $1`, shadow.cpName()); err != nil {
			return fmt.Errorf("rebuild %s: drop shadow checkpoint: %w", name, err)
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	return final, events, nil
}

type rebuildPage struct {
	events []eventstore.RecordedEvent // nil: no more pages before the swap
	head   uint64
	err    error
}

// readAhead sends pages of the log after position at until the shadow would be within
// SwapLag of the head (or at StopAfter), then a final page without events.
func readAhead(ctx context.Context, store eventstore.Store, at uint64, opts projections.RebuildOptions, out chan<- rebuildPage) {
	defer close(out)
	send := func(p rebuildPage) bool {
		select {
		case out <- p:
			return true
		case <-ctx.Done():
			return false
		}
	}
	const maxEmptyReads = 100 // bounded: the head said there is more, so it must show up
	empty := 0
	for {
		head, err := store.Head(ctx)
		if err != nil {
			send(rebuildPage{err: fmt.Errorf("head: %w", err)})
			return
		}
		if (opts.StopAfter > 0 && at >= opts.StopAfter) || head <= at+opts.SwapLag {
			send(rebuildPage{head: head})
			return
		}
		limit := opts.BatchSize
		if opts.StopAfter > 0 {
			limit = int(min(uint64(limit), opts.StopAfter-at))
		}
		batch, err := store.ReadAll(ctx, at, limit)
		if err != nil {
			send(rebuildPage{err: fmt.Errorf("read after %d: %w", at, err)})
			return
		}
		if len(batch) == 0 || batch[0].Position != at+1 {
			if empty++; empty > maxEmptyReads {
				send(rebuildPage{err: fmt.Errorf("position %d is below the head %d but not readable", at+1, head)})
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		empty = 0
		at = batch[len(batch)-1].Position
		if !send(rebuildPage{events: batch, head: head}) {
			return
		}
	}
}
