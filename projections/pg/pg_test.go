package pg_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/internal/pgtest"
	"github.com/securepay/securepay/internal/progress"
	"github.com/securepay/securepay/internal/projtest"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/projections/pg"
	redisviews "github.com/securepay/securepay/projections/redis"
)

// The kill test re-executes this test binary as a child that runs the PostgreSQL
// projectors and stops (blocks) inside its Nth batch transaction, after the writes and
// before COMMIT, where the parent kills it with SIGKILL.
const (
	childEnv      = "SECUREPAY_PROJECTIONS_CHILD"
	childStoreEnv = "SECUREPAY_PROJECTIONS_CHILD_STORE_SCHEMA"
	childViewsEnv = "SECUREPAY_PROJECTIONS_CHILD_VIEWS_SCHEMA"
	childBatchEnv = "SECUREPAY_PROJECTIONS_CHILD_KILL_AT_BATCH"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		if err := childMain(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func childMain() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dsn := os.Getenv(pgtest.Env)
	store, err := projtest.OpenPostgresStore(dsn, os.Getenv(childStoreEnv))
	if err != nil {
		return err
	}
	defer store.Close()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return err
	}
	defer pool.Close()
	v, err := pg.Open(ctx, pg.Config{Pool: pool, Schema: os.Getenv(childViewsEnv), Migrate: true})
	if err != nil {
		return err
	}
	killAt, err := strconv.Atoi(os.Getenv(childBatchEnv))
	if err != nil {
		return err
	}
	var batches atomic.Int64
	pg.SetBeforeCommit(v, func(name string, batch []eventstore.RecordedEvent) {
		if int(batches.Add(1)) == killAt {
			fmt.Printf("MIDBATCH %s %d %d\n", name, batch[0].Position, batch[len(batch)-1].Position)
			<-ctx.Done() // the parent kills us here, inside the open transaction
		}
	})
	r, err := projections.NewRunner(projections.RunnerConfig{Store: store, Projectors: v.Projectors(), MaxBatch: 250})
	if err != nil {
		return err
	}
	return r.Run(ctx)
}

// checkpointOf reads a checkpoint straight from the views' table.
func checkpointOf(t testing.TB, pool *pgxpool.Pool, schema, name string) uint64 {
	t.Helper()
	var pos int64
	err := pool.QueryRow(context.Background(), `SELECT position FROM `+pgx.Identifier{schema, "checkpoints"}.Sanitize()+` WHERE name = $1`, name).Scan(&pos)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0
	}
	if err != nil {
		t.Fatalf("checkpoint of %s: %v", name, err)
	}
	return uint64(pos)
}

func TestKilledInTheMiddleOfABatchNothingCountedTwiceOrLost(t *testing.T) {
	storeSchema := pgtest.Schema(t, "sp_log")
	store := projtest.PostgresStoreIn(t, storeSchema)
	pool := pgtest.Pool(t, 8)
	viewsSchema := pgtest.Schema(t, "sp_views")
	l := projtest.NewLedger(11, "k-")
	ctx := projtest.Context(t, 3*time.Minute)
	last, err := projtest.NewWriter(store, l).Write(ctx, 2500, 60, 10)
	if err != nil {
		t.Fatalf("write log: %v", err)
	}
	for round, killAt := range []int{3, 5, 4} {
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"=1", childStoreEnv+"="+storeSchema, childViewsEnv+"="+viewsSchema,
			childBatchEnv+"="+strconv.Itoa(killAt))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start child: %v", err)
		}
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("round %d: child ended before reaching batch %d: %v", round, killAt, err)
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("kill child: %v", err)
		}
		_ = cmd.Wait()
		var name string
		var first, end uint64
		if _, err := fmt.Sscanf(strings.TrimSpace(line), "MIDBATCH %s %d %d", &name, &first, &end); err != nil {
			t.Fatalf("child said %q: %v", line, err)
		}
		// The batch the child was killed in must have left nothing behind.
		if cp := checkpointOf(t, pool, viewsSchema, name); cp != first-1 {
			t.Fatalf("round %d: killed inside the batch %d..%d of %s, its checkpoint is %d; want %d (the batch rolled back)", round, first, end, name, cp, first-1)
		}
		t.Logf("round %d: killed %s inside batch %d..%d", round, name, first, end)
	}
	// A normal run resumes from the checkpoints and finishes.
	v := projtest.PGViews(t, pool, viewsSchema)
	r := projtest.StartRunner(t, store, v.Projectors())
	projtest.WaitAll(t, r, last, projections.AccountsProjector, projections.PaymentsProjector)
	projtest.CheckAgainstModel(t, v.Reader(), l, last)
	// Every history line exactly once: as many lines as the log has postings and holds.
	var lines int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{viewsSchema, "history"}.Sanitize()).Scan(&lines); err != nil {
		t.Fatal(err)
	}
	want := countHistoryEvents(t, store)
	if lines != want {
		t.Fatalf("history has %d lines; the log has %d postings and hold changes", lines, want)
	}
}

func countHistoryEvents(t testing.TB, s eventstore.Store) int64 {
	t.Helper()
	var n int64
	var after uint64
	for {
		page, err := s.ReadAll(context.Background(), after, 5000)
		if err != nil {
			t.Fatalf("read log: %v", err)
		}
		for _, e := range page {
			switch e.Type {
			case domain.NameAccountDebited, domain.NameAccountCredited, domain.NameHoldPlaced, domain.NameHoldCaptured, domain.NameHoldReleased:
				n++
			}
		}
		if len(page) < 5000 {
			return n
		}
		after = page[len(page)-1].Position
	}
}

// appendPoison appends a debit of account whose posted-after contradicts the account's
// balance: a log the domain could not have written.
func appendPoison(t testing.TB, w *projtest.Writer, l *projtest.Ledger, id domain.AccountID) uint64 {
	t.Helper()
	a := l.State.Accounts[id]
	name, data, err := domain.EncodeEvent(domain.AccountDebited{AccountID: id, PaymentID: "poison-1",
		Amount: domain.Money{Minor: 1, Asset: a.Asset}, PostedAfter: a.Posted + 12345})
	if err != nil {
		t.Fatal(err)
	}
	pos, err := w.AppendRaw(context.Background(), domain.AccountStream(id), eventstore.EventData{ID: "poison-event-1", Type: name, Data: data})
	if err != nil {
		t.Fatalf("append poison: %v", err)
	}
	return pos
}

func TestPoisonEventStopsOnlyItsProjector(t *testing.T) {
	store := projtest.PostgresStore(t)
	pool := pgtest.Pool(t, 8)
	v := projtest.PGViews(t, pool, pgtest.Schema(t, "sp_views"))
	rv := projtest.RedisViews(t, projtest.Redis(t, 1), redisviews.Thresholds{})
	l := projtest.NewLedger(3, "p-")
	w := projtest.NewWriter(store, l)
	ctx := projtest.Context(t, 2*time.Minute)
	if _, err := w.Write(ctx, 300, 10, 5); err != nil {
		t.Fatal(err)
	}
	poisonAt := appendPoison(t, w, l, l.Accounts()[0])
	last, err := w.Write(ctx, 300, 10, 5)
	if err != nil {
		t.Fatal(err)
	}
	r := projtest.StartRunner(t, store, append(v.Projectors(), rv.Projectors()...))
	// The others reach the head.
	projtest.WaitAll(t, r, last, projections.PaymentsProjector, redisviews.BalanceCacheProjector, redisviews.NotificationsProjector)
	// The accounts projector stops right before the poison, with a status that names it.
	err = r.Wait(ctx, projections.AccountsProjector, last)
	if !errors.Is(err, projections.ErrNotCaughtUp) {
		t.Fatalf("waiting for accounts.v1 past a poison event: err = %v, want ErrNotCaughtUp", err)
	}
	st, err := r.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		switch s.Name {
		case projections.AccountsProjector:
			if s.State != projections.StateStopped || s.Checkpoint != poisonAt-1 || s.ErrorPosition != poisonAt || !strings.Contains(s.Error, "posted") {
				t.Fatalf("accounts.v1 status = %+v; want stopped-on-error at checkpoint %d, error naming position %d and the posted balance", s, poisonAt-1, poisonAt)
			}
			if s.LagEvents != last-(poisonAt-1) {
				t.Fatalf("accounts.v1 lag = %d events; want %d", s.LagEvents, last-(poisonAt-1))
			}
		default:
			if s.State != projections.StateRunning || s.Checkpoint != last {
				t.Fatalf("%s status = %+v; want running at %d", s.Name, s, last)
			}
		}
	}
	// Another process sees the same from the view's records.
	admin := &projections.Admin{Store: store, Views: []projections.Views{v, rv}}
	sts, err := admin.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var buf strings.Builder
	if err := projections.WriteStatus(&buf, sts); err != nil {
		t.Fatal(err)
	}
	if sts[0].Name != projections.AccountsProjector || sts[0].State != projections.StateStopped || sts[0].ErrorPosition != poisonAt {
		t.Fatalf("admin status:\n%s\nwant accounts.v1 stopped-on-error at %d", buf.String(), poisonAt)
	}
	t.Logf("status after a poison event:\n%s", buf.String())
	// The view still holds exactly the events before the poison.
	if cp := checkpointOf(t, pool, v.Schema(), projections.AccountsProjector); cp != poisonAt-1 {
		t.Fatalf("accounts.v1 checkpoint in the view = %d; want %d", cp, poisonAt-1)
	}
}

// tableRows dumps a table in a canonical order as text, to compare views.
func tableRows(t testing.TB, pool *pgxpool.Pool, schema, table, orderBy string) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT t::text FROM `+pgx.Identifier{schema, table}.Sanitize()+` AS t ORDER BY `+orderBy)
	if err != nil {
		t.Fatalf("dump %s.%s: %v", schema, table, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("dump %s.%s: %v", schema, table, err)
	}
	return out
}

func TestRebuildWhileWritesContinueEqualsReplay(t *testing.T) {
	store := projtest.PostgresStore(t)
	pool := pgtest.Pool(t, 16)
	live := projtest.PGViews(t, pool, pgtest.Schema(t, "sp_views"))
	l := projtest.NewLedger(5, "r-")
	w := projtest.NewWriter(store, l)
	ctx := projtest.Context(t, 3*time.Minute)
	if _, err := w.Write(ctx, 3000, 80, 10); err != nil {
		t.Fatal(err)
	}
	r := projtest.StartRunner(t, store, live.Projectors(), func(c *projections.RunnerConfig) { c.MaxBatch = 500 })

	// Writers keep appending during the whole rebuild.
	// (Stopped between appends, never inside one, so the model holds exactly what the log has.)
	var stop atomic.Bool
	writerDone := make(chan error, 1)
	go func() {
		for !stop.Load() {
			if _, err := w.Write(ctx, 20, 80, 4); err != nil {
				writerDone <- err
				return
			}
		}
		writerDone <- nil
	}()
	stopWriting := func() { stop.Store(true) }

	headBefore, err := store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{projections.AccountsProjector, projections.PaymentsProjector} {
		// A first run is "killed" part-way (stopped before the swap); the second resumes.
		_, err := live.Rebuild(ctx, store, name, projections.RebuildOptions{BatchSize: 700, SwapLag: 300, StopAfter: 2100})
		if !errors.Is(err, projections.ErrRebuildStopped) {
			t.Fatalf("rebuild %s with StopAfter: err = %v, want ErrRebuildStopped", name, err)
		}
		admin := &projections.Admin{Store: store, Views: []projections.Views{live}}
		sts, err := admin.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, s := range sts {
			if s.Name == name {
				found = s.State == projections.StateRebuilding && s.RebuildCheckpoint == 2100
			}
		}
		if !found {
			t.Fatalf("status during an interrupted rebuild of %s: %+v; want rebuilding with shadow at 2100", name, sts)
		}
		var out strings.Builder
		res, err := live.Rebuild(ctx, store, name, projections.RebuildOptions{BatchSize: 700, SwapLag: 300,
			Progress: progress.New(&out, "rebuild "+name, progress.Options{Interval: time.Nanosecond})})
		if err != nil {
			t.Fatalf("resume rebuild %s: %v", name, err)
		}
		if res.ResumedFrom != 2100 {
			t.Fatalf("resumed rebuild of %s started at %d; want 2100", name, res.ResumedFrom)
		}
		if !strings.Contains(out.String(), "events/s") {
			t.Fatalf("rebuild progress output %q has no rate", out.String())
		}
		t.Logf("rebuild %s: %+v; last progress line: %s", name, res, lastLine(out.String()))
	}
	headAfterRebuilds, err := store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stopWriting()
	if err := <-writerDone; err != nil {
		t.Fatalf("writer: %v", err)
	}
	if headAfterRebuilds <= headBefore {
		t.Fatalf("the log did not grow during the rebuilds (head %d before, %d after): the test proves nothing about concurrent writes", headBefore, headAfterRebuilds)
	}
	t.Logf("the log grew from %d to %d events during the rebuilds", headBefore, headAfterRebuilds)
	head, err := store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The live projectors go on after the swap, from the swapped-in checkpoint.
	projtest.WaitAll(t, r, head, projections.AccountsProjector, projections.PaymentsProjector)
	projtest.CheckAgainstModel(t, live.Reader(), l, head)

	// A from-scratch replay into another schema must hold exactly the same rows.
	fresh := projtest.PGViews(t, pool, pgtest.Schema(t, "sp_fresh"))
	r2 := projtest.StartRunner(t, store, fresh.Projectors())
	projtest.WaitAll(t, r2, head, projections.AccountsProjector, projections.PaymentsProjector)
	for _, tc := range []struct{ table, order string }{
		{"balances", "account_id"}, {"history", "account_id, position"}, {"payments", "payment_id"},
	} {
		got := tableRows(t, pool, live.Schema(), tc.table, tc.order)
		want := tableRows(t, pool, fresh.Schema(), tc.table, tc.order)
		if len(got) != len(want) {
			t.Fatalf("%s: rebuilt view has %d rows, a replay has %d", tc.table, len(got), len(want))
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s row %d: rebuilt view has %s, a replay has %s", tc.table, i, got[i], want[i])
			}
		}
	}
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexAny(s, "\n\r"); i >= 0 {
		return s[i+1:]
	}
	return s
}

func TestAdminStatusFromAnotherProcess(t *testing.T) {
	store := projtest.PostgresStore(t)
	pool := pgtest.Pool(t, 8)
	v := projtest.PGViews(t, pool, pgtest.Schema(t, "sp_views"))
	l := projtest.NewLedger(8, "s-")
	w := projtest.NewWriter(store, l)
	ctx := projtest.Context(t, time.Minute)
	first, err := w.Write(ctx, 100, 10, 5)
	if err != nil {
		t.Fatal(err)
	}
	r, err := projections.NewRunner(projections.RunnerConfig{Store: store, Projectors: v.Projectors()})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(rctx) }()
	projtest.WaitAll(t, r, first, projections.AccountsProjector, projections.PaymentsProjector)
	stop()
	<-done
	// The projectors are gone; the log moves on; a minute passes (on the checkpoints' clock).
	last, err := w.Write(ctx, 100, 10, 5)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE `+pgx.Identifier{v.Schema(), "checkpoints"}.Sanitize()+` SET updated_at = now() - interval '1 minute'`); err != nil {
		t.Fatal(err)
	}
	admin := &projections.Admin{Store: store, Views: []projections.Views{v}}
	sts, err := admin.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var list strings.Builder
	if err := admin.WriteList(&list); err != nil || !strings.Contains(list.String(), projections.AccountsProjector) {
		t.Fatalf("list = %q, %v; want the accounts projector", list.String(), err)
	}
	for _, s := range sts {
		if s.State != projections.StateStalled || s.Checkpoint != first || s.Head != last || s.LagEvents != last-first || s.LagSeconds <= 0 {
			t.Fatalf("status of %s = %+v; want stalled at %d with head %d, lag %d events and some seconds", s.Name, s, first, last, last-first)
		}
	}
}
