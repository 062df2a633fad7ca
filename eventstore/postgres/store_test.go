package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/storetest"
	"github.com/securepay/securepay/internal/pgtest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, harness())
}

// TestEventsAreAppendOnly proves both layers: the application role has no UPDATE, DELETE
// or TRUNCATE privilege, and even the superuser is stopped by the triggers.
func TestEventsAreAppendOnly(t *testing.T) {
	ctx := testContext(t)
	schema := freshSchema(t)
	s := openStore(t, schema)
	if _, err := s.Append(ctx, eventstore.StreamAppend{Stream: "acct-1", Expected: eventstore.NoStream(), Events: []eventstore.EventData{event("e1"), event("e2")}}); err != nil {
		t.Fatalf("append: %v", err)
	}
	before, err := s.ReadAll(ctx, 0, 10)
	if err != nil {
		t.Fatalf("read all: %v", err)
	}
	events := pgx.Identifier{schema, "events"}.Sanitize()
	admin := superPool(t)
	cases := []struct {
		name    string
		asRole  bool // run as the application role, otherwise as superuser
		sql     string
		wantMsg string
	}{
		{"update as app role", true, "UPDATE " + events + " SET data = 'x' WHERE position = 1", "permission denied"},
		{"delete as app role", true, "DELETE FROM " + events + " WHERE position = 2", "permission denied"},
		{"truncate as app role", true, "TRUNCATE " + events, "permission denied"},
		{"update as superuser", false, "UPDATE " + events + " SET data = 'x' WHERE position = 1", "append-only"},
		{"delete as superuser", false, "DELETE FROM " + events + " WHERE position = 2", "append-only"},
		{"truncate as superuser", false, "TRUNCATE " + events, "append-only"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tx, err := admin.Begin(ctx)
			if err != nil {
				t.Fatalf("begin: %v", err)
			}
			defer func() { _ = tx.Rollback(ctx) }()
			if tc.asRole {
				if _, err := tx.Exec(ctx, "SET LOCAL ROLE "+DefaultAppRole); err != nil {
					t.Fatalf("set role: %v", err)
				}
			}
			_, err = tx.Exec(ctx, tc.sql)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "42501" || !strings.Contains(pgErr.Message, tc.wantMsg) {
				t.Fatalf("%s: want SQLSTATE 42501 mentioning %q, got %v", tc.sql, tc.wantMsg, err)
			}
		})
	}
	after, err := s.ReadAll(ctx, 0, 10)
	if err != nil {
		t.Fatalf("read all: %v", err)
	}
	if len(after) != len(before) {
		t.Fatalf("after refused changes the log has %d events, want %d", len(after), len(before))
	}
	for i := range after {
		if after[i].Hash != before[i].Hash || !bytes.Equal(after[i].Data, before[i].Data) {
			t.Fatalf("event %d changed although every change was refused", after[i].Position)
		}
	}
	if n, err := eventstore.VerifyChain(ctx, s, 100, nil); err != nil || n != 2 {
		t.Fatalf("verify chain: want 2 events verified, got %d, %v", n, err)
	}
}

// TestAppRoleCanOnlyReadAndInsert checks the grants the migrations give, from the catalog.
func TestAppRoleCanOnlyReadAndInsert(t *testing.T) {
	ctx := testContext(t)
	schema := freshSchema(t)
	openStore(t, schema)
	admin := superPool(t)
	for _, tc := range []struct {
		table, privilege string
		want             bool
	}{
		{"events", "SELECT", true},
		{"events", "INSERT", true},
		{"events", "UPDATE", false},
		{"events", "DELETE", false},
		{"events", "TRUNCATE", false},
		{"snapshots", "UPDATE", true},
		{"snapshots", "DELETE", false},
		{"schema_migrations", "INSERT", false},
	} {
		var got bool
		err := admin.QueryRow(ctx, "SELECT has_table_privilege($1, $2, $3)", DefaultAppRole, schema+"."+tc.table, tc.privilege).Scan(&got)
		if err != nil {
			t.Fatalf("has_table_privilege %s %s: %v", tc.table, tc.privilege, err)
		}
		if got != tc.want {
			t.Errorf("%s on %s.%s: want %v, got %v", tc.privilege, schema, tc.table, tc.want, got)
		}
	}
}

// TestTwoStoresRaceOnSameStreams runs two stores (two pools, as two processes would) on one
// schema. Writers race on a few streams with exact expectations; afterwards every stream's
// versions are 1..n without holes, each version was won exactly once, positions are gap
// free and the chain verifies.
func TestTwoStoresRaceOnSameStreams(t *testing.T) {
	ctx := testContext(t)
	schema := freshSchema(t)
	// The second store keeps several transactions in flight, as a busy process would.
	stores := []*Store{openStore(t, schema), openStore(t, schema, func(c *Config) { c.Writers = 3 })}
	const (
		streams      = 4
		writers      = 32
		appendsEach  = 15
		maxAttempts  = 200
		eventsPerApp = 2
	)
	streamName := func(i int) string { return fmt.Sprintf("acct-%d", i) }
	var (
		wg        sync.WaitGroup
		conflicts atomic.Int64
		mu        sync.Mutex
		won       = map[string]int{} // "stream@version" -> writer that won
		failed    error
	)
	for w := range writers {
		wg.Go(func() {
			s := stores[w%2]
			for n := range appendsEach {
				// Every append touches two streams, so conflicts cross streams too.
				a, b := streamName((w+n)%streams), streamName((w+n+1)%streams)
				var done bool
				for attempt := 0; attempt < maxAttempts && !done; attempt++ {
					va, vb := streamVersion(ctx, s, a), streamVersion(ctx, s, b)
					res, err := s.Append(ctx,
						eventstore.StreamAppend{Stream: a, Expected: eventstore.Exact(va), Events: []eventstore.EventData{event(fmt.Sprintf("w%d-n%d-a", w, n))}},
						eventstore.StreamAppend{Stream: b, Expected: eventstore.Exact(vb), Events: []eventstore.EventData{event(fmt.Sprintf("w%d-n%d-b", w, n))}},
					)
					switch {
					case errors.Is(err, eventstore.ErrConflict):
						var ce *eventstore.ConflictError
						if !errors.As(err, &ce) {
							mu.Lock()
							failed = fmt.Errorf("conflict is not a *ConflictError: %T %v", err, err)
							mu.Unlock()
							return
						}
						conflicts.Add(1)
					case err != nil:
						mu.Lock()
						failed = fmt.Errorf("writer %d append %d: %w", w, n, err)
						mu.Unlock()
						return
					default:
						done = true
						mu.Lock()
						for _, key := range []string{fmt.Sprintf("%s@%d", a, res.Versions[a]), fmt.Sprintf("%s@%d", b, res.Versions[b])} {
							if prev, dup := won[key]; dup {
								failed = fmt.Errorf("%s won by writers %d and %d", key, prev, w)
							}
							won[key] = w
						}
						mu.Unlock()
					}
				}
				if !done {
					mu.Lock()
					failed = fmt.Errorf("writer %d append %d: no success in %d attempts", w, n, maxAttempts)
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if failed != nil {
		t.Fatal(failed)
	}
	total := writers * appendsEach * eventsPerApp
	if len(won) != total {
		t.Fatalf("want %d won versions, got %d", total, len(won))
	}
	if conflicts.Load() == 0 {
		t.Errorf("no conflicts among %d writers on %d streams: the race did not happen", writers, streams)
	}
	for i := range streams {
		evs, err := stores[0].ReadStream(ctx, streamName(i), 0, eventstore.MaxReadLimit)
		if err != nil {
			t.Fatalf("read stream: %v", err)
		}
		for j, e := range evs {
			if e.StreamVersion != uint64(j+1) {
				t.Fatalf("stream %s: event %d has version %d", streamName(i), j, e.StreamVersion)
			}
		}
	}
	all, err := stores[1].ReadAll(ctx, 0, eventstore.MaxReadLimit)
	if err != nil {
		t.Fatalf("read all: %v", err)
	}
	if len(all) != total {
		t.Fatalf("log holds %d events, want %d", len(all), total)
	}
	if n, err := eventstore.VerifyChain(ctx, stores[0], 1000, nil); err != nil || n != uint64(total) {
		t.Fatalf("verify chain: want %d verified, got %d, %v", total, n, err)
	}
	t.Logf("%d appends, %d conflicts retried", writers*appendsEach, conflicts.Load())
}

func streamVersion(ctx context.Context, s *Store, stream string) uint64 {
	var v int64
	err := s.pool.QueryRow(ctx, "SELECT COALESCE(max(stream_version), 0) FROM "+pgx.Identifier{s.cfg.Schema, "events"}.Sanitize()+" WHERE stream = $1", stream).Scan(&v)
	if err != nil {
		return 0 // the append then conflicts and the caller retries
	}
	return uint64(v)
}

// TestUniqueConstraintIsAConflict covers the second line of defence: a writer that skips
// the append lock (here, a raw INSERT in an open transaction) takes a stream version; our
// append, which read the stream before that commit, then hits the unique constraint and
// must report ErrConflict, not a driver error.
func TestUniqueConstraintIsAConflict(t *testing.T) {
	ctx := testContext(t)
	schema := freshSchema(t)
	s := openStore(t, schema)
	admin := superPool(t)
	rogue, err := admin.Begin(ctx)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	defer func() { _ = rogue.Rollback(ctx) }()
	_, err = rogue.Exec(ctx, "INSERT INTO "+pgx.Identifier{schema, "events"}.Sanitize()+
		` (position, stream, stream_version, event_id, event_type, recorded_at, data, prev_hash, hash)
		VALUES (1000, 'acct-1', 1, 'rogue', 'test.event.v1', now(), '', $1, $1)`, make([]byte, 32))
	if err != nil {
		t.Fatalf("rogue insert: %v", err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := s.Append(ctx, eventstore.StreamAppend{Stream: "acct-1", Expected: eventstore.NoStream(), Events: []eventstore.EventData{event("ours")}})
		errc <- err
	}()
	// Our insert now waits on the rogue row's index entry; commit the rogue to make it fail.
	waitForInsertLockWait(t, ctx, admin, schema)
	if err := rogue.Commit(ctx); err != nil {
		t.Fatalf("rogue commit: %v", err)
	}
	err = <-errc
	var ce *eventstore.ConflictError
	if !errors.As(err, &ce) || !errors.Is(err, eventstore.ErrConflict) {
		t.Fatalf("want *ConflictError wrapping ErrConflict, got %T %v", err, err)
	}
	if ce.Stream != "acct-1" || ce.Actual != 1 {
		t.Fatalf("want conflict on acct-1 at version 1, got %s at %d", ce.Stream, ce.Actual)
	}
	// The store is usable afterwards: its connection went back clean.
	if _, err := s.Append(ctx, eventstore.StreamAppend{Stream: "acct-1", Expected: eventstore.Exact(1), Events: []eventstore.EventData{event("ours-2")}}); err != nil {
		t.Fatalf("append after conflict: %v", err)
	}
}

// waitForInsertLockWait waits (bounded) until an INSERT into schema waits on a lock.
func waitForInsertLockWait(t *testing.T, ctx context.Context, admin *pgxpool.Pool, schema string) {
	t.Helper()
	for range 200 {
		var n int
		if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'
			AND query LIKE 'INSERT INTO %' AND position($1 IN query) > 0`, schema).Scan(&n); err != nil {
			t.Fatalf("pg_stat_activity: %v", err)
		}
		if n > 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the append never waited on the rogue row's lock within 2s")
}

// TestMigrateConcurrentAndIdempotent runs Migrate from several pools at once on a fresh
// schema: each migration is applied exactly once overall, and again it applies nothing.
func TestMigrateConcurrentAndIdempotent(t *testing.T) {
	ctx := testContext(t)
	schema := freshSchema(t)
	migs, err := loadMigrations(schema, DefaultAppRole)
	if err != nil {
		t.Fatalf("load migrations: %v", err)
	}
	const migrators = 6
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		applied = map[int]int{}
		errs    []error
	)
	for range migrators {
		pool := superPool(t) // one pool each, as separate processes would have
		wg.Go(func() {
			got, err := Migrate(ctx, pool, schema, "")
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			}
			for _, v := range got {
				applied[v]++
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent migrate: %v", err)
	}
	for _, m := range migs {
		if applied[m.Version] != 1 {
			t.Errorf("migration %04d applied %d times, want exactly once", m.Version, applied[m.Version])
		}
	}
	again, err := Migrate(ctx, superPool(t), schema, "")
	if err != nil || len(again) != 0 {
		t.Fatalf("second migrate: want nothing applied and no error, got %v, %v", again, err)
	}
	var rows int
	if err := superPool(t).QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "schema_migrations"}.Sanitize()).Scan(&rows); err != nil {
		t.Fatalf("count schema_migrations: %v", err)
	}
	if rows != len(migs) {
		t.Fatalf("schema_migrations has %d rows, want %d", rows, len(migs))
	}
	// Open without Migrate accepts an up-to-date schema.
	s, err := Open(ctx, Config{DSN: pgtest.DSN(t), Schema: schema})
	if err != nil {
		t.Fatalf("open migrated schema without Migrate: %v", err)
	}
	_ = s.Close()
}

func TestOpenRefusesUnmigratedSchema(t *testing.T) {
	ctx := testContext(t)
	schema := freshSchema(t)
	s, err := Open(ctx, Config{DSN: pgtest.DSN(t), Schema: schema})
	if err == nil {
		_ = s.Close()
	}
	if !errors.Is(err, ErrSchemaNotMigrated) {
		t.Fatalf("open of an empty schema without Migrate: want ErrSchemaNotMigrated, got %v", err)
	}
}

func TestMigrateRefusesEditedMigration(t *testing.T) {
	ctx := testContext(t)
	schema := freshSchema(t)
	pool := superPool(t)
	if _, err := Migrate(ctx, pool, schema, ""); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if _, err := pool.Exec(ctx, "UPDATE "+pgx.Identifier{schema, "schema_migrations"}.Sanitize()+" SET checksum = 'edited' WHERE version = 1"); err != nil {
		t.Fatalf("edit checksum: %v", err)
	}
	if _, err := Migrate(ctx, pool, schema, ""); err == nil || !strings.Contains(err.Error(), "was edited") {
		t.Fatalf("migrate over an edited migration: want an error saying it was edited, got %v", err)
	}
	if _, err := Open(ctx, Config{DSN: pgtest.DSN(t), Schema: schema}); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("open over an edited migration: want a checksum error, got %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	pool := &pgxpool.Pool{} // never used: Validate does not touch the database
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // substring of the error; "" means valid
	}{
		{"dsn", Config{DSN: "postgres://x"}, ""},
		{"pool", Config{Pool: pool, Schema: "tenant_1"}, ""},
		{"neither", Config{}, "one of DSN and Pool"},
		{"both", Config{DSN: "postgres://x", Pool: pool}, "exclusive"},
		{"max conns with pool", Config{Pool: pool, MaxConns: 3}, "MaxConns applies only with DSN"},
		{"negative max conns", Config{DSN: "postgres://x", MaxConns: -1}, "MaxConns"},
		{"upper-case schema", Config{DSN: "postgres://x", Schema: "Ledger"}, "schema"},
		{"injected schema", Config{DSN: "postgres://x", Schema: `x"; DROP TABLE y; --`}, "schema"},
		{"long schema", Config{DSN: "postgres://x", Schema: strings.Repeat("s", 49)}, "schema"},
		{"bad role", Config{DSN: "postgres://x", AppRole: "app-role"}, "app role"},
		{"negative poll", Config{DSN: "postgres://x", PollInterval: -time.Second}, "PollInterval"},
		{"tiny lock idle timeout", Config{DSN: "postgres://x", LockIdleTimeout: time.Microsecond}, "LockIdleTimeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("want an error mentioning %q, got %v", tc.want, err)
			}
		})
	}
}

// TestSubscribeWakesOnOtherProcessCommit: with polling set to a minute, a subscriber on one
// store sees an append made through another pool within seconds only if LISTEN/NOTIFY
// works.
func TestSubscribeWakesOnOtherProcessCommit(t *testing.T) {
	ctx := testContext(t)
	schema := freshSchema(t)
	slowPoll := func(c *Config) { c.PollInterval = time.Minute }
	reader, writer := openStore(t, schema, slowPoll), openStore(t, schema, slowPoll)
	got := make(chan eventstore.RecordedEvent, 16)
	subCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- reader.Subscribe(subCtx, 0, 100, func(_ context.Context, evs []eventstore.RecordedEvent) error {
			for _, e := range evs {
				got <- e
			}
			return nil
		})
	}()
	// The listener must be listening before the first append, or the append's NOTIFY goes
	// unheard. Once connected, the listener broadcasts once (for commits it may have
	// missed), which can deliver at most one of the three appends below; the others can
	// arrive in time only by NOTIFY.
	waitForListener(t, ctx, superPool(t), reader)
	for i := range 3 {
		id := fmt.Sprintf("e%d", i)
		if _, err := writer.Append(ctx, eventstore.StreamAppend{Stream: "s", Expected: eventstore.Any(), Events: []eventstore.EventData{event(id)}}); err != nil {
			t.Fatalf("append: %v", err)
		}
		select {
		case e := <-got:
			if e.ID != id || e.Position != uint64(i+1) {
				t.Fatalf("want event %s at position %d, got %s at %d", id, i+1, e.ID, e.Position)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("event %s not delivered within 5s although the poll interval is a minute: NOTIFY did not wake the subscriber", id)
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("subscribe after cancel: want context.Canceled, got %v", err)
	}
}

// waitForListener waits (bounded) until s's LISTEN connection is listening.
func waitForListener(t *testing.T, ctx context.Context, admin *pgxpool.Pool, s *Store) {
	t.Helper()
	listen := "LISTEN " + pgx.Identifier{s.channel}.Sanitize()
	for range 1000 {
		var n int
		if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'idle'`, listen).Scan(&n); err != nil {
			t.Fatalf("pg_stat_activity: %v", err)
		}
		if n > 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the store's listener did not run %q within 10s", listen)
}

func TestSubscribeEndsWithErrClosedOnClose(t *testing.T) {
	ctx := testContext(t)
	s := openStore(t, freshSchema(t))
	if _, err := s.Append(ctx, eventstore.StreamAppend{Stream: "s", Expected: eventstore.NoStream(), Events: []eventstore.EventData{event("first")}}); err != nil {
		t.Fatalf("append: %v", err)
	}
	// The delivery of the first event shows the subscription is running, so Close meets a
	// live subscription rather than one that has not started.
	delivered := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- s.Subscribe(ctx, 0, 10, func(context.Context, []eventstore.RecordedEvent) error {
			select {
			case delivered <- struct{}{}:
			default:
			}
			return nil
		})
	}()
	select {
	case <-delivered:
	case err := <-done:
		t.Fatalf("Subscribe ended with %v before delivering the first event", err)
	case <-ctx.Done():
		t.Fatal("the subscription never delivered the first event")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, eventstore.ErrClosed) {
			t.Fatalf("want ErrClosed, got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("subscription still running 5s after Close")
	}
	if _, err := s.Append(ctx, eventstore.StreamAppend{Stream: "s", Expected: eventstore.Any(), Events: []eventstore.EventData{event("x")}}); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("append after close: want ErrClosed, got %v", err)
	}
}

func TestRecordedAtComesFromClock(t *testing.T) {
	ctx := testContext(t)
	now := time.Date(2031, 7, 1, 12, 30, 45, 123456789, time.FixedZone("X", 3600))
	s := openStore(t, freshSchema(t), func(c *Config) { c.Clock = func() time.Time { return now } })
	if _, err := s.Append(ctx, eventstore.StreamAppend{Stream: "s", Expected: eventstore.NoStream(), Events: []eventstore.EventData{event("a"), event("b")}}); err != nil {
		t.Fatalf("append: %v", err)
	}
	evs, err := s.ReadStream(ctx, "s", 0, 10)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	want := eventstore.RecordTime(now)
	for _, e := range evs {
		if !e.RecordedAt.Equal(want) || e.RecordedAt.Location() != time.UTC {
			t.Fatalf("event %s recorded at %v, want %v in UTC", e.ID, e.RecordedAt, want)
		}
	}
}

func TestAppendRefusesTextPostgresCannotStore(t *testing.T) {
	ctx := testContext(t)
	s := openStore(t, freshSchema(t))
	for _, tc := range []struct {
		name string
		a    eventstore.StreamAppend
	}{
		{"NUL in stream", eventstore.StreamAppend{Stream: "a\x00b", Expected: eventstore.Any(), Events: []eventstore.EventData{event("x")}}},
		{"invalid UTF-8 id", eventstore.StreamAppend{Stream: "s", Expected: eventstore.Any(), Events: []eventstore.EventData{event("\xff")}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.Append(ctx, tc.a); !errors.Is(err, eventstore.ErrInvalidAppend) {
				t.Fatalf("want ErrInvalidAppend, got %v", err)
			}
		})
	}
	if h, err := s.Head(ctx); err != nil || h != 0 {
		t.Fatalf("after refused appends: want head 0, got %d, %v", h, err)
	}
}

func TestSnapshotsKeepHighestVersion(t *testing.T) {
	ctx := testContext(t)
	s := openStore(t, freshSchema(t))
	if _, ok, err := s.LoadSnapshot(ctx, "acct-1"); err != nil || ok {
		t.Fatalf("load of a missing snapshot: want none, got ok=%v err=%v", ok, err)
	}
	steps := []struct {
		save eventstore.Snapshot
		want uint64 // version loaded afterwards
	}{
		{eventstore.Snapshot{Stream: "acct-1", Version: 5, Schema: "account.v1", State: []byte("five")}, 5},
		{eventstore.Snapshot{Stream: "acct-1", Version: 3, Schema: "account.v1", State: []byte("three")}, 5},
		{eventstore.Snapshot{Stream: "acct-1", Version: 5, Schema: "account.v2", State: []byte("five again")}, 5},
		{eventstore.Snapshot{Stream: "acct-1", Version: 9, Schema: "account.v2", State: []byte("nine")}, 9},
	}
	for i, st := range steps {
		if err := s.SaveSnapshot(ctx, st.save); err != nil {
			t.Fatalf("step %d: save: %v", i, err)
		}
		got, ok, err := s.LoadSnapshot(ctx, "acct-1")
		if err != nil || !ok || got.Version != st.want {
			t.Fatalf("step %d: want version %d, got %+v ok=%v err=%v", i, st.want, got, ok, err)
		}
	}
	got, _, _ := s.LoadSnapshot(ctx, "acct-1")
	if got.Schema != "account.v2" || string(got.State) != "nine" {
		t.Fatalf("want the version-9 snapshot, got schema %q state %q", got.Schema, got.State)
	}
	if err := s.SaveSnapshot(ctx, eventstore.Snapshot{Stream: "acct-1", Version: 0}); err == nil {
		t.Fatal("save of version 0: want an error, got nil")
	}
}

// TestGroupDecidesInQueueOrder: appends that share one transaction are decided one after
// the other, each against the versions the earlier ones leave; a conflicting one is
// refused alone and the others commit.
func TestGroupDecidesInQueueOrder(t *testing.T) {
	ctx := testContext(t)
	s := openStore(t, freshSchema(t))
	one := func(stream string, exp eventstore.ExpectedVersion, id string) *appendRequest {
		return &appendRequest{appends: []eventstore.StreamAppend{{Stream: stream, Expected: exp, Events: []eventstore.EventData{event(id)}}}, events: 1}
	}
	group := []*appendRequest{
		one("s", eventstore.NoStream(), "first"),  // s: 0 -> 1
		one("s", eventstore.NoStream(), "second"), // conflict: s is at 1 by now
		one("s", eventstore.Exact(1), "third"),    // s: 1 -> 2
		one("t", eventstore.Exact(3), "fourth"),   // conflict: t does not exist
		one("t", eventstore.Any(), "fifth"),       // t: 0 -> 1
	}
	outs, _, err := s.appendTx(group)
	if err != nil {
		t.Fatalf("group transaction: %v", err)
	}
	want := []struct {
		conflict    bool
		first, last uint64
		stream      string
		version     uint64
	}{
		{false, 1, 1, "s", 1},
		{true, 0, 0, "s", 1},
		{false, 2, 2, "s", 2},
		{true, 0, 0, "t", 0},
		{false, 3, 3, "t", 1},
	}
	for i, w := range want {
		o := outs[i]
		if w.conflict {
			var ce *eventstore.ConflictError
			if !errors.As(o.err, &ce) || ce.Stream != w.stream || ce.Actual != w.version {
				t.Errorf("request %d: want conflict on %s at version %d, got %v", i, w.stream, w.version, o.err)
			}
			continue
		}
		if o.err != nil || o.res.FirstPosition != w.first || o.res.LastPosition != w.last || o.res.Versions[w.stream] != w.version {
			t.Errorf("request %d: want positions %d..%d and %s at %d, got %+v, %v", i, w.first, w.last, w.stream, w.version, o.res, o.err)
		}
	}
	all, err := s.ReadAll(ctx, 0, 10)
	if err != nil {
		t.Fatalf("read all: %v", err)
	}
	var ids []string
	for _, e := range all {
		ids = append(ids, e.ID)
	}
	if got := strings.Join(ids, ","); got != "first,third,fifth" {
		t.Fatalf("log holds %s, want first,third,fifth", got)
	}
	if n, err := eventstore.VerifyChain(ctx, s, 10, nil); err != nil || n != 3 {
		t.Fatalf("verify chain: want 3, got %d, %v", n, err)
	}
}

// TestAppendRunsAsAppRole: the store connects as a superuser here, yet its appends carry
// only the application role's privileges — take INSERT away from the role and they fail.
func TestAppendRunsAsAppRole(t *testing.T) {
	ctx := testContext(t)
	schema := freshSchema(t)
	s := openStore(t, schema)
	if _, err := superPool(t).Exec(ctx, "REVOKE INSERT ON "+pgx.Identifier{schema, "events"}.Sanitize()+" FROM "+DefaultAppRole); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	_, err := s.Append(ctx, eventstore.StreamAppend{Stream: "s", Expected: eventstore.Any(), Events: []eventstore.EventData{event("x")}})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Fatalf("append without INSERT for %s: want permission denied (42501), got %v", DefaultAppRole, err)
	}
	if h, err := s.Head(ctx); err != nil || h != 0 {
		t.Fatalf("after the refused append: want head 0, got %d, %v", h, err)
	}
}

// TestResolveUncertainCommit: after a lost COMMIT answer the store reads the log, under the
// append lock, to learn whether its events are there; the hashes decide.
func TestResolveUncertainCommit(t *testing.T) {
	ctx := testContext(t)
	s := openStore(t, freshSchema(t))
	res, err := s.Append(ctx, eventstore.StreamAppend{Stream: "s", Expected: eventstore.NoStream(), Events: []eventstore.EventData{event("a"), event("b"), event("c")}})
	if err != nil {
		t.Fatalf("append: %v", err)
	}
	evs, err := s.ReadAll(ctx, 0, 10)
	if err != nil || len(evs) != 3 {
		t.Fatalf("read all: want 3 events, got %d, %v", len(evs), err)
	}
	var other eventstore.Hash
	other[0] = 1
	for _, tc := range []struct {
		name          string
		uc            uncertainCommit
		wantCommitted bool
		wantErr       bool
	}{
		{"ours, committed", uncertainCommit{first: res.FirstPosition, last: res.LastPosition, firstHash: evs[0].Hash, lastHash: evs[2].Hash}, true, false},
		{"positions beyond the head", uncertainCommit{first: 4, last: 6, firstHash: other, lastHash: other}, false, false},
		{"positions taken by other events", uncertainCommit{first: 1, last: 3, firstHash: other, lastHash: other}, false, false},
		{"only part present", uncertainCommit{first: 1, last: 3, firstHash: evs[0].Hash, lastHash: other}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.uc.err = errors.New("connection lost")
			committed, err := s.resolve(&tc.uc)
			if committed != tc.wantCommitted || (err != nil) != tc.wantErr {
				t.Fatalf("want committed=%v error=%v, got %v, %v", tc.wantCommitted, tc.wantErr, committed, err)
			}
		})
	}
}

// TestAppendSurvivesTerminatedSession: the server ends the writer's session in the middle
// of the insert (as a failover or an operator would). The append must fail — not report
// success, not leave events — and the store must keep working with a new connection.
func TestAppendSurvivesTerminatedSession(t *testing.T) {
	ctx := testContext(t)
	schema := freshSchema(t)
	s := openStore(t, schema)
	admin := superPool(t)
	events := pgx.Identifier{schema, "events"}.Sanitize()
	slow := pgx.Identifier{schema, "slow_insert"}.Sanitize()
	for _, sql := range []string{
		"CREATE FUNCTION " + slow + "() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$",
		"CREATE TRIGGER slow_insert BEFORE INSERT ON " + events + " FOR EACH STATEMENT EXECUTE FUNCTION " + slow + "()",
	} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	errc := make(chan error, 1)
	go func() {
		_, err := s.Append(ctx, eventstore.StreamAppend{Stream: "s", Expected: eventstore.NoStream(), Events: []eventstore.EventData{event("lost")}})
		errc <- err
	}()
	terminated := false
	for range 500 {
		var n int
		err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE query LIKE 'INSERT INTO %' AND position($1 IN query) > 0 AND state = 'active' AND pid <> pg_backend_pid()`, schema).Scan(&n)
		if err != nil {
			t.Fatalf("terminate: %v", err)
		}
		if n > 0 {
			terminated = true
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !terminated {
		t.Fatal("the append's INSERT never showed up in pg_stat_activity within 5s")
	}
	err := <-errc
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" || errors.Is(err, ErrOutcomeUnknown) {
		// A FATAL leaves the outcome open; the store must have resolved it (no events at
		// the positions it tried) and returned the server's error itself.
		t.Fatalf("append whose session was terminated before commit: want the server's 57P01 error, resolved as not committed; got %v", err)
	}
	if _, err := admin.Exec(ctx, "DROP TRIGGER slow_insert ON "+events); err != nil {
		t.Fatalf("drop trigger: %v", err)
	}
	if h, err := s.Head(ctx); err != nil || h != 0 {
		t.Fatalf("after the terminated append: want head 0, got %d, %v", h, err)
	}
	if _, err := s.Append(ctx, eventstore.StreamAppend{Stream: "s", Expected: eventstore.NoStream(), Events: []eventstore.EventData{event("next")}}); err != nil {
		t.Fatalf("append after the terminated session: %v", err)
	}
}

// TestAppendCancellation: a caller that gives up while its append waits in the queue gets
// ctx.Err() and nothing is stored; a caller that gives up once its append is in a
// transaction still learns the real outcome.
func TestAppendCancellation(t *testing.T) {
	ctx := testContext(t)
	s := openStore(t, freshSchema(t))
	// Hold the schema's append lock from outside, so the writer's first transaction waits.
	blocker, err := superPool(t).Acquire(ctx)
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	defer blocker.Release()
	if _, err := blocker.Exec(ctx, "SELECT pg_advisory_lock($1)", s.lockKey); err != nil {
		t.Fatalf("take append lock: %v", err)
	}
	unlocked := false
	unlock := func() {
		if !unlocked {
			unlocked = true
			if _, err := blocker.Exec(ctx, "SELECT pg_advisory_unlock($1)", s.lockKey); err != nil {
				t.Fatalf("release append lock: %v", err)
			}
		}
	}
	defer unlock()

	inFlightCtx, cancelInFlight := context.WithCancel(ctx)
	inFlight := make(chan error, 1)
	go func() {
		_, err := s.Append(inFlightCtx, eventstore.StreamAppend{Stream: "s", Expected: eventstore.NoStream(), Events: []eventstore.EventData{event("in-flight")}})
		inFlight <- err
	}()
	waitForAdvisoryWait(t, ctx, superPool(t), s.lockKey) // the writer has taken it and waits

	queuedCtx, cancelQueued := context.WithCancel(ctx)
	queued := make(chan error, 1)
	go func() {
		_, err := s.Append(queuedCtx, eventstore.StreamAppend{Stream: "s", Expected: eventstore.Any(), Events: []eventstore.EventData{event("withdrawn")}})
		queued <- err
	}()
	waitForQueued(t, s, 1) // withdrawn from the queue, not refused before reaching it
	cancelQueued()
	if err := <-queued; !errors.Is(err, context.Canceled) {
		t.Fatalf("queued append whose ctx ended: want context.Canceled, got %v", err)
	}
	cancelInFlight()
	select {
	case err := <-inFlight:
		t.Fatalf("append in a transaction returned %v before its transaction could end", err)
	case <-time.After(100 * time.Millisecond):
	}
	unlock()
	if err := <-inFlight; err != nil {
		t.Fatalf("append in flight when its ctx ended: want its real outcome (stored), got %v", err)
	}
	// A later append proves the writer moved past the withdrawn request.
	if _, err := s.Append(ctx, eventstore.StreamAppend{Stream: "s", Expected: eventstore.Exact(1), Events: []eventstore.EventData{event("after")}}); err != nil {
		t.Fatalf("append after: %v", err)
	}
	all, err := s.ReadAll(ctx, 0, 10)
	if err != nil {
		t.Fatalf("read all: %v", err)
	}
	var ids []string
	for _, e := range all {
		ids = append(ids, e.ID)
	}
	if got := strings.Join(ids, ","); got != "in-flight,after" {
		t.Fatalf("log holds %s, want in-flight,after (the withdrawn append must not be stored)", got)
	}
}

// waitForQueued waits (bounded) until n append requests wait in s's queue, none taken
// by a writer.
func waitForQueued(t *testing.T, s *Store, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.queue) != n {
		if time.Now().After(deadline) {
			t.Fatalf("the queue holds %d append requests after 10s, want %d", len(s.queue), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitForAdvisoryWait waits (bounded) until some session waits for the advisory lock key.
// pg_locks shows a bigint key as classid (high 32 bits) and objid (low 32 bits).
func waitForAdvisoryWait(t *testing.T, ctx context.Context, admin *pgxpool.Pool, key int64) {
	t.Helper()
	for range 200 {
		var n int
		err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1`,
			int64(uint64(key)>>32), int64(uint64(key)&0xffffffff)).Scan(&n)
		if err != nil {
			t.Fatalf("pg_locks: %v", err)
		}
		if n > 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no session waited for the append lock within 2s")
}

// A clock stepping backwards (NTP, or another instance's clock) never makes the log's
// record times go backwards: "as of a time" is answered by scanning the log in order.
func TestRecordedAtNeverGoesBackwards(t *testing.T) {
	ctx := testContext(t)
	var mu sync.Mutex
	now := time.Date(2031, 7, 1, 12, 0, 0, 0, time.UTC)
	s := openStore(t, freshSchema(t), func(c *Config) {
		c.Clock = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	})
	step := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	for i, d := range []time.Duration{0, -time.Hour, time.Minute, -time.Second} {
		step(d)
		if _, err := s.Append(ctx, eventstore.StreamAppend{Stream: fmt.Sprintf("s-%d", i), Expected: eventstore.NoStream(), Events: []eventstore.EventData{event("e")}}); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	evs, err := s.ReadAll(ctx, 0, 10)
	if err != nil || len(evs) != 4 {
		t.Fatalf("read: %d events, %v", len(evs), err)
	}
	want := []time.Time{
		time.Date(2031, 7, 1, 12, 0, 0, 0, time.UTC), time.Date(2031, 7, 1, 12, 0, 0, 0, time.UTC),
		time.Date(2031, 7, 1, 12, 0, 0, 0, time.UTC), time.Date(2031, 7, 1, 12, 0, 0, 0, time.UTC),
	}
	for i, e := range evs {
		if !e.RecordedAt.Equal(want[i]) {
			t.Fatalf("event %d recorded at %v, want %v (never before the event ahead of it)", i+1, e.RecordedAt, want[i])
		}
	}
}
