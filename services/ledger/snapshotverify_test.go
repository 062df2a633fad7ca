package ledger_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/services/ledger"
)

// TestVerifySnapshotsWithoutTheKey: an auditor, who does not hold the server's snapshot
// key, checks every stored snapshot against the events. Genuine snapshots pass; each
// forgery is named with its stream, version, position and the check it failed.
func TestVerifySnapshotsWithoutTheKey(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) { testVerifySnapshots(t, b) })
	}
}

func testVerifySnapshots(t *testing.T, b backend) {
	store, _ := b.open(t)
	snaps, ok := store.(eventstore.SnapshotStore)
	if !ok {
		t.Fatalf("%s store does not keep snapshots", b.name)
	}
	lister, ok := store.(eventstore.SnapshotLister)
	if !ok {
		// KurrentDB keeps snapshots in streams of its own; `audit verify` does not open it.
		t.Skipf("%s store cannot list its snapshots (not an audit backend)", b.name)
	}
	ctx := ctxT(t)
	p := newProcessor(t, store, ledger.Config{Snapshots: snaps, SnapshotKey: snapshotKey(t), SnapshotEvery: 2, SharedStore: b.shared})
	open(t, p, "world", usd, domain.KindExternal, 0)
	ids := []string{"genuine", "balance", "source", "copied", "moved", "rebound", "position", "hash", "short", "garbled"}
	for _, id := range ids {
		open(t, p, id, usd, domain.KindCustomer, 0)
		exec(t, p, domain.Transfer{PaymentID: domain.PaymentID("fund-" + id), Source: "world", Destination: domain.AccountID(id), Amount: money(40_00, usd)})
		// A third event: snapshots are at version 2 (40.00), the log goes on to 50.00, and
		// a forgery at version 3 replaces the genuine snapshot (the higher version wins).
		exec(t, p, domain.Transfer{PaymentID: domain.PaymentID("more-" + id), Source: "world", Destination: domain.AccountID(id), Amount: money(10_00, usd)})
	}
	accounts := map[string]domain.Account{}
	for _, id := range ids {
		a, err := p.Account(ctx, domain.AccountID(id))
		if err != nil {
			t.Fatal(err)
		}
		accounts[id] = a
	}
	p.Close() // flushes the snapshot writer

	rep, err := ledger.VerifySnapshots(ctx, store, lister)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Failures) != 0 || rep.Checked < len(ids) {
		t.Fatalf("genuine snapshots: want %d or more checked and no failure, got %d checked, failures %v", len(ids), rep.Checked, rep.Failures)
	}

	at := func(id string, version uint64) eventstore.RecordedEvent {
		recs, err := store.ReadStream(ctx, domain.AccountStream(domain.AccountID(id)), version-1, 1)
		if err != nil || len(recs) != 1 {
			t.Fatalf("read version %d of %s: %v", version, id, err)
		}
		return recs[0]
	}
	load := func(id string) eventstore.Snapshot {
		s, ok, err := snaps.LoadSnapshot(ctx, domain.AccountStream(domain.AccountID(id)))
		if err != nil || !ok || s.Version != 2 {
			t.Fatalf("the genuine snapshot of %s at version 2: got version %d, %v, %v", id, s.Version, ok, err)
		}
		return s
	}
	rich := accounts["balance"]
	rich.Posted = 500_000_00
	source := load("source")
	moved := load("moved")
	// The genuine state of version 2, restamped and bound to version 3's event: the
	// binding is the log's, the state is not what the log had at version 3.
	rebound := accounts["rebound"]
	rebound.Posted -= 10_00
	// Version 3's event, but the position of version 2's.
	wrongPos := at("position", 3)
	wrongPos.Position = at("position", 2).Position
	wrongHash := at("hash", 3)
	wrongHash.Hash[0] ^= 1

	forged := []struct {
		name, account string
		snap          eventstore.Snapshot
		check         ledger.SnapshotCheck
		detail        string
	}{
		{"changed balance, MAC recomputed with a guessed key", "balance",
			v2Snapshot(t, snapshotKey(t), rich, at("balance", 3)), ledger.SnapshotStateDiffers, "posted balance 500000.00 vs 50.00 USD"},
		{"a genuine snapshot copied to another account", "copied",
			eventstore.Snapshot{Stream: domain.AccountStream("copied"), Version: 3, Schema: source.Schema, State: source.State}, ledger.SnapshotWrongStream, "snapshot of account-source"},
		{"a genuine snapshot moved to another version", "moved",
			eventstore.Snapshot{Stream: moved.Stream, Version: 3, Schema: moved.Schema, State: moved.State}, ledger.SnapshotWrongVersion, "stored at version 3, but its body folded version 2"},
		{"a snapshot moved to another version, MAC recomputed", "rebound",
			v2Snapshot(t, snapshotKey(t), rebound, at("rebound", 3)), ledger.SnapshotStateDiffers, "posted balance 40.00 vs 50.00 USD"},
		{"bound to another event's position", "position",
			v2Snapshot(t, snapshotKey(t), accounts["position"], wrongPos), ledger.SnapshotUnknownPosition, "is at position"},
		{"bound to a changed chain hash", "hash",
			v2Snapshot(t, snapshotKey(t), accounts["hash"], wrongHash), ledger.SnapshotHashMismatch, "has chain hash"},
		{"shorter than a MAC", "short",
			eventstore.Snapshot{Stream: domain.AccountStream("short"), Version: 3, Schema: "securepay.account-snapshot.v2", State: []byte("{}")}, ledger.SnapshotMalformed, "shorter than its MAC"},
		{"a body that is not JSON", "garbled",
			eventstore.Snapshot{Stream: domain.AccountStream("garbled"), Version: 3, Schema: "securepay.account-snapshot.v2", State: make([]byte, 64)}, ledger.SnapshotMalformed, "does not decode"},
	}
	for _, f := range forged {
		if err := snaps.SaveSnapshot(ctx, f.snap); err != nil {
			t.Fatalf("%s: the store refused the forged snapshot: %v", f.name, err)
		}
		if s, _, err := snaps.LoadSnapshot(ctx, f.snap.Stream); err != nil || s.Version != f.snap.Version {
			t.Fatalf("%s: the forgery was not stored (got version %d, %v)", f.name, s.Version, err)
		}
	}

	// Snapshots the ledger never loads are listed as not checked, never as failures.
	for _, snap := range []eventstore.Snapshot{
		{Stream: domain.AccountStream("never-opened"), Version: 1, Schema: "securepay.account-snapshot.v1", State: []byte(`{"posted":1}`)},
		{Stream: domain.PaymentStream("fund-genuine"), Version: 1, Schema: "securepay.account-snapshot.v2", State: make([]byte, 40)},
	} {
		if err := snaps.SaveSnapshot(ctx, snap); err != nil {
			t.Fatal(err)
		}
	}

	rep, err = ledger.VerifySnapshots(ctx, store, lister)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]ledger.SnapshotFailure{}
	for _, f := range rep.Failures {
		got[f.Stream] = f
	}
	for _, f := range forged {
		stream := domain.AccountStream(domain.AccountID(f.account))
		g, ok := got[stream]
		switch {
		case !ok:
			t.Errorf("%s: not named; failures: %v", f.name, rep.Failures)
		case g.Check != f.check || !strings.Contains(g.Detail, f.detail) || g.Version != f.snap.Version:
			t.Errorf("%s: want %s at version %d with %q, got %s", f.name, f.check, f.snap.Version, f.detail, g)
		case g.Position == 0 && f.check != ledger.SnapshotMalformed:
			t.Errorf("%s: the failure names no position: %s", f.name, g)
		}
	}
	if len(rep.Failures) != len(forged) {
		t.Errorf("want exactly the %d forgeries named, got %d: %v", len(forged), len(rep.Failures), rep.Failures)
	}
	if rep.IgnoredCount != 2 || len(rep.Ignored) != 2 || !strings.Contains(strings.Join(rep.Ignored, "\n"), "payment-fund-genuine") {
		t.Errorf("want the v1 and the payment snapshot listed as not checked, got %d: %v", rep.IgnoredCount, rep.Ignored)
	}
	if _, bad := got[domain.AccountStream("genuine")]; bad {
		t.Errorf("the genuine snapshot was named: %v", got)
	}
}

// BenchmarkVerifySnapshots is the auditor's snapshot check over a log of 500 accounts
// with a snapshot each and a world account whose stream holds every transfer: each
// stream is folded once, to its snapshot's version, so the cost follows the log's size.
func BenchmarkVerifySnapshots(b *testing.B) {
	for _, be := range backends() {
		b.Run(be.name, func(b *testing.B) {
			store, _ := be.open(b)
			snaps := store.(eventstore.SnapshotStore)
			const accounts, credits = 500, 4
			p := newProcessor(b, store, ledger.Config{Snapshots: snaps, SnapshotKey: snapshotKey(b), SnapshotEvery: 4, SharedStore: be.shared})
			open(b, p, "world", usd, domain.KindExternal, 0)
			for i := range accounts {
				id := domain.AccountID("acct-" + strconv.Itoa(i))
				open(b, p, string(id), usd, domain.KindCustomer, 0)
				for j := range credits {
					exec(b, p, domain.Transfer{PaymentID: domain.PaymentID(string(id) + "-" + strconv.Itoa(j)), Source: "world", Destination: id, Amount: money(1_00, usd)})
				}
			}
			p.Close()
			lister := store.(eventstore.SnapshotLister)
			ctx := ctxT(b)
			b.ResetTimer()
			var rep ledger.SnapshotReport
			for b.Loop() {
				var err error
				if rep, err = ledger.VerifySnapshots(ctx, store, lister); err != nil {
					b.Fatal(err)
				}
			}
			if len(rep.Failures) != 0 || rep.Checked != accounts+1 {
				b.Fatalf("want %d snapshots checked and no failure, got %d, %v", accounts+1, rep.Checked, rep.Failures)
			}
			b.ReportMetric(float64(rep.Checked), "snapshots")
		})
	}
}
