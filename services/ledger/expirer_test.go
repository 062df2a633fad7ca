package ledger_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/services/ledger"
)

// subscribeCounter counts what Subscribe hands its reader, and from where it was asked.
type subscribeCounter struct {
	eventstore.Store
	after  atomic.Uint64
	events atomic.Uint64
}

func (s *subscribeCounter) Subscribe(ctx context.Context, after uint64, maxBatch int, handle func(context.Context, []eventstore.RecordedEvent) error) error {
	s.after.Store(after)
	return s.Store.Subscribe(ctx, after, maxBatch, func(ctx context.Context, batch []eventstore.RecordedEvent) error {
		s.events.Add(uint64(len(batch)))
		return handle(ctx, batch)
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// runExpirer starts x and returns a stop that waits for it and checks how it ended.
func runExpirer(t *testing.T, x *ledger.Expirer) (stop func()) {
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan error, 1)
	go func() { done <- x.Run(ctx) }()
	return func() {
		t.Helper()
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("expirer stopped with %v, want context.Canceled", err)
		}
	}
}

type restartFixture struct {
	store eventstore.Store
	snaps eventstore.SnapshotStore
	clock *fixedClock
	p     *ledger.Processor
}

// newRestartFixture opens a ledger with an authorisation "early" due in 10 minutes, and a
// first expirer that checkpoints it and stops; it returns the checkpoint's position.
func newRestartFixture(t *testing.T, b backend) (restartFixture, uint64) {
	store, _ := b.open(t)
	snaps, ok := store.(eventstore.SnapshotStore)
	if !ok {
		t.Fatalf("%s store keeps no snapshots", b.name)
	}
	f := restartFixture{store: store, snaps: snaps, clock: &fixedClock{now: time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)}}
	key := bytes.Repeat([]byte{0x5a}, ledger.MinSnapshotKeyBytes)
	f.p = newProcessor(t, store, ledger.Config{Clock: f.clock.Now, SharedStore: b.shared, Snapshots: snaps, SnapshotKey: key})
	open(t, f.p, "world", usd, domain.KindExternal, 0)
	open(t, f.p, "card", usd, domain.KindCustomer, 0)
	open(t, f.p, "shop", usd, domain.KindMerchant, 0)
	exec(t, f.p, domain.Transfer{PaymentID: "fund", Source: "world", Destination: "card", Amount: money(1_000, usd)})
	exec(t, f.p, domain.Authorise{PaymentID: "early", Source: "card", Destination: "shop", Amount: money(100, usd), ExpiresAt: f.clock.Now().Add(10 * time.Minute)})
	exec(t, f.p, domain.Authorise{PaymentID: "voided", Source: "card", Destination: "shop", Amount: money(100, usd), ExpiresAt: f.clock.Now().Add(10 * time.Minute)})
	exec(t, f.p, domain.Void{PaymentID: "voided"})

	first := &ledger.Expirer{Store: store, Processor: f.p, Clock: f.clock.Now, Interval: 10 * time.Millisecond, CheckpointEvery: 10 * time.Millisecond}
	stop := runExpirer(t, first)
	h := head(t, store)
	waitFor(t, "the first expirer checkpoints the log's head", func() bool { return first.Checkpointed() == h })
	stop()
	if first.Expired() != 0 || first.StartedAfter() != 0 {
		t.Fatalf("first expirer: want no expiry and a start from 0 (no checkpoint yet), got %d expired, started after %d", first.Expired(), first.StartedAfter())
	}
	return f, h
}

func (f restartFixture) wantStatus(t *testing.T, want map[domain.PaymentID]domain.PaymentStatus) {
	t.Helper()
	for id, st := range want {
		pay, err := f.p.Payment(ctxT(t), id)
		if err != nil || pay.Status != st {
			t.Fatalf("payment %s: want %s, got %s (err %v)", id, st, pay.Status, err)
		}
	}
}

func TestExpirerRestart(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			t.Run("resumes after its checkpoint", func(t *testing.T) { testExpirerResumes(t, b) })
			t.Run("corrupt checkpoint folds the whole log", func(t *testing.T) { testExpirerCorruptCheckpoint(t, b) })
			t.Run("audit checks the checkpoint against the log", func(t *testing.T) { testExpirerCheckpointAudit(t, b) })
		})
	}
}

// After a restart the expirer reads only the events after its checkpoint, and still
// expires an authorisation it learned of before the checkpoint.
func testExpirerResumes(t *testing.T, b backend) {
	f, cp := newRestartFixture(t, b)
	exec(t, f.p, domain.Authorise{PaymentID: "late", Source: "card", Destination: "shop", Amount: money(100, usd), ExpiresAt: f.clock.Now().Add(20 * time.Minute)})
	exec(t, f.p, domain.Authorise{PaymentID: "future", Source: "card", Destination: "shop", Amount: money(100, usd), ExpiresAt: f.clock.Now().Add(time.Hour)})
	h := head(t, f.store)

	counted := &subscribeCounter{Store: f.store}
	second := &ledger.Expirer{Store: counted, Processor: f.p, Clock: f.clock.Now, Interval: 10 * time.Millisecond, CheckpointEvery: time.Hour}
	stop := runExpirer(t, second)
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	waitFor(t, "the second expirer folds the log's head", func() bool { return second.Position() == h })
	if got := counted.after.Load(); got != cp || second.StartedAfter() != cp {
		t.Fatalf("restart: want the log followed after the checkpoint at %d, got after %d (StartedAfter %d)", cp, got, second.StartedAfter())
	}
	if got := counted.events.Load(); got != h-cp {
		t.Fatalf("restart: want only the %d events after the checkpoint read, got %d (log of %d)", h-cp, got, h)
	}

	f.clock.Advance(30 * time.Minute) // past "early" (before the checkpoint) and "late" (after it)
	waitFor(t, "both due authorisations are expired", func() bool { return second.Expired() >= 2 })
	stop()
	stop = nil
	f.wantStatus(t, map[domain.PaymentID]domain.PaymentStatus{
		"early": domain.PaymentStatusExpired, "late": domain.PaymentStatusExpired,
		"voided": domain.PaymentStatusVoided, "future": domain.PaymentStatusAuthorised,
	})
	// The way out saved a checkpoint that includes the expiries.
	if got, want := second.Checkpointed(), head(t, f.store); got != want {
		t.Fatalf("checkpoint on stop: want position %d, got %d", want, got)
	}
}

// A checkpoint that does not check out is ignored: the expirer folds the log from 0 and
// misses nothing, even when the bad checkpoint is newer than the good one.
func testExpirerCorruptCheckpoint(t *testing.T, b backend) {
	for _, tc := range []struct {
		name string
		mod  func(s *eventstore.Snapshot)
	}{
		{"a byte flipped", func(s *eventstore.Snapshot) { s.State = bytes.Clone(s.State); s.State[len(s.State)-2] ^= 1 }},
		{"truncated", func(s *eventstore.Snapshot) { s.State = s.State[:8] }},
		{"unknown schema", func(s *eventstore.Snapshot) { s.Schema = "securepay.expirer-checkpoint.v0" }},
		{"an empty fold (hides every authorisation)", func(s *eventstore.Snapshot) {
			s.State = append(bytes.Clone(s.State[:32]), `{"position":0,"chain_hash":"","open":[]}`...)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, cp := newRestartFixture(t, b)
			snap, ok, err := f.snaps.LoadSnapshot(ctxT(t), ledger.ExpirerCheckpointStream)
			if err != nil || !ok || snap.Version != cp {
				t.Fatalf("checkpoint: want one at %d, got found=%v version %d (err %v)", cp, ok, snap.Version, err)
			}
			tc.mod(&snap)
			snap.Version = cp + 1000 // newer than the good one, so it replaces it
			if err := f.snaps.SaveSnapshot(ctxT(t), snap); err != nil {
				t.Fatalf("save the corrupt checkpoint: %v", err)
			}
			h := head(t, f.store)
			counted := &subscribeCounter{Store: f.store}
			second := &ledger.Expirer{Store: counted, Processor: f.p, Clock: f.clock.Now, Interval: 10 * time.Millisecond, CheckpointEvery: time.Hour}
			stop := runExpirer(t, second)
			waitFor(t, "the second expirer folds the log's head", func() bool { return second.Position() == h })
			if got := counted.after.Load(); got != 0 || second.StartedAfter() != 0 {
				t.Fatalf("corrupt checkpoint: want the log followed from 0, got after %d (StartedAfter %d)", got, second.StartedAfter())
			}
			if got := counted.events.Load(); got != h {
				t.Fatalf("corrupt checkpoint: want the whole log (%d events) read, got %d", h, got)
			}
			f.clock.Advance(30 * time.Minute)
			waitFor(t, "the authorisation opened before the checkpoint is expired", func() bool { return second.Expired() >= 1 })
			stop()
			f.wantStatus(t, map[domain.PaymentID]domain.PaymentStatus{"early": domain.PaymentStatusExpired, "voided": domain.PaymentStatusVoided})
		})
	}
}

// An auditor, without the key, confirms a genuine checkpoint and names one that hides an
// open authorisation, even with the right position and chain hash.
func testExpirerCheckpointAudit(t *testing.T, b backend) {
	f, cp := newRestartFixture(t, b)
	lister, ok := f.store.(eventstore.SnapshotLister)
	if !ok {
		t.Fatalf("%s store cannot list snapshots", b.name)
	}
	rep, err := ledger.VerifySnapshots(ctxT(t), f.store, lister)
	if err != nil || rep.Checked != 1 || len(rep.Failures) != 0 {
		t.Fatalf("genuine checkpoint at %d: want 1 checked, no failure, got %d checked, failures %v (err %v)", cp, rep.Checked, rep.Failures, err)
	}

	exec(t, f.p, domain.Transfer{PaymentID: "later", Source: "world", Destination: "card", Amount: money(1, usd)})
	h := head(t, f.store)
	last, err := f.store.ReadAll(ctxT(t), h-1, 1)
	if err != nil || len(last) != 1 {
		t.Fatalf("read the head: %v", err)
	}
	body := fmt.Sprintf(`{"position":%d,"chain_hash":"%x","open":[]}`, h, last[0].Hash[:])
	forged := eventstore.Snapshot{Stream: ledger.ExpirerCheckpointStream, Version: h, Schema: "securepay.expirer-checkpoint.v1", State: append(bytes.Repeat([]byte{1}, 32), body...)}
	if err := f.snaps.SaveSnapshot(ctxT(t), forged); err != nil {
		t.Fatal(err)
	}
	rep, err = ledger.VerifySnapshots(ctxT(t), f.store, lister)
	if err != nil || len(rep.Failures) != 1 || rep.Failures[0].Check != ledger.SnapshotStateDiffers || !strings.Contains(rep.Failures[0].Detail, "early is open in the log but missing") {
		t.Fatalf("checkpoint hiding \"early\": want one %q failure naming it, got %v (err %v)", ledger.SnapshotStateDiffers, rep.Failures, err)
	}
}

// BenchmarkExpirerStart measures an expirer's start on a log of expirerBenchEvents events
// with expirerBenchOpen open authorisations: until it has folded the log's head, from its
// checkpoint and (another key, so the checkpoint does not verify) from position 0. The
// events read per start (events/op) is the number that does not depend on the machine.
func BenchmarkExpirerStart(b *testing.B) {
	const expirerBenchEvents, expirerBenchOpen = 100_000, 200
	store, err := embedded.Open(b.TempDir(), embedded.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	clock := &fixedClock{now: time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)}
	key := bytes.Repeat([]byte{0x5a}, ledger.MinSnapshotKeyBytes)
	p := newProcessor(b, store, ledger.Config{Clock: clock.Now, Snapshots: store, SnapshotKey: key})
	open(b, p, "world", usd, domain.KindExternal, 0)
	open(b, p, "card", usd, domain.KindCustomer, 0)
	open(b, p, "shop", usd, domain.KindMerchant, 0)
	exec(b, p, domain.Transfer{PaymentID: "fund", Source: "world", Destination: "card", Amount: money(1_000_000, usd)})
	for i := range expirerBenchOpen {
		exec(b, p, domain.Authorise{PaymentID: domain.PaymentID(fmt.Sprintf("auth-%d", i)), Source: "card", Destination: "shop", Amount: money(100, usd), ExpiresAt: clock.Now().Add(time.Hour)})
	}
	// The rest of the log: events the expirer reads and skips, as it does transfers.
	filler := bytes.Repeat([]byte("x"), 200)
	for n := 0; n < expirerBenchEvents; n += eventstore.MaxEventsPerAppend {
		evs := make([]eventstore.EventData, eventstore.MaxEventsPerAppend)
		for i := range evs {
			evs[i] = eventstore.EventData{ID: fmt.Sprintf("filler-%d", n+i), Type: domain.NamePaymentTransfer + ".bench", Data: filler}
		}
		if _, err := store.Append(ctxT(b), eventstore.StreamAppend{Stream: fmt.Sprintf("bench-filler-%d", n), Expected: eventstore.NoStream(), Events: evs}); err != nil {
			b.Fatal(err)
		}
	}
	h := head(b, store)
	start := func(b *testing.B, p *ledger.Processor) uint64 {
		counted := &subscribeCounter{Store: store}
		x := &ledger.Expirer{Store: counted, Processor: p, Clock: clock.Now, Interval: time.Hour, CheckpointEvery: time.Hour}
		ctx, cancel := context.WithCancel(ctxT(b))
		done := make(chan error, 1)
		go func() { done <- x.Run(ctx) }()
		for x.Position() < h {
			time.Sleep(100 * time.Microsecond)
		}
		cancel()
		<-done
		return counted.events.Load()
	}
	start(b, p) // saves the checkpoint at the head on its way out

	other := newProcessor(b, store, ledger.Config{Clock: clock.Now, Snapshots: store, SnapshotKey: bytes.Repeat([]byte{0x33}, ledger.MinSnapshotKeyBytes)})
	for _, c := range []struct {
		name string
		p    *ledger.Processor
	}{{"from-checkpoint", p}, {"from-0", other}} {
		b.Run(c.name, func(b *testing.B) {
			var read uint64
			for b.Loop() {
				read += start(b, c.p)
			}
			b.ReportMetric(float64(read)/float64(b.N), "events/op")
		})
	}
}
