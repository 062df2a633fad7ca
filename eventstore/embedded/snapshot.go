package embedded

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/securepay/securepay/eventstore"
)

// Snapshot limits: a snapshot is a cache of derived state, and one that is larger than
// this is a sign the aggregate should be split, not stored whole.
const (
	maxSnapshotSchemaBytes = 200
	maxSnapshotStateBytes  = 16 << 20
)

// Snapshot value, format 1: format (1) | version (u64 BE) | len(schema) (u32 BE) | schema |
// state.
const (
	snapshotFormatV1   = 1
	snapshotHeaderSize = 13
)

// ErrInvalidSnapshot reports a snapshot that cannot be saved (a caller bug).
var ErrInvalidSnapshot = errors.New("embedded: invalid snapshot")

// SaveSnapshot stores snap unless the stream already has a snapshot at the same or a
// higher version. Snapshots are outside the hash chain and are written without an fsync
// of their own: losing one only costs a replay.
func (s *Store) SaveSnapshot(ctx context.Context, snap eventstore.Snapshot) error {
	switch {
	case snap.Stream == "" || len(snap.Stream) > eventstore.MaxStreamNameBytes:
		return fmt.Errorf("%w: stream name must be 1..%d bytes, got %d", ErrInvalidSnapshot, eventstore.MaxStreamNameBytes, len(snap.Stream))
	case snap.Version == 0:
		return fmt.Errorf("%w: %s: version 0 (a snapshot covers at least one event)", ErrInvalidSnapshot, snap.Stream)
	case snap.Schema == "" || len(snap.Schema) > maxSnapshotSchemaBytes:
		return fmt.Errorf("%w: %s: schema must be 1..%d bytes, got %d", ErrInvalidSnapshot, snap.Stream, maxSnapshotSchemaBytes, len(snap.Schema))
	case len(snap.State) > maxSnapshotStateBytes:
		return fmt.Errorf("%w: %s: state is %d bytes, limit %d", ErrInvalidSnapshot, snap.Stream, len(snap.State), maxSnapshotStateBytes)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	release, err := s.use()
	if err != nil {
		return err
	}
	defer release()
	s.snapshotMu.Lock()
	defer s.snapshotMu.Unlock()
	key := streamKey(nil, prefixSnapshot, snap.Stream)
	old, found, err := s.loadSnapshot(key, snap.Stream)
	if err != nil {
		return err
	}
	if found && old.Version >= snap.Version {
		return nil // the one we hold is at least as new: keep it
	}
	val := make([]byte, snapshotHeaderSize, snapshotHeaderSize+len(snap.Schema)+len(snap.State))
	val[0] = snapshotFormatV1
	binary.BigEndian.PutUint64(val[1:], snap.Version)
	binary.BigEndian.PutUint32(val[9:], uint32(len(snap.Schema)))
	val = append(val, snap.Schema...)
	val = append(val, snap.State...)
	if err := s.db.Set(key, val, pebble.NoSync); err != nil {
		return fmt.Errorf("embedded: save snapshot of %s: %w", snap.Stream, err)
	}
	return nil
}

// LoadSnapshot returns the stream's snapshot, if there is one. A snapshot whose format
// this build does not know reads as absent: it is only a cache.
func (s *Store) LoadSnapshot(ctx context.Context, stream string) (eventstore.Snapshot, bool, error) {
	if err := ctx.Err(); err != nil {
		return eventstore.Snapshot{}, false, err
	}
	if stream == "" || len(stream) > eventstore.MaxStreamNameBytes {
		return eventstore.Snapshot{}, false, nil
	}
	release, err := s.use()
	if err != nil {
		return eventstore.Snapshot{}, false, err
	}
	defer release()
	return s.loadSnapshot(streamKey(nil, prefixSnapshot, stream), stream)
}

func (s *Store) loadSnapshot(key []byte, stream string) (eventstore.Snapshot, bool, error) {
	val, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return eventstore.Snapshot{}, false, nil
	}
	if err != nil {
		return eventstore.Snapshot{}, false, fmt.Errorf("embedded: load snapshot of %s: %w", stream, err)
	}
	defer closer.Close()
	snap, err := decodeSnapshot(stream, val)
	if err != nil {
		return eventstore.Snapshot{}, false, err
	}
	return snap, snap.Version != 0, nil
}

// decodeSnapshot decodes a stored snapshot; an unknown format gives the zero Snapshot
// and no error, a damaged known format an error.
func decodeSnapshot(stream string, val []byte) (eventstore.Snapshot, error) {
	if len(val) == 0 || val[0] != snapshotFormatV1 {
		return eventstore.Snapshot{}, nil
	}
	if len(val) < snapshotHeaderSize {
		return eventstore.Snapshot{}, fmt.Errorf("embedded: load snapshot of %s: %w: %d bytes, shorter than the header", stream, errCorrupt, len(val))
	}
	n := uint64(binary.BigEndian.Uint32(val[9:]))
	if n > uint64(len(val)-snapshotHeaderSize) {
		return eventstore.Snapshot{}, fmt.Errorf("embedded: load snapshot of %s: %w: schema length %d overruns the value", stream, errCorrupt, n)
	}
	return eventstore.Snapshot{
		Stream:  stream,
		Version: binary.BigEndian.Uint64(val[1:]),
		Schema:  string(val[snapshotHeaderSize : snapshotHeaderSize+n]),
		State:   append([]byte(nil), val[snapshotHeaderSize+n:]...),
	}, nil
}

// EachSnapshot implements eventstore.SnapshotLister: every snapshot in a known format, in
// stream-key order, from one consistent view of the store.
func (s *Store) EachSnapshot(ctx context.Context, fn func(eventstore.Snapshot) error) error {
	release, err := s.use()
	if err != nil {
		return err
	}
	defer release()
	iter, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixSnapshot}, UpperBound: []byte{prefixSnapshot + 1}})
	if err != nil {
		return fmt.Errorf("embedded: list snapshots: %w", err)
	}
	defer iter.Close()
	for iter.First(); iter.Valid(); iter.Next() {
		if err := ctx.Err(); err != nil {
			return err
		}
		key := iter.Key()
		if len(key) < 2 || int(key[1]) != len(key)-2 {
			return fmt.Errorf("embedded: list snapshots: %w: malformed snapshot key %x", errCorrupt, key)
		}
		stream := string(key[2:])
		val, err := iter.ValueAndErr()
		if err != nil {
			return fmt.Errorf("embedded: list snapshots: %s: %w", stream, err)
		}
		snap, err := decodeSnapshot(stream, val)
		if err != nil {
			return err
		}
		if snap.Version == 0 {
			continue // a format this build does not know: LoadSnapshot ignores it too
		}
		if err := fn(snap); err != nil {
			return err
		}
	}
	return iter.Error()
}
