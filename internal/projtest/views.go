package projtest

import (
	"context"
	"errors"
	"sort"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/projections/pg"
	redisviews "github.com/securepay/securepay/projections/redis"
)

// Running projectors and checking views, the same way for every backend of the views:
// the way eventstore/storetest holds one suite for every event store.

// Context returns a context that ends after d or with the test.
func Context(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// StartRunner runs projectors in the background until the test ends, with short retries
// (tests provoke failures); edit changes the configuration first.
func StartRunner(t testing.TB, store eventstore.Store, ps []projections.Projector, edit ...func(*projections.RunnerConfig)) *projections.Runner {
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

// WaitAll waits until every named projector of r reached position.
func WaitAll(t testing.TB, r *projections.Runner, position uint64, names ...string) {
	t.Helper()
	ctx := Context(t, 60*time.Second)
	for _, n := range names {
		if err := r.Wait(ctx, n, position); err != nil {
			st, _ := r.Status(context.Background())
			t.Fatalf("projector %s did not reach position %d: %v (status %+v)", n, position, err, st)
		}
	}
}

// PGViews opens (migrating) the PostgreSQL views in schema.
func PGViews(t testing.TB, pool *pgxpool.Pool, schema string) *pg.Views {
	t.Helper()
	v, err := pg.Open(context.Background(), pg.Config{Pool: pool, Schema: schema, Migrate: true})
	if err != nil {
		t.Fatalf("open postgres views in %s: %v", schema, err)
	}
	return v
}

// RedisViews returns the Redis views on c, with small bounds so that tests reach them.
func RedisViews(t testing.TB, c *redis.Client, low redisviews.Thresholds) *redisviews.Views {
	t.Helper()
	// A generous read bound: these tests prove what the cache holds, on a machine loaded by
	// -race and other packages' tests, where a 50 ms bound skips fills at random. The bound
	// itself, and the fallback when Redis is gone, have tests of their own.
	v, err := redisviews.New(redisviews.Config{Client: c, CacheTTL: time.Minute, NotifyMaxLen: 50, LowBalance: low,
		ExpiringWithin: time.Hour, ReadTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("redis views: %v", err)
	}
	return v
}

// ViewsEqualReplay is the check every backend of the accounts and payments views passes:
// with a log written partly before its projectors start and partly while they run, the
// reader answers what the reference model of the log says (balances, payments, positions,
// status), and its history pages chain and agree with its as-of balances.
func ViewsEqualReplay(t *testing.T, store eventstore.Store, reader projections.Reader, ps []projections.Projector, edit ...func(*projections.RunnerConfig)) {
	l := NewLedger(1, "v-")
	w := NewWriter(store, l)
	ctx := Context(t, 2*time.Minute)
	if _, err := w.Write(ctx, 600, 40, 7); err != nil {
		t.Fatalf("write log: %v", err)
	}
	r := StartRunner(t, store, ps, edit...)
	last, err := w.Write(ctx, 900, 40, 3)
	if err != nil {
		t.Fatalf("write log: %v", err)
	}
	CheckAgainstModel(t, reader, l, last)
	WaitAll(t, r, last, projections.AccountsProjector, projections.PaymentsProjector)
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
	checkHistoryAndAsOf(t, reader, l, last)
}

// CheckAgainstModel compares every account and payment of the reference model with what
// the reader answers at minPosition.
func CheckAgainstModel(t testing.TB, rd projections.Reader, l *Ledger, minPosition uint64) {
	t.Helper()
	ctx := Context(t, 60*time.Second)
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
		if got.Posted != want.Posted || got.Held != want.Held || got.Available() != want.Available() || got.Status != want.Status || got.Kind != want.Kind {
			t.Fatalf("account %s: view has posted %d held %d available %d status %s kind %s; replay of the log has posted %d held %d available %d status %s kind %s",
				id, got.Posted, got.Held, got.Available(), got.Status, got.Kind, want.Posted, want.Held, want.Available(), want.Status, want.Kind)
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

// checkHistoryAndAsOf pages through some accounts' history, checks that the running
// balances chain (each line's posted = previous line's posted +- amount), and that the
// as-of balance at a line's position is that line.
func checkHistoryAndAsOf(t testing.TB, rd projections.Reader, l *Ledger, last uint64) {
	t.Helper()
	ctx := Context(t, time.Minute)
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
				dp, dh := EntryDelta(e.Kind, e.Amount.Minor)
				posted, held = posted+dp, held+dh
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

// EntryDelta is what one history line does to posted and held.
func EntryDelta(kind projections.EntryKind, amount int64) (posted, held int64) {
	switch kind {
	case projections.EntryDebit:
		return -amount, 0
	case projections.EntryCredit:
		return amount, 0
	case projections.EntryHoldPlaced:
		return 0, amount
	case projections.EntryHoldCaptured:
		return -amount, -amount
	case projections.EntryHoldReleased:
		return 0, -amount
	}
	return 0, 0
}
