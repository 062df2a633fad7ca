package services

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"
)

// TestEventsRecordAScopedHashOfTheKey: the log is read by every auditor, so the
// Idempotency-Key (a client's secret that replays its response) never appears in it; the
// same key of two principals gives two causation ids; the edge's correlation id, when
// there is one, replaces the command's own id.
func TestEventsRecordAScopedHashOfTheKey(t *testing.T) {
	const key = "retry-token-7f3a9c"
	metaFor := func(caller, correlation string) (causation, corr, actor string) {
		t.Helper()
		meta := newMetaFunc(
			func(context.Context, http.Header) string { return caller },
			func(context.Context, http.Header) string { return correlation },
		)
		req := connect.NewRequest(&struct{}{})
		req.Header().Set(IdempotencyKeyHeader, key)
		m, err := meta(context.Background(), req, "pay-1")
		if err != nil {
			t.Fatal(err)
		}
		return m.CausationID, m.CorrelationID, m.Actor
	}
	alice, corr, actor := metaFor("alice", "c-edge-1")
	bob, corrNone, _ := metaFor("bob", "")
	switch {
	case strings.Contains(alice, key) || strings.Contains(bob, key):
		t.Errorf("causation ids %q, %q contain the raw key %q", alice, bob, key)
	case alice == bob:
		t.Errorf("alice and bob with the same key got the same causation id %q", alice)
	case alice != CausationOfKey("alice", key):
		t.Errorf("causation id %q, want CausationOfKey = %q (clients recompute it)", alice, CausationOfKey("alice", key))
	case corr != "c-edge-1" || corrNone != "pay-1":
		t.Errorf("correlation ids %q (edge gave c-edge-1), %q (no edge id: want the payment id pay-1)", corr, corrNone)
	case actor != "alice":
		t.Errorf("actor %q, want the caller alice", actor)
	}
}
