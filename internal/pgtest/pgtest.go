// Package pgtest gives tests the throw-away PostgreSQL cluster named by Env: its DSN, a
// pool, and schemas no other test uses. Every package whose tests need PostgreSQL (the
// event store, the views, the ledger, the audit) takes them from here, so the variable's
// name and the clean-up are written once.
//
// It depends on pgx alone, so that the tests inside eventstore/postgres can use it
// without an import cycle.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Env names the superuser DSN of the throw-away cluster (infra/local/test.sh sets it).
const Env = "SECUREPAY_TEST_POSTGRES_DSN"

// dropTimeout bounds the clean-up of one schema; a DROP ... CASCADE of a test's tables
// takes well under a second.
const dropTimeout = 30 * time.Second

// DSN returns the DSN of the test cluster. Without one the test fails rather than skips:
// a backend that was not tested must not look green.
func DSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv(Env)
	if dsn == "" {
		t.Fatalf("%s is not set: run infra/local/test.sh (or infra/local/postgres.sh start DIR PORT and export the DSN it prints)", Env)
	}
	return dsn
}

// Pool connects to the test cluster with up to maxConns connections; closed at cleanup.
func Pool(t testing.TB, maxConns int32) *pgxpool.Pool {
	t.Helper()
	pc, err := pgxpool.ParseConfig(DSN(t))
	if err != nil {
		t.Fatalf("parse %s: %v", Env, err)
	}
	pc.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatalf("connect to %s: %v (run infra/local/test.sh)", Env, err)
	}
	if err := pool.Ping(context.Background()); err != nil {
		pool.Close()
		t.Fatalf("ping %s: %v (is the test cluster running? run infra/local/test.sh)", Env, err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Schema returns a schema name that no other test uses, prefix_<random>, and drops that
// schema with everything in it when the test ends. It does not create the schema: the
// code under test does, with the migrations it runs in production.
func Schema(t testing.TB, prefix string) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("random schema name: %v", err)
	}
	schema := prefix + "_" + hex.EncodeToString(b[:])
	dsn := DSN(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), dropTimeout)
		defer cancel()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Errorf("drop schema %s: connect: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return schema
}
