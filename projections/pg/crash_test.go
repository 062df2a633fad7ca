package pg_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore/postgres"
	"github.com/securepay/securepay/internal/projtest"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/projections/pg"
	redisviews "github.com/securepay/securepay/projections/redis"
)

// crashCluster is a throw-away PostgreSQL cluster of the test's own (infra/local/postgres.sh),
// so that the test can crash it without disturbing the shared one.
type crashCluster struct {
	t    testing.TB
	dir  string
	port int
	bin  string // directory holding pg_ctl
	dsn  string
}

// postgresBinDir finds the server's binaries the way infra/local/postgres.sh does, without
// installing anything ("" when they are absent).
func postgresBinDir() string {
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); fileExists(filepath.Join(dir, "pg_ctl")) {
			return dir
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Strings(dirs) // good enough for 1-digit majors; the script picks the newest the same way
	for i := len(dirs) - 1; i >= 0; i-- {
		if fileExists(filepath.Join(dirs[i], "pg_ctl")) {
			return dirs[i]
		}
	}
	return ""
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func startCrashCluster(t testing.TB) *crashCluster {
	t.Helper()
	bin := postgresBinDir()
	if bin == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("the PostgreSQL server binaries (pg_ctl) are not installed; CI must have them: apt-get install -y postgresql")
		}
		t.Skip("the PostgreSQL server binaries (pg_ctl) are not installed")
	}
	// Under the system temp directory and world-traversable: as root the script runs the
	// server as the postgres OS user, which must reach it (t.TempDir is private).
	dir, err := os.MkdirTemp("", "securepay-crash-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &crashCluster{t: t, dir: dir, port: freePort(t), bin: bin}
	t.Cleanup(func() {
		if _, err := c.script("stop", c.dir); err != nil {
			t.Errorf("stop the crash test's cluster: %v", err)
		}
		_ = os.RemoveAll(dir)
	})
	c.start()
	return c
}

func (c *crashCluster) script(args ...string) (string, error) {
	cmd := exec.Command("bash", append([]string{filepath.Join("..", "..", "infra", "local", "postgres.sh")}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("postgres.sh %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// start starts (or restarts, recovering from the WAL) the cluster and waits until it
// accepts connections.
func (c *crashCluster) start() {
	c.t.Helper()
	dsn, err := c.script("start", c.dir, fmt.Sprint(c.port))
	if err != nil {
		c.t.Fatal(err)
	}
	c.dsn = dsn
}

// crash stops the server the way a power cut does: no checkpoint, no flush of the WAL
// buffers; the next start recovers from what reached the disk.
func (c *crashCluster) crash() {
	c.t.Helper()
	args := []string{filepath.Join(c.bin, "pg_ctl"), "-D", filepath.Join(c.dir, "data"), "-m", "immediate", "-w", "-t", "60", "stop"}
	if os.Geteuid() == 0 {
		args = append([]string{"runuser", "-u", "postgres", "--"}, args...)
	}
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		c.t.Fatalf("pg_ctl stop -m immediate: %v\n%s", err, out)
	}
}

// crashRead is one read-your-writes read made during the crash test, kept to be checked
// against the log at the end.
type crashRead struct {
	kind     string // balance, cached-balance, payment, history
	min      uint64
	account  domain.AccountID
	payment  domain.PaymentID
	after    uint64 // history: the page starts after this position
	bal      projections.Balance
	pay      projections.Payment
	entries  []projections.Entry
	notFound bool
}

// published is what the writer tells the readers after an acknowledged append.
type published struct {
	position uint64
	accounts []domain.AccountID
	payment  domain.PaymentID
}

func TestReadsAfterAPostgresCrashReflectThePositionTheyWaitedFor(t *testing.T) {
	// Crashes go on until three of them caught view commits not yet flushed (the case under
	// test; with the WAL writer's 10s delay nearly every crash does), at most six.
	const wantLosses, maxCrashes = 3, 6
	cl := startCrashCluster(t)
	ctx := projtest.Context(t, 3*time.Minute)
	admin, err := pgxpool.New(ctx, cl.dsn)
	if err != nil {
		t.Fatal(err)
	}
	// The WAL writer flushes asynchronous commits every wal_writer_delay; at its largest,
	// a crash right after the views caught up loses their last commits almost surely,
	// which is the case under test.
	for _, sql := range []string{`ALTER SYSTEM SET wal_writer_delay = '10s'`, `SELECT pg_reload_conf()`} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	admin.Close()

	store, err := postgres.Open(ctx, postgres.Config{DSN: cl.dsn, Schema: "sp_log", Migrate: true, MaxConns: 8, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("open event store: %v", err)
	}
	t.Cleanup(func() { _ = store.Close() })
	pool, err := pgxpool.New(ctx, cl.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	v, err := pg.Open(ctx, pg.Config{Pool: pool, Schema: "sp_views", Migrate: true})
	if err != nil {
		t.Fatalf("open views: %v", err)
	}
	rv := projtest.RedisViews(t, projtest.Redis(t, 5), redisviews.Thresholds{})
	// Retries outlast a restart (bounded all the same: backoff doubles up to 5s).
	r := projtest.StartRunner(t, store, append(v.Projectors(), rv.Projectors()...), func(c *projections.RunnerConfig) {
		c.MaxRetries, c.RetryBackoff, c.MaxBatch = 100, 10*time.Millisecond, 200
	})
	// As `securepay serve` reads: the PostgreSQL reader woken by the runner, under the cache.
	pgReader := v.ReaderWaitingOn(r)
	cached := rv.CachedReader(pgReader)

	// The writer: commands of a reference ledger, a few per append. An append that fails
	// (the server went away) may or may not have committed, so the writer then starts a
	// new ledger under a new prefix rather than guess its streams' versions. The reads
	// are checked against the log itself, whatever was written.
	var latest atomic.Pointer[published]
	gen := 0
	l := projtest.NewLedger(31, "g0-")
	w := projtest.NewWriter(store, l)
	write := func(d time.Duration) {
		t.Helper()
		end := time.Now().Add(d)
		for failures := 0; time.Now().Before(end); {
			last, err := w.Write(ctx, 10, 20, 3)
			if err != nil {
				if failures++; failures > 100 || ctx.Err() != nil {
					t.Fatalf("writer: %d failures in a row, last: %v", failures, err)
				}
				gen++
				l = projtest.NewLedger(31+uint64(gen), fmt.Sprintf("g%d-", gen))
				w = projtest.NewWriter(store, l)
				time.Sleep(20 * time.Millisecond) // the server is restarting
				continue
			}
			failures = 0
			p := &published{position: last, accounts: slices.Clone(l.Accounts())}
			for id := range l.State.Payments {
				p.payment = id
				break
			}
			latest.Store(p)
		}
	}

	// Readers: read at the last acknowledged position, all the time, through the crashes.
	var (
		mu       sync.Mutex
		reads    []crashRead
		failed   int
		answered atomic.Int64
		stopRead atomic.Bool
		readers  sync.WaitGroup
	)
	const maxReads = 50_000 // bounds memory; far more than the test makes
	for i := range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for n := 0; !stopRead.Load(); n++ {
				p := latest.Load()
				if p == nil || len(p.accounts) == 0 {
					time.Sleep(time.Millisecond)
					continue
				}
				rd := crashRead{min: p.position, account: p.accounts[rng.IntN(len(p.accounts))], payment: p.payment}
				rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
				var err error
				op := n % 4
				if op == 2 && rd.payment == "" {
					op = 0
				}
				switch op {
				case 0:
					rd.kind = "balance"
					rd.bal, err = pgReader.Balance(rctx, rd.account, projections.AsOf{}, rd.min)
				case 1:
					rd.kind = "cached-balance"
					rd.bal, err = cached.Balance(rctx, rd.account, projections.AsOf{}, rd.min)
				case 2:
					rd.kind = "payment"
					rd.pay, err = pgReader.Payment(rctx, rd.payment, rd.min)
				case 3:
					rd.kind = "history"
					rd.after = rd.min - min(rd.min, 200)
					rd.entries, err = pgReader.History(rctx, rd.account, rd.after, projections.MaxHistoryPage, rd.min)
				}
				cancel()
				if errors.Is(err, projections.ErrNotFound) {
					rd.notFound, err = true, nil // checked: it must not exist at rd.min
				}
				mu.Lock()
				if err != nil {
					failed++ // the server is down or restarting: no answer is fine, a wrong one is not
				} else if len(reads) < maxReads {
					reads = append(reads, rd)
					answered.Add(1)
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(5 * time.Millisecond)
				}
			}
		}()
	}
	stopReaders := func() {
		stopRead.Store(true)
		readers.Wait()
	}
	t.Cleanup(stopReaders) // also on a Fatal in the writer

	lost, crashes := 0, 0
	for i := 0; i < maxCrashes && lost < wantLosses; i++ {
		crashes++
		write(1500 * time.Millisecond)
		// The views catch up with the last acknowledged append, as a client's read-your-writes
		// wait sees them; their last commits now sit in the WAL buffers only.
		acked := latest.Load().position
		projtest.WaitAll(t, r, acked, projections.AccountsProjector, projections.PaymentsProjector)
		// Since the last append flushed the WAL, the views' commits are (nearly) all that was
		// written: WAL not flushed now is view commits the crash takes.
		var unflushed int64
		if err := pool.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), pg_current_wal_flush_lsn())::int8`).Scan(&unflushed); err != nil {
			t.Fatalf("crash %d: WAL positions: %v", i+1, err)
		}
		if unflushed > 0 {
			lost++
		}
		cl.crash()
		cl.start()
		restarted := answered.Load()
		// The runner may have re-applied some already: this only shows the loss sometimes.
		cp, err := viewCheckpoint(ctx, pool, v.Schema(), projections.AccountsProjector)
		t.Logf("crash %d with %d bytes of WAL unflushed: right after the restart the accounts view was at %d (its runner had applied %d; err %v)",
			i+1, unflushed, cp, acked, err)
		// Writes resume once the readers answered a few reads at the position acknowledged
		// before the crash (the writer is paused, so that is the position they read at).
		for answered.Load() < restarted+50 {
			if ctx.Err() != nil {
				t.Fatalf("crash %d: the readers answered %d reads after the restart: %v", i+1, answered.Load()-restarted, ctx.Err())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	write(time.Second)
	stopReaders()

	checked := checkCrashReads(t, store, reads)
	if lost == 0 {
		t.Fatalf("none of %d crashes caught view commits unflushed: the test proved nothing about them", crashes)
	}
	t.Logf("%d crashes (%d with view commits unflushed), %d reads checked against the log (%d balance, %d cached, %d payment, %d history), %d reads failed while the server was away",
		crashes, lost, len(reads), checked["balance"], checked["cached-balance"], checked["payment"], checked["history"], failed)
	if len(reads) < 100 {
		t.Fatalf("only %d reads answered: the test proves little", len(reads))
	}
}

func viewCheckpoint(ctx context.Context, pool *pgxpool.Pool, schema, name string) (uint64, error) {
	var pos int64
	err := pool.QueryRow(ctx, `SELECT position FROM `+schema+`.checkpoints WHERE name = $1`, name).Scan(&pos)
	return uint64(pos), err
}

// logFacts is what the log says about each account and payment, position by position.
type logFacts struct {
	// per account, in log order: the position of each of its events and the balances after it
	accounts map[domain.AccountID][]accountStep
	payments map[domain.PaymentID][]uint64 // positions of each payment's events
}

type accountStep struct {
	position     uint64
	posted, held int64
	line         bool // the event makes a history line
	kind         projections.EntryKind
	amount       int64
}

// readLogFacts folds the whole log with the amounts alone (not the views' code, not the
// events' own after-balances).
func readLogFacts(t testing.TB, s *postgres.Store) logFacts {
	t.Helper()
	f := logFacts{accounts: map[domain.AccountID][]accountStep{}, payments: map[domain.PaymentID][]uint64{}}
	var after uint64
	for {
		page, err := s.ReadAll(context.Background(), after, 5000)
		if err != nil {
			t.Fatalf("read log after %d: %v", after, err)
		}
		for _, rec := range page {
			after = rec.Position
			ev, err := domain.DecodeEvent(rec.Type, rec.Data)
			if err != nil {
				t.Fatalf("decode %s at %d: %v", rec.Type, rec.Position, err)
			}
			switch e := ev.(type) {
			case domain.AccountEvent:
				steps := f.accounts[e.Account()]
				var prev accountStep
				if len(steps) > 0 {
					prev = steps[len(steps)-1]
				}
				st := accountStep{position: rec.Position, posted: prev.posted, held: prev.held}
				switch e := ev.(type) {
				case domain.AccountCredited:
					st.line, st.kind, st.amount = true, projections.EntryCredit, e.Amount.Minor
				case domain.AccountDebited:
					st.line, st.kind, st.amount = true, projections.EntryDebit, e.Amount.Minor
				case domain.HoldPlaced:
					st.line, st.kind, st.amount = true, projections.EntryHoldPlaced, e.Amount.Minor
				case domain.HoldCaptured:
					st.line, st.kind, st.amount = true, projections.EntryHoldCaptured, e.Amount.Minor
				case domain.HoldReleased:
					st.line, st.kind, st.amount = true, projections.EntryHoldReleased, e.Amount.Minor
				}
				dp, dh := projtest.EntryDelta(st.kind, st.amount)
				st.posted, st.held = st.posted+dp, st.held+dh
				f.accounts[e.Account()] = append(steps, st)
			case domain.PaymentEvent:
				f.payments[e.Payment()] = append(f.payments[e.Payment()], rec.Position)
			}
		}
		if len(page) < 5000 {
			return f
		}
	}
}

// checkCrashReads checks every read against the log: the answer reflects every event up to
// the position the read waited for, and is a state the log really went through.
func checkCrashReads(t testing.TB, s *postgres.Store, reads []crashRead) map[string]int {
	t.Helper()
	f := readLogFacts(t, s)
	checked := map[string]int{}
	for _, rd := range reads {
		checked[rd.kind]++
		switch rd.kind {
		case "balance", "cached-balance":
			steps := f.accounts[rd.account]
			due := lastAtOrBefore(steps, rd.min)
			if due < 0 {
				t.Fatalf("%s of %s at min position %d: the log has no such account by then", rd.kind, rd.account, rd.min)
			}
			if rd.notFound {
				t.Fatalf("%s of %s at min position %d: not found; the log opened it at %d", rd.kind, rd.account, rd.min, steps[0].position)
			}
			at := slices.IndexFunc(steps, func(st accountStep) bool { return st.position == rd.bal.Position })
			if rd.bal.Position < steps[due].position || at < 0 {
				t.Fatalf("%s of %s at min position %d answered the state at %d; the account's last event by %d is at %d",
					rd.kind, rd.account, rd.min, rd.bal.Position, rd.min, steps[due].position)
			}
			if st := steps[at]; rd.bal.Posted != st.posted || rd.bal.Held != st.held {
				t.Fatalf("%s of %s at min position %d: posted %d held %d at %d; the log has posted %d held %d there",
					rd.kind, rd.account, rd.min, rd.bal.Posted, rd.bal.Held, rd.bal.Position, st.posted, st.held)
			}
		case "payment":
			ps := f.payments[rd.payment]
			if len(ps) == 0 || ps[0] > rd.min {
				t.Fatalf("payment %s read at min position %d: the log has no such payment by then", rd.payment, rd.min)
			}
			due := ps[0]
			for _, p := range ps {
				if p <= rd.min {
					due = p
				}
			}
			if rd.notFound || rd.pay.Position < due || !slices.Contains(ps, rd.pay.Position) {
				t.Fatalf("payment %s at min position %d answered position %d (not found: %v); its last event by then is at %d",
					rd.payment, rd.min, rd.pay.Position, rd.notFound, due)
			}
		case "history":
			if rd.notFound {
				t.Fatalf("history of %s at min position %d: account not found", rd.account, rd.min)
			}
			got := map[uint64]projections.Entry{}
			for _, e := range rd.entries {
				got[e.Position] = e
			}
			for _, st := range f.accounts[rd.account] {
				if !st.line || st.position <= rd.after || st.position > rd.min {
					continue
				}
				e, ok := got[st.position]
				if !ok || e.Kind != st.kind || e.Amount.Minor != st.amount || e.PostedAfter != st.posted || e.AvailableAfter != st.posted-st.held {
					t.Fatalf("history of %s after %d at min position %d: the line at %d is %+v (present: %v); the log has %s %d leaving posted %d held %d",
						rd.account, rd.after, rd.min, st.position, e, ok, st.kind, st.amount, st.posted, st.held)
				}
			}
		}
	}
	return checked
}

// lastAtOrBefore returns the index of the last step at or before position, or -1.
func lastAtOrBefore(steps []accountStep, position uint64) int {
	return sort.Search(len(steps), func(i int) bool { return steps[i].position > position }) - 1
}
