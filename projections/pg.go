package projections

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// PostgreSQL views. Each projector's batch is one transaction: lock the checkpoint row,
// check it is where the batch starts, load the rows the batch touches (one query), fold in
// memory, write the changed rows with one multi-row upsert (unnest) and the new history
// lines with COPY, move the checkpoint, commit. A crash anywhere before COMMIT leaves the
// view and its checkpoint as they were; after COMMIT both moved. Nothing is counted twice.

// DefaultViewSchema holds the views unless PGConfig.Schema says otherwise.
const DefaultViewSchema = "securepay_views"

//go:embed migrations/*.sql
var migrationFS embed.FS

// PGConfig configures the PostgreSQL views.
type PGConfig struct {
	Pool *pgxpool.Pool
	// Schema holds the view tables; "" means DefaultViewSchema.
	Schema string
	// Migrate creates or upgrades the schema on open.
	Migrate bool
	// Waiter, when the projectors run in this process (a *Runner), wakes read-your-writes
	// waits as soon as a batch commits; without it the reader polls the view. Either way a
	// read answers only from a snapshot whose checkpoint includes the position asked for.
	Waiter Waiter
	// MaxWait bounds a read-your-writes wait when the caller's context has no deadline;
	// default 10s.
	MaxWait time.Duration
}

// Waiter waits until a projector has applied a position (Runner implements it).
type Waiter interface {
	Wait(ctx context.Context, projector string, position uint64) error
}

var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Validate reports problems with c without touching the database.
func (c PGConfig) Validate() error {
	if c.Pool == nil {
		return errors.New("postgres views: Pool is required")
	}
	if c.Schema != "" && !identRE.MatchString(c.Schema) {
		return fmt.Errorf("postgres views: schema %q must be a lower-case identifier", c.Schema)
	}
	if c.MaxWait < 0 {
		return errors.New("postgres views: MaxWait must not be negative")
	}
	return nil
}

// PGViews are the accounts (balances + history) and payments views in PostgreSQL.
type PGViews struct {
	cfg    PGConfig
	pool   *pgxpool.Pool
	schema string
	live   tableSet
	// recheck carries readers' requests to the live projectors' runner (Rechecker), per
	// projector name; buffered 1, never closed.
	recheck map[string]chan struct{}
	// beforeCommit, set only by tests, runs inside a batch transaction after its writes:
	// the moment a crash must not leave a trace.
	beforeCommit func(projector string, batch []eventstore.RecordedEvent)
}

// tableSet names the tables one copy of the views lives in: the live tables, or the shadow
// tables a rebuild fills.
type tableSet struct {
	schema                     string
	balances, history, payment string // unqualified names
	suffix                     string // appended to checkpoint names ("" or "#shadow")
}

func (t tableSet) q(name string) string { return pgx.Identifier{t.schema, name}.Sanitize() }

func liveTables(schema string) tableSet {
	return tableSet{schema: schema, balances: "balances", history: "history", payment: "payments"}
}

func shadowTables(schema string) tableSet {
	return tableSet{schema: schema, balances: "balances_shadow", history: "history_shadow", payment: "payments_shadow", suffix: shadowSuffix}
}

const shadowSuffix = "#shadow"

// OpenPG checks (or, with Migrate, creates) the view schema.
func OpenPG(ctx context.Context, cfg PGConfig) (*PGViews, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Schema == "" {
		cfg.Schema = DefaultViewSchema
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = 10 * time.Second
	}
	v := &PGViews{cfg: cfg, pool: cfg.Pool, schema: cfg.Schema, live: liveTables(cfg.Schema), recheck: map[string]chan struct{}{
		AccountsProjector: make(chan struct{}, 1),
		PaymentsProjector: make(chan struct{}, 1),
	}}
	if cfg.Migrate {
		if err := v.migrate(ctx); err != nil {
			return nil, err
		}
	}
	var n int
	if err := v.pool.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = $1 AND tablename = 'view_migrations'`, v.schema).Scan(&n); err != nil {
		return nil, fmt.Errorf("postgres views: check schema %s: %w", v.schema, err)
	}
	if n == 0 {
		return nil, fmt.Errorf("postgres views: schema %s is not migrated (open with Migrate)", v.schema)
	}
	return v, nil
}

func (v *PGViews) migrate(ctx context.Context) error {
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return fmt.Errorf("postgres views: list migrations: %w", err)
	}
	sort.Strings(names)
	schema := pgx.Identifier{v.schema}.Sanitize()
	h := fnv.New64a()
	h.Write([]byte("securepay/projections/migrate/" + v.schema))
	lock := int64(h.Sum64())
	return pgx.BeginFunc(ctx, v.pool, func(tx pgx.Tx) error {
		// One migrator at a time per schema, across processes.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lock); err != nil {
			return fmt.Errorf("postgres views: migrate lock: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+schema); err != nil {
			return fmt.Errorf("postgres views: create schema %s: %w", v.schema, err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+schema+`.view_migrations (
			version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return fmt.Errorf("postgres views: create migrations table: %w", err)
		}
		for _, name := range names {
			base := strings.TrimPrefix(name, "migrations/")
			num, _, _ := strings.Cut(base, "_")
			version, err := strconv.Atoi(num)
			if err != nil {
				return fmt.Errorf("postgres views: migration %s has no number", base)
			}
			var done bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+schema+`.view_migrations WHERE version = $1)`, version).Scan(&done); err != nil {
				return fmt.Errorf("postgres views: migration %d: %w", version, err)
			}
			if done {
				continue
			}
			body, err := migrationFS.ReadFile(name)
			if err != nil {
				return fmt.Errorf("postgres views: read %s: %w", base, err)
			}
			if _, err := tx.Exec(ctx, strings.ReplaceAll(string(body), "{{schema}}", schema)); err != nil {
				return fmt.Errorf("postgres views: apply %s: %w", base, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO `+schema+`.view_migrations (version) VALUES ($1)`, version); err != nil {
				return fmt.Errorf("postgres views: record %s: %w", base, err)
			}
		}
		return nil
	})
}

// Schema returns the schema holding the views.
func (v *PGViews) Schema() string { return v.schema }

// Projectors returns the projectors of the live views.
func (v *PGViews) Projectors() []Projector {
	return []Projector{&pgAccounts{pgBase{v: v, t: v.live, name: AccountsProjector}}, &pgPayments{pgBase{v: v, t: v.live, name: PaymentsProjector}}}
}

// projectorOn returns the named projector writing the given table set.
func (v *PGViews) projectorOn(name string, t tableSet) (Projector, error) {
	switch name {
	case AccountsProjector:
		return &pgAccounts{pgBase{v: v, t: t, name: name}}, nil
	case PaymentsProjector:
		return &pgPayments{pgBase{v: v, t: t, name: name}}, nil
	}
	return nil, fmt.Errorf("postgres views: no projector named %q (known: %s, %s)", name, AccountsProjector, PaymentsProjector)
}

// tablesOf lists the tables a projector owns in a table set.
func tablesOf(name string, t tableSet) []string {
	if name == AccountsProjector {
		return []string{t.balances, t.history}
	}
	return []string{t.payment}
}

type pgBase struct {
	v    *PGViews
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
func (b *pgBase) RecordFailure(ctx context.Context, f *ApplyError) error {
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
	var poison *ApplyError
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
type batchWriter func(ctx context.Context, tx pgx.Tx, batch []eventstore.RecordedEvent) (last uint64, poison *ApplyError, err error)

// applyTx locks the checkpoint row (so a rebuild's swap and this batch exclude each other),
// checks that the batch continues it, writes, and advances it, all in tx.
func (b *pgBase) applyTx(ctx context.Context, tx pgx.Tx, batch []eventstore.RecordedEvent, write batchWriter) (*ApplyError, error) {
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
			return nil, fmt.Errorf("%w: %s has no checkpoint row", ErrCheckpointMoved, b.cpName())
		}
		return nil, fmt.Errorf("lock checkpoint: %w", err)
	}
	if uint64(cp)+1 != batch[0].Position {
		return nil, fmt.Errorf("%w: %s is at %d, batch starts at %d", ErrCheckpointMoved, b.cpName(), cp, batch[0].Position)
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
	_ Projector       = (*pgAccounts)(nil)
	_ FailureRecorder = (*pgAccounts)(nil)
	_ Rechecker       = (*pgAccounts)(nil)
	_ Rechecker       = (*pgPayments)(nil)
)

const balanceCols = `account_id, asset_code, asset_scale, kind, status, credit_limit, posted, held, open_holds,
	position, opened_position, opened_at, updated_at`

func (p *pgAccounts) Apply(ctx context.Context, batch []eventstore.RecordedEvent) error {
	return p.apply(ctx, batch, p.write)
}

func (p *pgAccounts) write(ctx context.Context, tx pgx.Tx, batch []eventstore.RecordedEvent) (uint64, *ApplyError, error) {
	res, err := foldAccounts(p.name, batch, func(ids []domain.AccountID) (map[domain.AccountID]AccountRow, error) {
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
}, t tableSet, ids []domain.AccountID) (map[domain.AccountID]AccountRow, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = string(id)
	}
	rows, err := q.Query(ctx, `SELECT `+balanceCols+` FROM `+t.q(t.balances)+` WHERE account_id = ANY($1)`, keys)
	if err != nil {
		return nil, fmt.Errorf("load accounts: %w", err)
	}
	defer rows.Close()
	out := make(map[domain.AccountID]AccountRow, len(ids))
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

func scanAccount(row pgx.Row) (AccountRow, error) {
	var (
		a                                   AccountRow
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
	st, err := parseAccountStatus(status)
	if err != nil {
		return a, fmt.Errorf("account %s: %w", id, err)
	}
	return AccountRow{ID: domain.AccountID(id), Asset: domain.Asset{Code: code, Scale: uint8(scale)}, Kind: k, Status: st,
		CreditLimit: creditLimit, Posted: posted, Held: held, OpenHolds: openHolds, Position: uint64(position),
		OpenedPosition: uint64(openedPosition), OpenedAt: openedAt.UTC(), UpdatedAt: updatedAt.UTC()}, nil
}

func parseAccountStatus(s string) (domain.AccountStatus, error) {
	for st := domain.AccountStatusNone; st <= domain.AccountStatusClosed; st++ {
		if st.String() == s {
			return st, nil
		}
	}
	return 0, fmt.Errorf("unknown account status %q", s)
}

func parsePaymentKind(s string) (domain.PaymentKind, error) {
	for k := domain.PaymentKindTransfer; k <= domain.PaymentKindAuthorisation; k++ {
		if k.String() == s {
			return k, nil
		}
	}
	return 0, fmt.Errorf("unknown payment kind %q", s)
}

func parsePaymentStatus(s string) (domain.PaymentStatus, error) {
	for st := domain.PaymentStatusNone; st <= domain.PaymentStatusExpired; st++ {
		if st.String() == s {
			return st, nil
		}
	}
	return 0, fmt.Errorf("unknown payment status %q", s)
}

// writeAccounts upserts the changed accounts with one statement.
func writeAccounts(ctx context.Context, tx pgx.Tx, t tableSet, rows []AccountRow) error {
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
		limits[i], posted[i], held[i], holds[i] = r.CreditLimit, r.Posted, r.Held, r.OpenHolds
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
func writeHistory(ctx context.Context, tx pgx.Tx, t tableSet, lines []HistoryRow) error {
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

func (p *pgPayments) write(ctx context.Context, tx pgx.Tx, batch []eventstore.RecordedEvent) (uint64, *ApplyError, error) {
	res, err := foldPayments(p.name, batch, func(ids []domain.PaymentID) (map[domain.PaymentID]Payment, error) {
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
}, t tableSet, ids []domain.PaymentID) (map[domain.PaymentID]Payment, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = string(id)
	}
	rows, err := q.Query(ctx, `SELECT `+paymentCols+` FROM `+t.q(t.payment)+` WHERE payment_id = ANY($1)`, keys)
	if err != nil {
		return nil, fmt.Errorf("load payments: %w", err)
	}
	defer rows.Close()
	out := make(map[domain.PaymentID]Payment, len(ids))
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

func scanPayment(row pgx.Row) (Payment, error) {
	var (
		p                                        Payment
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
	k, err := parsePaymentKind(kind)
	if err != nil {
		return p, fmt.Errorf("payment %s: %w", id, err)
	}
	st, err := parsePaymentStatus(status)
	if err != nil {
		return p, fmt.Errorf("payment %s: %w", id, err)
	}
	var wl []wireLeg
	if err := json.Unmarshal(legs, &wl); err != nil {
		return p, fmt.Errorf("payment %s: legs: %w", id, err)
	}
	p = Payment{ID: domain.PaymentID(id), Kind: k, Status: st, Reference: reference, Authorised: authorised, Captured: captured,
		Refunded: refunded, Released: released, Position: uint64(position), CreatedAt: created.UTC(), UpdatedAt: updated.UTC()}
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

func writePayments(ctx context.Context, tx pgx.Tx, t tableSet, rows []Payment) error {
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

// Reader returns the query side of the live views. Read-your-writes waits use
// PGConfig.Waiter, or poll the view.
func (v *PGViews) Reader() Reader { return &pgReader{v: v, waiter: v.cfg.Waiter} }

// ReaderWaitingOn is Reader with read-your-writes waits woken by w: pass the *Runner that
// runs this process's projectors (it needs the projectors first, hence not a config field).
func (v *PGViews) ReaderWaitingOn(w Waiter) Reader { return &pgReader{v: v, waiter: w} }

type pgReader struct {
	v      *PGViews
	waiter Waiter
}

var _ Reader = (*pgReader)(nil)

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
			return fmt.Errorf("%w: %s, asked for %d: %v", ErrNotCaughtUp, projector, minPosition, ctx.Err())
		case stopped != "":
			return fmt.Errorf("%w: %s stopped at %d: %s", ErrNotCaughtUp, projector, cp, stopped)
		}
		if waited {
			// The Waiter counted a commit the view no longer holds: the database lost it.
			v.requestRecheck(projector)
		}
		// Without a Waiter this is the poll for a lagging projector; with one, the short
		// while until the runner takes the request and Wait blocks again.
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s is at %d, asked for %d: %v", ErrNotCaughtUp, projector, cp, minPosition, ctx.Err())
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
func (v *PGViews) snapshot(ctx context.Context, projector string, minPosition uint64, queue func(*pgx.Batch), scan func(pgx.BatchResults) error) (cp uint64, stopped string, ok bool, err error) {
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
func (v *PGViews) requestRecheck(projector string) {
	select {
	case v.recheck[projector] <- struct{}{}:
	default:
	}
}

func (r *pgReader) Balance(ctx context.Context, id domain.AccountID, asOf AsOf, minPosition uint64) (Balance, error) {
	v := r.v
	pos, at := asOfBounds(asOf)
	var b Balance
	err := r.read(ctx, AccountsProjector, minPosition, func(q *pgx.Batch) {
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
		return Balance{}, err
	}
	return b, nil
}

// scanBalance reads the results of Balance's queries.
func scanBalance(br pgx.BatchResults, id domain.AccountID, asOf AsOf) (Balance, error) {
	a, err := scanAccount(br.QueryRow())
	if errors.Is(err, pgx.ErrNoRows) {
		return Balance{}, fmt.Errorf("%w: account %s", ErrNotFound, id)
	}
	if err != nil {
		return Balance{}, fmt.Errorf("balance of %s: %w", id, err)
	}
	b := a.Balance()
	if asOf.IsNow() {
		return b, nil
	}
	if !includes(asOf, a.OpenedPosition, a.OpenedAt) {
		return Balance{}, fmt.Errorf("%w: account %s was opened at position %d, after the requested point", ErrNotFound, id, a.OpenedPosition)
	}
	var line HistoryRow
	var lpos int64
	err = br.QueryRow().Scan(&lpos, &line.PostedAfter, &line.HeldAfter, &line.RecordedAt)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		b.Posted, b.Held, b.Available, b.Position, b.UpdatedAt = 0, 0, 0, a.OpenedPosition, a.OpenedAt
		return b, nil
	case err != nil:
		return Balance{}, fmt.Errorf("balance of %s as of %+v: %w", id, asOf, err)
	}
	line.Position, line.AvailableAfter, line.RecordedAt = uint64(lpos), line.PostedAfter-line.HeldAfter, line.RecordedAt.UTC()
	return balanceFromLine(b, &line), nil
}

// asOfBounds turns an AsOf into SQL bounds (no bound becomes the largest value).
func asOfBounds(asOf AsOf) (int64, pgtype.Timestamptz) {
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

func (r *pgReader) History(ctx context.Context, id domain.AccountID, afterPosition uint64, limit int, minPosition uint64) ([]Entry, error) {
	if limit <= 0 || limit > MaxHistoryPage {
		return nil, fmt.Errorf("%w: history page size %d: must be 1..%d", domain.ErrInvalidInput, limit, MaxHistoryPage)
	}
	v := r.v
	var out []Entry
	err := r.read(ctx, AccountsProjector, minPosition, func(q *pgx.Batch) {
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
func scanHistory(br pgx.BatchResults, id domain.AccountID, limit int) ([]Entry, error) {
	var exists bool
	if err := br.QueryRow().Scan(&exists); err != nil {
		return nil, fmt.Errorf("history of %s: %w", id, err)
	}
	if !exists {
		return nil, fmt.Errorf("%w: account %s", ErrNotFound, id)
	}
	rows, err := br.Query()
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", id, err)
	}
	defer rows.Close()
	out := make([]Entry, 0, limit)
	for rows.Next() {
		var (
			e                         Entry
			pos, amount, posted, held int64
			pay, kind, code           string
			scale                     int16
		)
		if err := rows.Scan(&pos, &pay, &kind, &amount, &code, &scale, &posted, &held, &e.RecordedAt); err != nil {
			return nil, fmt.Errorf("history of %s: %w", id, err)
		}
		e.Position, e.AccountID, e.PaymentID, e.Kind = uint64(pos), id, domain.PaymentID(pay), EntryKind(kind)
		e.Amount = domain.Money{Minor: amount, Asset: domain.Asset{Code: code, Scale: uint8(scale)}}
		e.PostedAfter, e.AvailableAfter, e.RecordedAt = posted, posted-held, e.RecordedAt.UTC()
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("history of %s: %w", id, err)
	}
	return out, nil
}

func (r *pgReader) Payment(ctx context.Context, id domain.PaymentID, minPosition uint64) (Payment, error) {
	v := r.v
	var p Payment
	err := r.read(ctx, PaymentsProjector, minPosition, func(q *pgx.Batch) {
		q.Queue(`SELECT `+paymentCols+` FROM `+v.live.q(v.live.payment)+` WHERE payment_id = $1`, string(id))
	}, func(br pgx.BatchResults) error {
		var err error
		p, err = scanPayment(br.QueryRow())
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: payment %s", ErrNotFound, id)
		}
		if err != nil {
			return fmt.Errorf("payment %s: %w", id, err)
		}
		return nil
	})
	if err != nil {
		return Payment{}, err
	}
	return p, nil
}

func (r *pgReader) Position(ctx context.Context) (uint64, error) {
	var pos int64
	err := r.v.pool.QueryRow(ctx, `SELECT COALESCE(min(position), 0) FROM `+r.v.live.q("checkpoints")+` WHERE name = ANY($1)`,
		[]string{AccountsProjector, PaymentsProjector}).Scan(&pos)
	if err != nil {
		return 0, fmt.Errorf("views position: %w", err)
	}
	return uint64(pos), nil
}

func isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }
