package services

import (
	"context"
	"errors"
	"sync"
	"time"
)

// MemoryIdempotencyStore keeps idempotency records in this process, for `securepay dev`
// and a single instance: the same semantics as the Redis store, lost on restart (which the
// ledger's own payment-id idempotency covers).
type MemoryIdempotencyStore struct {
	maxEntries int
	now        func() time.Time

	mu      sync.Mutex
	records map[string]memRecord
}

type memRecord struct {
	rec     IdempotencyRecord
	expires time.Time
}

// ErrIdempotencyStoreFull is returned by Claim when the memory store holds its maximum of
// live records; the caller answers "unavailable" rather than grow without bound.
var ErrIdempotencyStoreFull = errors.New("idempotency store is full")

// NewMemoryIdempotencyStore returns a store of at most maxEntries live records
// (<= 0: 100,000, about 100 MB at 1 KB per stored response). now is the clock (nil:
// time.Now).
func NewMemoryIdempotencyStore(maxEntries int, now func() time.Time) *MemoryIdempotencyStore {
	if maxEntries <= 0 {
		maxEntries = 100_000
	}
	if now == nil {
		now = time.Now
	}
	return &MemoryIdempotencyStore{maxEntries: maxEntries, now: now, records: map[string]memRecord{}}
}

func (s *MemoryIdempotencyStore) Claim(_ context.Context, key, owner, fingerprint string, ttl time.Duration) (IdempotencyRecord, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if r, ok := s.records[key]; ok && now.Before(r.expires) {
		return r.rec, false, nil
	}
	if len(s.records) >= s.maxEntries {
		s.sweep(now)
		if len(s.records) >= s.maxEntries {
			return IdempotencyRecord{}, false, ErrIdempotencyStoreFull
		}
	}
	s.records[key] = memRecord{rec: IdempotencyRecord{Owner: owner, Fingerprint: fingerprint}, expires: now.Add(ttl)}
	return IdempotencyRecord{}, true, nil
}

// sweep drops expired records. It walks the whole map, which is why it only runs when the
// store is full: amortised over maxEntries claims.
func (s *MemoryIdempotencyStore) sweep(now time.Time) {
	for k, r := range s.records {
		if !now.Before(r.expires) {
			delete(s.records, k)
		}
	}
}

func (s *MemoryIdempotencyStore) Complete(_ context.Context, key, owner string, rec IdempotencyRecord, ttl time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.records[key]; ok && r.rec.Owner == owner && !r.rec.Done {
		rec.Owner = ""
		s.records[key] = memRecord{rec: rec, expires: s.now().Add(ttl)}
	}
	return nil
}

func (s *MemoryIdempotencyStore) Release(_ context.Context, key, owner string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.records[key]; ok && r.rec.Owner == owner && !r.rec.Done {
		delete(s.records, key)
	}
	return nil
}

// Len is the number of records held, expired ones included until swept.
func (s *MemoryIdempotencyStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.records)
}
