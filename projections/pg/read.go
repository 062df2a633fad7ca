package pg

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/projections"
)

// The read path: every read proves, in its own snapshot, that it reflects the position
// the caller asked for.

// Reader returns the query side of the live views. Read-your-writes waits use
// Config.Waiter, or poll the view.
func (v *Views) Reader() projections.Reader {
	return reachableReader{&pgReader{v: v, waiter: v.cfg.Waiter}}
}

// ReaderWaitingOn is Reader with read-your-writes waits woken by w: pass the *Runner that
// runs this process's projectors (it needs the projectors first, hence not a config field).
func (v *Views) ReaderWaitingOn(w projections.Waiter) projections.Reader {
	return reachableReader{&pgReader{v: v, waiter: w}}
}

type pgReader struct {
	v      *Views
	waiter projections.Waiter
}

var _ projections.Reader = (*pgReader)(nil)

// Reads prove what they answer. The views commit asynchronously (see applyTx), so after a
// database crash a view can hold less than its projector applied, and less than the Waiter
// (which counts applied batches in memory) reported. A read therefore reads its rows and
// the projector's checkpoint in one snapshot and answers only if that checkpoint is at
// least the position the caller asked for; the Waiter only says when to look. A read that
// finds the view behind where the Waiter said it was asks the projector's runner to
// recheck (Rechecker), which re-reads the checkpoint and re-applies from it, and looks
// again.

// read runs one snapshot read of projector's tables until the snapshot includes
// minPosition, bounded by ctx (or MaxWait when ctx has no deadline). queue adds the read's
// queries to a batch; scan reads their results in the same order and runs at most once,
// on a snapshot that reflects every event up to minPosition.
func (r *pgReader) read(ctx context.Context, projector string, minPosition uint64, queue func(*pgx.Batch), scan func(pgx.BatchResults) error) error {
	v := r.v
	if _, ok := ctx.Deadline(); !ok && minPosition > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, v.cfg.MaxWait)
		defer cancel()
	}
	delay := time.Millisecond
	for {
		waited := r.waiter != nil && minPosition > 0
		if waited {
			if err := r.waiter.Wait(ctx, projector, minPosition); err != nil {
				return err
			}
		}
		cp, stopped, ok, err := v.snapshot(ctx, projector, minPosition, queue, scan)
		switch {
		case ok || err != nil && ctx.Err() == nil:
			return err
		case err != nil:
			return fmt.Errorf("%w: %s, asked for %d: %v", projections.ErrNotCaughtUp, projector, minPosition, ctx.Err())
		case stopped != "":
			return fmt.Errorf("%w: %s stopped at %d: %s", projections.ErrNotCaughtUp, projector, cp, stopped)
		}
		if waited {
			// The Waiter counted a commit the view no longer holds: the database lost it.
			v.requestRecheck(projector)
		}
		// Without a Waiter this is the poll for a lagging projector; with one, the short
		// while until the runner takes the request and Wait blocks again.
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s is at %d, asked for %d: %v", projections.ErrNotCaughtUp, projector, cp, minPosition, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// snapshot sends one read-only REPEATABLE READ transaction as one batch (one round trip):
// lock projector's tables, read its checkpoint, run queue's queries, all in one snapshot.
// The lock comes before the first query, which takes the snapshot, because a rebuild's
// swap renames the tables: so the tables and the checkpoint are both from before a swap or
// both from after it. scan runs only when the checkpoint is at least minPosition (ok);
// otherwise the rows are dropped, and cp, with the error the projector stopped on if any,
// says where the view is.
//
// Without a position to prove (minPosition 0) only queue's queries are sent: the four
// statements around them stay in the same round trip but are not free (a balance read
// measured 15-40% slower with them, on a busy 2-core machine).
func (v *Views) snapshot(ctx context.Context, projector string, minPosition uint64, queue func(*pgx.Batch), scan func(pgx.BatchResults) error) (cp uint64, stopped string, ok bool, err error) {
	b := &pgx.Batch{}
	if minPosition > 0 {
		tables := tablesOf(projector, v.live)
		for i, t := range tables {
			tables[i] = v.live.q(t) // in the swap's order, so a read and a swap cannot deadlock
		}
		b.Queue(`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`)
		// A REPEATABLE READ snapshot is frozen by the first query, not by LOCK (the LOCK
		// TABLE page documents taking locks before the snapshot this way).
		b.Queue(`LOCK TABLE ` + strings.Join(tables, ", ") + ` IN ACCESS SHARE MODE`)
		b.Queue(`SELECT position, error FROM `+v.live.q("checkpoints")+` WHERE name = $1`, projector)
	}
	queue(b)
	if minPosition > 0 {
		b.Queue(`COMMIT`)
	}
	br := v.pool.SendBatch(ctx, b)
	defer func() {
		if cerr := br.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("read %s: %w", projector, cerr)
		}
	}()
	if minPosition == 0 {
		return 0, "", true, scan(br)
	}
	for _, what := range []string{"begin", "lock tables"} {
		if _, err := br.Exec(); err != nil {
			return 0, "", false, fmt.Errorf("read %s: %s: %w", projector, what, err)
		}
	}
	var pos int64
	// No row: the projector never started, and its tables are empty.
	if err := br.QueryRow().Scan(&pos, &stopped); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return 0, "", false, fmt.Errorf("read checkpoint of %s: %w", projector, err)
	}
	if uint64(pos) < minPosition {
		return uint64(pos), stopped, false, nil
	}
	return uint64(pos), stopped, true, scan(br)
}

// requestRecheck asks the runner of projector in this process, if any, to re-read its
// checkpoint from the view. It never blocks: a pending request stands for this one.
func (v *Views) requestRecheck(projector string) {
	select {
	case v.recheck[projector] <- struct{}{}:
	default:
	}
}

func (r *pgReader) Balance(ctx context.Context, id domain.AccountID, asOf projections.AsOf, minPosition uint64) (projections.Balance, error) {
	v := r.v
	pos, at := asOfBounds(asOf)
	var b projections.Balance
	err := r.read(ctx, projections.AccountsProjector, minPosition, func(q *pgx.Batch) {
		q.Queue(`SELECT `+balanceCols+` FROM `+v.live.q(v.live.balances)+` WHERE account_id = $1`, string(id))
		if !asOf.IsNow() {
			q.Queue(`SELECT position, posted_after, held_after, recorded_at FROM `+v.live.q(v.live.history)+`
				WHERE account_id = $1 AND position <= $2 AND recorded_at <= $3 ORDER BY position DESC LIMIT 1`, string(id), pos, at)
		}
	}, func(br pgx.BatchResults) error {
		var err error
		b, err = scanBalance(br, id, asOf)
		return err
	})
	if err != nil {
		return projections.Balance{}, err
	}
	return b, nil
}

// scanBalance reads the results of Balance's queries.
func scanBalance(br pgx.BatchResults, id domain.AccountID, asOf projections.AsOf) (projections.Balance, error) {
	a, err := scanAccount(br.QueryRow())
	if errors.Is(err, pgx.ErrNoRows) {
		return projections.Balance{}, fmt.Errorf("%w: account %s", projections.ErrNotFound, id)
	}
	if err != nil {
		return projections.Balance{}, fmt.Errorf("balance of %s: %w", id, err)
	}
	if asOf.IsNow() {
		return a.Balance, nil
	}
	var line *projections.HistoryRow
	var l projections.HistoryRow
	var lpos int64
	err = br.QueryRow().Scan(&lpos, &l.PostedAfter, &l.HeldAfter, &l.RecordedAt)
	switch {
	case err == nil:
		l.Position, l.AvailableAfter, l.RecordedAt = uint64(lpos), l.PostedAfter-l.HeldAfter, l.RecordedAt.UTC()
		line = &l
	case !errors.Is(err, pgx.ErrNoRows): // no rows: nothing posted or held yet at that point
		return projections.Balance{}, fmt.Errorf("balance of %s as of %+v: %w", id, asOf, err)
	}
	return a.BalanceAt(asOf, line)
}

// asOfBounds turns an AsOf into SQL bounds (no bound becomes the largest value).
func asOfBounds(asOf projections.AsOf) (int64, pgtype.Timestamptz) {
	pos := int64(math.MaxInt64)
	if asOf.Position != 0 {
		pos = int64(min(asOf.Position, math.MaxInt64))
	}
	at := pgtype.Timestamptz{InfinityModifier: pgtype.Infinity, Valid: true}
	if !asOf.Time.IsZero() {
		at = pgtype.Timestamptz{Time: asOf.Time, Valid: true}
	}
	return pos, at
}

func (r *pgReader) History(ctx context.Context, id domain.AccountID, afterPosition uint64, limit int, minPosition uint64) ([]projections.Entry, error) {
	if limit <= 0 || limit > projections.MaxHistoryPage {
		return nil, fmt.Errorf("%w: history page size %d: must be 1..%d", domain.ErrInvalidInput, limit, projections.MaxHistoryPage)
	}
	v := r.v
	var out []projections.Entry
	err := r.read(ctx, projections.AccountsProjector, minPosition, func(q *pgx.Batch) {
		q.Queue(`SELECT EXISTS (SELECT 1 FROM `+v.live.q(v.live.balances)+` WHERE account_id = $1)`, string(id))
		q.Queue(`SELECT position, payment_id, kind, amount, asset_code, asset_scale, posted_after, held_after, recorded_at
			FROM `+v.live.q(v.live.history)+` WHERE account_id = $1 AND position > $2 ORDER BY position LIMIT $3`,
			string(id), int64(min(afterPosition, math.MaxInt64)), limit)
	}, func(br pgx.BatchResults) error {
		var err error
		out, err = scanHistory(br, id, limit)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// scanHistory reads the results of History's queries.
func scanHistory(br pgx.BatchResults, id domain.AccountID, limit int) ([]projections.Entry, error) {
	var exists bool
	if err := br.QueryRow().Scan(&exists); err != nil {
		return nil, fmt.Errorf("history of %s: %w", id, err)
	}
	if !exists {
		return nil, fmt.Errorf("%w: account %s", projections.ErrNotFound, id)
	}
	rows, err := br.Query()
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", id, err)
	}
	defer rows.Close()
	out := make([]projections.Entry, 0, limit)
	for rows.Next() {
		var (
			e                         projections.Entry
			pos, amount, posted, held int64
			pay, kind, code           string
			scale                     int16
		)
		if err := rows.Scan(&pos, &pay, &kind, &amount, &code, &scale, &posted, &held, &e.RecordedAt); err != nil {
			return nil, fmt.Errorf("history of %s: %w", id, err)
		}
		e.Position, e.AccountID, e.PaymentID, e.Kind = uint64(pos), id, domain.PaymentID(pay), projections.EntryKind(kind)
		e.Amount = domain.Money{Minor: amount, Asset: domain.Asset{Code: code, Scale: uint8(scale)}}
		e.PostedAfter, e.AvailableAfter, e.RecordedAt = posted, posted-held, e.RecordedAt.UTC()
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("history of %s: %w", id, err)
	}
	return out, nil
}

func (r *pgReader) Payment(ctx context.Context, id domain.PaymentID, minPosition uint64) (projections.Payment, error) {
	v := r.v
	var p projections.Payment
	err := r.read(ctx, projections.PaymentsProjector, minPosition, func(q *pgx.Batch) {
		q.Queue(`SELECT `+paymentCols+` FROM `+v.live.q(v.live.payment)+` WHERE payment_id = $1`, string(id))
	}, func(br pgx.BatchResults) error {
		var err error
		p, err = scanPayment(br.QueryRow())
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: payment %s", projections.ErrNotFound, id)
		}
		if err != nil {
			return fmt.Errorf("payment %s: %w", id, err)
		}
		return nil
	})
	if err != nil {
		return projections.Payment{}, err
	}
	return p, nil
}

func (r *pgReader) Position(ctx context.Context) (uint64, error) {
	var pos int64
	err := r.v.pool.QueryRow(ctx, `SELECT COALESCE(min(position), 0) FROM `+r.v.live.q("checkpoints")+` WHERE name = ANY($1)`,
		[]string{projections.AccountsProjector, projections.PaymentsProjector}).Scan(&pos)
	if err != nil {
		return 0, fmt.Errorf("views position: %w", err)
	}
	return uint64(pos), nil
}
