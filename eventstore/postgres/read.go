package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/securepay/securepay/eventstore"
)

// ReadStream implements eventstore.Store.
func (s *Store) ReadStream(ctx context.Context, stream string, afterVersion uint64, limit int) ([]eventstore.RecordedEvent, error) {
	if s.closed.Load() {
		return nil, eventstore.ErrClosed
	}
	limit = eventstore.ClampLimit(limit)
	if afterVersion > 1<<63-1 {
		return nil, nil // no version is that high
	}
	rows, err := s.pool.Query(ctx, s.q.readStream, stream, int64(afterVersion), limit)
	if err != nil {
		return nil, unavailable(fmt.Errorf("read stream %s after %d: %w", stream, afterVersion, err))
	}
	evs, err := scanEvents(rows, limit)
	if err != nil {
		return nil, unavailable(fmt.Errorf("read stream %s after %d: %w", stream, afterVersion, err))
	}
	return evs, nil
}

// ReadAll implements eventstore.Store. Because appends commit in position order under the
// append lock, a committed position is never visible before its predecessors. It always
// reads the database, so an export or a check of the log sees what is stored now.
func (s *Store) ReadAll(ctx context.Context, afterPosition uint64, limit int) ([]eventstore.RecordedEvent, error) {
	if s.closed.Load() {
		return nil, eventstore.ErrClosed
	}
	limit = eventstore.ClampLimit(limit)
	if afterPosition > 1<<63-1 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, s.q.readAll, int64(afterPosition), limit)
	if err != nil {
		return nil, unavailable(fmt.Errorf("read all after %d: %w", afterPosition, err))
	}
	evs, err := scanEvents(rows, limit)
	if err != nil {
		return nil, unavailable(fmt.Errorf("read all after %d: %w", afterPosition, err))
	}
	return evs, nil
}

// ReadLinks implements eventstore.LinkReader: ReadAll's query for three columns only, so
// neither PostgreSQL nor pgx touches the payload (and a TOASTed one is never fetched).
func (s *Store) ReadLinks(ctx context.Context, afterPosition uint64, limit int) ([]eventstore.ChainLink, error) {
	if s.closed.Load() {
		return nil, eventstore.ErrClosed
	}
	limit = eventstore.ClampLimit(limit)
	if afterPosition > 1<<63-1 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, s.q.readLinks, int64(afterPosition), limit)
	if err != nil {
		return nil, unavailable(fmt.Errorf("read links after %d: %w", afterPosition, err))
	}
	defer rows.Close()
	var out []eventstore.ChainLink
	var (
		position       int64
		prevHash, hash []byte
	)
	for rows.Next() {
		if len(out) == limit {
			return nil, fmt.Errorf("read links after %d: query returned more than its limit of %d rows", afterPosition, limit)
		}
		if err := rows.Scan(&position, &prevHash, &hash); err != nil {
			return nil, unavailable(fmt.Errorf("read links after %d: scan: %w", afterPosition, err))
		}
		l := eventstore.ChainLink{Position: uint64(position)}
		if len(prevHash) != len(l.PrevHash) || len(hash) != len(l.Hash) {
			return nil, fmt.Errorf("read links: event at position %d has hashes of %d and %d bytes, want %d", position, len(prevHash), len(hash), len(l.Hash))
		}
		copy(l.PrevHash[:], prevHash)
		copy(l.Hash[:], hash)
		if out == nil {
			out = make([]eventstore.ChainLink, 0, min(limit, 1024))
		}
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, unavailable(fmt.Errorf("read links after %d: %w", afterPosition, err))
	}
	return out, nil
}

// Head implements eventstore.Store.
func (s *Store) Head(ctx context.Context) (uint64, error) {
	if s.closed.Load() {
		return 0, eventstore.ErrClosed
	}
	var head int64
	if err := s.pool.QueryRow(ctx, s.q.headPos).Scan(&head); err != nil {
		return 0, unavailable(fmt.Errorf("read head: %w", err))
	}
	return uint64(head), nil
}

// scanEvents reads at most limit rows of the events table's columns, in the order of cols.
func scanEvents(rows pgx.Rows, limit int) ([]eventstore.RecordedEvent, error) {
	defer rows.Close()
	var out []eventstore.RecordedEvent
	var (
		position, version int64
		recordedAt        time.Time
		prevHash, hash    []byte
	)
	for rows.Next() {
		if len(out) == limit {
			return nil, fmt.Errorf("query returned more than its limit of %d rows", limit)
		}
		if out == nil {
			out = make([]eventstore.RecordedEvent, 0, min(limit, 256))
		}
		out = append(out, eventstore.RecordedEvent{})
		e := &out[len(out)-1]
		err := rows.Scan(&position, &e.Stream, &version, &e.ID, &e.Type, &recordedAt, &e.Data,
			&e.Metadata.CorrelationID, &e.Metadata.CausationID, &e.Metadata.Actor, &e.Metadata.TraceParent,
			&prevHash, &hash)
		if err != nil {
			return nil, fmt.Errorf("scan event: %w", err)
		}
		if len(prevHash) != len(e.PrevHash) || len(hash) != len(e.Hash) {
			return nil, fmt.Errorf("event at position %d has hashes of %d and %d bytes, want %d", position, len(prevHash), len(hash), len(e.Hash))
		}
		e.Position, e.StreamVersion, e.RecordedAt = uint64(position), uint64(version), recordedAt.UTC()
		copy(e.PrevHash[:], prevHash)
		copy(e.Hash[:], hash)
		if e.Data == nil {
			e.Data = []byte{}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// readFollowing is ReadAll for subscriptions: events this store appended a moment ago are
// answered from memory (tail.go), the rest, and anything past them, from the database. A
// subscriber is handed each event as it was committed.
func (s *Store) readFollowing(ctx context.Context, afterPosition uint64, limit int) ([]eventstore.RecordedEvent, error) {
	if s.closed.Load() {
		return nil, eventstore.ErrClosed
	}
	limit = eventstore.ClampLimit(limit)
	// An answer that ends at the tail's end is also the database's only if no other process
	// appended beyond it: one whose NOTIFY announced a later position is read from the
	// database, so the subscriber does not wait a poll interval for it. (A notification the
	// listener missed still costs that wait, as it did before the tail.)
	if evs, ok := s.tail.read(afterPosition, limit); ok && (len(evs) == limit || evs[len(evs)-1].Position >= s.announced.Load()) {
		return evs, nil
	}
	start := time.Now()
	if s.nothingNew(afterPosition, start) {
		return nil, nil
	}
	evs, err := s.ReadAll(ctx, afterPosition, limit)
	if err != nil {
		return nil, err
	}
	if len(evs) > 0 {
		s.announcePosition(evs[len(evs)-1].Position)
	}
	if len(evs) < limit {
		// The database held nothing beyond these when the read started.
		s.checkedAt.Store(start.UnixNano())
	}
	return evs, nil
}

// nothingNew reports whether a subscriber after position after can be told "nothing new"
// without asking the database: it already has everything this store appended, every
// position a NOTIFY announced and everything the database held at its last read, and that
// read was less than half a poll interval ago. Subscribers are woken twice per commit (this
// store's own signal, then its NOTIFY) and have mostly read that commit from the tail at
// the first: each further wake was a query answering no rows, per subscriber. An append
// by another process is announced by its NOTIFY (then this is false); one whose
// notification the listener missed is found by the next read after the half interval,
// so a subscriber waits at most about a poll interval for it, as before.
func (s *Store) nothingNew(after uint64, now time.Time) bool {
	known := max(s.tail.end(), s.announced.Load())
	checked := s.checkedAt.Load()
	return known > 0 && after >= known && checked != 0 && now.Sub(time.Unix(0, checked)) < s.cfg.PollInterval/2
}

// Subscribe implements eventstore.Store: eventstore.PollSubscription over readFollowing
// (ReadAll, with this store's latest appends from memory), woken by
// this process's own commits and by NOTIFY from every process's commits, with polling as
// the safety net. Close ends it with ErrClosed.
func (s *Store) Subscribe(ctx context.Context, afterPosition uint64, maxBatch int, handle func(context.Context, []eventstore.RecordedEvent) error) error {
	if s.closed.Load() {
		return eventstore.ErrClosed
	}
	s.startListener()
	subCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.closeCtx, cancel)
	defer stop()
	sub := eventstore.PollSubscription{ReadAll: s.readFollowing, Signal: s.signal, PollInterval: s.cfg.PollInterval}
	err := sub.Run(subCtx, afterPosition, maxBatch, handle)
	if ctx.Err() == nil && s.closed.Load() && (errors.Is(err, context.Canceled) || errors.Is(err, eventstore.ErrClosed)) {
		return eventstore.ErrClosed
	}
	return err
}

// LoadSnapshot implements eventstore.SnapshotStore.
func (s *Store) LoadSnapshot(ctx context.Context, stream string) (eventstore.Snapshot, bool, error) {
	if s.closed.Load() {
		return eventstore.Snapshot{}, false, eventstore.ErrClosed
	}
	snap := eventstore.Snapshot{Stream: stream}
	var version int64
	err := s.pool.QueryRow(ctx, s.q.loadSnapshot, stream).Scan(&version, &snap.Schema, &snap.State)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return eventstore.Snapshot{}, false, nil
	case err != nil:
		return eventstore.Snapshot{}, false, unavailable(fmt.Errorf("load snapshot %s: %w", stream, err))
	}
	snap.Version = uint64(version)
	return snap, true, nil
}

// listSnapshotsPage bounds the snapshots read per query by EachSnapshot: with states of up
// to a few KB, a page is a few MB at most.
const listSnapshotsPage = 500

// EachSnapshot implements eventstore.SnapshotLister, a page of rows at a time (keyset on
// the stream, so a long listing never holds a transaction or an offset scan).
func (s *Store) EachSnapshot(ctx context.Context, fn func(eventstore.Snapshot) error) error {
	if s.closed.Load() {
		return eventstore.ErrClosed
	}
	after := ""
	for {
		rows, err := s.pool.Query(ctx, s.q.listSnapshots, after, listSnapshotsPage)
		if err != nil {
			return unavailable(fmt.Errorf("list snapshots after %q: %w", after, err))
		}
		var page []eventstore.Snapshot
		for rows.Next() {
			var snap eventstore.Snapshot
			var version int64
			if err := rows.Scan(&snap.Stream, &version, &snap.Schema, &snap.State); err != nil {
				rows.Close()
				return fmt.Errorf("list snapshots: %w", err)
			}
			snap.Version = uint64(version)
			page = append(page, snap)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return unavailable(fmt.Errorf("list snapshots after %q: %w", after, err))
		}
		for _, snap := range page {
			if err := fn(snap); err != nil {
				return err
			}
		}
		if len(page) < listSnapshotsPage {
			return nil
		}
		after = page[len(page)-1].Stream
	}
}

// MaxSnapshotBytes bounds one snapshot's state; an aggregate bigger than this is a design
// problem to fix, not to store.
const MaxSnapshotBytes = 16 << 20

// SaveSnapshot implements eventstore.SnapshotStore: the saved snapshot replaces the stored
// one only if its Version is higher. It runs as the app role in one round trip.
func (s *Store) SaveSnapshot(ctx context.Context, snap eventstore.Snapshot) error {
	if s.closed.Load() {
		return eventstore.ErrClosed
	}
	switch {
	case snap.Stream == "" || len(snap.Stream) > eventstore.MaxStreamNameBytes:
		return fmt.Errorf("save snapshot: stream name must be 1..%d bytes, got %d", eventstore.MaxStreamNameBytes, len(snap.Stream))
	case snap.Version == 0 || snap.Version > 1<<63-1:
		return fmt.Errorf("save snapshot %s: version must be 1..2^63-1, got %d", snap.Stream, snap.Version)
	case len(snap.State) > MaxSnapshotBytes:
		return fmt.Errorf("save snapshot %s: state is %d bytes, limit %d", snap.Stream, len(snap.State), MaxSnapshotBytes)
	}
	state := snap.State
	if state == nil {
		state = []byte{}
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return unavailable(fmt.Errorf("save snapshot %s: acquire connection: %w", snap.Stream, err))
	}
	defer conn.Release()
	b := &pgx.Batch{}
	b.Queue(s.q.begin)
	b.Queue(`SELECT set_config('role', $1, true)`, s.cfg.AppRole)
	b.Queue(s.q.saveSnapshot, snap.Stream, int64(snap.Version), snap.Schema, state)
	b.Queue(s.q.commit)
	br := conn.SendBatch(ctx, b)
	err = func() error {
		for i := range 3 {
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("statement %d: %w", i+1, err)
			}
		}
		tag, err := br.Exec()
		if err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		if tag.String() != "COMMIT" {
			return fmt.Errorf("commit answered %q", tag.String())
		}
		return nil
	}()
	if cerr := br.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		s.abort(conn.Conn())
		return unavailable(fmt.Errorf("save snapshot %s: %w", snap.Stream, err))
	}
	return nil
}
