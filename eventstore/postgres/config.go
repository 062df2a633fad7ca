package postgres

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Defaults for Config.
const (
	DefaultSchema       = "securepay"
	DefaultAppRole      = "securepay_app"
	DefaultMaxConns     = 32
	DefaultPollInterval = 250 * time.Millisecond
	// DefaultLockIdleTimeout bounds how long an append transaction may sit idle while it
	// holds the append lock (a client that stalled or lost its network between two round
	// trips). PostgreSQL then ends that session, so the other writers are not blocked for
	// ever by one stuck process.
	DefaultLockIdleTimeout = 5 * time.Second
	// DefaultAppendTimeout bounds one append transaction (lock wait included). It is the
	// longest an Append that has started can take.
	DefaultAppendTimeout = 30 * time.Second
	// DefaultWriters: one append transaction in flight per store. On a 2-core box shared
	// with PostgreSQL a second one bought nothing (BenchmarkAppendWriters: CPU, not round
	// trips, is the limit there); with the database across a network it hides round trips.
	DefaultWriters = 1
	maxWriters     = 8
)

// Config says where the store lives and how it behaves. Exactly one of DSN and Pool is set.
type Config struct {
	// DSN opens a pool owned (and closed) by the store.
	DSN string
	// MaxConns sizes the pool opened from DSN; 0 means DefaultMaxConns. Appends are
	// serialised by the append lock, so more connections than concurrent writers plus
	// readers gain nothing.
	MaxConns int32
	// Tracer, when set, traces every statement of the pool opened from DSN (a span per
	// query under the caller's span: services/telemetry's PGXTracer).
	Tracer pgx.QueryTracer

	// Pool is a pool owned by the caller; Close leaves it open.
	Pool *pgxpool.Pool

	// Schema holds the store's tables; "" means DefaultSchema. Lower-case identifier.
	Schema string
	// AppRole is the role every write transaction switches to (SET LOCAL ROLE), so writes
	// carry only that role's privileges (INSERT and SELECT on events) whatever the login
	// role is. The login role must be a member of it; "" means DefaultAppRole.
	AppRole string

	// Clock stamps RecordedAt; nil means time.Now. Injected so tests control time.
	Clock func() time.Time

	// Migrate applies pending embedded migrations on Open. Without it Open only checks
	// that the schema is up to date and fails with ErrSchemaNotMigrated otherwise.
	Migrate bool

	// PollInterval bounds how long a subscriber waits before re-reading the log when no
	// notification arrives; 0 means DefaultPollInterval. Notifications normally wake it
	// within a millisecond; polling is the safety net for a lost LISTEN connection.
	PollInterval time.Duration

	// LockIdleTimeout: see DefaultLockIdleTimeout; 0 means the default.
	LockIdleTimeout time.Duration

	// AppendTimeout: see DefaultAppendTimeout; 0 means the default.
	AppendTimeout time.Duration

	// Writers is the number of append transactions the store keeps in flight (1..8);
	// 0 means DefaultWriters. The append lock still serialises them in the database.
	Writers int
}

// Validate reports the first problem with c, without touching the database.
func (c Config) Validate() error {
	var errs []error
	switch {
	case c.DSN == "" && c.Pool == nil:
		errs = append(errs, errors.New("one of DSN and Pool is required"))
	case c.DSN != "" && c.Pool != nil:
		errs = append(errs, errors.New("DSN and Pool are exclusive"))
	}
	if c.MaxConns < 0 {
		errs = append(errs, fmt.Errorf("MaxConns must be >= 0, got %d", c.MaxConns))
	}
	if c.Pool != nil && c.MaxConns != 0 {
		errs = append(errs, errors.New("MaxConns applies only with DSN; size the given Pool yourself"))
	}
	if c.Schema != "" {
		if err := validIdentifier("schema", c.Schema); err != nil {
			errs = append(errs, err)
		}
	}
	if c.AppRole != "" {
		if err := validIdentifier("app role", c.AppRole); err != nil {
			errs = append(errs, err)
		}
	}
	if c.PollInterval < 0 {
		errs = append(errs, fmt.Errorf("PollInterval must be >= 0, got %s", c.PollInterval))
	}
	if c.LockIdleTimeout < 0 || (c.LockIdleTimeout > 0 && c.LockIdleTimeout < time.Millisecond) {
		errs = append(errs, fmt.Errorf("LockIdleTimeout must be 0 or >= 1ms, got %s", c.LockIdleTimeout))
	}
	if c.Writers < 0 || c.Writers > maxWriters {
		//lint:ignore ST1005 like every message of Validate, it starts with the field's exported name
		errs = append(errs, fmt.Errorf("Writers must be 0..%d, got %d", maxWriters, c.Writers))
	}
	if c.AppendTimeout < 0 {
		errs = append(errs, fmt.Errorf("AppendTimeout must be >= 0, got %s", c.AppendTimeout))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("postgres event store config: %w", err)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Schema == "" {
		c.Schema = DefaultSchema
	}
	if c.AppRole == "" {
		c.AppRole = DefaultAppRole
	}
	if c.MaxConns == 0 && c.Pool == nil {
		c.MaxConns = DefaultMaxConns
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.LockIdleTimeout == 0 {
		c.LockIdleTimeout = DefaultLockIdleTimeout
	}
	if c.AppendTimeout == 0 {
		c.AppendTimeout = DefaultAppendTimeout
	}
	if c.Writers == 0 {
		c.Writers = DefaultWriters
	}
	return c
}
