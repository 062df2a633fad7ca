package kurrentdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/google/uuid"
	kdb "github.com/kurrent-io/KurrentDB-Client-Go/kurrentdb"

	"github.com/securepay/securepay/eventstore"
)

// Snapshots live beside the log, one KurrentDB stream per snapshotted stream
// (namespace + "securepay-$snapshot-" + stream), outside the log stream: they are not
// events, get no position and are not hash-chained. The stream's $maxCount is 1, so the
// server may scavenge all but the newest.

// MaxSnapshotSchemaBytes bounds Snapshot.Schema.
const MaxSnapshotSchemaBytes = 200

// snapshotMeta is the stored metadata of a snapshot event (JSON).
type snapshotMeta struct {
	Stream  string `json:"securepay.snapshot.stream"`
	Version string `json:"securepay.snapshot.version"`
	Schema  string `json:"securepay.snapshot.schema"`
}

func encodeSnapshotMeta(s eventstore.Snapshot) ([]byte, error) {
	b, err := json.Marshal(snapshotMeta{Stream: s.Stream, Version: strconv.FormatUint(s.Version, 10), Schema: s.Schema})
	if err != nil {
		return nil, fmt.Errorf("encode snapshot metadata: %w", err)
	}
	return b, nil
}

// decodeSnapshot rebuilds a snapshot of stream from its stored event.
func decodeSnapshot(stream string, ev *kdb.RecordedEvent) (eventstore.Snapshot, error) {
	var m snapshotMeta
	if err := json.Unmarshal(ev.UserMetadata, &m); err != nil {
		return eventstore.Snapshot{}, fmt.Errorf("snapshot of %q: metadata: %w", stream, err)
	}
	if m.Stream != stream {
		return eventstore.Snapshot{}, fmt.Errorf("snapshot of %q: metadata names stream %q", stream, m.Stream)
	}
	v, err := strconv.ParseUint(m.Version, 10, 64)
	if err != nil || v == 0 {
		return eventstore.Snapshot{}, fmt.Errorf("snapshot of %q: version %q is not a positive integer", stream, m.Version)
	}
	return eventstore.Snapshot{Stream: stream, Version: v, Schema: m.Schema, State: ev.Data}, nil
}

func checkSnapshot(s eventstore.Snapshot) error {
	if err := checkStreamName(s.Stream); err != nil {
		return err
	}
	switch {
	case s.Version == 0:
		return errors.New("snapshot version must be >= 1")
	case s.Schema == "" || len(s.Schema) > MaxSnapshotSchemaBytes || !utf8.ValidString(s.Schema):
		return fmt.Errorf("snapshot schema must be 1..%d bytes of UTF-8", MaxSnapshotSchemaBytes)
	}
	return nil
}

// LoadSnapshot returns the newest snapshot of stream, if any.
func (s *Store) LoadSnapshot(ctx context.Context, stream string) (eventstore.Snapshot, bool, error) {
	opCtx, done, err := s.begin(ctx)
	if err != nil {
		return eventstore.Snapshot{}, false, err
	}
	defer done()
	if checkStreamName(stream) != nil {
		return eventstore.Snapshot{}, false, nil
	}
	ev, err := s.readLast(opCtx, s.names.snapshot(stream))
	if err != nil || ev == nil {
		return eventstore.Snapshot{}, false, s.opError(ctx, err)
	}
	snap, err := decodeSnapshot(stream, ev)
	if err != nil {
		return eventstore.Snapshot{}, false, err
	}
	return snap, true, nil
}

// SaveSnapshot stores snap unless a snapshot at the same or a higher version is there.
// The check and the write are one optimistic step (expected revision = the snapshot read),
// retried when another writer saved in between, at most MaxAppendAttempts times.
func (s *Store) SaveSnapshot(ctx context.Context, snap eventstore.Snapshot) error {
	if err := checkSnapshot(snap); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	opCtx, done, err := s.begin(ctx)
	if err != nil {
		return err
	}
	defer done()
	return s.opError(ctx, s.saveSnapshot(opCtx, snap))
}

func (s *Store) saveSnapshot(ctx context.Context, snap eventstore.Snapshot) error {
	meta, err := encodeSnapshotMeta(snap)
	if err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	name := s.names.snapshot(snap.Stream)
	for range s.cfg.MaxAppendAttempts {
		last, err := s.readLast(ctx, name)
		if err != nil {
			return fmt.Errorf("save snapshot of %q: %w", snap.Stream, err)
		}
		expected := kdb.StreamState(kdb.NoStream{})
		if last != nil {
			cur, err := decodeSnapshot(snap.Stream, last)
			// A snapshot we cannot read is replaced: snapshots are derived data.
			if err == nil && cur.Version >= snap.Version {
				return nil
			}
			expected = kdb.StreamRevision{Value: last.EventNumber}
		}
		_, err = s.client.AppendToStream(ctx, name, kdb.AppendToStreamOptions{StreamState: expected, RequiresLeader: true}, kdb.EventData{
			EventID:     uuid.New(),
			EventType:   snapshotType,
			ContentType: kdb.ContentTypeBinary,
			Data:        snap.State,
			Metadata:    meta,
		})
		if isConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("save snapshot of %q: %w", snap.Stream, err)
		}
		if last == nil {
			var md kdb.StreamMetadata
			md.SetMaxCount(1)
			if _, err := s.client.SetStreamMetadata(ctx, name, kdb.AppendToStreamOptions{StreamState: kdb.Any{}}, md); err != nil {
				return fmt.Errorf("save snapshot of %q: saved, but limiting the snapshot stream to one event failed: %w", snap.Stream, err)
			}
		}
		return nil
	}
	return fmt.Errorf("save snapshot of %q: %w (%d attempts)", snap.Stream, ErrContention, s.cfg.MaxAppendAttempts)
}
