package postgres

import (
	"sync"

	"github.com/securepay/securepay/eventstore"
)

// tailEvents bounds the events a store keeps of its own recent appends (tail): at ~1 KB an
// event, about 8 MB. It covers a few seconds of appends at the rates this store reaches, far
// more than a projector that keeps up trails the head by (one gathering window); one that
// trails further reads from the database, as before.
const tailEvents = 8192

// tail keeps the most recent events this store committed, a contiguous run of positions,
// so that a subscription's read after a position inside it is answered from memory
// (readFollowing). In `serve` every projector (two PostgreSQL views, two Redis ones) reads
// each appended event back through its subscription within milliseconds of its commit: from
// the database that was a query per projector per window, about a third of PostgreSQL's
// time per transfer at 64 callers. ReadAll itself still reads the database, so exports and
// checks of the log (audit) see what is stored, not what was committed.
//
// Why an answer from the tail equals the database's:
//  1. Events enter it only after their COMMIT was acknowledged (or resolved as committed),
//     and events are never changed or deleted once committed (triggers refuse it), so
//     every event in it is, field for field, the row the database holds at its position.
//     The fields are those ReadAll scans back: the record time is stamped
//     eventstore.RecordTime (UTC, whole microseconds, as timestamptz keeps it) before the
//     insert, and an empty payload is stored and read back as an empty, non-nil slice.
//  2. It holds one run without gaps: an append that does not continue the run (another
//     process appended in between, or an append of this store was not recorded) starts a
//     new run. So a read answered from it misses no position between after+1 and the end
//     of its answer.
//  3. It answers only reads that start inside the run, and at most up to the run's end: a
//     read at or past the end (events other processes appended, or none yet) goes to the
//     database. A short answer is allowed by ReadAll's contract: the subscription hands it
//     over and reads again from where it ended, and the reader after the run's end goes to
//     the database.
//
// Memory: at most tailEvents events; payloads are copied on entry, so callers of Append
// may reuse their slices, and each read gets a fresh slice of its own (Subscribe's handlers
// keep the batch while the next one is read).
type tail struct {
	mu    sync.RWMutex
	ring  []eventstore.RecordedEvent // len tailEvents once used; position p at p % len
	first uint64                     // position of the oldest event held; 0: empty
	last  uint64                     // position of the newest event held
}

// add records committed events, which are in position order and contiguous (one append
// transaction's). Their payloads are copied into one array.
func (t *tail) add(evs []eventstore.RecordedEvent) {
	if len(evs) == 0 {
		return
	}
	size := 0
	for i := range evs {
		size += len(evs[i].Data)
	}
	arena := make([]byte, 0, size)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ring == nil {
		t.ring = make([]eventstore.RecordedEvent, tailEvents)
	}
	if t.first == 0 || evs[0].Position != t.last+1 {
		t.first = evs[0].Position // a gap, or the first append: a new run
	}
	for i := range evs {
		e := evs[i]
		start := len(arena)
		arena = append(arena, e.Data...)
		e.Data = arena[start:len(arena):len(arena)]
		t.ring[e.Position%uint64(len(t.ring))] = e
		t.last = e.Position
	}
	if t.last-t.first >= uint64(len(t.ring)) {
		t.first = t.last - uint64(len(t.ring)) + 1
	}
}

// read returns up to limit events after position after, or ok = false when the run does
// not hold position after+1.
func (t *tail) read(after uint64, limit int) (evs []eventstore.RecordedEvent, ok bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.first == 0 || after+1 < t.first || after >= t.last || limit <= 0 {
		return nil, false
	}
	n := min(t.last-after, uint64(limit))
	out := make([]eventstore.RecordedEvent, n)
	for i := range out {
		out[i] = t.ring[(after+1+uint64(i))%uint64(len(t.ring))]
	}
	return out, true
}

// end is the position of the newest event held; 0 when none is.
func (t *tail) end() uint64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.last
}
