package ledger_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/eventstore/kurrentdb"
	"github.com/securepay/securepay/eventstore/postgres"
	"github.com/securepay/securepay/internal/pgtest"
)

// backend opens stores of one kind for the processor's tests. Every test that is about
// the ledger's guarantees runs against every backend: the guarantees are the processor's
// and the store's together.
type backend struct {
	name   string
	shared bool // several processors may share one store
	// open returns a fresh store; reopen returns another handle on the same store (a
	// second process, for PostgreSQL) or nil if the backend is single-process.
	open func(t testing.TB) (store eventstore.Store, reopen func() eventstore.Store)
}

func backends() []backend {
	bs := []backend{
		{name: "embedded", open: openEmbedded},
		{name: "postgres", shared: true, open: openPostgres},
	}
	// No KurrentDB server can be installed on our machines; where one is given, the
	// ledger's tests run against it too, and where not, TestMain (main_test.go) says so.
	if url := os.Getenv(kurrentEnv); url != "" {
		bs = append(bs, backend{name: "kurrentdb", shared: true, open: func(t testing.TB) (eventstore.Store, func() eventstore.Store) {
			return openKurrent(t, url)
		}})
	}
	return bs
}

const kurrentEnv = "SECUREPAY_KURRENTDB_URL"

func openKurrent(t testing.TB, url string) (eventstore.Store, func() eventstore.Store) {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	namespace := "ledger-test-" + hex.EncodeToString(b[:]) + "-"
	open := func() eventstore.Store {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := kurrentdb.Open(ctx, kurrentdb.Config{URL: url, Namespace: namespace})
		if err != nil {
			t.Fatalf("open kurrentdb store at %s: %v", url, err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	return open(), open
}

func openEmbedded(t testing.TB) (eventstore.Store, func() eventstore.Store) {
	t.Helper()
	s, err := embedded.Open(t.TempDir(), embedded.Options{})
	if err != nil {
		t.Fatalf("open embedded store: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, nil
}

func openPostgres(t testing.TB) (eventstore.Store, func() eventstore.Store) {
	t.Helper()
	dsn, schema := pgtest.DSN(t), pgtest.Schema(t, "ledger_test")
	open := func() eventstore.Store {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := postgres.Open(ctx, postgres.Config{DSN: dsn, Schema: schema, Migrate: true, MaxConns: 24})
		if err != nil {
			t.Fatalf("open postgres store in schema %s: %v", schema, err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	return open(), open
}
