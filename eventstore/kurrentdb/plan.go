package kurrentdb

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/google/uuid"
	kdb "github.com/kurrent-io/KurrentDB-Client-Go/kurrentdb"

	"github.com/securepay/securepay/eventstore"
)

// logTip is the end of the global log: its last position (0 when empty) and that event's
// hash (zero when empty). The log stream then holds exactly position events.
type logTip struct {
	position uint64
	hash     eventstore.Hash
}

// expectedState is KurrentDB's way of saying "the stream holds exactly n events": its
// revisions are 0-based where our versions are 1-based.
func expectedState(n uint64) kdb.StreamState {
	if n == 0 {
		return kdb.NoStream{}
	}
	return kdb.StreamRevision{Value: n - 1}
}

// stateVersion is the inverse of expectedState for the states a server reports as a
// stream's actual state; ok is false for states that name no version (Any, StreamExists).
func stateVersion(s kdb.StreamState) (n uint64, ok bool) {
	switch v := s.(type) {
	case kdb.NoStream:
		return 0, true
	case kdb.StreamRevision:
		if v.Value > math.MaxInt64 { // a negative raw revision that the client passed through
			return 0, false
		}
		return v.Value + 1, true
	default:
		return 0, false
	}
}

// plannedStream is one user stream's part of an attempt.
type plannedStream struct {
	stream string                     // the contract's name
	base   uint64                     // the version the stream must be at (Any is pinned to what was read)
	events []eventstore.RecordedEvent // as they will be stored, hashes included
	ids    []uuid.UUID                // KurrentDB event ids, fresh for every attempt
}

// appendPlan is one attempt at an append, fully computed before anything is sent: where
// every event lands, its hash, and the log entries that claim those positions.
type appendPlan struct {
	tip      logTip
	after    logTip
	streams  []plannedStream
	entries  []logEntry
	entryIDs []uuid.UUID
	result   eventstore.AppendResult
}

// buildPlan lays out appends after tip. bases[i] is the version appends[i]'s stream must
// be at: Expected.Version() for NoStream and Exact, the version just read for Any. Every
// event is stamped with the same record time at. Versions and positions stay within int64,
// because KurrentDB carries stream revisions (and so log positions) as int64 on the wire.
//
// newID makes KurrentDB event ids; they are fresh for every attempt so that the server's
// idempotent-append check (same ids at the same expected revision) can only ever match a
// resend of this very attempt, never a different attempt that would claim other positions.
func buildPlan(tip logTip, appends []eventstore.StreamAppend, bases []uint64, at time.Time, newID func() uuid.UUID) (*appendPlan, error) {
	if len(bases) != len(appends) {
		return nil, fmt.Errorf("plan append: %d base versions for %d streams", len(bases), len(appends))
	}
	total := uint64(0)
	for i, a := range appends {
		if !a.Expected.IsAny() && bases[i] != a.Expected.Version() {
			return nil, fmt.Errorf("plan append: stream %q base version %d contradicts its expectation %s", a.Stream, bases[i], a.Expected)
		}
		n := uint64(len(a.Events))
		if bases[i] > math.MaxInt64-n {
			return nil, fmt.Errorf("plan append: stream %q version would overflow", a.Stream)
		}
		total += n
	}
	if total == 0 {
		return nil, errors.New("plan append: no events")
	}
	if tip.position > math.MaxInt64-total {
		return nil, errors.New("plan append: global position would overflow")
	}
	at = eventstore.RecordTime(at)
	p := &appendPlan{
		tip:      tip,
		streams:  make([]plannedStream, len(appends)),
		entries:  make([]logEntry, 0, total),
		entryIDs: make([]uuid.UUID, 0, total),
		result: eventstore.AppendResult{
			FirstPosition: tip.position + 1,
			LastPosition:  tip.position + total,
			Versions:      make(map[string]uint64, len(appends)),
		},
	}
	pos, prev := tip.position, tip.hash
	for i, a := range appends {
		ps := plannedStream{
			stream: a.Stream,
			base:   bases[i],
			events: make([]eventstore.RecordedEvent, len(a.Events)),
			ids:    make([]uuid.UUID, len(a.Events)),
		}
		for j, e := range a.Events {
			pos++
			rec := &ps.events[j]
			*rec = eventstore.RecordedEvent{
				Position:      pos,
				Stream:        a.Stream,
				StreamVersion: bases[i] + uint64(j) + 1,
				ID:            e.ID,
				Type:          e.Type,
				RecordedAt:    at,
				Data:          e.Data,
				Metadata:      e.Metadata,
				PrevHash:      prev,
			}
			rec.Hash = eventstore.ChainHash(prev, rec)
			prev = rec.Hash
			ps.ids[j] = newID()
			p.entries = append(p.entries, logEntry{Position: pos, Stream: a.Stream, Version: rec.StreamVersion, Hash: rec.Hash})
			p.entryIDs = append(p.entryIDs, newID())
		}
		p.streams[i] = ps
		p.result.Versions[a.Stream] = bases[i] + uint64(len(a.Events))
	}
	p.after = logTip{position: pos, hash: prev}
	return p, nil
}

// requests renders the plan as one MultiStreamAppend: every user stream with its exact
// expected state, then the log stream expected at exactly the tip. The log stream's
// expectation is what makes the positions gap-free and unique across processes: two
// attempts planned from the same tip cannot both commit.
func (p *appendPlan) requests(n streamNames) ([]kdb.AppendStreamRequest, error) {
	reqs := make([]kdb.AppendStreamRequest, 0, len(p.streams)+1)
	for _, ps := range p.streams {
		evs := make([]kdb.EventData, len(ps.events))
		for j := range ps.events {
			e := &ps.events[j]
			meta, err := encodeEventMeta(e)
			if err != nil {
				return nil, fmt.Errorf("stream %q event %d: %w", ps.stream, j, err)
			}
			evs[j] = kdb.EventData{
				EventID:     ps.ids[j],
				EventType:   e.Type,
				ContentType: kdb.ContentTypeBinary, // bytes in, the same bytes out: the hash covers them
				Data:        e.Data,
				Metadata:    meta,
			}
		}
		reqs = append(reqs, kdb.AppendStreamRequest{
			StreamName:          n.user(ps.stream),
			Events:              slices.Values(evs),
			ExpectedStreamState: expectedState(ps.base),
		})
	}
	logEvs := make([]kdb.EventData, len(p.entries))
	for i, e := range p.entries {
		data, err := encodeLogEntry(e)
		if err != nil {
			return nil, err
		}
		logEvs[i] = kdb.EventData{
			EventID:     p.entryIDs[i],
			EventType:   logEntryType,
			ContentType: kdb.ContentTypeBinary,
			Data:        data,
		}
	}
	reqs = append(reqs, kdb.AppendStreamRequest{
		StreamName:          n.log(),
		Events:              slices.Values(logEvs),
		ExpectedStreamState: expectedState(p.tip.position),
	})
	return reqs, nil
}
