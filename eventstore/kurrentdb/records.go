package kurrentdb

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/securepay/securepay/eventstore"
)

// Keys of the per-event metadata object. MultiStreamAppend accepts metadata only as a JSON
// object of string values and the server adds its own "$schema.*" keys on read, so every
// key of ours carries the "securepay." prefix and every number is a decimal string.
const (
	keyID            = "securepay.id"
	keyType          = "securepay.type"
	keyPosition      = "securepay.position"
	keyVersion       = "securepay.version"
	keyRecordedAt    = "securepay.recorded_at_unix_us"
	keyPrevHash      = "securepay.prev_hash"
	keyHash          = "securepay.hash"
	keyCorrelationID = "securepay.correlation_id"
	keyCausationID   = "securepay.causation_id"
	keyActor         = "securepay.actor"
	keyTraceParent   = "securepay.traceparent"
)

// encodeEventMeta renders everything of e except Stream and Data (which KurrentDB keeps as
// the event's stream and payload) as the event's metadata.
func encodeEventMeta(e *eventstore.RecordedEvent) ([]byte, error) {
	m := map[string]string{
		keyID:            e.ID,
		keyType:          e.Type,
		keyPosition:      strconv.FormatUint(e.Position, 10),
		keyVersion:       strconv.FormatUint(e.StreamVersion, 10),
		keyRecordedAt:    strconv.FormatInt(e.RecordedAt.UnixMicro(), 10),
		keyPrevHash:      e.PrevHash.String(),
		keyHash:          e.Hash.String(),
		keyCorrelationID: e.Metadata.CorrelationID,
		keyCausationID:   e.Metadata.CausationID,
		keyActor:         e.Metadata.Actor,
		keyTraceParent:   e.Metadata.TraceParent,
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode event metadata: %w", err)
	}
	return b, nil
}

// eventMetaWire is the metadata object as decoded; a nil field is an absent key.
type eventMetaWire struct {
	ID            *string `json:"securepay.id"`
	Type          *string `json:"securepay.type"`
	Position      *string `json:"securepay.position"`
	Version       *string `json:"securepay.version"`
	RecordedAt    *string `json:"securepay.recorded_at_unix_us"`
	PrevHash      *string `json:"securepay.prev_hash"`
	Hash          *string `json:"securepay.hash"`
	CorrelationID *string `json:"securepay.correlation_id"`
	CausationID   *string `json:"securepay.causation_id"`
	Actor         *string `json:"securepay.actor"`
	TraceParent   *string `json:"securepay.traceparent"`
}

// decodeEventMeta is the inverse of encodeEventMeta: it returns the event without Stream
// and Data. Keys it does not know (the server's "$schema.*") are ignored. The four
// Metadata fields may be absent (read as ""), in case a server drops empty properties;
// every other key is required.
func decodeEventMeta(raw []byte) (eventstore.RecordedEvent, error) {
	var e eventstore.RecordedEvent
	var w *eventMetaWire
	if err := json.Unmarshal(raw, &w); err != nil {
		return e, fmt.Errorf("event metadata is not a JSON object of strings: %w", err)
	}
	if w == nil {
		return e, errors.New("event metadata is null")
	}
	opt := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	e.Metadata = eventstore.Metadata{CorrelationID: opt(w.CorrelationID), CausationID: opt(w.CausationID), Actor: opt(w.Actor), TraceParent: opt(w.TraceParent)}
	for _, f := range [...]struct {
		key string
		val *string
	}{{keyID, w.ID}, {keyType, w.Type}, {keyPosition, w.Position}, {keyVersion, w.Version}, {keyRecordedAt, w.RecordedAt}, {keyPrevHash, w.PrevHash}, {keyHash, w.Hash}} {
		if f.val == nil {
			return e, fmt.Errorf("event metadata lacks %q", f.key)
		}
	}
	e.ID, e.Type = *w.ID, *w.Type
	if e.ID == "" || e.Type == "" {
		return e, errors.New("event metadata has an empty id or type")
	}
	var err error
	if e.Position, err = parsePositive(keyPosition, *w.Position); err != nil {
		return e, err
	}
	if e.StreamVersion, err = parsePositive(keyVersion, *w.Version); err != nil {
		return e, err
	}
	us, err := strconv.ParseInt(*w.RecordedAt, 10, 64)
	if err != nil {
		return e, fmt.Errorf("event metadata %q: %w", keyRecordedAt, err)
	}
	e.RecordedAt = time.UnixMicro(us).UTC()
	if e.PrevHash, err = eventstore.ParseHash(*w.PrevHash); err != nil {
		return e, fmt.Errorf("event metadata %q: %w", keyPrevHash, err)
	}
	if e.Hash, err = eventstore.ParseHash(*w.Hash); err != nil {
		return e, fmt.Errorf("event metadata %q: %w", keyHash, err)
	}
	return e, nil
}

func parsePositive(key, s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("event metadata %q: %w", key, err)
	}
	if n == 0 {
		return 0, fmt.Errorf("event metadata %q is 0; positions and versions start at 1", key)
	}
	return n, nil
}

// logEntry is one event of the log stream: the log event at Position is the event with
// Version in Stream, and its chain hash is Hash. The log stream holds exactly one entry per
// position, so the entry for position p is the log stream's event at revision p-1.
type logEntry struct {
	Position uint64
	Stream   string
	Version  uint64
	Hash     eventstore.Hash
}

// logEntryWire is the stored JSON form, documented for auditors in the package comment.
type logEntryWire struct {
	Position uint64 `json:"position"`
	Stream   string `json:"stream"`
	Version  uint64 `json:"version"`
	Hash     string `json:"hash"`
}

func encodeLogEntry(e logEntry) ([]byte, error) {
	b, err := json.Marshal(logEntryWire{Position: e.Position, Stream: e.Stream, Version: e.Version, Hash: e.Hash.String()})
	if err != nil {
		return nil, fmt.Errorf("encode log entry at position %d: %w", e.Position, err)
	}
	return b, nil
}

// decodeLogEntry decodes the log stream's event at revision and checks that it is the
// entry of position revision+1. It is strict (unknown fields, trailing data, a zero
// version, a malformed hash are all refused): the log stream is written only by this
// package, so anything else there is damage or tampering.
func decodeLogEntry(data []byte, revision uint64) (logEntry, error) {
	var w logEntryWire
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return logEntry{}, fmt.Errorf("log entry at revision %d: %w", revision, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return logEntry{}, fmt.Errorf("log entry at revision %d: trailing data after the JSON object", revision)
	}
	if revision == ^uint64(0) || w.Position != revision+1 {
		return logEntry{}, fmt.Errorf("log entry at revision %d names position %d, want %d", revision, w.Position, revision+1)
	}
	if w.Version == 0 {
		return logEntry{}, fmt.Errorf("log entry for position %d has version 0", w.Position)
	}
	if err := checkStreamName(w.Stream); err != nil {
		return logEntry{}, fmt.Errorf("log entry for position %d: %w", w.Position, err)
	}
	h, err := eventstore.ParseHash(w.Hash)
	if err != nil {
		return logEntry{}, fmt.Errorf("log entry for position %d: %w", w.Position, err)
	}
	return logEntry{Position: w.Position, Stream: w.Stream, Version: w.Version, Hash: h}, nil
}
