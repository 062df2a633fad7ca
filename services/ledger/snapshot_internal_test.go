package ledger

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/eventstore/postgres"
	"github.com/securepay/securepay/internal/pgtest"
)

// BenchmarkLoadAccount measures loading a 1,000-event account that is not in the cache
// (a cache miss or a restart), per backend:
//
//   - verified: from its snapshot, checked as in production (HMAC, stream, version, and
//     the one-event read that binds it to the log's position and chain hash);
//
//   - unverified: the same snapshot trusted as before snapshots were authenticated
//     (decode, plus the one-event read that checked the version exists), for comparison;
//
//   - no-snapshot: folding all 1,000 events.
//
//     go test ./services/ledger -run '^$' -bench LoadAccount
func BenchmarkLoadAccount(b *testing.B) {
	for _, be := range []struct {
		name string
		open func(b *testing.B) eventstore.Store
	}{
		{"embedded", func(b *testing.B) eventstore.Store {
			s, err := embedded.Open(b.TempDir(), embedded.Options{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Close() })
			return s
		}},
		{"postgres", func(b *testing.B) eventstore.Store {
			s, err := postgres.Open(context.Background(), postgres.Config{DSN: pgtest.DSN(b), Schema: pgtest.Schema(b, "ledger_bench"), Migrate: true})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Close() })
			return s
		}},
	} {
		b.Run(be.name, func(b *testing.B) {
			store := be.open(b)
			snaps := store.(eventstore.SnapshotStore)
			key := make([]byte, MinSnapshotKeyBytes)
			const events = 1000
			p, err := New(store, Config{Snapshots: snaps, SnapshotKey: key, SnapshotEvery: events})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			do := func(cmd domain.Command) {
				if _, err := p.Execute(ctx, Request{Command: cmd}); err != nil {
					b.Fatalf("%T: %v", cmd, err)
				}
			}
			do(domain.OpenAccount{AccountID: "world", Asset: usdAsset, Kind: domain.KindExternal})
			do(domain.OpenAccount{AccountID: "merchant", Asset: usdAsset, Kind: domain.KindMerchant})
			for i := range events - 1 {
				do(domain.Transfer{PaymentID: domain.PaymentID(fmt.Sprintf("p-%d", i)), Source: "world", Destination: "merchant", Amount: domain.Money{Asset: usdAsset, Minor: 1}})
			}
			p.Close() // flushes the snapshot at version 1000
			if snap, ok, err := snaps.LoadSnapshot(ctx, domain.AccountStream("merchant")); err != nil || !ok || snap.Version != events {
				b.Fatalf("want the merchant's snapshot at version %d, got %+v %v %v", events, snap.Version, ok, err)
			}
			auth := snapshotAuth{key: key}
			warn := &snapshotWarnings{logged: map[string]bool{}, log: slog.New(slog.DiscardHandler)}
			check := func(agg *aggregate, err error) {
				if err != nil || agg.version != events || agg.account.Posted != events-1 {
					b.Fatalf("loaded merchant: want version %d posted %d, got %+v (err %v)", events, events-1, agg, err)
				}
			}
			b.Run("verified", func(b *testing.B) {
				defer reportCPU(b)()
				for b.Loop() {
					check(loadAccount(ctx, store, snaps, auth, warn, "merchant"))
				}
				if len(warn.logged) != 0 {
					b.Fatalf("the genuine snapshot was rejected: %v", warn.logged)
				}
			})
			b.Run("unverified", func(b *testing.B) {
				defer reportCPU(b)()
				for b.Loop() {
					check(loadAccountTrusting(ctx, store, snaps, "merchant"))
				}
			})
			b.Run("no-snapshot", func(b *testing.B) {
				defer reportCPU(b)()
				for b.Loop() {
					check(loadAccount(ctx, store, nil, auth, warn, "merchant"))
				}
			})
		})
	}
}

// loadAccountTrusting is loadAccount as it was before snapshots were authenticated: the
// state is decoded and used if its version exists in the log. Only the benchmark uses it.
func loadAccountTrusting(ctx context.Context, store eventstore.Store, snaps eventstore.SnapshotStore, id domain.AccountID) (*aggregate, error) {
	base := &aggregate{stream: domain.AccountStream(id)}
	snap, ok, err := snaps.LoadSnapshot(ctx, base.stream)
	if err != nil {
		return nil, err
	}
	if ok && len(snap.State) > sha256.Size {
		var body snapshotBody
		if err := json.Unmarshal(snap.State[sha256.Size:], &body); err == nil && body.Account.Version == snap.Version {
			last, err := store.ReadStream(ctx, base.stream, snap.Version-1, 1)
			if err != nil {
				return nil, err
			}
			if len(last) == 1 && last[0].StreamVersion == snap.Version {
				base.account, base.version, base.position = body.account(), snap.Version, last[0].Position
			}
		}
	}
	return loadStream(ctx, store, base)
}

// BenchmarkSnapshotCheck isolates the CPU the check adds to a load, without the store: the
// MAC and the decoding of an account snapshot, and the binding compared with the event.
//
//	go test ./services/ledger -run '^$' -bench SnapshotCheck
func BenchmarkSnapshotCheck(b *testing.B) {
	auth := snapshotAuth{key: make([]byte, MinSnapshotKeyBytes)}
	acc := domain.Account{ID: "merchant", Asset: usdAsset, Kind: domain.KindMerchant, Status: domain.AccountStatusOpen,
		Posted: 123_456_789, Version: 1000, Fingerprint: "0123456789abcdef0123456789abcdef"}
	ev := eventstore.RecordedEvent{Stream: domain.AccountStream("merchant"), StreamVersion: 1000, Position: 98_765, Hash: eventstore.Hash{1, 2, 3}}
	snap, err := auth.encode(acc, ev.Stream, ev.Position, ev.Hash)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("verified", func(b *testing.B) {
		defer reportCPU(b)()
		for b.Loop() {
			body, err := auth.open(snap, "merchant")
			if err == nil {
				err = body.fits(ev)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("unverified", func(b *testing.B) {
		defer reportCPU(b)()
		for b.Loop() {
			var body snapshotBody
			if err := json.Unmarshal(snap.State[sha256.Size:], &body); err != nil || body.Version != 1000 {
				b.Fatal(err)
			}
		}
	})
}

// reportCPU adds cpu-ns/op, the process's CPU time (user + system) per operation, to a
// benchmark: on a machine shared with other work the wall time per op mostly measures the
// wait for a core, the CPU time much less so. For PostgreSQL it leaves out the server's.
func reportCPU(b *testing.B) func() {
	start := cpuTime(b)
	return func() {
		if b.N > 0 {
			b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
		}
	}
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
