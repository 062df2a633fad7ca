package projections_test

import (
	"context"
	"errors"
	"sort"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/projections/projtest"
)

func testContext(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// startRunner runs projectors in the background until the test ends.
func startRunner(t testing.TB, store eventstore.Store, ps []projections.Projector, edit ...func(*projections.RunnerConfig)) *projections.Runner {
	t.Helper()
	cfg := projections.RunnerConfig{Store: store, Projectors: ps, RetryBackoff: 10 * time.Millisecond, MaxRetries: 5}
	for _, f := range edit {
		f(&cfg)
	}
	r, err := projections.NewRunner(cfg)
	if err != nil {
		t.Fatalf("new runner: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return r
}

// waitAll waits until every named projector of r reached position.
func waitAll(t testing.TB, r *projections.Runner, position uint64, names ...string) {
	t.Helper()
	ctx := testContext(t, 60*time.Second)
	for _, n := range names {
		if err := r.Wait(ctx, n, position); err != nil {
			st, _ := r.Status(context.Background())
			t.Fatalf("projector %s did not reach position %d: %v (status %+v)", n, position, err, st)
		}
	}
}

// checkAgainstModel compares every account and payment of the reference model with what
// the reader answers.
func checkAgainstModel(t testing.TB, rd projections.Reader, l *projtest.Ledger, minPosition uint64) {
	t.Helper()
	ctx := testContext(t, 60*time.Second)
	ids := make([]domain.AccountID, 0, len(l.State.Accounts))
	for id := range l.State.Accounts {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		want := l.State.Accounts[id]
		got, err := rd.Balance(ctx, id, projections.AsOf{}, minPosition)
		if err != nil {
			t.Fatalf("balance of %s: %v", id, err)
		}
		if got.Posted != want.Posted || got.Held != want.Held || got.Available != want.Available() || got.Status != want.Status || got.Kind != want.Kind {
			t.Fatalf("account %s: view has posted %d held %d available %d status %s kind %s; replay of the log has posted %d held %d available %d status %s kind %s",
				id, got.Posted, got.Held, got.Available, got.Status, got.Kind, want.Posted, want.Held, want.Available(), want.Status, want.Kind)
		}
	}
	for id, want := range l.State.Payments {
		got, err := rd.Payment(ctx, id, minPosition)
		if err != nil {
			t.Fatalf("payment %s: %v", id, err)
		}
		if got.Status != want.Status || got.Kind != want.Kind || got.Authorised != want.Authorised || got.Captured != want.Captured ||
			got.Refunded != want.Refunded || got.Released != want.Released || len(got.Legs) != len(want.Legs) || !got.ExpiresAt.Equal(want.ExpiresAt) {
			t.Fatalf("payment %s: view has %+v; replay has %+v", id, got, want)
		}
	}
}

type viewsCase struct {
	name  string
	store func(testing.TB) eventstore.Store
	views func(testing.TB) (projections.Reader, []projections.Projector)
}

func viewsCases() []viewsCase {
	return []viewsCase{
		{"memory-over-embedded", func(t testing.TB) eventstore.Store { return projtest.EmbeddedStore(t) }, func(t testing.TB) (projections.Reader, []projections.Projector) {
			v := projections.NewMemoryViews(0)
			return v.Reader(), v.Projectors()
		}},
		{"postgres-over-postgres", func(t testing.TB) eventstore.Store { return projtest.PostgresStore(t) }, func(t testing.TB) (projections.Reader, []projections.Projector) {
			v := openPG(t, projtest.Pool(t, 8), projtest.Schema(t, "sp_views"))
			return v.Reader(), v.Projectors()
		}},
	}
}

func openPG(t testing.TB, pool *pgxpool.Pool, schema string) *projections.PGViews {
	t.Helper()
	v, err := projections.OpenPG(context.Background(), projections.PGConfig{Pool: pool, Schema: schema, Migrate: true})
	if err != nil {
		t.Fatalf("open postgres views in %s: %v", schema, err)
	}
	return v
}

func TestViewsEqualReplayOfTheLog(t *testing.T) {
	for _, tc := range viewsCases() {
		t.Run(tc.name, func(t *testing.T) {
			store := tc.store(t)
			reader, ps := tc.views(t)
			l := projtest.NewLedger(1, "v-")
			w := projtest.NewWriter(store, l)
			ctx := testContext(t, 2*time.Minute)
			// Write some history before the projectors start and some while they run.
			if _, err := w.Write(ctx, 600, 40, 7); err != nil {
				t.Fatalf("write log: %v", err)
			}
			r := startRunner(t, store, ps)
			last, err := w.Write(ctx, 900, 40, 3)
			if err != nil {
				t.Fatalf("write log: %v", err)
			}
			checkAgainstModel(t, reader, l, last)
			waitAll(t, r, last, projections.AccountsProjector, projections.PaymentsProjector)
			pos, err := reader.Position(ctx)
			if err != nil || pos != last {
				t.Fatalf("Position() = %d, %v; want %d, nil", pos, err, last)
			}
			st, err := r.Status(ctx)
			if err != nil {
				t.Fatalf("status: %v", err)
			}
			for _, s := range st {
				if s.State != projections.StateRunning || s.Checkpoint != last || s.Head != last || s.LagEvents != 0 {
					t.Fatalf("status of %s = %+v; want running at checkpoint = head = %d with no lag", s.Name, s, last)
				}
			}
			checkHistoryAndAsOf(t, reader, l, store, last)
		})
	}
}

// checkHistoryAndAsOf pages through every account's history, checks that the running
// balances chain (each line's posted = previous line's posted +- amount), and that the
// as-of balance at each line's position is that line.
func checkHistoryAndAsOf(t testing.TB, rd projections.Reader, l *projtest.Ledger, store eventstore.Store, last uint64) {
	t.Helper()
	ctx := testContext(t, time.Minute)
	for _, id := range l.Accounts()[:10] {
		var after uint64
		var posted, held int64
		lines := 0
		for page := 0; page < 1000; page++ {
			es, err := rd.History(ctx, id, after, 7, last)
			if err != nil {
				t.Fatalf("history of %s after %d: %v", id, after, err)
			}
			if len(es) == 0 {
				break
			}
			for _, e := range es {
				switch e.Kind {
				case projections.EntryDebit:
					posted -= e.Amount.Minor
				case projections.EntryCredit:
					posted += e.Amount.Minor
				case projections.EntryHoldPlaced:
					held += e.Amount.Minor
				case projections.EntryHoldCaptured:
					posted -= e.Amount.Minor
					held -= e.Amount.Minor
				case projections.EntryHoldReleased:
					held -= e.Amount.Minor
				}
				if e.PostedAfter != posted || e.AvailableAfter != posted-held {
					t.Fatalf("%s line at %d: posted after %d available after %d; summing the lines gives %d and %d", id, e.Position, e.PostedAfter, e.AvailableAfter, posted, posted-held)
				}
				if lines%5 == 0 {
					b, err := rd.Balance(ctx, id, projections.AsOf{Position: e.Position}, 0)
					if err != nil || b.Posted != posted || b.Held != held || b.Position != e.Position {
						t.Fatalf("%s as of %d = %+v, %v; want posted %d held %d position %d", id, e.Position, b, err, posted, held, e.Position)
					}
					bt, err := rd.Balance(ctx, id, projections.AsOf{Time: e.RecordedAt}, 0)
					if err != nil || bt.Posted != b.Posted && bt.Position < e.Position {
						t.Fatalf("%s as of time %s = %+v, %v; want at least the line at %d", id, e.RecordedAt, bt, err, e.Position)
					}
				}
				lines++
				after = e.Position
			}
		}
		want := l.State.Accounts[id]
		if posted != want.Posted || held != want.Held {
			t.Fatalf("%s: history sums to posted %d held %d; replay has %d and %d", id, posted, held, want.Posted, want.Held)
		}
	}
	if _, err := rd.Balance(ctx, "no-such-account", projections.AsOf{}, 0); !errors.Is(err, projections.ErrNotFound) {
		t.Fatalf("balance of an unknown account: err = %v, want ErrNotFound", err)
	}
}

func TestReadYourWritesTimesOut(t *testing.T) {
	v := projections.NewMemoryViews(0)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := v.Reader().Balance(ctx, "a", projections.AsOf{}, 10)
	if !errors.Is(err, projections.ErrNotCaughtUp) {
		t.Fatalf("balance at min position 10 of an empty view: err = %v, want ErrNotCaughtUp", err)
	}
}

func TestMemoryHistoryCap(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	l := projtest.NewLedger(7, "cap-")
	w := projtest.NewWriter(store, l)
	ctx := testContext(t, time.Minute)
	last, err := w.Write(ctx, 400, 3, 1)
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	v := projections.NewMemoryViews(5)
	r := startRunner(t, store, v.Projectors())
	waitAll(t, r, last, projections.AccountsProjector)
	id := l.Accounts()[0]
	es, err := v.Reader().History(ctx, id, 0, 100, last)
	if !errors.Is(err, projections.ErrHistoryTrimmed) {
		t.Fatalf("history from the start with a cap of 5: %d lines, err %v; want ErrHistoryTrimmed", len(es), err)
	}
	b, err := v.Reader().Balance(ctx, id, projections.AsOf{Position: 3}, 0)
	if !errors.Is(err, projections.ErrHistoryTrimmed) && !errors.Is(err, projections.ErrNotFound) {
		t.Fatalf("balance as of position 3 with a cap of 5: %+v, %v; want ErrHistoryTrimmed", b, err)
	}
	now, err := v.Reader().Balance(ctx, id, projections.AsOf{}, 0)
	if err != nil || now.Posted != l.State.Accounts[id].Posted {
		t.Fatalf("current balance %+v, %v; want posted %d", now, err, l.State.Accounts[id].Posted)
	}
}
