// Package eventstore defines the contract of SecurePay's event store: an append-only,
// hash-chained global log of events, partitioned into streams, with atomic appends to one
// or more streams under explicit expected versions.
//
// Backends live in sub-packages (embedded, postgres, kurrentdb) and all pass the one
// conformance suite in eventstore/storetest.
//
// Numbering. Stream versions start at 1 for a stream's first event; version 0 means "no
// event yet". Global positions start at 1, are gap-free and follow commit order. Every read
// takes an exclusive lower bound ("after"), so 0 means "from the beginning".
package eventstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// ErrConflict is the one sentinel for an optimistic-concurrency failure, whatever the
// backend said. Test it with errors.Is; the concrete error is a *ConflictError naming the
// first stream whose expectation failed.
var ErrConflict = errors.New("eventstore: wrong expected version")

// ErrClosed is returned by every method of a store after Close.
var ErrClosed = errors.New("eventstore: store is closed")

// ErrUnavailable reports a store that cannot be reached: the connection was refused, broke,
// or the server is shutting down. It is transient — the same call may succeed once the
// store is back. An append that fails with it was not recorded, unless the backend's error
// also says the outcome is unknown (the connection broke after the commit was sent), in
// which case a retry must carry the same ids so the store or the ledger can recognise it.
var ErrUnavailable = errors.New("eventstore: store unreachable")

// ErrInvalidAppend reports an append request that can never succeed (empty stream name,
// no events, a stream named twice, an oversize event). It is a caller bug, not a conflict.
var ErrInvalidAppend = errors.New("eventstore: invalid append")

// ConflictError says which expectation failed. Actual is the stream's version at the time
// of the check (0 when the stream does not exist).
type ConflictError struct {
	Stream   string
	Expected ExpectedVersion
	Actual   uint64
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("append %s: expected %s, stream is at version %d: %v", e.Stream, e.Expected, e.Actual, ErrConflict)
}

// Is makes errors.Is(err, ErrConflict) true for every *ConflictError.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

type expectKind uint8

const (
	expectUnset expectKind = iota // the zero value: refused, so nobody appends without saying what they expect
	expectNoStream
	expectExact
	expectAny
)

// ExpectedVersion is what an appender believes about a stream. The zero value is invalid on
// purpose: callers must say NoStream, Exact or Any.
type ExpectedVersion struct {
	kind    expectKind
	version uint64
}

// NoStream expects the stream to have no events.
func NoStream() ExpectedVersion { return ExpectedVersion{kind: expectNoStream} }

// Exact expects the stream's last event to have exactly this version (>= 1).
// Exact(0) is the same as NoStream.
func Exact(version uint64) ExpectedVersion {
	if version == 0 {
		return NoStream()
	}
	return ExpectedVersion{kind: expectExact, version: version}
}

// Any appends whatever the stream's version; it must be asked for explicitly.
func Any() ExpectedVersion { return ExpectedVersion{kind: expectAny} }

// IsNoStream, IsAny and Version let backends translate the expectation to their own terms.
func (e ExpectedVersion) IsNoStream() bool { return e.kind == expectNoStream }
func (e ExpectedVersion) IsAny() bool      { return e.kind == expectAny }
func (e ExpectedVersion) IsSet() bool      { return e.kind != expectUnset }

// Version is the exact version expected; 0 for NoStream; meaningless for Any.
func (e ExpectedVersion) Version() uint64 { return e.version }

// Allows reports whether a stream currently at version actual satisfies the expectation.
func (e ExpectedVersion) Allows(actual uint64) bool {
	switch e.kind {
	case expectNoStream:
		return actual == 0
	case expectExact:
		return actual == e.version
	case expectAny:
		return true
	default:
		return false
	}
}

func (e ExpectedVersion) String() string {
	switch e.kind {
	case expectNoStream:
		return "no stream"
	case expectExact:
		return fmt.Sprintf("version %d", e.version)
	case expectAny:
		return "any version"
	default:
		return "unset expectation"
	}
}

// Metadata travels with every event: who asked, why, and the trace it belongs to. It is
// part of the hashed record, so an auditor can trust it as much as the payload.
type Metadata struct {
	CorrelationID string // the business flow (e.g. the payment id or an inbound request id)
	CausationID   string // the command or event that caused this one
	Actor         string // the authenticated principal (SPIFFE ID or user) who asked
	TraceParent   string // W3C traceparent of the request that caused the append, if any
}

// EventData is an event to append. The ID is chosen by the writer (a UUID or another
// globally unique string) so a retried append can be recognised.
type EventData struct {
	ID       string
	Type     string // e.g. "ledger.payment.captured.v1"
	Data     []byte // the serialised payload (JSON, see domain's event codec)
	Metadata Metadata
}

// StreamAppend is the part of an atomic append that targets one stream.
type StreamAppend struct {
	Stream   string
	Expected ExpectedVersion
	Events   []EventData
}

// RecordedEvent is an event as the store holds it.
type RecordedEvent struct {
	Position      uint64    // global log position, 1-based, gap-free, commit order
	Stream        string    // stream name
	StreamVersion uint64    // 1-based version within the stream
	ID            string    // writer-chosen event id
	Type          string    // versioned event name
	RecordedAt    time.Time // assigned by the store, UTC, truncated to microseconds
	Data          []byte
	Metadata      Metadata
	PrevHash      Hash // Hash of the event at Position-1 (zero for Position 1)
	Hash          Hash // ChainHash(PrevHash, this event)
}

// AppendResult tells where an append landed.
type AppendResult struct {
	FirstPosition uint64            // position of the first appended event
	LastPosition  uint64            // position of the last appended event
	Versions      map[string]uint64 // each appended stream's version after the append
}

// Limits that every backend enforces, so a request accepted by one is accepted by all.
const (
	MaxStreamNameBytes = 200
	MaxEventTypeBytes  = 200
	MaxEventIDBytes    = 100
	MaxEventDataBytes  = 64 << 10
	MaxEventsPerAppend = 10_000
	MaxReadLimit       = 10_000
)

// Store is the contract every backend fulfils.
//
// Append writes the events of all given streams in one atomic step: either every
// expectation holds and every event is stored, or nothing is stored anywhere and the
// error wraps ErrConflict (or another error). The events occupy consecutive global
// positions in the order given. Append returns only once the events are durable.
//
// ReadStream returns up to limit events of stream with StreamVersion > afterVersion, in
// version order. An unknown stream reads as empty.
//
// ReadAll returns up to limit events with Position > afterPosition, in position order, and
// never returns an event unless every event before it is also visible.
//
// Subscribe delivers every event with Position > afterPosition, in order, exactly once,
// first the history and then live events as they commit, in batches of at most
// maxBatch events, by calling handle. Each batch is a new slice that handle may keep: the
// store never reuses it. It blocks until ctx ends (returning ctx.Err()),
// handle returns an error (returned as is), or the store fails.
//
// Head returns the position of the last committed event (0 for an empty log).
type Store interface {
	Append(ctx context.Context, appends ...StreamAppend) (AppendResult, error)
	ReadStream(ctx context.Context, stream string, afterVersion uint64, limit int) ([]RecordedEvent, error)
	ReadAll(ctx context.Context, afterPosition uint64, limit int) ([]RecordedEvent, error)
	Subscribe(ctx context.Context, afterPosition uint64, maxBatch int, handle func(context.Context, []RecordedEvent) error) error
	Head(ctx context.Context) (uint64, error)
	Close() error
}

// Snapshot is a derived, rebuildable copy of an aggregate's state at a stream version.
// It is never a source of truth: losing every snapshot only costs replay time.
type Snapshot struct {
	Stream  string
	Version uint64 // the stream version the state includes
	Schema  string // the encoding's name and version; a reader ignores schemas it does not know
	State   []byte
}

// SnapshotStore keeps at most one snapshot per stream (the newest one saved wins only if
// its Version is higher). Backends that implement it may keep snapshots beside the log.
type SnapshotStore interface {
	LoadSnapshot(ctx context.Context, stream string) (Snapshot, bool, error)
	SaveSnapshot(ctx context.Context, s Snapshot) error
}

// SnapshotLister lists every stored snapshot, in stream order, for an auditor who checks
// them against the log (ledger.VerifySnapshots). fn's error stops the listing and is
// returned.
type SnapshotLister interface {
	EachSnapshot(ctx context.Context, fn func(Snapshot) error) error
}

// ValidateAppend checks the shape of an append request; backends call it first so that
// every backend refuses the same requests with the same error.
func ValidateAppend(appends []StreamAppend) error {
	if len(appends) == 0 {
		return fmt.Errorf("%w: no streams", ErrInvalidAppend)
	}
	seen := make(map[string]struct{}, len(appends))
	total := 0
	for _, a := range appends {
		if a.Stream == "" || len(a.Stream) > MaxStreamNameBytes {
			return fmt.Errorf("%w: stream name must be 1..%d bytes, got %d", ErrInvalidAppend, MaxStreamNameBytes, len(a.Stream))
		}
		if !storableText(a.Stream) {
			return fmt.Errorf("%w: stream name %q must be valid UTF-8 without NUL bytes", ErrInvalidAppend, a.Stream)
		}
		if _, dup := seen[a.Stream]; dup {
			return fmt.Errorf("%w: stream %q named twice", ErrInvalidAppend, a.Stream)
		}
		seen[a.Stream] = struct{}{}
		if !a.Expected.IsSet() {
			return fmt.Errorf("%w: stream %q: expected version not set (say NoStream, Exact or Any)", ErrInvalidAppend, a.Stream)
		}
		if len(a.Events) == 0 {
			return fmt.Errorf("%w: stream %q: no events", ErrInvalidAppend, a.Stream)
		}
		total += len(a.Events)
		for i, e := range a.Events {
			switch {
			case e.ID == "" || len(e.ID) > MaxEventIDBytes:
				return fmt.Errorf("%w: stream %q event %d: id must be 1..%d bytes", ErrInvalidAppend, a.Stream, i, MaxEventIDBytes)
			case e.Type == "" || len(e.Type) > MaxEventTypeBytes:
				return fmt.Errorf("%w: stream %q event %d: type must be 1..%d bytes", ErrInvalidAppend, a.Stream, i, MaxEventTypeBytes)
			case len(e.Data) > MaxEventDataBytes:
				return fmt.Errorf("%w: stream %q event %d: data is %d bytes, limit %d", ErrInvalidAppend, a.Stream, i, len(e.Data), MaxEventDataBytes)
			case !storableText(e.ID) || !storableText(e.Type):
				// Every backend must store text byte for byte (PostgreSQL text cannot hold
				// NUL, KurrentDB metadata is JSON), so all of them refuse the same inputs.
				return fmt.Errorf("%w: stream %q event %d: id and type must be valid UTF-8 without NUL bytes", ErrInvalidAppend, a.Stream, i)
			}
			if err := ValidateMetadata(e.Metadata); err != nil {
				return fmt.Errorf("%w: stream %q event %d: %w", ErrInvalidAppend, a.Stream, i, err)
			}
		}
	}
	if total > MaxEventsPerAppend {
		return fmt.Errorf("%w: %d events in one append, limit %d", ErrInvalidAppend, total, MaxEventsPerAppend)
	}
	return nil
}

// MaxMetadataBytes bounds each metadata field of an event.
const MaxMetadataBytes = 256

// ValidateMetadata reports a metadata field that no backend can store: more than
// MaxMetadataBytes, invalid UTF-8, or a NUL byte. Writers check it per command before
// batching, so one caller's bad metadata never reaches an append shared with others.
func ValidateMetadata(m Metadata) error {
	for _, f := range [...]struct{ name, value string }{
		{"correlation id", m.CorrelationID}, {"causation id", m.CausationID}, {"actor", m.Actor}, {"traceparent", m.TraceParent},
	} {
		switch {
		case len(f.value) > MaxMetadataBytes:
			return fmt.Errorf("metadata %s is %d bytes, at most %d", f.name, len(f.value), MaxMetadataBytes)
		case !storableText(f.value):
			return fmt.Errorf("metadata %s must be valid UTF-8 without NUL bytes", f.name)
		}
	}
	return nil
}

func storableText(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// ClampLimit bounds a read limit to 1..MaxReadLimit.
func ClampLimit(limit int) int {
	if limit <= 0 || limit > MaxReadLimit {
		return MaxReadLimit
	}
	return limit
}

// ChainLink is what the hash chain stores for one event, without the event itself: its
// position, the previous hash it names and its own hash.
type ChainLink struct {
	Position uint64
	PrevHash Hash
	Hash     Hash
}

// LinkReader is an optional, narrow read of the log: up to limit chain links with
// Position > afterPosition, in position order, with ReadAll's visibility guarantee (never a
// link unless every event before it is visible). It exists for followers that need the
// chain's hashes but not the events — the Merkle tree's follower — so they do not pay for
// reading and decoding every payload. It reports the hashes as stored and recomputes
// nothing: a caller that must know each hash matches its event uses ReadAll and
// ChainVerifier. Backends that cannot read less than the whole event need not offer it;
// ReadLinks below falls back to ReadAll for them.
type LinkReader interface {
	ReadLinks(ctx context.Context, afterPosition uint64, limit int) ([]ChainLink, error)
}

// ReadLinks reads chain links from s: through its LinkReader when it has one, otherwise
// by reading whole events with ReadAll and keeping their links.
func ReadLinks(ctx context.Context, s Store, afterPosition uint64, limit int) ([]ChainLink, error) {
	if lr, ok := s.(LinkReader); ok {
		return lr.ReadLinks(ctx, afterPosition, limit)
	}
	evs, err := s.ReadAll(ctx, afterPosition, limit)
	if err != nil || len(evs) == 0 {
		return nil, err
	}
	out := make([]ChainLink, len(evs))
	for i := range evs {
		out[i] = ChainLink{Position: evs[i].Position, PrevHash: evs[i].PrevHash, Hash: evs[i].Hash}
	}
	return out, nil
}
