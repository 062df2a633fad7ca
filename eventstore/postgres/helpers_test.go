package postgres

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/storetest"
	"github.com/securepay/securepay/internal/pgtest"
)

func TestMain(m *testing.M) {
	storetest.CrashChildMain(m, openLocation)
}

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// superPool is a small pool connected as the cluster's superuser, for set-up, clean-up and
// for doing what the application role must not be able to do.
func superPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return pgtest.Pool(t, 4)
}

// freshSchema names a schema no other test uses and drops it when the test ends.
func freshSchema(t testing.TB) string {
	t.Helper()
	return pgtest.Schema(t, "sp_test")
}

// A location is the DSN and the schema, joined by '#': one string the conformance suite
// can hand to a child process.
func location(dsn, schema string) string { return dsn + "#" + schema }

func openLocation(loc string) (eventstore.Store, error) {
	dsn, schema, ok := strings.Cut(loc, "#")
	if !ok {
		return nil, fmt.Errorf("location %q is not DSN#schema", loc)
	}
	return Open(context.Background(), Config{DSN: dsn, Schema: schema, Migrate: true, MaxConns: 16})
}

// openStore opens a store on schema (migrating it), closed when the test ends.
func openStore(t testing.TB, schema string, edit ...func(*Config)) *Store {
	t.Helper()
	cfg := Config{DSN: pgtest.DSN(t), Schema: schema, Migrate: true, MaxConns: 16}
	for _, f := range edit {
		f(&cfg)
	}
	s, err := Open(testContext(t), cfg)
	if err != nil {
		t.Fatalf("open store on schema %s: %v", schema, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// tamper rewrites one event's data as the superuser, with triggers switched off for the
// session: the attack the hash chain exists to expose.
func tamper(t testing.TB, s eventstore.Store, position uint64) {
	t.Helper()
	ps, ok := s.(*Store)
	if !ok {
		t.Fatalf("tamper: store is %T, want *postgres.Store", s)
	}
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, pgtest.DSN(t))
	if err != nil {
		t.Fatalf("tamper: connect: %v", err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatalf("tamper: begin: %v", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "SET LOCAL session_replication_role = replica"); err != nil {
		t.Fatalf("tamper: bypass triggers: %v", err)
	}
	tag, err := tx.Exec(ctx, "UPDATE "+pgx.Identifier{ps.cfg.Schema, "events"}.Sanitize()+
		" SET data = data || '\\x2000'::bytea WHERE position = $1", int64(position))
	if err != nil {
		t.Fatalf("tamper: update position %d: %v", position, err)
	}
	if tag.RowsAffected() != 1 {
		t.Fatalf("tamper: update position %d touched %d rows, want 1", position, tag.RowsAffected())
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("tamper: commit: %v", err)
	}
}

func harness() storetest.Harness {
	return storetest.Harness{
		New: func(t testing.TB) eventstore.Store {
			return openStore(t, freshSchema(t))
		},
		NewWithPollInterval: func(t testing.TB, poll time.Duration) eventstore.Store {
			return openStore(t, freshSchema(t), func(c *Config) { c.PollInterval = poll })
		},
		NewLocation: func(t testing.TB) string {
			return location(pgtest.DSN(t), freshSchema(t))
		},
		Open:   openLocation,
		Tamper: tamper,
	}
}

// event builds test event data whose payload names it.
func event(id string) eventstore.EventData {
	return eventstore.EventData{
		ID:       id,
		Type:     "test.event.v1",
		Data:     []byte(`{"id":"` + id + `"}`),
		Metadata: eventstore.Metadata{CorrelationID: "corr-" + id, Actor: "spiffe://securepay.dev/test"},
	}
}
