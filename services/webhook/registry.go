package webhook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/securepay/securepay/services/dispatch"
)

// Config wires a Registry. Store and Key are required.
type Config struct {
	Store Store
	Key   *Key
	// MaxPerAccount bounds an account's endpoints; default DefaultMaxPerAcct (10). Every
	// notification of the account fans out to each, so the bound is the dispatcher's too.
	MaxPerAccount int
	// CacheTTL is how long Endpoints reuses an account's list; default 5 s. A change made
	// through this Registry drops the account's entry at once; one made by another
	// process (a second payments instance) is seen within CacheTTL.
	CacheTTL time.Duration
	// MaxCachedAccounts bounds the cache; default 10,000 accounts. When full, expired
	// entries are dropped first, then all of them (a burst of misses is cheaper than an
	// unbounded map).
	MaxCachedAccounts int
	Now               func() time.Time
	Logger            *slog.Logger
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	switch {
	case c.Store == nil:
		return errors.New("webhook registry: Store is required")
	case c.Key == nil:
		return errors.New("webhook registry: Key is required (--webhook-key-file)")
	case c.MaxPerAccount < 0 || c.CacheTTL < 0 || c.MaxCachedAccounts < 0:
		return errors.New("webhook registry: limits must not be negative")
	}
	return nil
}

// Registry registers endpoints, seals their secrets, and answers the dispatcher's
// question (dispatch.Directory): which endpoints does an account have, with their
// secrets. It is safe for concurrent use.
type Registry struct {
	cfg Config

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	endpoints []dispatch.Endpoint
	expires   time.Time
}

var _ dispatch.Directory = (*Registry)(nil)

// NewRegistry builds a Registry.
func NewRegistry(cfg Config) (*Registry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxPerAccount == 0 {
		cfg.MaxPerAccount = DefaultMaxPerAcct
	}
	if cfg.CacheTTL == 0 {
		cfg.CacheTTL = 5 * time.Second
	}
	if cfg.MaxCachedAccounts == 0 {
		cfg.MaxCachedAccounts = 10_000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Registry{cfg: cfg, cache: map[string]cached{}}, nil
}

// MaxPerAccount is the registry's per-account bound.
func (r *Registry) MaxPerAccount() int { return r.cfg.MaxPerAccount }

// Register adds an endpoint for account, owned by owner, and returns it with its new
// secret's text: the only time the secret leaves the registry in a form a person reads.
func (r *Registry) Register(ctx context.Context, account, url string, eventTypes []string, owner string) (Record, string, error) {
	if err := checkAccountID(account); err != nil {
		return Record{}, "", err
	}
	if err := checkURL(url); err != nil {
		return Record{}, "", err
	}
	types, err := checkEventTypes(eventTypes)
	if err != nil {
		return Record{}, "", err
	}
	raw, text := newSecret()
	now := r.cfg.Now().UTC().Truncate(time.Microsecond) // PostgreSQL keeps microseconds
	rec := Record{
		ID: newEndpointID(), AccountID: account, URL: url, EventTypes: types, Owner: owner,
		KeyID: r.cfg.Key.ID(), CreatedAt: now, RotatedAt: now,
	}
	rec.Sealed = r.cfg.Key.seal(rec.ID, raw)
	if err := r.cfg.Store.Insert(ctx, rec, r.cfg.MaxPerAccount); err != nil {
		return Record{}, "", err
	}
	r.forget(account)
	return rec, text, nil
}

// List returns an account's endpoints, oldest first.
func (r *Registry) List(ctx context.Context, account string) ([]Record, error) {
	if err := checkAccountID(account); err != nil {
		return nil, err
	}
	return r.cfg.Store.List(ctx, account)
}

// Get returns one endpoint.
func (r *Registry) Get(ctx context.Context, id string) (Record, error) {
	if !validEndpointID(id) {
		return Record{}, ErrNotFound
	}
	return r.cfg.Store.Get(ctx, id)
}

// Delete removes an endpoint and returns it as it was.
func (r *Registry) Delete(ctx context.Context, id string) (Record, error) {
	if !validEndpointID(id) {
		return Record{}, ErrNotFound
	}
	rec, err := r.cfg.Store.Delete(ctx, id)
	if err != nil {
		return Record{}, err
	}
	r.forget(rec.AccountID)
	return rec, nil
}

// Rotate gives an endpoint a new secret and returns its text. Sealed under the server's
// current key, so rotating is also how an endpoint moves to a new --webhook-key-file.
func (r *Registry) Rotate(ctx context.Context, id string) (Record, string, error) {
	if !validEndpointID(id) {
		return Record{}, "", ErrNotFound
	}
	raw, text := newSecret()
	now := r.cfg.Now().UTC().Truncate(time.Microsecond)
	rec, err := r.cfg.Store.SetSecret(ctx, id, r.cfg.Key.seal(id, raw), r.cfg.Key.ID(), now)
	if err != nil {
		return Record{}, "", err
	}
	r.forget(rec.AccountID)
	return rec, text, nil
}

// Endpoints implements dispatch.Directory: the account's endpoints with their secrets
// opened, from the cache when it is fresh. An account without endpoints is an empty list
// (cached too: most accounts have none, and the dispatcher asks for every notification).
// A secret that does not open (ErrKeyMismatch: the server runs with another key than the
// one it was sealed under) is an error, so the notification is retried and dead-lettered
// rather than delivered unsigned or dropped.
func (r *Registry) Endpoints(ctx context.Context, account string) ([]dispatch.Endpoint, error) {
	now := r.cfg.Now()
	r.mu.Lock()
	c, ok := r.cache[account]
	r.mu.Unlock()
	if ok && now.Before(c.expires) {
		return cloneEndpoints(c.endpoints), nil
	}
	recs, err := r.cfg.Store.List(ctx, account)
	if err != nil {
		return nil, err
	}
	out := make([]dispatch.Endpoint, 0, len(recs))
	for _, rec := range recs {
		secret, err := r.cfg.Key.open(rec.ID, rec.KeyID, rec.Sealed)
		if err != nil {
			r.cfg.Logger.ErrorContext(ctx, "webhook registry: cannot open an endpoint's secret", "endpoint", rec.ID, "account", account, "error", err)
			return nil, err
		}
		out = append(out, dispatch.Endpoint{ID: rec.ID, URL: rec.URL, Secret: secret, EventTypes: slices.Clone(rec.EventTypes)})
	}
	r.mu.Lock()
	if len(r.cache) >= r.cfg.MaxCachedAccounts {
		for k, v := range r.cache {
			if !now.Before(v.expires) {
				delete(r.cache, k)
			}
		}
		if len(r.cache) >= r.cfg.MaxCachedAccounts {
			clear(r.cache)
		}
	}
	r.cache[account] = cached{endpoints: out, expires: now.Add(r.cfg.CacheTTL)}
	r.mu.Unlock()
	return cloneEndpoints(out), nil
}

// Check refuses a key that cannot open the stored secrets: run at start, so a server
// given the wrong --webhook-key-file says so at once rather than at the first delivery.
func (r *Registry) Check(ctx context.Context) error {
	n, err := r.cfg.Store.CountOtherKeys(ctx, r.cfg.Key.ID())
	if err != nil {
		return fmt.Errorf("webhook registry: check the key: %w", err)
	}
	if n > 0 {
		return fmt.Errorf("webhook registry: %w: %d endpoint secret(s) were sealed under another key than this server's (key id %s); start it with the --webhook-key-file they were registered under",
			ErrKeyMismatch, n, r.cfg.Key.ID())
	}
	return nil
}

func (r *Registry) forget(account string) {
	r.mu.Lock()
	delete(r.cache, account)
	r.mu.Unlock()
}

// cloneEndpoints copies what the cache holds, so a caller that changes a slice or a
// secret's bytes cannot change the next caller's answer.
func cloneEndpoints(in []dispatch.Endpoint) []dispatch.Endpoint {
	out := make([]dispatch.Endpoint, len(in))
	for i, e := range in {
		e.Secret = slices.Clone(e.Secret)
		e.EventTypes = slices.Clone(e.EventTypes)
		out[i] = e
	}
	return out
}
