package pg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
)

// The projectors' write path: one transaction per batch (see the package comment), the
// same code for the live tables and a rebuild's shadow tables.

// pgBase is what both projectors share: the views, the table set they write and the name
// their checkpoint row goes by.
type pgBase struct {
	v    *Views
	t    tableSet
	name string
}

func (b *pgBase) Name() string { return b.name }

func (b *pgBase) cpName() string { return b.name + b.t.suffix }

// Recheck implements Rechecker for the live views; nobody reads a rebuild's shadow tables.
func (b *pgBase) Recheck() <-chan struct{} {
	if b.t.suffix != "" {
		return nil
	}
	return b.v.recheck[b.name]
}

// Checkpoint reads the projector's checkpoint, creating it at 0 the first time. A missing
// checkpoint over tables that hold rows means the rows were written by another version of
// the projector: it refuses, and the operator rebuilds.
func (b *pgBase) Checkpoint(ctx context.Context) (uint64, error) {
	var pos int64
	err := b.v.pool.QueryRow(ctx, `SELECT position FROM `+b.t.q("checkpoints")+` WHERE name = $1`, b.cpName()).Scan(&pos)
	if err == nil {
		return uint64(pos), nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("%s: read checkpoint: %w", b.name, err)
	}
	for _, table := range tablesOf(b.name, b.t) {
		var any bool
		if err := b.v.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+b.t.q(table)+`)`).Scan(&any); err != nil {
			return 0, fmt.Errorf("%s: check %s: %w", b.name, table, err)
		}
		if any {
			return 0, fmt.Errorf("%s: table %s holds rows but there is no checkpoint for %s: it was built by another projector version; run `securepay projections rebuild %s`", b.name, table, b.cpName(), b.name)
		}
	}
	if _, err := b.v.pool.Exec(ctx, `INSERT INTO `+b.t.q("checkpoints")+` (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING`, b.cpName()); err != nil {
		return 0, fmt.Errorf("%s: create checkpoint: %w", b.name, err)
	}
	return 0, nil
}

// RecordFailure remembers why the projector stopped.
func (b *pgBase) RecordFailure(ctx context.Context, f *projections.ApplyError) error {
	_, err := b.v.pool.Exec(ctx, `UPDATE `+b.t.q("checkpoints")+` SET error = $2, error_position = $3, updated_at = now() WHERE name = $1`,
		b.cpName(), f.Error(), int64(f.Position))
	if err != nil {
		return fmt.Errorf("%s: record failure: %w", b.name, err)
	}
	return nil
}

// apply runs one batch in its own transaction.
func (b *pgBase) apply(ctx context.Context, batch []eventstore.RecordedEvent, write batchWriter) error {
	if len(batch) == 0 {
		return nil
	}
	var poison *projections.ApplyError
	err := pgx.BeginFunc(ctx, b.v.pool, func(tx pgx.Tx) error {
		var err error
		poison, err = b.applyTx(ctx, tx, batch, write)
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: apply positions %d..%d: %w", b.cpName(), batch[0].Position, batch[len(batch)-1].Position, err)
	}
	if poison != nil {
		return poison
	}
	return nil
}

// batchWriter folds a batch and writes its rows in tx; it returns the last position applied.
type batchWriter func(ctx context.Context, tx pgx.Tx, batch []eventstore.RecordedEvent) (last uint64, poison *projections.ApplyError, err error)

// applyTx locks the checkpoint row (so a rebuild's swap and this batch exclude each other),
// checks that the batch continues it, writes, and advances it, all in tx.
func (b *pgBase) applyTx(ctx context.Context, tx pgx.Tx, batch []eventstore.RecordedEvent, write batchWriter) (*projections.ApplyError, error) {
	// synchronous_commit is off for view transactions, so no batch waits for an fsync. A
	// crash may lose the last batches after COMMIT returned, but it loses their checkpoint
	// with them (WAL order): the projector re-applies them from the log, so nothing derived
	// is lost for good. What a crash can break is the runner's count of applied batches,
	// which read-your-writes waits on; reads do not rely on it but check the checkpoint in
	// their own snapshot (see pgReader), which is why this stays off.
	var cp int64
	if err := tx.QueryRow(ctx, `SELECT position FROM `+b.t.q("checkpoints")+`, set_config('synchronous_commit', 'off', true)
		WHERE name = $1 FOR UPDATE OF checkpoints`, b.cpName()).Scan(&cp); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("%w: %s has no checkpoint row", projections.ErrCheckpointMoved, b.cpName())
		}
		return nil, fmt.Errorf("lock checkpoint: %w", err)
	}
	if uint64(cp)+1 != batch[0].Position {
		return nil, fmt.Errorf("%w: %s is at %d, batch starts at %d", projections.ErrCheckpointMoved, b.cpName(), cp, batch[0].Position)
	}
	last, poison, err := write(ctx, tx, batch)
	if err != nil {
		return nil, err
	}
	// The reason a projector stops is recorded with the prefix it could apply, so every
	// process reading the view sees both or neither.
	msg, errPos := "", int64(0)
	if poison != nil {
		msg, errPos = poison.Error(), int64(poison.Position)
	}
	if last > uint64(cp) || poison != nil {
		if _, err := tx.Exec(ctx, `UPDATE `+b.t.q("checkpoints")+` SET position = $2, updated_at = now(), error = $3, error_position = $4 WHERE name = $1`,
			b.cpName(), int64(max(last, uint64(cp))), msg, errPos); err != nil {
			return nil, fmt.Errorf("advance checkpoint to %d: %w", last, err)
		}
	}
	if b.v.beforeCommit != nil {
		b.v.beforeCommit(b.cpName(), batch)
	}
	return poison, nil
}

type pgAccounts struct{ pgBase }
type pgPayments struct{ pgBase }

var (
	_ projections.Projector       = (*pgAccounts)(nil)
	_ projections.FailureRecorder = (*pgAccounts)(nil)
	_ projections.Rechecker       = (*pgAccounts)(nil)
	_ projections.Rechecker       = (*pgPayments)(nil)
)

const balanceCols = `account_id, asset_code, asset_scale, kind, status, credit_limit, posted, held, open_holds,
	position, opened_position, opened_at, updated_at`

func (p *pgAccounts) Apply(ctx context.Context, batch []eventstore.RecordedEvent) error {
	return p.apply(ctx, batch, p.write)
}

func (p *pgAccounts) write(ctx context.Context, tx pgx.Tx, batch []eventstore.RecordedEvent) (uint64, *projections.ApplyError, error) {
	res, err := projections.FoldAccounts(p.name, batch, func(ids []domain.AccountID) (map[domain.AccountID]projections.AccountRow, error) {
		return loadAccounts(ctx, tx, p.t, ids)
	})
	if err != nil {
		return 0, nil, err
	}
	if err := writeAccounts(ctx, tx, p.t, res.Rows); err != nil {
		return 0, nil, err
	}
	if err := writeHistory(ctx, tx, p.t, res.Lines); err != nil {
		return 0, nil, err
	}
	return res.Last, res.Poison, nil
}

func loadAccounts(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, t tableSet, ids []domain.AccountID) (map[domain.AccountID]projections.AccountRow, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = string(id)
	}
	rows, err := q.Query(ctx, `SELECT `+balanceCols+` FROM `+t.q(t.balances)+` WHERE account_id = ANY($1)`, keys)
	if err != nil {
		return nil, fmt.Errorf("load accounts: %w", err)
	}
	defer rows.Close()
	out := make(map[domain.AccountID]projections.AccountRow, len(ids))
	for rows.Next() {
		a, err := scanAccount(rows)
		if err != nil {
			return nil, err
		}
		out[a.ID] = a
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load accounts: %w", err)
	}
	return out, nil
}

func scanAccount(row pgx.Row) (projections.AccountRow, error) {
	var (
		a                                   projections.AccountRow
		id, code, kind, status              string
		scale                               int16
		position, openedPosition, openHolds int64
		posted, held, creditLimit           int64
		openedAt, updatedAt                 time.Time
	)
	if err := row.Scan(&id, &code, &scale, &kind, &status, &creditLimit, &posted, &held, &openHolds,
		&position, &openedPosition, &openedAt, &updatedAt); err != nil {
		return a, fmt.Errorf("scan account: %w", err)
	}
	k, err := domain.ParseAccountKind(kind)
	if err != nil {
		return a, fmt.Errorf("account %s: %w", id, err)
	}
	st, err := projections.ParseAccountStatus(status)
	if err != nil {
		return a, fmt.Errorf("account %s: %w", id, err)
	}
	return projections.AccountRow{
		Balance: projections.Balance{
			Account: domain.Account{ID: domain.AccountID(id), Asset: domain.Asset{Code: code, Scale: uint8(scale)}, Kind: k, Status: st,
				CreditLimit: creditLimit, Posted: posted, Held: held, OpenHolds: int(openHolds)},
			Position: uint64(position), UpdatedAt: updatedAt.UTC(),
		},
		OpenedPosition: uint64(openedPosition), OpenedAt: openedAt.UTC(),
	}, nil
}

// writeAccounts upserts the changed accounts with one statement.
func writeAccounts(ctx context.Context, tx pgx.Tx, t tableSet, rows []projections.AccountRow) error {
	if len(rows) == 0 {
		return nil
	}
	n := len(rows)
	var (
		ids, codes, kinds, statuses                       = make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		scales                                            = make([]int16, n)
		limits, posted, held, holds, positions, openedPos = make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
		openedAt, updatedAt                               = make([]time.Time, n), make([]time.Time, n)
	)
	for i, r := range rows {
		ids[i], codes[i], scales[i], kinds[i], statuses[i] = string(r.ID), r.Asset.Code, int16(r.Asset.Scale), r.Kind.String(), r.Status.String()
		limits[i], posted[i], held[i], holds[i] = r.CreditLimit, r.Posted, r.Held, int64(r.OpenHolds)
		positions[i], openedPos[i], openedAt[i], updatedAt[i] = int64(r.Position), int64(r.OpenedPosition), r.OpenedAt, r.UpdatedAt
	}
	_, err := tx.Exec(ctx, `INSERT INTO `+t.q(t.balances)+` (`+balanceCols+`)
		SELECT * FROM unnest($1::text[], $2::text[], $3::int2[], $4::text[], $5::text[], $6::int8[], $7::int8[], $8::int8[],
			$9::int8[], $10::int8[], $11::int8[], $12::timestamptz[], $13::timestamptz[])
		ON CONFLICT (account_id) DO UPDATE SET status = EXCLUDED.status, posted = EXCLUDED.posted, held = EXCLUDED.held,
			open_holds = EXCLUDED.open_holds, position = EXCLUDED.position, updated_at = EXCLUDED.updated_at`,
		ids, codes, scales, kinds, statuses, limits, posted, held, holds, positions, openedPos, openedAt, updatedAt)
	if err != nil {
		return fmt.Errorf("upsert %d balances: %w", n, err)
	}
	return nil
}

var historyCols = []string{"account_id", "position", "payment_id", "kind", "amount", "asset_code", "asset_scale",
	"posted_after", "held_after", "recorded_at"}

// writeHistory appends history lines with COPY: lines are only ever inserted, and COPY is
// the cheapest way in.
func writeHistory(ctx context.Context, tx pgx.Tx, t tableSet, lines []projections.HistoryRow) error {
	if len(lines) == 0 {
		return nil
	}
	n, err := tx.CopyFrom(ctx, pgx.Identifier{t.schema, t.history}, historyCols, pgx.CopyFromSlice(len(lines), func(i int) ([]any, error) {
		l := &lines[i]
		return []any{string(l.AccountID), int64(l.Position), string(l.PaymentID), string(l.Kind), l.Amount.Minor,
			l.Amount.Asset.Code, int16(l.Amount.Asset.Scale), l.PostedAfter, l.HeldAfter, l.RecordedAt}, nil
	}))
	if err != nil {
		return fmt.Errorf("copy %d history lines: %w", len(lines), err)
	}
	if int(n) != len(lines) {
		return fmt.Errorf("copy history: wrote %d of %d lines", n, len(lines))
	}
	return nil
}

// wireLeg is how a leg is kept in the payments view's jsonb column.
type wireLeg struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	AmountMinor int64  `json:"amount_minor,string"`
	AssetCode   string `json:"asset_code"`
	AssetScale  uint8  `json:"asset_scale"`
}

const paymentCols = `payment_id, kind, status, legs, reference, metadata, authorised, captured, refunded, released,
	expires_at, position, created_at, updated_at`

func (p *pgPayments) Apply(ctx context.Context, batch []eventstore.RecordedEvent) error {
	return p.apply(ctx, batch, p.write)
}

func (p *pgPayments) write(ctx context.Context, tx pgx.Tx, batch []eventstore.RecordedEvent) (uint64, *projections.ApplyError, error) {
	res, err := projections.FoldPayments(p.name, batch, func(ids []domain.PaymentID) (map[domain.PaymentID]projections.Payment, error) {
		return loadPayments(ctx, tx, p.t, ids)
	})
	if err != nil {
		return 0, nil, err
	}
	if err := writePayments(ctx, tx, p.t, res.Rows); err != nil {
		return 0, nil, err
	}
	return res.Last, res.Poison, nil
}

func loadPayments(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, t tableSet, ids []domain.PaymentID) (map[domain.PaymentID]projections.Payment, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = string(id)
	}
	rows, err := q.Query(ctx, `SELECT `+paymentCols+` FROM `+t.q(t.payment)+` WHERE payment_id = ANY($1)`, keys)
	if err != nil {
		return nil, fmt.Errorf("load payments: %w", err)
	}
	defer rows.Close()
	out := make(map[domain.PaymentID]projections.Payment, len(ids))
	for rows.Next() {
		p, err := scanPayment(rows)
		if err != nil {
			return nil, err
		}
		out[p.ID] = p
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load payments: %w", err)
	}
	return out, nil
}

func scanPayment(row pgx.Row) (projections.Payment, error) {
	var (
		p                                        projections.Payment
		id, kind, status, reference              string
		legs, meta                               []byte
		authorised, captured, refunded, released int64
		expires                                  pgtype.Timestamptz
		position                                 int64
		created, updated                         time.Time
	)
	if err := row.Scan(&id, &kind, &status, &legs, &reference, &meta, &authorised, &captured, &refunded, &released,
		&expires, &position, &created, &updated); err != nil {
		return p, fmt.Errorf("scan payment: %w", err)
	}
	k, err := projections.ParsePaymentKind(kind)
	if err != nil {
		return p, fmt.Errorf("payment %s: %w", id, err)
	}
	st, err := projections.ParsePaymentStatus(status)
	if err != nil {
		return p, fmt.Errorf("payment %s: %w", id, err)
	}
	var wl []wireLeg
	if err := json.Unmarshal(legs, &wl); err != nil {
		return p, fmt.Errorf("payment %s: legs: %w", id, err)
	}
	p = projections.Payment{
		Payment: domain.Payment{ID: domain.PaymentID(id), Kind: k, Status: st, Reference: reference, Authorised: authorised, Captured: captured,
			Refunded: refunded, Released: released},
		Position: uint64(position), CreatedAt: created.UTC(), UpdatedAt: updated.UTC(),
	}
	for _, l := range wl {
		p.Legs = append(p.Legs, domain.Leg{Source: domain.AccountID(l.Source), Destination: domain.AccountID(l.Destination),
			Amount: domain.Money{Minor: l.AmountMinor, Asset: domain.Asset{Code: l.AssetCode, Scale: l.AssetScale}}})
	}
	if string(meta) != "null" && string(meta) != "{}" {
		if err := json.Unmarshal(meta, &p.Metadata); err != nil {
			return p, fmt.Errorf("payment %s: metadata: %w", id, err)
		}
	}
	if expires.Valid {
		p.ExpiresAt = expires.Time.UTC()
	}
	return p, nil
}

func writePayments(ctx context.Context, tx pgx.Tx, t tableSet, rows []projections.Payment) error {
	if len(rows) == 0 {
		return nil
	}
	n := len(rows)
	ids, kinds, statuses, legs, refs, metas := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	auth, capt, refd, rel, pos := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	expires := make([]pgtype.Timestamptz, n)
	created, updated := make([]time.Time, n), make([]time.Time, n)
	for i, p := range rows {
		wl := make([]wireLeg, len(p.Legs))
		for j, l := range p.Legs {
			wl[j] = wireLeg{Source: string(l.Source), Destination: string(l.Destination), AmountMinor: l.Amount.Minor,
				AssetCode: l.Amount.Asset.Code, AssetScale: l.Amount.Asset.Scale}
		}
		lb, err := json.Marshal(wl)
		if err != nil {
			return fmt.Errorf("payment %s: encode legs: %w", p.ID, err)
		}
		meta := p.Metadata
		if meta == nil {
			meta = domain.Metadata{}
		}
		mb, err := json.Marshal(meta)
		if err != nil {
			return fmt.Errorf("payment %s: encode metadata: %w", p.ID, err)
		}
		ids[i], kinds[i], statuses[i], legs[i], refs[i], metas[i] = string(p.ID), p.Kind.String(), p.Status.String(), string(lb), p.Reference, string(mb)
		auth[i], capt[i], refd[i], rel[i], pos[i] = p.Authorised, p.Captured, p.Refunded, p.Released, int64(p.Position)
		expires[i] = pgtype.Timestamptz{Time: p.ExpiresAt, Valid: !p.ExpiresAt.IsZero()}
		created[i], updated[i] = p.CreatedAt, p.UpdatedAt
	}
	_, err := tx.Exec(ctx, `INSERT INTO `+t.q(t.payment)+` (`+paymentCols+`)
		SELECT u.id, u.kind, u.status, u.legs::jsonb, u.ref, u.meta::jsonb, u.auth, u.capt, u.refd, u.rel, u.exp, u.pos, u.created, u.updated
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int8[], $9::int8[],
			$10::int8[], $11::timestamptz[], $12::int8[], $13::timestamptz[], $14::timestamptz[])
			AS u(id, kind, status, legs, ref, meta, auth, capt, refd, rel, exp, pos, created, updated)
		ON CONFLICT (payment_id) DO UPDATE SET status = EXCLUDED.status, captured = EXCLUDED.captured,
			refunded = EXCLUDED.refunded, released = EXCLUDED.released, position = EXCLUDED.position, updated_at = EXCLUDED.updated_at`,
		ids, kinds, statuses, legs, refs, metas, auth, capt, refd, rel, expires, pos, created, updated)
	if err != nil {
		return fmt.Errorf("upsert %d payments: %w", n, err)
	}
	return nil
}
