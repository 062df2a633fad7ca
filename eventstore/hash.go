package eventstore

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"time"
)

// Hash is a SHA-256 digest in the event chain.
type Hash [sha256.Size]byte

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// IsZero reports whether h is the all-zero hash that precedes position 1.
func (h Hash) IsZero() bool { return h == Hash{} }

// ParseHash decodes a hex string written by Hash.String.
func ParseHash(s string) (Hash, error) {
	var h Hash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, fmt.Errorf("eventstore: hash must be %d hex characters", 2*len(h))
	}
	copy(h[:], b)
	return h, nil
}

// ChainHash computes an event's hash from the previous event's hash and the event's stored
// fields. The encoding is fixed and documented so an auditor can recompute it without our
// code (docs/EVENTS.md, section 3):
//
//	SHA-256( prev_hash (32 bytes)
//	       || position (uint64 big-endian) || stream_version (uint64 BE)
//	       || recorded_at as Unix microseconds (int64 BE)
//	       || lp(stream) || lp(event_id) || lp(type) || lp(data)
//	       || lp(correlation_id) || lp(causation_id) || lp(actor) || lp(traceparent) )
//
// where lp(x) is len(x) as uint32 big-endian followed by the bytes of x.
func ChainHash(prev Hash, e *RecordedEvent) Hash {
	var num [8]byte
	h := sha256.New()
	h.Write(prev[:])
	binary.BigEndian.PutUint64(num[:], e.Position)
	h.Write(num[:])
	binary.BigEndian.PutUint64(num[:], e.StreamVersion)
	h.Write(num[:])
	binary.BigEndian.PutUint64(num[:], uint64(e.RecordedAt.UnixMicro()))
	h.Write(num[:])
	lp := func(s []byte) {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(s)))
		h.Write(n[:])
		h.Write(s)
	}
	lps := func(s string) { lp([]byte(s)) }
	lps(e.Stream)
	lps(e.ID)
	lps(e.Type)
	lp(e.Data)
	lps(e.Metadata.CorrelationID)
	lps(e.Metadata.CausationID)
	lps(e.Metadata.Actor)
	lps(e.Metadata.TraceParent)
	var out Hash
	h.Sum(out[:0])
	return out
}

// RecordTime is the store's clock reading as it is stored: UTC, truncated to microseconds,
// the precision every backend can keep (PostgreSQL timestamptz).
func RecordTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// ChainBreak names the first position where the chain does not verify and why.
type ChainBreak struct {
	Position uint64
	Reason   string
}

func (b *ChainBreak) Error() string {
	return fmt.Sprintf("hash chain broken at position %d: %s", b.Position, b.Reason)
}

// ChainVerifier checks events one at a time, in position order, from the start of the log
// or from a trusted (position, hash) checkpoint. It holds O(1) memory whatever the log size.
type ChainVerifier struct {
	next uint64
	prev Hash
}

// NewChainVerifier starts verification after position `after`, whose hash is trusted.
// Use (0, Hash{}) to verify from the beginning.
func NewChainVerifier(after uint64, afterHash Hash) *ChainVerifier {
	return &ChainVerifier{next: after + 1, prev: afterHash}
}

// Check verifies the next event and returns a *ChainBreak at the first problem.
func (v *ChainVerifier) Check(e *RecordedEvent) error {
	switch {
	case e.Position != v.next:
		return &ChainBreak{Position: v.next, Reason: fmt.Sprintf("expected position %d, found %d (an event is missing)", v.next, e.Position)}
	case e.PrevHash != v.prev:
		return &ChainBreak{Position: e.Position, Reason: "stored previous-hash does not match the hash of the previous event"}
	}
	if got := ChainHash(v.prev, e); got != e.Hash {
		return &ChainBreak{Position: e.Position, Reason: fmt.Sprintf("stored hash %s, recomputed %s: the event was altered", e.Hash, got)}
	}
	v.prev = e.Hash
	v.next++
	return nil
}

// Verified returns the last verified position and its hash.
func (v *ChainVerifier) Verified() (uint64, Hash) { return v.next - 1, v.prev }

// VerifyChain reads the whole log in pages and checks every link. It returns the number of
// events verified and a *ChainBreak (or a read error). Memory use is one page.
func VerifyChain(ctx context.Context, s Store, pageSize int, progress func(verified uint64)) (uint64, error) {
	v := NewChainVerifier(0, Hash{})
	err := v.ReadFrom(ctx, s, pageSize, progress)
	n, _ := v.Verified()
	return n, err
}

// ReadFrom checks every event of s after the last verified one, in pages, up to the head.
// It returns a *ChainBreak for the first bad link, or a read error; Verified then says how
// far the chain held and its hash there (an auditor's anchor for the next run).
func (v *ChainVerifier) ReadFrom(ctx context.Context, s Store, pageSize int, progress func(verified uint64)) error {
	pageSize = ClampLimit(pageSize)
	for {
		after, _ := v.Verified()
		page, err := s.ReadAll(ctx, after, pageSize)
		if err != nil {
			return fmt.Errorf("verify chain: read after %d: %w", after, err)
		}
		for i := range page {
			if err := v.Check(&page[i]); err != nil {
				return err
			}
		}
		if progress != nil {
			n, _ := v.Verified()
			progress(n)
		}
		if len(page) < pageSize {
			return nil
		}
	}
}
