package embedded

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/securepay/securepay/eventstore"
)

// Key layout. One byte of prefix per key family keeps the families apart in pebble's
// ordering, so each can be scanned with simple bounds.
//
//	'e' position(u64 BE)                         -> record (the global log)
//	's' len(stream)(u8) stream version(u64 BE)   -> position(u64 BE) (per-stream index)
//	'n' len(stream)(u8) stream                   -> snapshot (never part of the chain)
//
// A stream's current version is its last index key, and the head of the log is its last
// log key (recovered on Open), so no record is rewritten on every append.
//
// A stream name is at most eventstore.MaxStreamNameBytes (200) bytes, so its length fits
// the one-byte prefix, and the prefix makes "a" and "a\x00..." distinct streams whose
// keys never interleave.
const (
	prefixLog      = 'e'
	prefixIndex    = 's'
	prefixSnapshot = 'n'
)

func logKey(dst []byte, position uint64) []byte {
	dst = append(dst, prefixLog)
	return binary.BigEndian.AppendUint64(dst, position)
}

func streamKey(dst []byte, prefix byte, stream string) []byte {
	dst = append(dst, prefix, byte(len(stream)))
	return append(dst, stream...)
}

func indexKey(dst []byte, stream string, version uint64) []byte {
	dst = streamKey(dst, prefixIndex, stream)
	return binary.BigEndian.AppendUint64(dst, version)
}

// Record format, version 1. Fixed-width fields, then every length, then the strings and
// the data, so a reader can copy all strings with one allocation:
//
//	0      format (1)
//	1      stream version (u64 BE)
//	9      recorded at, Unix microseconds (i64 BE)
//	17     previous hash (32)
//	49     hash (32)
//	81     lengths (u32 BE each): stream, id, type, correlation, causation, actor,
//	       traceparent, data
//	113    the seven strings in that order, then data
//
// The position is the key, not part of the value. Fixed-width lengths make the encoding
// canonical: a record decodes only if re-encoding it gives the same bytes.
const (
	recordFormatV1   = 1
	recordHeaderSize = 113
	recordNumLengths = 8
)

// errCorrupt wraps every decoding failure, so a caller can tell a damaged record from an
// I/O error.
var errCorrupt = errors.New("embedded: corrupt record")

// recordSize is the encoded size of e.
func recordSize(e *eventstore.EventData, stream string) int {
	m := &e.Metadata
	return recordHeaderSize + len(stream) + len(e.ID) + len(e.Type) + len(m.CorrelationID) +
		len(m.CausationID) + len(m.Actor) + len(m.TraceParent) + len(e.Data)
}

// encodeRecord writes the record of e into dst, which must be exactly recordSize long
// (pebble's deferred batch operation hands us that slice, so the record is written once,
// straight into the batch).
func encodeRecord(dst []byte, stream string, version uint64, recordedAtMicros int64, prev, hash *eventstore.Hash, e *eventstore.EventData) {
	m := &e.Metadata
	dst[0] = recordFormatV1
	binary.BigEndian.PutUint64(dst[1:], version)
	binary.BigEndian.PutUint64(dst[9:], uint64(recordedAtMicros))
	copy(dst[17:49], prev[:])
	copy(dst[49:81], hash[:])
	lens := dst[81:recordHeaderSize]
	binary.BigEndian.PutUint32(lens[0:], uint32(len(stream)))
	binary.BigEndian.PutUint32(lens[4:], uint32(len(e.ID)))
	binary.BigEndian.PutUint32(lens[8:], uint32(len(e.Type)))
	binary.BigEndian.PutUint32(lens[12:], uint32(len(m.CorrelationID)))
	binary.BigEndian.PutUint32(lens[16:], uint32(len(m.CausationID)))
	binary.BigEndian.PutUint32(lens[20:], uint32(len(m.Actor)))
	binary.BigEndian.PutUint32(lens[24:], uint32(len(m.TraceParent)))
	binary.BigEndian.PutUint32(lens[28:], uint32(len(e.Data)))
	n := recordHeaderSize
	n += copy(dst[n:], stream)
	n += copy(dst[n:], e.ID)
	n += copy(dst[n:], e.Type)
	n += copy(dst[n:], m.CorrelationID)
	n += copy(dst[n:], m.CausationID)
	n += copy(dst[n:], m.Actor)
	n += copy(dst[n:], m.TraceParent)
	copy(dst[n:], e.Data)
}

// appendRecord is encodeRecord for a RecordedEvent, appending to dst (tests, tooling).
func appendRecord(dst []byte, e *eventstore.RecordedEvent) []byte {
	data := eventstore.EventData{ID: e.ID, Type: e.Type, Data: e.Data, Metadata: e.Metadata}
	n := len(dst)
	size := recordSize(&data, e.Stream)
	dst = append(dst, make([]byte, size)...)
	encodeRecord(dst[n:], e.Stream, e.StreamVersion, e.RecordedAt.UnixMicro(), &e.PrevHash, &e.Hash, &data)
	return dst
}

// decodeRecord decodes the record stored at position. The result owns its memory: two
// allocations, one for all the strings and one for the data.
func decodeRecord(position uint64, b []byte) (eventstore.RecordedEvent, error) {
	var e eventstore.RecordedEvent
	if len(b) < recordHeaderSize {
		return e, fmt.Errorf("%w at position %d: %d bytes, shorter than the %d-byte header", errCorrupt, position, len(b), recordHeaderSize)
	}
	if b[0] != recordFormatV1 {
		return e, fmt.Errorf("%w at position %d: unknown record format %d (this build reads format %d)", errCorrupt, position, b[0], recordFormatV1)
	}
	var lens [recordNumLengths]uint64
	var total uint64
	for i := range lens {
		lens[i] = uint64(binary.BigEndian.Uint32(b[81+4*i:]))
		total += lens[i]
	}
	if body := uint64(len(b) - recordHeaderSize); total != body {
		return e, fmt.Errorf("%w at position %d: field lengths add up to %d bytes, record body is %d", errCorrupt, position, total, body)
	}
	limits := [3]struct {
		name string
		max  uint64
	}{{"stream name", eventstore.MaxStreamNameBytes}, {"event id", eventstore.MaxEventIDBytes}, {"event type", eventstore.MaxEventTypeBytes}}
	for i, l := range limits {
		if lens[i] == 0 || lens[i] > l.max {
			return e, fmt.Errorf("%w at position %d: %s is %d bytes, must be 1..%d", errCorrupt, position, l.name, lens[i], l.max)
		}
	}
	if lens[7] > eventstore.MaxEventDataBytes {
		return e, fmt.Errorf("%w at position %d: data is %d bytes, limit %d", errCorrupt, position, lens[7], eventstore.MaxEventDataBytes)
	}
	e.Position = position
	e.StreamVersion = binary.BigEndian.Uint64(b[1:])
	if e.StreamVersion == 0 {
		return e, fmt.Errorf("%w at position %d: stream version 0", errCorrupt, position)
	}
	e.RecordedAt = time.UnixMicro(int64(binary.BigEndian.Uint64(b[9:]))).UTC()
	copy(e.PrevHash[:], b[17:49])
	copy(e.Hash[:], b[49:81])

	strLen := total - lens[7]
	strs := string(b[recordHeaderSize : recordHeaderSize+strLen])
	var off uint64
	take := func(i int) string {
		s := strs[off : off+lens[i]]
		off += lens[i]
		return s
	}
	e.Stream = take(0)
	e.ID = take(1)
	e.Type = take(2)
	e.Metadata.CorrelationID = take(3)
	e.Metadata.CausationID = take(4)
	e.Metadata.Actor = take(5)
	e.Metadata.TraceParent = take(6)
	if lens[7] > 0 {
		e.Data = append([]byte(nil), b[recordHeaderSize+strLen:]...)
	}
	return e, nil
}

// decodeLink reads only the chain link of the record stored at position: the header's
// format and the two hashes. The rest of the record is not checked here (ReadAll's
// decodeRecord does that for every reader of events).
func decodeLink(position uint64, b []byte) (eventstore.ChainLink, error) {
	l := eventstore.ChainLink{Position: position}
	if len(b) < recordHeaderSize {
		return l, fmt.Errorf("%w at position %d: %d bytes, shorter than the %d-byte header", errCorrupt, position, len(b), recordHeaderSize)
	}
	if b[0] != recordFormatV1 {
		return l, fmt.Errorf("%w at position %d: unknown record format %d (this build reads format %d)", errCorrupt, position, b[0], recordFormatV1)
	}
	copy(l.PrevHash[:], b[17:49])
	copy(l.Hash[:], b[49:81])
	return l, nil
}

// chainHasher computes eventstore.ChainHash without allocating: it lays the hashed bytes
// out in a reused buffer and hashes them in one call. The layout is ChainHash's (see
// eventstore/hash.go); TestChainHasherMatchesChainHash and its fuzz test hold the two
// together.
type chainHasher struct {
	buf []byte
}

func (c *chainHasher) sum(prev *eventstore.Hash, position, version uint64, recordedAtMicros int64, stream string, e *eventstore.EventData) eventstore.Hash {
	b := c.buf[:0]
	b = append(b, prev[:]...)
	b = binary.BigEndian.AppendUint64(b, position)
	b = binary.BigEndian.AppendUint64(b, version)
	b = binary.BigEndian.AppendUint64(b, uint64(recordedAtMicros))
	lp := func(b []byte, s string) []byte {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		return append(b, s...)
	}
	b = lp(b, stream)
	b = lp(b, e.ID)
	b = lp(b, e.Type)
	b = binary.BigEndian.AppendUint32(b, uint32(len(e.Data)))
	b = append(b, e.Data...)
	b = lp(b, e.Metadata.CorrelationID)
	b = lp(b, e.Metadata.CausationID)
	b = lp(b, e.Metadata.Actor)
	b = lp(b, e.Metadata.TraceParent)
	// Keep a buffer that grew for one large event only while it stays modest, so one
	// 64 KiB payload does not pin its memory for the life of the store.
	if cap(b) <= 16<<10 {
		c.buf = b
	}
	return sha256.Sum256(b)
}
