package webhook

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Store keeps endpoint records. Implementations: MemoryStore (securepay dev) and
// PostgresStore. They return ErrNotFound, ErrDuplicate and ErrLimit (wrapped or not) for
// those cases, and never see a secret in clear text.
type Store interface {
	// Insert adds r unless the account already has an endpoint with r.URL (ErrDuplicate)
	// or maxPerAccount endpoints (ErrLimit). The check and the insert are one atomic step.
	Insert(ctx context.Context, r Record, maxPerAccount int) error
	// List returns the account's endpoints, oldest first.
	List(ctx context.Context, accountID string) ([]Record, error)
	// Get returns one endpoint.
	Get(ctx context.Context, id string) (Record, error)
	// Delete removes an endpoint and returns it as it was.
	Delete(ctx context.Context, id string) (Record, error)
	// SetSecret replaces an endpoint's sealed secret and returns the updated record.
	SetSecret(ctx context.Context, id string, sealed []byte, keyID string, at time.Time) (Record, error)
	// CountOtherKeys counts the endpoints whose secret was sealed under another key than
	// keyID.
	CountOtherKeys(ctx context.Context, keyID string) (int, error)
}

// MemoryStore is a Store in memory, for securepay dev and tests: it is lost with the
// process, as the rest of a dev ledger's state that is not in its directory.
type MemoryStore struct {
	mu   sync.Mutex
	byID map[string]Record
	seq  map[string]int // insertion order, for List
	next int
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{byID: map[string]Record{}, seq: map[string]int{}}
}

func clone(r Record) Record {
	r.EventTypes = slices.Clone(r.EventTypes)
	r.Sealed = slices.Clone(r.Sealed)
	return r
}

func (m *MemoryStore) Insert(_ context.Context, r Record, maxPerAccount int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, e := range m.byID {
		if e.AccountID != r.AccountID {
			continue
		}
		if e.URL == r.URL {
			return ErrDuplicate
		}
		n++
	}
	if n >= maxPerAccount {
		return ErrLimit
	}
	if _, ok := m.byID[r.ID]; ok {
		return ErrDuplicate // ids are random: a collision is a bug, refused rather than overwritten
	}
	m.byID[r.ID] = clone(r)
	m.next++
	m.seq[r.ID] = m.next
	return nil
}

func (m *MemoryStore) List(_ context.Context, accountID string) ([]Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Record
	for _, e := range m.byID {
		if e.AccountID == accountID {
			out = append(out, clone(e))
		}
	}
	slices.SortFunc(out, func(a, b Record) int { return m.seq[a.ID] - m.seq[b.ID] })
	return out, nil
}

func (m *MemoryStore) Get(_ context.Context, id string) (Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.byID[id]
	if !ok {
		return Record{}, ErrNotFound
	}
	return clone(e), nil
}

func (m *MemoryStore) Delete(_ context.Context, id string) (Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.byID[id]
	if !ok {
		return Record{}, ErrNotFound
	}
	delete(m.byID, id)
	delete(m.seq, id)
	return e, nil
}

func (m *MemoryStore) SetSecret(_ context.Context, id string, sealed []byte, keyID string, at time.Time) (Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.byID[id]
	if !ok {
		return Record{}, ErrNotFound
	}
	e.Sealed, e.KeyID, e.RotatedAt = slices.Clone(sealed), keyID, at
	m.byID[id] = e
	return clone(e), nil
}

func (m *MemoryStore) CountOtherKeys(_ context.Context, keyID string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, e := range m.byID {
		if e.KeyID != keyID {
			n++
		}
	}
	return n, nil
}
