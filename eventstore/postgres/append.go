package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/securepay/securepay/eventstore"
)

// Group commit bounds. A writer goroutine turns every append waiting in the queue into one
// transaction, so concurrent callers share the append lock, the round trips and the WAL
// flush instead of queueing for them one by one. With Config.Writers > 1, the next group's
// transaction is already built, sent and waiting for the lock while the current one
// commits, so client work and network round trips overlap the server's.
const (
	appendQueueLen   = 1024 // callers beyond this wait to enqueue (backpressure)
	maxGroupRequests = 512  // appends per transaction
	maxGroupEvents   = 4096 // events per transaction; a larger single append goes alone
)

// Request states: a caller whose context ends may withdraw a request only while it is
// still queued; once the writer has taken it, the caller waits for the outcome, so it is
// never told "cancelled" about events that were in fact stored, and never mutates slices
// the writer is reading.
const (
	reqQueued int32 = iota
	reqTaken
	reqWithdrawn
)

type appendRequest struct {
	appends []eventstore.StreamAppend
	events  int
	state   atomic.Int32
	done    chan appendOutcome // buffered 1: the writer never blocks on a caller
}

type appendOutcome struct {
	res eventstore.AppendResult
	err error
}

// Append implements eventstore.Store. The events are durable when it returns nil.
//
// If ctx ends while the request is still queued, Append returns ctx.Err() and nothing is
// stored. Once the writer has started on it, Append waits for the transaction's outcome
// whatever ctx does; that wait is bounded because the transaction, the resolution of a
// lost COMMIT answer and a retry alone each run under Config.AppendTimeout.
//
// When the database cannot be reached the error wraps eventstore.ErrUnavailable; if the
// connection broke after COMMIT was sent and the log could not be read to find out, it
// wraps ErrOutcomeUnknown as well.
func (s *Store) Append(ctx context.Context, appends ...eventstore.StreamAppend) (eventstore.AppendResult, error) {
	if s.closed.Load() {
		return eventstore.AppendResult{}, eventstore.ErrClosed
	}
	if err := eventstore.ValidateAppend(appends); err != nil {
		return eventstore.AppendResult{}, err
	}
	if err := validText(appends); err != nil {
		return eventstore.AppendResult{}, err
	}
	req := &appendRequest{appends: appends, done: make(chan appendOutcome, 1)}
	for _, a := range appends {
		req.events += len(a.Events)
	}
	select {
	case s.queue <- req:
	case <-ctx.Done():
		return eventstore.AppendResult{}, ctx.Err()
	case <-s.writerDone:
		return eventstore.AppendResult{}, eventstore.ErrClosed
	}
	select {
	case out := <-req.done:
		return out.res, unavailable(out.err)
	case <-ctx.Done():
		if req.state.CompareAndSwap(reqQueued, reqWithdrawn) {
			return eventstore.AppendResult{}, ctx.Err()
		}
	case <-s.writerDone:
		// Writers answer every request they took before they exit; one still queued was
		// never started.
		select {
		case out := <-req.done:
			return out.res, unavailable(out.err)
		default:
			return eventstore.AppendResult{}, eventstore.ErrClosed
		}
	}
	out := <-req.done // taken: the writer answers within AppendTimeout
	return out.res, unavailable(out.err)
}

// runWriter is one of the store's append goroutines. It runs until Close, then answers
// whatever is still queued with ErrClosed.
func (s *Store) runWriter() {
	group := make([]*appendRequest, 0, maxGroupRequests)
	var carry *appendRequest // did not fit the previous group
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case <-s.closeCtx.Done():
				s.refuseQueued()
				return
			case first = <-s.queue:
			}
		}
		group = append(group[:0], first)
		events := first.events
	fill:
		for len(group) < maxGroupRequests {
			select {
			case r := <-s.queue:
				if events+r.events > maxGroupEvents {
					carry = r
					break fill
				}
				group = append(group, r)
				events += r.events
			default:
				break fill
			}
		}
		s.commitGroup(group)
		clear(group) // let answered requests be collected
	}
}

func (s *Store) refuseQueued() {
	for {
		select {
		case r := <-s.queue:
			r.done <- appendOutcome{err: eventstore.ErrClosed}
		default:
			return
		}
	}
}

// commitGroup appends a group in one transaction and answers every request. If the
// transaction fails as a whole (rather than some requests conflicting) and certainly did
// not commit, each request is retried alone once, so that one bad request cannot fail its
// neighbours. If the commit's outcome is unknown (the connection broke after COMMIT was
// sent), it is first resolved from the log itself, so a caller is never told "failed"
// about events that are stored, nor are they stored twice by a retry.
func (s *Store) commitGroup(group []*appendRequest) {
	live := group[:0]
	for _, r := range group {
		if r.state.CompareAndSwap(reqQueued, reqTaken) {
			live = append(live, r)
		}
	}
	if len(live) == 0 {
		return
	}
	outs, recorded, err := s.appendTx(live)
	var uc *uncertainCommit
	if errors.As(err, &uc) {
		committed, rerr := s.resolve(uc)
		switch {
		case rerr != nil:
			err = fmt.Errorf("%w: %w; resolving it: %w", ErrOutcomeUnknown, uc.err, rerr)
			for _, r := range live {
				r.done <- appendOutcome{err: err}
			}
			return
		case committed:
			err = nil
		default:
			err = uc.err
		}
	}
	if err == nil {
		// Before the signal: a subscriber it wakes reads these from the tail.
		s.tail.add(recorded)
		s.signal.Broadcast()
		for i, r := range live {
			r.done <- outs[i]
		}
		return
	}
	if len(live) == 1 {
		live[0].done <- appendOutcome{err: s.translate(live[0], err)}
		return
	}
	committed := false
	for _, r := range live {
		out := s.appendAlone(r)
		committed = committed || out.err == nil
		r.done <- out
	}
	if committed {
		s.signal.Broadcast()
	}
}

// appendAlone appends one request in its own transaction, resolving an unknown outcome.
func (s *Store) appendAlone(r *appendRequest) appendOutcome {
	// Not added to the tail: the next append that is starts a new run there.
	outs, _, err := s.appendTx([]*appendRequest{r})
	var uc *uncertainCommit
	if errors.As(err, &uc) {
		committed, rerr := s.resolve(uc)
		switch {
		case rerr != nil:
			return appendOutcome{err: fmt.Errorf("%w: %w; resolving it: %w", ErrOutcomeUnknown, uc.err, rerr)}
		case committed:
			return outs[0]
		}
	}
	if err != nil {
		return appendOutcome{err: s.translate(r, err)}
	}
	return outs[0]
}

// ErrOutcomeUnknown reports an append whose commit may or may not have happened: the
// connection broke after COMMIT was sent and the log could not be read to find out. The
// caller must read the stream before retrying with the same expectation.
var ErrOutcomeUnknown = errors.New("postgres event store: append outcome unknown")

// uncertainCommit is appendOn's error when the transaction may have committed. It carries
// what identifies the append in the log: its first and last positions and their hashes.
type uncertainCommit struct {
	err                 error
	first, last         uint64
	firstHash, lastHash eventstore.Hash
}

func (e *uncertainCommit) Error() string { return e.err.Error() }
func (e *uncertainCommit) Unwrap() error { return e.err }

// resolve finds out whether an uncertain commit happened. It takes the append lock first:
// the lost transaction holds it until it has committed or rolled back (an idle one is ended
// by LockIdleTimeout), so what it then reads is final. The hash of an event covers its
// position and the whole chain before it, so matching hashes mean these are our events.
func (s *Store) resolve(uc *uncertainCommit) (committed bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.AppendTimeout)
	defer cancel()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return false, fmt.Errorf("acquire connection: %w", err)
	}
	defer conn.Release()
	b := &pgx.Batch{}
	b.Queue(s.q.begin)
	b.Queue("SELECT pg_advisory_xact_lock($1)", s.lockKey)
	b.Queue(s.q.hashesAt, int64(uc.first), int64(uc.last))
	b.Queue("ROLLBACK")
	br := conn.SendBatch(ctx, b)
	found := map[uint64]eventstore.Hash{}
	err = func() error {
		for range 2 {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		for rows.Next() {
			var pos int64
			var h []byte
			if err := rows.Scan(&pos, &h); err != nil {
				rows.Close()
				return err
			}
			var hh eventstore.Hash
			copy(hh[:], h)
			found[uint64(pos)] = hh
		}
		if err := rows.Err(); err != nil {
			return err
		}
		_, err = br.Exec()
		return err
	}()
	if cerr := br.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		s.abort(conn.Conn())
		return false, fmt.Errorf("read positions %d and %d: %w", uc.first, uc.last, err)
	}
	firstOK := found[uc.first] == uc.firstHash
	lastOK := found[uc.last] == uc.lastHash
	switch {
	case firstOK && lastOK:
		return true, nil
	case !firstOK && !lastOK:
		return false, nil
	default:
		// One transaction wrote both or neither; anything else means the log was altered.
		return false, fmt.Errorf("positions %d..%d hold only part of the append: the log is inconsistent", uc.first, uc.last)
	}
}

// translate turns a unique violation into a conflict: someone wrote without the append
// lock (an old binary, a hand-made INSERT) and the unique (stream, stream_version)
// constraint caught it. Other errors pass as they are.
func (s *Store) translate(r *appendRequest, err error) error {
	if isUniqueViolation(err) {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.AppendTimeout)
		defer cancel()
		return s.describeConflict(ctx, r.appends)
	}
	return err
}

// appendTx runs one transaction for the group. Its error is for the transaction as a whole;
// a request whose expectations fail gets its ConflictError in its outcome, and the others
// are still committed. Expectations are checked in queue order against the versions the
// earlier requests of the group leave behind, exactly as if they had run one by one.
//
// It runs under its own timeout, not the callers' contexts: one caller giving up must not
// abort the others' commit.
//
// recorded are the events as written, in position order, for the tail (tail.go): they are
// committed only if err is nil, or if err is an uncertainCommit that resolve finds
// committed.
func (s *Store) appendTx(group []*appendRequest) (outs []appendOutcome, recorded []eventstore.RecordedEvent, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.AppendTimeout)
	defer cancel()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("append: acquire connection: %w", err)
	}
	defer conn.Release()
	outs, recorded, err = s.appendOn(ctx, conn.Conn(), group)
	if err != nil {
		s.abort(conn.Conn())
	}
	return outs, recorded, err
}

func (s *Store) appendOn(ctx context.Context, conn *pgx.Conn, group []*appendRequest) ([]appendOutcome, []eventstore.RecordedEvent, error) {
	index := make(map[string]int) // stream -> slot in names/versions
	var names []string
	for _, r := range group {
		for _, a := range r.appends {
			if _, ok := index[a.Stream]; !ok {
				index[a.Stream] = len(names)
				names = append(names, a.Stream)
			}
		}
	}

	// Round trip 1: begin, narrow privileges, take the append lock, read head and versions.
	b := &pgx.Batch{}
	b.Queue(s.q.begin)
	b.Queue(s.q.setup, s.cfg.AppRole, strconv.FormatInt(s.cfg.LockIdleTimeout.Milliseconds(), 10), s.lockKey)
	b.Queue(s.q.head)
	b.Queue(s.q.versions, names)
	br := conn.SendBatch(ctx, b)
	var (
		headPos  int64
		headHash []byte
		headTime time.Time
		versions = make([]int64, 0, len(names))
	)
	err := func() error {
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("append: begin: %w", err)
		}
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("append: take append lock as %s: %w", s.cfg.AppRole, err)
		}
		if err := br.QueryRow().Scan(&headPos, &headHash, &headTime); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("append: read head: %w", err)
		}
		rows, err := br.Query()
		if err != nil {
			return fmt.Errorf("append: read stream versions: %w", err)
		}
		for rows.Next() {
			var v int64
			if err := rows.Scan(&v); err != nil {
				rows.Close()
				return fmt.Errorf("append: read stream versions: %w", err)
			}
			versions = append(versions, v)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("append: read stream versions: %w", err)
		}
		return nil
	}()
	if cerr := br.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("append: first round trip: %w", cerr)
	}
	if err != nil {
		return nil, nil, err
	}
	if len(versions) != len(names) {
		return nil, nil, fmt.Errorf("append: asked the versions of %d streams, got %d", len(names), len(versions))
	}
	var prev eventstore.Hash
	if headPos > 0 {
		if len(headHash) != len(prev) {
			return nil, nil, fmt.Errorf("append: head event %d has a %d-byte hash", headPos, len(headHash))
		}
		copy(prev[:], headHash)
	}

	// Under the lock: decide each request in order, then number, stamp and chain.
	// Record times never go backwards along the log, whatever the clock does (an NTP step,
	// another instance's clock): auditors select "as of a time" by scanning the log in order.
	recordedAt := eventstore.RecordTime(s.cfg.Clock())
	if last := eventstore.RecordTime(headTime); headPos > 0 && recordedAt.Before(last) {
		recordedAt = last
	}
	outs := make([]appendOutcome, len(group))
	total := 0
	for _, r := range group {
		total += r.events
	}
	cols := newEventColumns(total)
	recorded := make([]eventstore.RecordedEvent, 0, total)
	pos := uint64(headPos)
	var rec eventstore.RecordedEvent
	for i, r := range group {
		if conflict := checkExpectations(r.appends, index, versions); conflict != nil {
			outs[i].err = conflict
			continue
		}
		res := eventstore.AppendResult{FirstPosition: pos + 1, Versions: make(map[string]uint64, len(r.appends))}
		for _, a := range r.appends {
			slot := index[a.Stream]
			v := uint64(versions[slot])
			for _, e := range a.Events {
				pos++
				v++
				rec = eventstore.RecordedEvent{
					Position: pos, Stream: a.Stream, StreamVersion: v, ID: e.ID, Type: e.Type,
					RecordedAt: recordedAt, Data: e.Data, Metadata: e.Metadata, PrevHash: prev,
				}
				rec.Hash = eventstore.ChainHash(prev, &rec)
				cols.add(&rec)
				recorded = append(recorded, rec)
				prev = rec.Hash
			}
			versions[slot] = int64(v)
			res.Versions[a.Stream] = v
		}
		res.LastPosition = pos
		outs[i].res = res
	}
	inserted := len(cols.position)
	if inserted == 0 {
		// Every request conflicted: nothing to write, end the transaction (and the lock).
		if _, err := conn.Exec(ctx, "ROLLBACK"); err != nil {
			return nil, nil, fmt.Errorf("append: rollback: %w", err)
		}
		return outs, nil, nil
	}

	// Round trip 2: insert everything, notify, commit. The notification goes out at commit.
	b = &pgx.Batch{}
	b.Queue(s.q.insert, cols.position, cols.stream, cols.version, cols.id, cols.typ, recordedAt, cols.data,
		cols.correlation, cols.causation, cols.actor, cols.traceparent, cols.prevHash, cols.hash)
	b.Queue(s.q.notify, s.channel, strconv.FormatUint(pos, 10))
	b.Queue(s.q.commit)
	br = conn.SendBatch(ctx, b)
	err = func() error {
		tag, err := br.Exec()
		if err != nil {
			return fmt.Errorf("append: insert %d events: %w", inserted, err)
		}
		if tag.RowsAffected() != int64(inserted) {
			return fmt.Errorf("append: inserted %d events, expected %d", tag.RowsAffected(), inserted)
		}
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("append: notify: %w", err)
		}
		tag, err = br.Exec()
		if err != nil {
			return fmt.Errorf("append: commit: %w", err)
		}
		if tag.String() != "COMMIT" {
			// PostgreSQL answers COMMIT of a failed transaction with ROLLBACK, not an error.
			return fmt.Errorf("append: commit answered %q: %w", tag.String(), errRolledBack)
		}
		return nil
	}()
	if cerr := br.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("append: second round trip: %w", cerr)
	}
	if err != nil {
		if rolledBack(err) {
			return nil, nil, err
		}
		// COMMIT was sent with the rest; without its answer we cannot know.
		first, last := cols.position[0], cols.position[inserted-1]
		uc := &uncertainCommit{err: err, first: uint64(first), last: uint64(last)}
		copy(uc.firstHash[:], cols.hash[0])
		copy(uc.lastHash[:], cols.hash[inserted-1])
		return outs, recorded, uc
	}
	return outs, recorded, nil
}

// rolledBack reports whether an error from the second round trip proves the transaction
// did not commit: the server answered one of its statements with an ERROR (which aborts the
// transaction) or answered COMMIT with ROLLBACK. A broken connection, a timeout or a FATAL
// (a terminated session) prove nothing.
func rolledBack(err error) bool {
	if errors.Is(err, errRolledBack) {
		return true
	}
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Severity == "ERROR"
}

var errRolledBack = errors.New("transaction rolled back")

// checkExpectations returns a ConflictError for the first stream of appends whose
// expectation the current versions do not allow.
func checkExpectations(appends []eventstore.StreamAppend, index map[string]int, versions []int64) error {
	for _, a := range appends {
		if v := uint64(versions[index[a.Stream]]); !a.Expected.Allows(v) {
			return &eventstore.ConflictError{Stream: a.Stream, Expected: a.Expected, Actual: v}
		}
	}
	return nil
}

// abort rolls back whatever transaction a failed append left open, so the connection can
// go back to the pool; if that fails the connection is closed and the pool drops it.
func (s *Store) abort(conn *pgx.Conn) {
	if conn.IsClosed() || conn.PgConn().TxStatus() == 'I' {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, "ROLLBACK"); err != nil {
		_ = conn.Close(ctx) // the pool discards closed connections on release
	}
}
