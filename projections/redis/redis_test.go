package redis_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/internal/pgtest"
	"github.com/securepay/securepay/internal/projtest"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/projections/memory"
	redisviews "github.com/securepay/securepay/projections/redis"
)

func TestRedisCacheHealsAfterFlush(t *testing.T) {
	store := projtest.PostgresStore(t)
	pool := pgtest.Pool(t, 8)
	pg := projtest.PGViews(t, pool, pgtest.Schema(t, "sp_views"))
	rc := projtest.Redis(t, 2)
	rv := projtest.RedisViews(t, rc, redisviews.Thresholds{})
	l := projtest.NewLedger(21, "c-")
	w := projtest.NewWriter(store, l)
	ctx := projtest.Context(t, 2*time.Minute)
	r := projtest.StartRunner(t, store, append(pg.Projectors(), rv.Projectors()...))
	reader := rv.CachedReader(pg.ReaderWaitingOn(r)) // waits woken in-process by the runner

	last, err := w.Write(ctx, 500, 20, 5)
	if err != nil {
		t.Fatal(err)
	}
	projtest.WaitAll(t, r, last, projections.AccountsProjector, redisviews.BalanceCacheProjector)
	// Fill the cache, then keep writing: the projector must keep the entries current.
	projtest.CheckAgainstModel(t, reader, l, last)
	for _, id := range l.Accounts() {
		if n, err := rc.Exists(ctx, rv.BalanceKey(id)).Result(); err != nil || n != 1 {
			t.Fatalf("cache entry of %s after a read: exists = %d, %v; want 1", id, n, err)
		}
	}
	if last, err = w.Write(ctx, 500, 20, 5); err != nil {
		t.Fatal(err)
	}
	projtest.WaitAll(t, r, last, projections.AccountsProjector, redisviews.BalanceCacheProjector)
	// Read only the cache: every entry must equal the model without help from PostgreSQL.
	for _, id := range l.Accounts() {
		m, err := rc.HGetAll(ctx, rv.BalanceKey(id)).Result()
		if err != nil {
			t.Fatal(err)
		}
		want := l.State.Accounts[id]
		if m["posted"] != itoa(want.Posted) || m["held"] != itoa(want.Held) || m["status"] != want.Status.String() {
			t.Fatalf("cache entry of %s = %v; the log says posted %d held %d status %s", id, m, want.Posted, want.Held, want.Status)
		}
	}

	// Redis loses everything (FLUSHDB of the database the views use; FLUSHALL would also
	// wipe other packages' tests running beside this one): the cache and the notifications heal.
	if err := rc.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if last, err = w.Write(ctx, 300, 20, 5); err != nil {
		t.Fatal(err)
	}
	projtest.WaitAll(t, r, last, projections.AccountsProjector)
	projtest.CheckAgainstModel(t, reader, l, last) // misses fill from PostgreSQL
	// The projectors notice the lost checkpoint and replay; their checkpoints come back.
	deadline := time.Now().Add(30 * time.Second)
	for {
		cp, _ := rc.Get(ctx, rv.CheckpointKey(redisviews.NotificationsProjector)).Uint64()
		cc, _ := rc.Get(ctx, rv.CheckpointKey(redisviews.BalanceCacheProjector)).Uint64()
		if cp == last && cc == last {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after FLUSHDB the redis checkpoints are %d and %d; want both back at %d", cc, cp, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if last, err = w.Write(ctx, 200, 20, 5); err != nil {
		t.Fatal(err)
	}
	projtest.WaitAll(t, r, last, projections.AccountsProjector, redisviews.BalanceCacheProjector)
	projtest.CheckAgainstModel(t, reader, l, last)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestNotifications(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	rc := projtest.Redis(t, 3)
	l := projtest.NewLedger(1, "n-")
	ctx := projtest.Context(t, time.Minute)
	usd := l.USD
	// A small scripted ledger: alice is funded, pays bob, drops under her threshold, and
	// authorises a payment that later expires.
	w := projtest.NewWriter(store, l)
	cmds := []domain.Command{
		domain.OpenAccount{AccountID: "world", Asset: usd, Kind: domain.KindExternal},
		domain.OpenAccount{AccountID: "alice", Asset: usd, Kind: domain.KindCustomer},
		domain.OpenAccount{AccountID: "bob", Asset: usd, Kind: domain.KindCustomer},
		domain.Transfer{PaymentID: "fund", Source: "world", Destination: "alice", Amount: domain.Money{Minor: 10_000, Asset: usd}},
		domain.Transfer{PaymentID: "rent", Source: "alice", Destination: "bob", Amount: domain.Money{Minor: 9_500, Asset: usd}},
		domain.Authorise{PaymentID: "hotel", Source: "alice", Destination: "bob", Amount: domain.Money{Minor: 100, Asset: usd},
			ExpiresAt: l.Now.Add(30 * time.Minute)},
	}
	var last uint64
	for _, c := range cmds {
		evs, err := l.Do(c)
		if err != nil {
			t.Fatalf("%T: %v", c, err)
		}
		pos, err := w.AppendEvents(ctx, evs)
		if err != nil {
			t.Fatal(err)
		}
		last = pos
	}
	rv := projtest.RedisViews(t, rc, redisviews.Thresholds{Accounts: map[domain.AccountID]int64{"alice": 1000}})
	r := projtest.StartRunner(t, store, rv.Projectors())
	projtest.WaitAll(t, r, last, redisviews.NotificationsProjector)
	// The sweeper announces the authorisation expiring within the hour.
	if n, err := rv.SweepExpiring(ctx, l.Now); err != nil || n != 1 {
		t.Fatalf("sweep: %d announced, %v; want 1", n, err)
	}
	if n, err := rv.SweepExpiring(ctx, l.Now); err != nil || n != 0 {
		t.Fatalf("second sweep: %d announced, %v; want 0 (each authorisation once)", n, err)
	}
	// Then it expires.
	l.Now = l.Now.Add(time.Hour)
	evs, err := l.Do(domain.Expire{PaymentID: "hotel"})
	if err != nil {
		t.Fatal(err)
	}
	if last, err = w.AppendEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	projtest.WaitAll(t, r, last, redisviews.NotificationsProjector)

	got, err := rv.ReadNotifications(ctx, "alice", "0", 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, n := range got {
		types = append(types, n.Type)
	}
	want := []string{"payment.received", "payment.sent", "balance.low", "authorisation.expiring", "authorisation.expired"}
	if len(types) != len(want) {
		t.Fatalf("alice's notifications = %v; want %v", types, want)
	}
	for i := range want {
		if types[i] != want[i] {
			t.Fatalf("alice's notifications = %v; want %v", types, want)
		}
	}
	if got[1].Amount.Minor != 9500 || got[1].PostedAfter != 500 || got[2].Threshold != 1000 || got[1].PaymentID != "rent" {
		t.Fatalf("payment.sent/balance.low = %+v / %+v; want 95.00 sent leaving 5.00 under a 10.00 threshold", got[1], got[2])
	}
	// A follower blocked on the stream wakes with the next entry.
	bobLast := ""
	if bob, err := rv.ReadNotifications(ctx, "bob", "0", 100, 0); err != nil || len(bob) != 1 || bob[0].Type != "payment.received" {
		t.Fatalf("bob's notifications = %+v, %v; want one payment.received", bob, err)
	} else {
		bobLast = bob[0].ID
	}
	follow := make(chan []redisviews.Notification, 1)
	go func() {
		ns, _ := rv.ReadNotifications(ctx, "bob", bobLast, 10, 10*time.Second)
		follow <- ns
	}()
	// The follower must be blocked in XREAD before the tip is written, or it would read it
	// without waiting and the wake-up would go untested.
	waitBlockedXRead(t, rc, 3)
	evs, err = l.Do(domain.Transfer{PaymentID: "tip", Source: "world", Destination: "bob", Amount: domain.Money{Minor: 5, Asset: usd}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.AppendEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	select {
	case ns := <-follow:
		if len(ns) != 1 || ns[0].PaymentID != "tip" {
			t.Fatalf("follower got %+v; want the tip", ns)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("follower was not woken by a new notification")
	}

	// The checkpoint alone is lost (the streams survive): the projector replays the log
	// from the start, and Redis refuses every entry id it already has, so nothing doubles.
	if err := rc.Del(ctx, rv.CheckpointKey(redisviews.NotificationsProjector)).Err(); err != nil {
		t.Fatal(err)
	}
	evs, err = l.Do(domain.Transfer{PaymentID: "tip2", Source: "world", Destination: "bob", Amount: domain.Money{Minor: 7, Asset: usd}})
	if err != nil {
		t.Fatal(err)
	}
	if last, err = w.AppendEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		cp, _ := rc.Get(ctx, rv.CheckpointKey(redisviews.NotificationsProjector)).Uint64()
		if cp == last {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("notifications checkpoint %d did not come back to %d after it was deleted", cp, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for acct, want := range map[domain.AccountID]int{"alice": 5, "bob": 3} {
		ns, err := rv.ReadNotifications(ctx, acct, "0", 100, 0)
		if err != nil || len(ns) != want {
			t.Fatalf("%s has %d notifications after a replay (%v); want %d, none doubled", acct, len(ns), err, want)
		}
	}
}

// A reader's fill from a view that lags behind the cache projector must not put an old
// balance into the cache (the marker refuses it); once the view catches up the fill lands.
func TestRedisCacheRefusesStaleFill(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	rc := projtest.Redis(t, 4)
	rv := projtest.RedisViews(t, rc, redisviews.Thresholds{})
	l := projtest.NewLedger(31, "f-")
	w := projtest.NewWriter(store, l)
	ctx := projtest.Context(t, time.Minute)
	early, err := w.Write(ctx, 50, 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	late, err := w.Write(ctx, 200, 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	// The cache projector has seen everything; the memory view only the early part.
	cache := projtest.StartRunner(t, store, rv.Projectors())
	projtest.WaitAll(t, cache, late, redisviews.BalanceCacheProjector)
	lagging := memory.New(0)
	all, err := store.ReadAll(ctx, 0, int(early))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range lagging.Projectors() {
		if err := p.Apply(ctx, all); err != nil {
			t.Fatalf("apply the early log to the memory view: %v", err)
		}
	}
	reader := rv.CachedReader(lagging.Reader())
	var id domain.AccountID
	for _, a := range l.Accounts() {
		old, err := lagging.Reader().Balance(ctx, a, projections.AsOf{}, 0)
		if err == nil && old.Posted != l.State.Accounts[a].Posted {
			id = a
			break
		}
	}
	if id == "" {
		t.Fatal("no account changed between the early and the late log")
	}
	if _, err := reader.Balance(ctx, id, projections.AsOf{}, 0); err != nil {
		t.Fatal(err)
	}
	if n, _ := rc.Exists(ctx, rv.BalanceKey(id)).Result(); n != 0 {
		m, _ := rc.HGetAll(ctx, rv.BalanceKey(id)).Result()
		t.Fatalf("a fill from a view at position %d was cached (%v) although the cache projector is at %d", early, m, late)
	}
	// The view catches up; now the fill is accepted and equals the log.
	rest, err := store.ReadAll(ctx, early, int(late-early))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range lagging.Projectors() {
		if err := p.Apply(ctx, rest); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := reader.Balance(ctx, id, projections.AsOf{}, 0); err != nil {
		t.Fatal(err)
	}
	m, err := rc.HGetAll(ctx, rv.BalanceKey(id)).Result()
	if err != nil || m["posted"] != itoa(l.State.Accounts[id].Posted) {
		t.Fatalf("cache entry after an up-to-date fill = %v, %v; want posted %d", m, err, l.State.Accounts[id].Posted)
	}
}

// A cache entry that does not parse (written by something else, or half by an old
// version) is a miss, not an error: the read answers from the view, and the entry is
// replaced by the view's, not left to block fills until it expires.
func TestRedisCacheReplacesAnEntryThatDoesNotParse(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	rc := projtest.Redis(t, 6)
	rv := projtest.RedisViews(t, rc, redisviews.Thresholds{})
	l := projtest.NewLedger(41, "x-")
	ctx := projtest.Context(t, time.Minute)
	last, err := projtest.NewWriter(store, l).Write(ctx, 50, 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	views := memory.New(0)
	projtest.WaitAll(t, projtest.StartRunner(t, store, views.Projectors()), last, projections.AccountsProjector)
	id := l.Accounts()[0]
	// "x" as the position also makes the fill script fail if the entry were kept.
	if err := rc.HSet(ctx, rv.BalanceKey(id), "posted", "a lot", "position", "x").Err(); err != nil {
		t.Fatal(err)
	}
	b, err := rv.CachedReader(views.Reader()).Balance(ctx, id, projections.AsOf{}, 0)
	if want := l.State.Accounts[id]; err != nil || b.Posted != want.Posted {
		t.Fatalf("balance over a corrupt cache entry = %+v, %v; want posted %d from the view", b, err, want.Posted)
	}
	if m, err := rc.HGetAll(ctx, rv.BalanceKey(id)).Result(); err != nil || m["posted"] != itoa(l.State.Accounts[id].Posted) {
		t.Fatalf("cache entry after the read = %v, %v; want the view's balance", m, err)
	}
}

// waitBlockedXRead waits until a client of database db is blocked in XREAD (Redis lists
// it in CLIENT LIST with flags b); other packages' tests use other databases.
func waitBlockedXRead(t *testing.T, rc *goredis.Client, db int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	want := fmt.Sprintf(" db=%d ", db)
	for {
		list, err := rc.ClientList(ctx).Result()
		if err != nil {
			t.Fatalf("client list: %v", err)
		}
		for _, line := range strings.Split(list, "\n") {
			if strings.Contains(line, want) && strings.Contains(line, " cmd=xread") && strings.Contains(line, " flags=b") {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no client of database %d blocked in XREAD within 10s:\n%s", db, list)
		case <-time.After(5 * time.Millisecond):
		}
	}
}
