package tlog

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"golang.org/x/mod/sumdb/note"

	"github.com/securepay/securepay/eventstore"
)

// ReceiptFormat names the receipt's layout and version (docs/EVENTS.md).
const ReceiptFormat = "securepay.receipt.v1"

// MaxReceiptBytes bounds a receipt: one event (at most 64 KiB of data, base64) with its
// metadata, a proof of at most 64 hashes and a checkpoint.
const MaxReceiptBytes = 256 << 10

// ErrReceipt reports a receipt that does not prove what it claims.
var ErrReceipt = errors.New("tlog: receipt refused")

// Receipt proves that one event is in the log: the event, its inclusion proof, and the
// signed checkpoint the proof leads to. Its JSON encoding is canonical (Marshal's exact
// bytes), and CheckReceipt refuses any other spelling, so every byte of a receipt counts.
type Receipt struct {
	Format     string       `json:"format"`
	Event      ReceiptEvent `json:"event"`
	LeafIndex  uint64       `json:"leaf_index"`
	TreeSize   uint64       `json:"tree_size"`
	Proof      []string     `json:"inclusion_proof"` // base64 hashes, leaf to root
	Checkpoint string       `json:"checkpoint"`      // the signed note, verbatim
}

// ReceiptEvent is every stored field of the event that its chain hash covers.
type ReceiptEvent struct {
	Position      uint64 `json:"position"`
	Stream        string `json:"stream"`
	StreamVersion uint64 `json:"stream_version"`
	ID            string `json:"id"`
	Type          string `json:"type"`
	RecordedAtUS  int64  `json:"recorded_at_unix_us"`
	CorrelationID string `json:"correlation_id"`
	CausationID   string `json:"causation_id"`
	Actor         string `json:"actor"`
	TraceParent   string `json:"traceparent"`
	DataBase64    string `json:"data_base64"`
	PrevHash      string `json:"prev_hash"`
	Hash          string `json:"hash"`
}

// NewReceipt assembles a receipt; it checks nothing (CheckReceipt does).
func NewReceipt(e *eventstore.RecordedEvent, leafIndex uint64, inclusion [][]byte, cp Signed) Receipt {
	r := Receipt{
		Format: ReceiptFormat,
		Event: ReceiptEvent{
			Position: e.Position, Stream: e.Stream, StreamVersion: e.StreamVersion, ID: e.ID, Type: e.Type,
			RecordedAtUS:  e.RecordedAt.UnixMicro(),
			CorrelationID: e.Metadata.CorrelationID, CausationID: e.Metadata.CausationID,
			Actor: e.Metadata.Actor, TraceParent: e.Metadata.TraceParent,
			DataBase64: base64.StdEncoding.EncodeToString(e.Data),
			PrevHash:   e.PrevHash.String(), Hash: e.Hash.String(),
		},
		LeafIndex:  leafIndex,
		TreeSize:   cp.Size,
		Proof:      make([]string, len(inclusion)),
		Checkpoint: string(cp.Note),
	}
	for i, h := range inclusion {
		r.Proof[i] = base64.StdEncoding.EncodeToString(h)
	}
	return r
}

// Marshal is the receipt's canonical encoding: compact JSON in field order, HTML left
// unescaped, one newline at the end.
func (r Receipt) Marshal() ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return nil, fmt.Errorf("tlog: encode receipt: %w", err)
	}
	return b.Bytes(), nil
}

// RecordedEvent returns the event as the store held it, from the receipt's fields.
func (e ReceiptEvent) RecordedEvent() (eventstore.RecordedEvent, error) {
	data, err := base64.StdEncoding.Strict().DecodeString(e.DataBase64)
	if err != nil {
		return eventstore.RecordedEvent{}, fmt.Errorf("data_base64: %v", err)
	}
	// Hashes are lowercase hex, as the store prints them: another spelling of the same
	// bytes would make two receipts of one event.
	prev, err := eventstore.ParseHash(e.PrevHash)
	if err != nil || prev.String() != e.PrevHash {
		return eventstore.RecordedEvent{}, fmt.Errorf("prev_hash is not %d lowercase hex digits", 2*HashSize)
	}
	hash, err := eventstore.ParseHash(e.Hash)
	if err != nil || hash.String() != e.Hash {
		return eventstore.RecordedEvent{}, fmt.Errorf("hash is not %d lowercase hex digits", 2*HashSize)
	}
	return eventstore.RecordedEvent{
		Position: e.Position, Stream: e.Stream, StreamVersion: e.StreamVersion, ID: e.ID, Type: e.Type,
		RecordedAt: time.UnixMicro(e.RecordedAtUS).UTC(), Data: data,
		Metadata: eventstore.Metadata{CorrelationID: e.CorrelationID, CausationID: e.CausationID, Actor: e.Actor, TraceParent: e.TraceParent},
		PrevHash: prev, Hash: hash,
	}, nil
}

// CheckReceipt verifies a receipt with nothing but the log's public key: the checkpoint
// is signed by that key, the event's fields hash to its stored hash and to the leaf at
// its position, and the proof leads from that leaf to the checkpoint's root. It returns
// the parsed receipt and checkpoint; any changed byte makes it fail.
func CheckReceipt(data []byte, v note.Verifier) (Receipt, Checkpoint, error) {
	var r Receipt
	if len(data) > MaxReceiptBytes {
		return r, Checkpoint{}, fmt.Errorf("%w: %d bytes, at most %d", ErrReceipt, len(data), MaxReceiptBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, Checkpoint{}, fmt.Errorf("%w: not a receipt: %v", ErrReceipt, err)
	}
	if r.Format != ReceiptFormat {
		return r, Checkpoint{}, fmt.Errorf("%w: format %q, this checker knows %q", ErrReceipt, r.Format, ReceiptFormat)
	}
	// Canonical bytes only: JSON accepts other spellings of the same receipt (field names
	// in any case, spaces, escapes), and a receipt is evidence, so it must be the exact
	// bytes that were issued.
	if canon, err := r.Marshal(); err != nil || !bytes.Equal(canon, data) {
		return r, Checkpoint{}, fmt.Errorf("%w: not in canonical form (the bytes differ from the receipt as issued)", ErrReceipt)
	}
	cp, err := OpenCheckpoint([]byte(r.Checkpoint), v)
	if err != nil {
		return r, Checkpoint{}, fmt.Errorf("%w: %w", ErrReceipt, err)
	}
	e, err := r.Event.RecordedEvent()
	if err != nil {
		return r, cp, fmt.Errorf("%w: event: %v", ErrReceipt, err)
	}
	switch {
	case r.TreeSize != cp.Size:
		return r, cp, fmt.Errorf("%w: the proof is for a tree of %d events, the checkpoint has %d", ErrReceipt, r.TreeSize, cp.Size)
	case e.Position == 0 || r.LeafIndex != e.Position-1:
		return r, cp, fmt.Errorf("%w: leaf %d is not position %d", ErrReceipt, r.LeafIndex, e.Position)
	case eventstore.ChainHash(e.PrevHash, &e) != e.Hash:
		return r, cp, fmt.Errorf("%w: the event's fields do not hash to its hash %s: the event was altered", ErrReceipt, e.Hash)
	}
	hashes := make([][]byte, len(r.Proof))
	for i, p := range r.Proof {
		h, err := base64.StdEncoding.Strict().DecodeString(p)
		if err != nil || len(h) != HashSize {
			return r, cp, fmt.Errorf("%w: proof hash %d is not %d bytes of base64", ErrReceipt, i, HashSize)
		}
		hashes[i] = h
	}
	if err := proof.VerifyInclusion(hasher, r.LeafIndex, r.TreeSize, EventLeaf(&e), hashes, cp.Root); err != nil {
		return r, cp, fmt.Errorf("%w: event at position %d is not in checkpoint %d: %v", ErrReceipt, e.Position, cp.Size, err)
	}
	return r, cp, nil
}
