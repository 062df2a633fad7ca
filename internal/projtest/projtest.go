// Package projtest helps the tests of the projections and of the audit: it writes
// realistic ledger logs (commands decided by domain.Decide against a reference state, so
// every event is one the command processor could have written), opens the stores and the
// test Redis they run on, and checks views against the reference state (views.go), the
// same checks for every backend of the views.
//
// It is imported only by tests.
package projtest

import (
	"context"
	"crypto/rand"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/eventstore/postgres"
	"github.com/securepay/securepay/internal/pgtest"
)

// RedisEnv names the address of the throw-away Redis (infra/local/test.sh sets it).
const RedisEnv = "SECUREPAY_TEST_REDIS_ADDR"

// PostgresStore opens a PostgreSQL event store in a fresh schema.
func PostgresStore(t testing.TB) *postgres.Store {
	t.Helper()
	return PostgresStoreIn(t, pgtest.Schema(t, "sp_log"))
}

// PostgresStoreIn opens (migrating) a PostgreSQL event store in schema, closed at cleanup.
func PostgresStoreIn(t testing.TB, schema string) *postgres.Store {
	t.Helper()
	s, err := OpenPostgresStore(pgtest.DSN(t), schema)
	if err != nil {
		t.Fatalf("open postgres event store in %s: %v", schema, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// OpenPostgresStore opens (migrating) a PostgreSQL event store; for child processes.
func OpenPostgresStore(dsn, schema string) (*postgres.Store, error) {
	return postgres.Open(context.Background(), postgres.Config{DSN: dsn, Schema: schema, Migrate: true, MaxConns: 8,
		PollInterval: 20 * time.Millisecond})
}

// EmbeddedStore opens an embedded event store in a temporary directory.
func EmbeddedStore(t testing.TB) *embedded.Store {
	t.Helper()
	s, err := embedded.Open(t.TempDir(), embedded.Options{PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("open embedded event store: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Redis connects to the test Redis, database db (each test its own: packages run in
// parallel and share the server), and flushes that database at start; fails the
// test when it is not reachable.
func Redis(t testing.TB, db int) *redis.Client {
	t.Helper()
	addr := os.Getenv(RedisEnv)
	if addr == "" {
		t.Fatalf("%s is not set: run infra/local/test.sh (or infra/local/redis.sh and export the address)", RedisEnv)
	}
	c := redis.NewClient(&redis.Options{Addr: addr, DB: db})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("ping redis at %s: %v (run infra/local/test.sh)", addr, err)
	}
	if err := c.FlushDB(ctx).Err(); err != nil {
		t.Fatalf("flush redis db %d: %v", db, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Ledger generates commands, decides them against its own state with domain.Decide, and
// appends the resulting events to a store, one append per command as the command
// processor does. Its state is the reference model that views are compared against.
type Ledger struct {
	rng      *mrand.Rand
	Now      time.Time
	USD      domain.Asset
	State    domain.State
	world    domain.AccountID
	accounts []domain.AccountID
	auths    []domain.PaymentID // open authorisations
	done     []domain.PaymentID // captured or transferred payments (refundable)
	seq      int
	prefix   string
}

// NewLedger returns a generator with seed; prefix keeps ids of several ledgers apart.
func NewLedger(seed uint64, prefix string) *Ledger {
	usd, _ := domain.LookupAsset("USD")
	return &Ledger{
		rng:    mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		Now:    time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		USD:    usd,
		State:  domain.State{Accounts: map[domain.AccountID]domain.Account{}, Payments: map[domain.PaymentID]domain.Payment{}},
		prefix: prefix,
	}
}

// Accounts returns the customer accounts opened so far.
func (l *Ledger) Accounts() []domain.AccountID { return l.accounts }

// Do decides c and returns its events (nil for a refused or no-op command), updating the
// reference state.
func (l *Ledger) Do(c domain.Command) ([]domain.Event, error) {
	evs, err := domain.Decide(l.State, c, l.Now)
	if err != nil {
		return nil, err
	}
	if err := domain.CheckBalanced(evs); err != nil {
		return nil, err
	}
	for _, e := range evs {
		l.State = evolveInPlace(l.State, e)
	}
	return evs, nil
}

// evolveInPlace is domain.Evolve without copying the maps (the generator owns them).
func evolveInPlace(s domain.State, e domain.Event) domain.State {
	switch e := e.(type) {
	case domain.AccountEvent:
		a := s.Accounts[e.Account()]
		if a.ID == "" {
			a.ID = e.Account()
		}
		s.Accounts[e.Account()] = domain.EvolveAccount(a, e)
	case domain.PaymentEvent:
		p := s.Payments[e.Payment()]
		if p.ID == "" {
			p.ID = e.Payment()
		}
		s.Payments[e.Payment()] = domain.EvolvePayment(p, e)
	}
	return s
}

func (l *Ledger) id(kind string) string {
	l.seq++
	return fmt.Sprintf("%s%s-%d", l.prefix, kind, l.seq)
}

// Next generates one command that the current state accepts and returns its events. The
// first calls open the world account and n customers with funding.
func (l *Ledger) Next(customers int) []domain.Event {
	l.Now = l.Now.Add(time.Duration(1+l.rng.IntN(1000)) * time.Millisecond)
	for attempt := 0; attempt < 100; attempt++ {
		c := l.command(customers)
		evs, err := l.Do(c)
		if err == nil && len(evs) > 0 {
			l.remember(c)
			return evs
		}
	}
	panic("projtest: 100 generated commands in a row were refused")
}

func (l *Ledger) remember(c domain.Command) {
	switch c := c.(type) {
	case domain.OpenAccount:
		if c.Kind != domain.KindExternal {
			l.accounts = append(l.accounts, c.AccountID)
		}
	case domain.Authorise:
		l.auths = append(l.auths, c.PaymentID)
	case domain.Transfer:
		l.done = append(l.done, c.PaymentID)
	case domain.Capture:
		if l.State.Payments[c.PaymentID].Status != domain.PaymentStatusAuthorised {
			l.dropAuth(c.PaymentID)
		}
		l.done = append(l.done, c.PaymentID)
	case domain.Void, domain.Expire:
		l.dropAuth(c.Payments()[0])
	}
}

func (l *Ledger) dropAuth(id domain.PaymentID) {
	for i, a := range l.auths {
		if a == id {
			l.auths = append(l.auths[:i], l.auths[i+1:]...)
			return
		}
	}
}

func (l *Ledger) money(maxMinor int64) domain.Money {
	return domain.Money{Minor: 1 + l.rng.Int64N(maxMinor), Asset: l.USD}
}

func (l *Ledger) pick() domain.AccountID { return l.accounts[l.rng.IntN(len(l.accounts))] }

func (l *Ledger) command(customers int) domain.Command {
	if l.world == "" {
		l.world = domain.AccountID(l.prefix + "world")
		return domain.OpenAccount{AccountID: l.world, Asset: l.USD, Kind: domain.KindExternal}
	}
	if len(l.accounts) < customers {
		id := domain.AccountID(l.id("acct"))
		if l.rng.IntN(3) == 0 {
			return domain.OpenAccount{AccountID: id, Asset: l.USD, Kind: domain.KindMerchant}
		}
		return domain.OpenAccount{AccountID: id, Asset: l.USD, Kind: domain.KindCustomer, CreditLimit: int64(l.rng.IntN(2)) * 5000}
	}
	switch r := l.rng.IntN(100); {
	case r < 15:
		return domain.Transfer{PaymentID: domain.PaymentID(l.id("fund")), Source: l.world, Destination: l.pick(), Amount: l.money(100_000)}
	case r < 55:
		src, dst := l.pick(), l.pick()
		a := l.State.Accounts[src]
		avail := a.Available() + a.CreditLimit
		if avail <= 0 {
			return domain.Transfer{PaymentID: domain.PaymentID(l.id("fund")), Source: l.world, Destination: src, Amount: l.money(100_000)}
		}
		return domain.Transfer{PaymentID: domain.PaymentID(l.id("pay")), Source: src, Destination: dst, Amount: l.money(avail), Reference: "invoice"}
	case r < 60:
		legs := make([]domain.Leg, 1+l.rng.IntN(3))
		for i := range legs {
			legs[i] = domain.Leg{Source: l.world, Destination: l.pick(), Amount: l.money(10_000)}
		}
		return domain.BatchTransfer{PaymentID: domain.PaymentID(l.id("batch")), Legs: legs}
	case r < 75:
		src, dst := l.pick(), l.pick()
		a := l.State.Accounts[src]
		avail := a.Available() + a.CreditLimit
		if avail <= 0 {
			return domain.Transfer{PaymentID: domain.PaymentID(l.id("fund")), Source: l.world, Destination: src, Amount: l.money(100_000)}
		}
		return domain.Authorise{PaymentID: domain.PaymentID(l.id("auth")), Source: src, Destination: dst, Amount: l.money(avail),
			ExpiresAt: l.Now.Add(time.Duration(1+l.rng.IntN(3600)) * time.Second), Metadata: domain.Metadata{"order": "o-1"}}
	case r < 88 && len(l.auths) > 0:
		id := l.auths[l.rng.IntN(len(l.auths))]
		p := l.State.Payments[id]
		if !l.Now.Before(p.ExpiresAt) {
			return domain.Expire{PaymentID: id}
		}
		if l.rng.IntN(2) == 0 {
			return domain.Capture{PaymentID: id, CaptureID: domain.OperationID(l.id("cap")), Full: true}
		}
		return domain.Capture{PaymentID: id, CaptureID: domain.OperationID(l.id("cap")), Amount: domain.Money{Minor: 1 + l.rng.Int64N(max(1, p.Remaining())), Asset: l.USD}}
	case r < 92 && len(l.auths) > 0:
		return domain.Void{PaymentID: l.auths[l.rng.IntN(len(l.auths))]}
	case r < 97 && len(l.done) > 0:
		id := l.done[l.rng.IntN(len(l.done))]
		p := l.State.Payments[id]
		if p.Refundable() <= 0 {
			return domain.Transfer{PaymentID: domain.PaymentID(l.id("fund")), Source: l.world, Destination: l.pick(), Amount: l.money(1000)}
		}
		return domain.Refund{PaymentID: id, RefundID: domain.OperationID(l.id("ref")), Amount: domain.Money{Minor: 1 + l.rng.Int64N(p.Refundable()), Asset: l.USD}}
	default:
		id := l.pick()
		if l.State.Accounts[id].Status == domain.AccountStatusFrozen {
			return domain.UnfreezeAccount{AccountID: id}
		}
		if l.rng.IntN(4) == 0 {
			return domain.FreezeAccount{AccountID: id, Reason: "review"}
		}
		return domain.Transfer{PaymentID: domain.PaymentID(l.id("fund")), Source: l.world, Destination: id, Amount: l.money(5000)}
	}
}

// Appends turns the events of one command into one atomic append (one StreamAppend per
// stream, in the events' order), with expected versions from versions, which it updates.
func Appends(evs []domain.Event, versions map[string]uint64, correlation string) ([]eventstore.StreamAppend, error) {
	var out []eventstore.StreamAppend
	index := map[string]int{}
	for _, e := range evs {
		name, data, err := domain.EncodeEvent(e)
		if err != nil {
			return nil, err
		}
		stream := e.Stream()
		i, ok := index[stream]
		if !ok {
			i = len(out)
			index[stream] = i
			out = append(out, eventstore.StreamAppend{Stream: stream, Expected: eventstore.Exact(versions[stream])})
		}
		out[i].Events = append(out[i].Events, eventstore.EventData{ID: randomID(), Type: name, Data: data,
			Metadata: eventstore.Metadata{CorrelationID: correlation, Actor: "spiffe://securepay.test/projtest"}})
	}
	for _, a := range out {
		versions[a.Stream] += uint64(len(a.Events))
	}
	return out, nil
}

func randomID() string {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n.Text(36)
}

// Writer appends generated commands to a store.
type Writer struct {
	Store    eventstore.Store
	Ledger   *Ledger
	versions map[string]uint64
}

// NewWriter returns a writer of l's commands into s.
func NewWriter(s eventstore.Store, l *Ledger) *Writer {
	return &Writer{Store: s, Ledger: l, versions: map[string]uint64{}}
}

// Write generates and appends n commands over the given number of customers, putting up
// to perAppend commands' events into one atomic append (as the command processor's
// batching does: events of several commands on one stream are consecutive in it). It
// returns the last position written.
func (w *Writer) Write(ctx context.Context, n, customers, perAppend int) (uint64, error) {
	var last uint64
	var pending []eventstore.StreamAppend
	index := map[string]int{}
	count := 0
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		res, err := w.Store.Append(ctx, pending...)
		if err != nil {
			return fmt.Errorf("append: %w", err)
		}
		last = res.LastPosition
		pending, index, count = nil, map[string]int{}, 0
		return nil
	}
	for i := 0; i < n; i++ {
		evs := w.Ledger.Next(customers)
		apps, err := Appends(evs, w.versions, fmt.Sprintf("cmd-%d", i))
		if err != nil {
			return last, err
		}
		for _, a := range apps {
			if j, ok := index[a.Stream]; ok {
				pending[j].Events = append(pending[j].Events, a.Events...)
				continue
			}
			index[a.Stream] = len(pending)
			pending = append(pending, a)
		}
		if count++; count >= perAppend {
			if err := flush(); err != nil {
				return last, err
			}
		}
	}
	return last, flush()
}

// AppendEvents appends the events of one command (already decided with Ledger.Do) in one
// append and returns the last position.
func (w *Writer) AppendEvents(ctx context.Context, evs []domain.Event) (uint64, error) {
	apps, err := Appends(evs, w.versions, randomID())
	if err != nil {
		return 0, err
	}
	res, err := w.Store.Append(ctx, apps...)
	if err != nil {
		return 0, fmt.Errorf("append: %w", err)
	}
	return res.LastPosition, nil
}

// AppendRaw appends one hand-made event to stream (for tests of logs the domain would not
// write), keeping the writer's expected versions right.
func (w *Writer) AppendRaw(ctx context.Context, stream string, e eventstore.EventData) (uint64, error) {
	res, err := w.Store.Append(ctx, eventstore.StreamAppend{Stream: stream, Expected: eventstore.Exact(w.versions[stream]), Events: []eventstore.EventData{e}})
	if err != nil {
		return 0, fmt.Errorf("append raw: %w", err)
	}
	w.versions[stream]++
	return res.LastPosition, nil
}

// PeakRSS returns the process's peak resident set size (VmHWM) in MiB, or -1 when the
// platform does not say.
func PeakRSS() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			if err != nil {
				return -1
			}
			return kb / 1024
		}
	}
	return -1
}

// BenchEventsEnv sizes the benchmark log (default 200,000 events).
const BenchEventsEnv = "SECUREPAY_BENCH_EVENTS"

// BenchLog opens the PostgreSQL benchmark log of SECUREPAY_BENCH_EVENTS events in schema
// bench_log_N, writing it the first time (it is kept between runs, so repeated runs
// measure only what reads it).
func BenchLog(b testing.TB) (*postgres.Store, uint64) {
	b.Helper()
	n := uint64(200_000)
	if s := os.Getenv(BenchEventsEnv); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			b.Fatalf("%s=%q: %v", BenchEventsEnv, s, err)
		}
		n = v
	}
	schema := fmt.Sprintf("bench_log_%d", n)
	store, err := OpenPostgresStore(pgtest.DSN(b), schema)
	if err != nil {
		b.Fatalf("open benchmark log %s: %v", schema, err)
	}
	b.Cleanup(func() { _ = store.Close() })
	ctx := context.Background()
	head, err := store.Head(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if head >= n {
		return store, head
	}
	if head > 0 {
		b.Fatalf("schema %s holds a partial log (%d events): drop it and run again", schema, head)
	}
	start := time.Now()
	w := NewWriter(store, NewLedger(2026, "b-"))
	for head < n {
		// About 2.8 events per command, 200 commands per append (the processor batches).
		last, err := w.Write(ctx, 2000, 10_000, 200)
		if err != nil {
			b.Fatalf("write benchmark log: %v", err)
		}
		head = last
	}
	b.Logf("wrote a log of %d events in %s", head, time.Since(start).Round(time.Millisecond))
	return store, head
}
