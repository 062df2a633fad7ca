// Package pg keeps the accounts (balances + history) and payments views in PostgreSQL:
// their projectors (apply.go), the reads that prove what they answer (read.go), the
// rebuild without downtime (rebuild.go), what operators see of them (admin.go) and the
// schema's migrations. It is to projections what eventstore/postgres is to eventstore.
//
// Each projector's batch is one transaction: lock the checkpoint row, check it is where
// the batch starts, load the rows the batch touches (one query), fold in memory (the
// projections fold), write the changed rows with one multi-row upsert (unnest) and the new
// history lines with COPY, move the checkpoint, commit. A crash anywhere before COMMIT
// leaves the view and its checkpoint as they were; after COMMIT both moved. Nothing is
// counted twice.
package pg

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
)

// DefaultSchema holds the views unless Config.Schema says otherwise.
const DefaultSchema = "securepay_views"

// Config configures the PostgreSQL views.
type Config struct {
	Pool *pgxpool.Pool
	// Schema holds the view tables; "" means DefaultSchema.
	Schema string
	// Migrate creates or upgrades the schema on open.
	Migrate bool
	// Waiter, when the projectors run in this process (a *Runner), wakes read-your-writes
	// waits as soon as a batch commits; without it the reader polls the view. Either way a
	// read answers only from a snapshot whose checkpoint includes the position asked for.
	Waiter projections.Waiter
	// MaxWait bounds a read-your-writes wait when the caller's context has no deadline;
	// default 10s.
	MaxWait time.Duration
}

var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Validate reports problems with c without touching the database.
func (c Config) Validate() error {
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

// Views are the accounts (balances + history) and payments views in PostgreSQL.
type Views struct {
	cfg    Config
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

// Open checks (or, with Migrate, creates) the view schema.
func Open(ctx context.Context, cfg Config) (*Views, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Schema == "" {
		cfg.Schema = DefaultSchema
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = 10 * time.Second
	}
	v := &Views{cfg: cfg, pool: cfg.Pool, schema: cfg.Schema, live: liveTables(cfg.Schema), recheck: map[string]chan struct{}{
		projections.AccountsProjector: make(chan struct{}, 1),
		projections.PaymentsProjector: make(chan struct{}, 1),
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

// Schema returns the schema holding the views.
func (v *Views) Schema() string { return v.schema }

// Projectors returns the projectors of the live views.
func (v *Views) Projectors() []projections.Projector {
	return []projections.Projector{
		&pgAccounts{pgBase{v: v, t: v.live, name: projections.AccountsProjector}},
		&pgPayments{pgBase{v: v, t: v.live, name: projections.PaymentsProjector}},
	}
}

// projectorOn returns the named projector writing the given table set.
func (v *Views) projectorOn(name string, t tableSet) (projections.Projector, error) {
	switch name {
	case projections.AccountsProjector:
		return &pgAccounts{pgBase{v: v, t: t, name: name}}, nil
	case projections.PaymentsProjector:
		return &pgPayments{pgBase{v: v, t: t, name: name}}, nil
	}
	return nil, fmt.Errorf("postgres views: no projector named %q (known: %s, %s)", name, projections.AccountsProjector, projections.PaymentsProjector)
}

// tablesOf lists the tables a projector owns in a table set.
func tablesOf(name string, t tableSet) []string {
	if name == projections.AccountsProjector {
		return []string{t.balances, t.history}
	}
	return []string{t.payment}
}
