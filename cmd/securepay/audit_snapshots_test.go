package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/securepay/securepay/audit/tlog"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/eventstore/postgres"
	"github.com/securepay/securepay/services/ledger"
)

// snapshotBackend is a store the test writes through (as the server and then as an
// attacker with the store's write access), and the flags `audit` reads it with.
type snapshotBackend struct {
	name string
	// open returns a store on the log, the audit flags naming it, and whether several
	// processes may share it.
	open func(t *testing.T) (reopen func() eventstore.Store, flags []string, shared bool)
}

func snapshotBackends() []snapshotBackend {
	return []snapshotBackend{
		{"embedded", func(t *testing.T) (func() eventstore.Store, []string, bool) {
			dir := t.TempDir()
			return func() eventstore.Store {
				s, err := embedded.Open(dir, embedded.Options{Logger: quietPebble{log: slog.New(slog.DiscardHandler)}})
				if err != nil {
					t.Fatal(err)
				}
				return s
			}, []string{"--dir", dir}, false
		}},
		{"postgres", func(t *testing.T) (func() eventstore.Store, []string, bool) {
			owner := freshDatabase(t)
			// The serving role writes the log and, as the attacker, the snapshots; the
			// auditor reads with the owner's DSN.
			serving := migrateForServing(t, owner, io.Discard)
			return func() eventstore.Store {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				s, err := postgres.Open(ctx, postgres.Config{DSN: serving})
				if err != nil {
					t.Fatal(err)
				}
				return s
			}, []string{"--postgres-dsn", owner}, true
		}},
	}
}

// TestAuditVerifyNamesAForgedSnapshot: the auditor kept a checkpoint; later a snapshot is
// replaced by one with a changed balance and a MAC recomputed under a guessed key. Both
// `audit verify --since-checkpoint` and plain `audit verify` name it (stream, version,
// position, the field and both values) and fail; before the forgery both say OK.
func TestAuditVerifyNamesAForgedSnapshot(t *testing.T) {
	for _, b := range snapshotBackends() {
		t.Run(b.name, func(t *testing.T) { testAuditVerifySnapshots(t, b) })
	}
}

func testAuditVerifySnapshots(t *testing.T, b snapshotBackend) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reopen, flags, shared := b.open(t)
	usd := domain.Asset{Code: "USD", Scale: 2}
	key := make([]byte, ledger.MinSnapshotKeyBytes)
	_, _ = rand.Read(key)

	store := reopen()
	p, err := ledger.New(store, ledger.Config{Snapshots: store.(eventstore.SnapshotStore), SnapshotKey: key, SnapshotEvery: 2, SharedStore: shared})
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []domain.Command{
		domain.OpenAccount{AccountID: "world", Asset: usd, Kind: domain.KindExternal},
		domain.OpenAccount{AccountID: "alice", Asset: usd, Kind: domain.KindCustomer},
		domain.Transfer{PaymentID: "pay-1", Source: "world", Destination: "alice", Amount: domain.Money{Asset: usd, Minor: 40_00}},
		domain.Transfer{PaymentID: "pay-2", Source: "world", Destination: "alice", Amount: domain.Money{Asset: usd, Minor: 10_00}},
	} {
		if _, err := p.Execute(ctx, ledger.Request{Command: cmd}); err != nil {
			t.Fatalf("execute %T: %v", cmd, err)
		}
	}
	alice, err := p.Account(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	p.Close() // flushes the snapshot writer: alice and world have one at version 2

	// The auditor's checkpoint, signed over the log as it is now.
	cpDir := t.TempDir()
	private, public, err := tlog.GenerateKey(defaultOrigin)
	if err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(cpDir, "key.pub")
	if err := os.WriteFile(pub, []byte(public+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cp, err := openCheckpointer(store, cpDir, private, time.Hour, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	head, err := store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	follow, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { cp.runUntil(follow); close(done) }()
	for cp.tree.Size() < head && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	<-done
	signed, err := cp.signer.Publish()
	cp.close()
	if err != nil {
		t.Fatal(err)
	}
	checkpoint := filepath.Join(t.TempDir(), "checkpoint")
	if err := os.WriteFile(checkpoint, signed.Note, 0o644); err != nil {
		t.Fatal(err)
	}
	store.Close()

	verify := func(args ...string) (string, error) {
		var out, errOut strings.Builder
		err := run(ctx, append(append([]string{"audit", "verify"}, args...), flags...), &out, &errOut, noEnv)
		return out.String(), err
	}
	since := []string{"--since-checkpoint", checkpoint, "--public-key", pub}
	for _, args := range [][]string{since, nil} {
		out, err := verify(args...)
		if err != nil || !strings.Contains(out, "OK: 2 snapshots match the events") {
			t.Fatalf("audit verify %v before the forgery: want OK with 2 snapshots, got %v:\n%s", args, err, out)
		}
	}

	// The attacker writes alice's snapshot at version 3 (above the genuine one) from the
	// documented format: 500,000.00, MAC under a key of their own.
	store = reopen()
	recs, err := store.ReadStream(ctx, domain.AccountStream("alice"), 2, 1)
	if err != nil || len(recs) != 1 {
		t.Fatalf("read alice's version 3: %v", err)
	}
	at := recs[0]
	body, _ := json.Marshal(map[string]any{
		"stream": at.Stream, "version": at.StreamVersion, "position": at.Position, "chain_hash": hex.EncodeToString(at.Hash[:]),
		"account": map[string]any{"id": "alice", "asset_code": "USD", "asset_scale": 2, "kind": uint8(alice.Kind),
			"status": uint8(alice.Status), "posted": 500_000_00, "version": 3, "fingerprint": alice.Fingerprint},
	})
	guessed := make([]byte, 32)
	_, _ = rand.Read(guessed)
	m := hmac.New(sha256.New, guessed)
	m.Write([]byte("securepay.account-snapshot.v2\x00"))
	m.Write(body)
	if err := store.(eventstore.SnapshotStore).SaveSnapshot(ctx, eventstore.Snapshot{Stream: at.Stream, Version: 3,
		Schema: "securepay.account-snapshot.v2", State: append(m.Sum(nil), body...)}); err != nil {
		t.Fatal(err)
	}
	store.Close()

	want := "FAILED: snapshot of account-alice at version 3 (position " + strconv.FormatUint(at.Position, 10) + "): state differs: snapshot vs the fold of the events: posted balance 500000.00 vs 50.00 USD"
	for _, args := range [][]string{since, nil} {
		out, err := verify(args...)
		if err == nil || !strings.Contains(err.Error(), "1 of 2 snapshots do not match the events") || !strings.Contains(out, want) {
			t.Errorf("audit verify %v after the forgery: want it named (%q) and an error, got %v:\n%s", args, want, err, out)
		}
		if len(args) > 0 && !strings.Contains(out, "OK: the log") {
			t.Errorf("audit verify %v: the log itself is unchanged, want its OK line too:\n%s", args, out)
		}
	}
}
