// Package postgres is the PostgreSQL backend of the event store, on pgx v5.
//
// # Layout
//
// All tables live in one schema (Config.Schema): events (the global log), snapshots, and
// schema_migrations. The schema is created and upgraded by Migrate from SQL files embedded
// in the binary.
//
// # Appends are serialised
//
// Every append transaction takes one advisory lock per schema (pg_advisory_xact_lock)
// before it reads the log's head. Holding it, the appender alone decides the next
// positions, checks every stream's expected version, computes the hash chain from the
// previous event, inserts, and commits; the lock is released only once the commit is
// durable and visible. Therefore positions are gap-free, follow commit order, and a reader
// never sees position N+1 before N — the sequence-based design where a subscriber skips a
// transaction that commits late cannot happen here. It holds for any number of processes
// on one database, because the lock lives in the database.
//
// The price is that the lock is held across the commit's fsync, so one database commits
// at most one append transaction per (two round trips + one WAL flush), on the order of a
// thousand per second. Two things make that acceptable. The store commits groups: its
// writer goroutine puts every Append waiting in its queue into one transaction (each
// request's expectations decided in queue order, a conflicting request refused alone), so
// concurrent callers share the lock, the round trips and the fsync. And the command
// processor batches many commands (hundreds of events) into one Append. Throughput then
// scales with the batch, not with the number of transactions.
//
// A transaction costs two round trips: (1) BEGIN, switch role, take the lock, read the head
// and every stream's version, pipelined; (2) insert all events with one INSERT ... SELECT
// FROM unnest(...), pg_notify, COMMIT, pipelined. Statements in one pipeline still run one
// after the other on the server, and under READ COMMITTED each takes its snapshot when it
// starts, so the head is read after the lock is granted and sees the previous holder's
// commit.
//
// # Append-only
//
// Enforced by the database, twice: triggers refuse UPDATE, DELETE and TRUNCATE on events,
// and writes run as Config.AppRole (SET LOCAL ROLE in the write transaction), which has
// only SELECT and INSERT on events. Running as the role per transaction, rather than
// requiring a login role, means even a deployment that connects as the schema owner writes
// with the narrow privileges; in production the login role is a member of the app role and
// owns nothing (roles.go: GrantServing sets that up, CheckServingRole refuses a login role
// that could rewrite the log).
package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/securepay/securepay/eventstore"
)

// Store is the PostgreSQL event store. It is safe for concurrent use.
type Store struct {
	cfg     Config
	pool    *pgxpool.Pool
	ownPool bool
	lockKey int64  // the schema's append lock
	channel string // LISTEN/NOTIFY channel of the schema
	q       queries
	signal  *eventstore.Signal
	tail    tail // this store's latest committed events, for subscriptions (tail.go)
	// announced is the highest position a NOTIFY on the channel announced (listen.go): the
	// log's head as far as this process has heard, whoever appended it.
	announced atomic.Uint64
	// checkedAt is when (Unix ns) the last subscription read of the database that reached
	// its head started (readFollowing); 0: never.
	checkedAt atomic.Int64

	closed    atomic.Bool
	closeCtx  context.Context // cancelled by Close; ends the listener and subscriptions
	closeFunc context.CancelFunc
	listen    sync.Once
	wg        sync.WaitGroup

	queue      chan *appendRequest // to the writer goroutine (append.go)
	writerDone chan struct{}       // closed when every writer has exited
}

var (
	_ eventstore.Store         = (*Store)(nil)
	_ eventstore.SnapshotStore = (*Store)(nil)
	_ eventstore.LinkReader    = (*Store)(nil)
)

// queries are the schema-qualified statements, built once.
type queries struct {
	begin, setup, head, versions, insert, notify, commit string
	readStream, readAll, readLinks, headPos, hashesAt    string
	loadSnapshot, saveSnapshot, listSnapshots            string
}

func newQueries(schema string) queries {
	s := pgx.Identifier{schema}.Sanitize()
	const cols = `position, stream, stream_version, event_id, event_type, recorded_at, data,
		correlation_id, causation_id, actor, traceparent, prev_hash, hash`
	return queries{
		begin: "BEGIN ISOLATION LEVEL READ COMMITTED",
		// One statement: narrow the privileges, bound idle time while holding the lock, take
		// the lock. set_config(..., true) is SET LOCAL.
		setup: `SELECT set_config('role', $1, true), set_config('idle_in_transaction_session_timeout', $2, true),
			pg_advisory_xact_lock($3)`,
		head: `SELECT position, hash, recorded_at FROM ` + s + `.events ORDER BY position DESC LIMIT 1`,
		// Input order is kept (ordinality) so results pair with the request by index. Each
		// lookup is one backward step on the (stream, stream_version) index.
		versions: `SELECT COALESCE((SELECT e.stream_version FROM ` + s + `.events e
				WHERE e.stream = n.name ORDER BY e.stream_version DESC LIMIT 1), 0)
			FROM unnest($1::text[]) WITH ORDINALITY AS n(name, ord) ORDER BY n.ord`,
		insert: `INSERT INTO ` + s + `.events (` + cols + `)
			SELECT u.position, u.stream, u.stream_version, u.event_id, u.event_type, $6::timestamptz, u.data,
				u.correlation_id, u.causation_id, u.actor, u.traceparent, u.prev_hash, u.hash
			FROM unnest($1::int8[], $2::text[], $3::int8[], $4::text[], $5::text[], $7::bytea[],
				$8::text[], $9::text[], $10::text[], $11::text[], $12::bytea[], $13::bytea[])
				AS u(position, stream, stream_version, event_id, event_type, data,
				correlation_id, causation_id, actor, traceparent, prev_hash, hash)`,
		notify:       `SELECT pg_notify($1, $2)`,
		commit:       "COMMIT",
		readStream:   `SELECT ` + cols + ` FROM ` + s + `.events WHERE stream = $1 AND stream_version > $2 ORDER BY stream_version LIMIT $3`,
		readAll:      `SELECT ` + cols + ` FROM ` + s + `.events WHERE position > $1 ORDER BY position LIMIT $2`,
		readLinks:    `SELECT position, prev_hash, hash FROM ` + s + `.events WHERE position > $1 ORDER BY position LIMIT $2`,
		headPos:      `SELECT COALESCE(max(position), 0) FROM ` + s + `.events`,
		hashesAt:     `SELECT position, hash FROM ` + s + `.events WHERE position IN ($1, $2)`,
		loadSnapshot: `SELECT version, schema_name, state FROM ` + s + `.snapshots WHERE stream = $1`,
		listSnapshots: `SELECT stream, version, schema_name, state FROM ` + s + `.snapshots
			WHERE stream > $1 ORDER BY stream LIMIT $2`,
		saveSnapshot: `INSERT INTO ` + s + `.snapshots AS t (stream, version, schema_name, state)
			VALUES ($1, $2, $3, $4)
			ON CONFLICT (stream) DO UPDATE
			SET version = EXCLUDED.version, schema_name = EXCLUDED.schema_name, state = EXCLUDED.state, saved_at = now()
			WHERE t.version < EXCLUDED.version`,
	}
}

// Open connects, migrates or checks the schema, and returns a ready store.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	pool, own := cfg.Pool, false
	if pool == nil {
		pc, err := pgxpool.ParseConfig(cfg.DSN)
		if err != nil {
			return nil, fmt.Errorf("postgres event store: parse DSN: %w", err)
		}
		pc.MaxConns = cfg.MaxConns
		pc.ConnConfig.Tracer = cfg.Tracer
		if pool, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
			return nil, fmt.Errorf("postgres event store: connect: %w", err)
		}
		own = true
	}
	fail := func(err error) (*Store, error) {
		if own {
			pool.Close()
		}
		return nil, err
	}
	if err := CheckConnection(ctx, pool); err != nil {
		return fail(fmt.Errorf("postgres event store: %w", err))
	}
	if cfg.Migrate {
		if _, err := Migrate(ctx, pool, cfg.Schema, cfg.AppRole); err != nil {
			return fail(fmt.Errorf("postgres event store: %w", err))
		}
	} else if err := checkMigrated(ctx, pool, cfg.Schema, cfg.AppRole); err != nil {
		if errors.Is(err, ErrSchemaNotMigrated) {
			return fail(err) // its text already names the store
		}
		return fail(fmt.Errorf("postgres event store: %w", err))
	}
	closeCtx, closeFunc := context.WithCancel(context.Background())
	s := &Store{
		cfg:       cfg,
		pool:      pool,
		ownPool:   own,
		lockKey:   appendLockKey(cfg.Schema),
		channel:   cfg.Schema + "_appended",
		q:         newQueries(cfg.Schema),
		signal:    eventstore.NewSignal(),
		closeCtx:  closeCtx,
		closeFunc: closeFunc,

		queue:      make(chan *appendRequest, appendQueueLen),
		writerDone: make(chan struct{}),
	}
	var writers sync.WaitGroup
	for range cfg.Writers {
		writers.Go(s.runWriter)
	}
	s.wg.Go(func() {
		writers.Wait()
		close(s.writerDone)
	})
	return s, nil
}

// appendLockKey gives each schema its own append lock, so unrelated schemas in one
// database (tests, tenants) do not serialise each other. A hash collision only costs
// throughput, never correctness.
func appendLockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("securepay/eventstore/append/"))
	h.Write([]byte(schema))
	return int64(h.Sum64())
}

// Pool returns the store's connection pool (for example to run Migrate or health checks).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Close stops subscriptions and the listener, lets the transaction in flight finish,
// answers appends still queued with ErrClosed, and closes the pool if the store opened it.
// Calling it again does nothing.
func (s *Store) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	s.closeFunc()
	s.wg.Wait()
	if s.ownPool {
		s.pool.Close()
	}
	return nil
}

// describeConflict turns a unique violation into a ConflictError naming a stream whose
// expectation fails now (or, if all hold now, the first stream).
func (s *Store) describeConflict(ctx context.Context, appends []eventstore.StreamAppend) error {
	names := make([]string, len(appends))
	for i, a := range appends {
		names[i] = a.Stream
	}
	rows, err := s.pool.Query(ctx, s.q.versions, names)
	if err != nil {
		return &eventstore.ConflictError{Stream: appends[0].Stream, Expected: appends[0].Expected}
	}
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil || len(versions) != len(appends) {
		return &eventstore.ConflictError{Stream: appends[0].Stream, Expected: appends[0].Expected}
	}
	for i, a := range appends {
		if !a.Expected.Allows(uint64(versions[i])) {
			return &eventstore.ConflictError{Stream: a.Stream, Expected: a.Expected, Actual: uint64(versions[i])}
		}
	}
	return &eventstore.ConflictError{Stream: appends[0].Stream, Expected: appends[0].Expected, Actual: uint64(versions[0])}
}

func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

// validText refuses strings PostgreSQL's text type cannot hold (NUL bytes, invalid UTF-8)
// up front, as invalid appends, instead of failing inside the transaction.
func validText(appends []eventstore.StreamAppend) error {
	bad := func(s string) bool { return strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s) }
	for _, a := range appends {
		if bad(a.Stream) {
			return fmt.Errorf("%w: stream name %q must be UTF-8 without NUL bytes", eventstore.ErrInvalidAppend, a.Stream)
		}
		for i, e := range a.Events {
			m := e.Metadata
			if bad(e.ID) || bad(e.Type) || bad(m.CorrelationID) || bad(m.CausationID) || bad(m.Actor) || bad(m.TraceParent) {
				return fmt.Errorf("%w: stream %q event %d: id, type and metadata must be UTF-8 without NUL bytes", eventstore.ErrInvalidAppend, a.Stream, i)
			}
		}
	}
	return nil
}

// eventColumns holds an append's events column by column, as unnest wants them.
type eventColumns struct {
	position, version                                           []int64
	stream, id, typ, correlation, causation, actor, traceparent []string
	data, prevHash, hash                                        [][]byte
	hashBuf                                                     []byte // backs prevHash and hash
}

func newEventColumns(n int) *eventColumns {
	return &eventColumns{
		position:    make([]int64, 0, n),
		version:     make([]int64, 0, n),
		stream:      make([]string, 0, n),
		id:          make([]string, 0, n),
		typ:         make([]string, 0, n),
		correlation: make([]string, 0, n),
		causation:   make([]string, 0, n),
		actor:       make([]string, 0, n),
		traceparent: make([]string, 0, n),
		data:        make([][]byte, 0, n),
		prevHash:    make([][]byte, 0, n),
		hash:        make([][]byte, 0, n),
		// One array for both hashes of every event: one allocation instead of 2n.
		hashBuf: make([]byte, 0, 2*len(eventstore.Hash{})*n),
	}
}

func (c *eventColumns) add(e *eventstore.RecordedEvent) {
	c.position = append(c.position, int64(e.Position))
	c.version = append(c.version, int64(e.StreamVersion))
	c.stream = append(c.stream, e.Stream)
	c.id = append(c.id, e.ID)
	c.typ = append(c.typ, e.Type)
	data := e.Data
	if data == nil {
		data = []byte{} // NULL would violate NOT NULL; an empty payload is allowed
	}
	c.data = append(c.data, data)
	c.correlation = append(c.correlation, e.Metadata.CorrelationID)
	c.causation = append(c.causation, e.Metadata.CausationID)
	c.actor = append(c.actor, e.Metadata.Actor)
	c.traceparent = append(c.traceparent, e.Metadata.TraceParent)
	n := len(c.hashBuf)
	c.hashBuf = append(c.hashBuf, e.PrevHash[:]...)
	c.hashBuf = append(c.hashBuf, e.Hash[:]...)
	size := len(e.Hash)
	c.prevHash = append(c.prevHash, c.hashBuf[n:n+size:n+size])
	c.hash = append(c.hash, c.hashBuf[n+size:n+2*size:n+2*size])
}
