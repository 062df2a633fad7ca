package tlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/jackc/pgx/v5"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/eventstore/postgres"
	"github.com/securepay/securepay/internal/pgtest"
)

// rawLog is a store an attacker reaches beneath the application: events are written and
// deleted as stored bytes or rows, with no trigger, lock or chain check in the way.
type rawLog interface {
	store() eventstore.Store
	// put stores each event at its Position, replacing what is there, and deletes every
	// position >= deleteFrom (0: none). The store is usable again when it returns.
	put(t *testing.T, events []eventstore.RecordedEvent, deleteFrom uint64)
}

// embeddedRaw writes the pebble keys of the embedded store directly, in the record format
// documented in eventstore/embedded/record.go, with the store closed.
type embeddedRaw struct {
	dir string
	s   *embedded.Store
}

func newEmbeddedRaw(t *testing.T) rawLog {
	r := &embeddedRaw{dir: t.TempDir()}
	r.reopen(t)
	t.Cleanup(func() { r.s.Close() })
	return r
}

func (r *embeddedRaw) store() eventstore.Store { return r.s }

func (r *embeddedRaw) reopen(t *testing.T) {
	s, err := embedded.Open(r.dir, embedded.Options{Logger: quietPebble{}})
	if err != nil {
		t.Fatal(err)
	}
	r.s = s
}

func logKey(pos uint64) []byte { return binary.BigEndian.AppendUint64([]byte{'e'}, pos) }

func indexKey(stream string, version uint64) []byte {
	k := append([]byte{'s', byte(len(stream))}, stream...)
	return binary.BigEndian.AppendUint64(k, version)
}

// record encodes e in the embedded store's record format 1.
func record(e *eventstore.RecordedEvent) []byte {
	b := []byte{1}
	b = binary.BigEndian.AppendUint64(b, e.StreamVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(e.RecordedAt.UnixMicro()))
	b = append(b, e.PrevHash[:]...)
	b = append(b, e.Hash[:]...)
	fields := [][]byte{[]byte(e.Stream), []byte(e.ID), []byte(e.Type), []byte(e.Metadata.CorrelationID),
		[]byte(e.Metadata.CausationID), []byte(e.Metadata.Actor), []byte(e.Metadata.TraceParent), e.Data}
	for _, f := range fields {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
	}
	for _, f := range fields {
		b = append(b, f...)
	}
	return b
}

func (r *embeddedRaw) put(t *testing.T, events []eventstore.RecordedEvent, deleteFrom uint64) {
	t.Helper()
	all, err := r.s.ReadAll(context.Background(), 0, eventstore.MaxReadLimit)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := pebble.Open(r.dir, &pebble.Options{Logger: quietPebble{}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range events {
		e := &events[i]
		if err := db.Set(logKey(e.Position), record(e), pebble.Sync); err != nil {
			t.Fatal(err)
		}
		if err := db.Set(indexKey(e.Stream, e.StreamVersion), binary.BigEndian.AppendUint64(nil, e.Position), pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	if deleteFrom > 0 {
		for _, e := range all {
			if e.Position >= deleteFrom {
				if err := db.Delete(logKey(e.Position), pebble.Sync); err != nil {
					t.Fatal(err)
				}
				if err := db.Delete(indexKey(e.Stream, e.StreamVersion), pebble.Sync); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	r.reopen(t)
}

// pgRaw rewrites rows as a superuser who switched the append-only triggers off
// (session_replication_role = replica): the attacker of issue 10.
type pgRaw struct {
	s      eventstore.Store
	schema string
	dsn    string
}

func newPGRaw(t *testing.T) rawLog {
	dsn, schema := pgtest.DSN(t), pgtest.Schema(t, "tlog_test")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := postgres.Open(ctx, postgres.Config{DSN: dsn, Schema: schema, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &pgRaw{s: s, schema: schema, dsn: dsn}
}

func (r *pgRaw) store() eventstore.Store { return r.s }

func (r *pgRaw) put(t *testing.T, events []eventstore.RecordedEvent, deleteFrom uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, r.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "SET LOCAL session_replication_role = replica"); err != nil {
		t.Fatal(err)
	}
	table := pgx.Identifier{r.schema, "events"}.Sanitize()
	exec := func(sql string, args ...any) {
		if _, err := tx.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// Delete first, then insert: a swap of two events would collide on (stream, version).
	for i := range events {
		exec("DELETE FROM "+table+" WHERE position = $1", int64(events[i].Position))
	}
	if deleteFrom > 0 {
		exec("DELETE FROM "+table+" WHERE position >= $1", int64(deleteFrom))
	}
	for i := range events {
		e := &events[i]
		exec("INSERT INTO "+table+" (position, stream, stream_version, event_id, event_type, recorded_at, data, correlation_id, causation_id, actor, traceparent, prev_hash, hash) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
			int64(e.Position), e.Stream, int64(e.StreamVersion), e.ID, e.Type, e.RecordedAt, e.Data,
			e.Metadata.CorrelationID, e.Metadata.CausationID, e.Metadata.Actor, e.Metadata.TraceParent, e.PrevHash[:], e.Hash[:])
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// rechain recomputes the chain from events[0] on, as an attacker who knows the hashing
// does after a change, so that `audit verify` alone finds nothing.
func rechain(events []eventstore.RecordedEvent) {
	for i := range events {
		if i > 0 {
			events[i].PrevHash = events[i-1].Hash
		}
		events[i].Hash = eventstore.ChainHash(events[i].PrevHash, &events[i])
	}
}

// TestVerifySinceCheckpointDetectsTampering takes a checkpoint, changes the log beneath
// the application in each way an attacker with the database (or the disk) can, and
// expects `verify --since-checkpoint` to name what and where, on both backends.
func TestVerifySinceCheckpointDetectsTampering(t *testing.T) {
	const n = 20
	for _, be := range []struct {
		name string
		open func(t *testing.T) rawLog
	}{{"embedded", newEmbeddedRaw}, {"postgres", newPGRaw}} {
		for _, tc := range []struct {
			name string
			// tamper changes the events read before (all n) and says what to write back,
			// what to delete, and the position that must be named.
			tamper func(events []eventstore.RecordedEvent) (put []eventstore.RecordedEvent, deleteFrom, want uint64)
			// with the signer's tree as witness (exact position) or the checkpoint alone
			witness bool
			says    string
		}{
			{"rewrite an event, chain recomputed", func(ev []eventstore.RecordedEvent) ([]eventstore.RecordedEvent, uint64, uint64) {
				ev[6].Data = bytes.Replace(ev[6].Data, []byte(`"6.00"`), []byte(`"6000.00"`), 1)
				rechain(ev[6:])
				return ev[6:], 0, 7
			}, true, "it was changed, replaced or moved"},
			{"rewrite an event, chain recomputed, no witness", func(ev []eventstore.RecordedEvent) ([]eventstore.RecordedEvent, uint64, uint64) {
				ev[6].Data = bytes.Replace(ev[6].Data, []byte(`"6.00"`), []byte(`"6000.00"`), 1)
				rechain(ev[6:])
				return ev[6:], 0, 0
			}, false, "the first 20 events hash to root"},
			{"rewrite an event, chain left alone", func(ev []eventstore.RecordedEvent) ([]eventstore.RecordedEvent, uint64, uint64) {
				ev[3].Metadata.Actor = "mallory"
				return ev[3:4], 0, 4
			}, false, "the event was altered"},
			{"delete the newest event", func(ev []eventstore.RecordedEvent) ([]eventstore.RecordedEvent, uint64, uint64) {
				return nil, n, n
			}, true, "positions 20 to 20 were deleted"},
			{"truncate the tail", func(ev []eventstore.RecordedEvent) ([]eventstore.RecordedEvent, uint64, uint64) {
				return nil, n - 4, n - 4
			}, false, "positions 16 to 20 were deleted"},
			{"reorder two events", func(ev []eventstore.RecordedEvent) ([]eventstore.RecordedEvent, uint64, uint64) {
				a, b := ev[9], ev[10]
				a.Position, b.Position = 11, 10
				return []eventstore.RecordedEvent{b, a}, 0, 10
			}, true, "previous-hash does not match"},
			{"reorder two events, chain recomputed", func(ev []eventstore.RecordedEvent) ([]eventstore.RecordedEvent, uint64, uint64) {
				ev[9], ev[10] = ev[10], ev[9]
				ev[9].Position, ev[10].Position = 10, 11
				rechain(ev[8:]) // from the untouched event before them, so the links hold
				return ev[9:], 0, 10
			}, true, "it was changed, replaced or moved"},
		} {
			t.Run(be.name+"/"+tc.name, func(t *testing.T) {
				raw := be.open(t)
				l := newTestLogOn(t, raw.store())
				appendPayments(t, raw.store(), 0, n)
				l.catchUp(t)
				cp := l.publish(t)
				if _, err := VerifySince(context.Background(), raw.store(), cp.Note, l.verifier, VerifyOptions{Witness: l.tree}); err != nil {
					t.Fatalf("before tampering: %v", err)
				}
				events, err := raw.store().ReadAll(context.Background(), 0, n)
				if err != nil || len(events) != n {
					t.Fatalf("read: %d events, %v", len(events), err)
				}
				put, deleteFrom, want := tc.tamper(events)
				raw.put(t, put, deleteFrom)
				opts := VerifyOptions{}
				if tc.witness {
					opts.Witness = l.tree
				}
				_, err = VerifySince(context.Background(), raw.store(), cp.Note, l.verifier, opts)
				var tam *Tampering
				if !errors.As(err, &tam) {
					t.Fatalf("tampered log: got %v, want a *Tampering", err)
				}
				if tam.Position != want || !strings.Contains(tam.What, tc.says) {
					t.Fatalf("tampered log: got %q (position %d), want position %d and %q", err, tam.Position, want, tc.says)
				}
				t.Logf("%s: %v", tc.name, err)
			})
		}
	}
}

// A checkpoint signed with another key is refused before any event is read.
func TestVerifySinceRefusesACheckpointOfAnotherKey(t *testing.T) {
	l := newTestLog(t)
	appendPayments(t, l.store, 0, 3)
	l.catchUp(t)
	cp := l.publish(t)
	_, otherPublic := testKey(t, "securepay.test/ledger")
	ov, err := NewVerifier(otherPublic)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifySince(context.Background(), l.store, cp.Note, ov, VerifyOptions{}); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("checkpoint checked with another key: %v, want ErrCheckpoint", err)
	}
}
