package ledger_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/services/ledger"
)

// snapshotKey is a fresh secret, as `dev` generates one and `serve` reads one from a file.
func snapshotKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, ledger.MinSnapshotKeyBytes)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// lockedBuffer collects a processor's log lines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// v2Snapshot builds a snapshot in the documented format (docs/SECURITY.md) from nothing but
// the document: what an attacker who read it, but holds no key, can write.
func v2Snapshot(t testing.TB, key []byte, a domain.Account, at eventstore.RecordedEvent) eventstore.Snapshot {
	t.Helper()
	body, err := json.Marshal(map[string]any{
		"stream": at.Stream, "version": at.StreamVersion, "position": at.Position, "chain_hash": hex.EncodeToString(at.Hash[:]),
		"account": map[string]any{
			"id": string(a.ID), "asset_code": a.Asset.Code, "asset_scale": a.Asset.Scale, "kind": uint8(a.Kind),
			"credit_limit": a.CreditLimit, "status": uint8(a.Status), "posted": a.Posted, "held": a.Held,
			"open_holds": a.OpenHolds, "version": a.Version, "fingerprint": a.Fingerprint,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("securepay.account-snapshot.v2\x00"))
	m.Write(body)
	return eventstore.Snapshot{Stream: at.Stream, Version: at.StreamVersion, Schema: "securepay.account-snapshot.v2", State: append(m.Sum(nil), body...)}
}

// TestForgedSnapshotsAreNeverUsed: whoever can write the snapshot table (the database's
// serving role; for the embedded store, whoever can write its files) writes snapshots
// that would let unfunded accounts pay out 500,000.00. A restarted processor ignores every
// one of them, logs each once with its stream and reason, and folds the accounts from
// their events, so every payout is refused. A genuine but old snapshot, and one written
// from the documented format with the right key, are used without a warning.
func TestForgedSnapshotsAreNeverUsed(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) { testForgedSnapshots(t, b) })
	}
}

func testForgedSnapshots(t *testing.T, b backend) {
	store, _ := b.open(t)
	snaps, ok := store.(eventstore.SnapshotStore)
	if !ok {
		t.Fatalf("%s store does not keep snapshots", b.name)
	}
	ctx := ctxT(t)
	key := snapshotKey(t)
	const million, payout = 1_000_000_00, 500_000_00
	withSnapshots := ledger.Config{Snapshots: snaps, SnapshotKey: key, SnapshotEvery: 2, SharedStore: b.shared}

	// Genuine history: "replayed" and "moved" are funded with 1,000,000.00 (a snapshot at
	// version 2 each), "v-*" accounts are opened and never funded.
	p1 := newProcessor(t, store, withSnapshots)
	open(t, p1, "world", usd, domain.KindExternal, 0)
	victims := []string{"v-balance", "v-copied", "v-garbage", "v-short", "v-unauthenticated-v1", "v-wrong-version"}
	for _, id := range append([]string{"replayed", "moved", "truthful"}, victims...) {
		open(t, p1, id, usd, domain.KindCustomer, 0)
	}
	for _, id := range []string{"replayed", "moved"} {
		exec(t, p1, domain.Transfer{PaymentID: domain.PaymentID("fund-" + id), Source: "world", Destination: domain.AccountID(id), Amount: money(million, usd)})
	}
	truthful, err := p1.Account(ctx, "truthful")
	if err != nil {
		t.Fatal(err)
	}
	victim, err := p1.Account(ctx, "v-balance")
	if err != nil {
		t.Fatal(err)
	}
	p1.Close() // flushes the snapshot writer
	genuine, ok, err := snaps.LoadSnapshot(ctx, domain.AccountStream("moved"))
	if err != nil || !ok || genuine.Version != 2 {
		t.Fatalf("the genuine snapshot of moved at version 2: got %+v, %v, %v", genuine, ok, err)
	}

	// Both funded accounts spend 900,000.00 under a processor that writes no snapshot, so
	// the store keeps their version-2 snapshots, which still show 1,000,000.00.
	p2 := newProcessor(t, store, ledger.Config{SharedStore: b.shared})
	for _, id := range []string{"replayed", "moved"} {
		exec(t, p2, domain.Transfer{PaymentID: domain.PaymentID("spend-" + id), Source: domain.AccountID(id), Destination: "world", Amount: money(900_000_00, usd)})
	}
	p2.Close()

	first := func(id string) eventstore.RecordedEvent {
		recs, err := store.ReadStream(ctx, domain.AccountStream(domain.AccountID(id)), 0, 1)
		if err != nil || len(recs) != 1 {
			t.Fatalf("read the first event of %s: %v", id, err)
		}
		return recs[0]
	}
	garbage := make([]byte, 200)
	_, _ = rand.Read(garbage)
	rich := victim
	rich.Posted = payout
	unauthV1, _ := json.Marshal(map[string]any{"id": "v-unauthenticated-v1", "asset_code": "USD", "asset_scale": 2, "kind": uint8(domain.KindCustomer),
		"status": uint8(victim.Status), "posted": payout, "version": 1})
	wrongVersion := victim
	wrongVersion.ID, wrongVersion.Posted = "v-wrong-version", payout
	forged := []struct {
		name, account string
		snap          eventstore.Snapshot
		reason        string
	}{
		{"changed balance, from the documented format with a guessed key", "v-balance",
			v2Snapshot(t, snapshotKey(t), rich, first("v-balance")), "MAC does not verify"},
		{"a genuine snapshot copied from another account", "v-copied",
			eventstore.Snapshot{Stream: domain.AccountStream("v-copied"), Version: genuine.Version, Schema: genuine.Schema, State: genuine.State}, "it is the snapshot of account-moved"},
		{"a genuine snapshot moved to a later version", "moved",
			eventstore.Snapshot{Stream: genuine.Stream, Version: 3, Schema: genuine.Schema, State: genuine.State}, "stored at version 3 but it folded version 2"},
		{"garbage bytes", "v-garbage",
			eventstore.Snapshot{Stream: domain.AccountStream("v-garbage"), Version: 1, Schema: "securepay.account-snapshot.v2", State: garbage}, "MAC does not verify"},
		{"shorter than a MAC", "v-short",
			eventstore.Snapshot{Stream: domain.AccountStream("v-short"), Version: 1, Schema: "securepay.account-snapshot.v2", State: []byte("{}")}, "shorter than its MAC"},
		{"the old unauthenticated format", "v-unauthenticated-v1",
			eventstore.Snapshot{Stream: domain.AccountStream("v-unauthenticated-v1"), Version: 1, Schema: "securepay.account-snapshot.v1", State: unauthV1}, "is not securepay.account-snapshot.v2"},
		{"bound to a version the stream does not have", "v-wrong-version",
			func() eventstore.Snapshot {
				at := first("v-wrong-version")
				at.StreamVersion, at.Position = 5, at.Position+100
				wrongVersion.Version = 5
				return v2Snapshot(t, snapshotKey(t), wrongVersion, at)
			}(), "MAC does not verify"},
	}
	for _, f := range forged {
		if err := snaps.SaveSnapshot(ctx, f.snap); err != nil {
			t.Fatalf("%s: the store refused the forged snapshot (the test must get it stored): %v", f.name, err)
		}
	}
	// A truthful snapshot written from the documented format with the server's key: the
	// format in docs/SECURITY.md is the one the processor reads.
	if err := snaps.SaveSnapshot(ctx, v2Snapshot(t, key, truthful, first("truthful"))); err != nil {
		t.Fatal(err)
	}

	var logs lockedBuffer
	cfg := withSnapshots
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	p3 := newProcessor(t, store, cfg)
	for _, id := range append([]string{"replayed", "moved", "truthful"}, victims...) {
		_, err := p3.Execute(ctx, ledger.Request{Command: domain.Transfer{PaymentID: domain.PaymentID("payout-" + id), Source: domain.AccountID(id),
			Destination: "world", Amount: money(payout, usd)}})
		if !errors.Is(err, domain.ErrInsufficientFunds) {
			t.Errorf("%s pays out 500,000.00: want ErrInsufficientFunds (a forged or old snapshot must not fund it), got %v", id, err)
		}
		a, err := p3.Account(ctx, domain.AccountID(id))
		want := int64(0)
		if id == "replayed" || id == "moved" {
			want = million - 900_000_00
		}
		if err != nil || a.Posted != want {
			t.Errorf("%s after restart: want posted %d (folded from the log), got %d (err %v)", id, want, a.Posted, err)
		}
	}
	out := logs.String()
	for _, f := range forged {
		stream := "stream=" + domain.AccountStream(domain.AccountID(f.account))
		line := ""
		for l := range strings.Lines(out) {
			if strings.Contains(l, "snapshot ignored") && strings.Contains(l, stream+" ") {
				line = l
			}
		}
		if n := strings.Count(out, stream+" "); n != 1 || !strings.Contains(line, f.reason) {
			t.Errorf("%s: want one warning naming %s with reason %q, got %d lines; log:\n%s", f.name, stream, f.reason, n, out)
		}
	}
	for _, id := range []string{"replayed", "truthful"} {
		if s := "stream=" + domain.AccountStream(domain.AccountID(id)) + " "; strings.Contains(out, s) {
			t.Errorf("%s: a genuine snapshot was logged as ignored:\n%s", id, out)
		}
	}
}
