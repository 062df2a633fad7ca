package ledger_test

import (
	"testing"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
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
	return []backend{
		{name: "embedded", open: openEmbedded},
	}
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
