package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// maxJWKSBytes bounds a key set document: a set with a few dozen keys is a few tens of kB.
const maxJWKSBytes = 1 << 20

// keySource finds the issuer's public key for a kid.
type keySource interface {
	key(ctx context.Context, kid string) (jwk.Key, bool)
}

// staticKeys is a key set fixed at start (securepay dev, which signs its own tokens).
type staticKeys struct{ set jwk.Set }

func (s staticKeys) key(_ context.Context, kid string) (jwk.Key, bool) { return s.set.LookupKeyID(kid) }

// jwksCache keeps the issuer's key set, fetched from its JWKS URL.
//
// Invariants:
//  1. A set once fetched is kept until a newer one is fetched: an issuer that is down
//     never takes known keys away, so tokens keep verifying during its outage.
//  2. The set is refetched when older than refresh (on the next lookup; behind it when
//     the set still has the key asked for) so that removed keys go away.
//  3. An unknown kid causes at most one fetch per minInterval, whatever the number of
//     requests carrying unknown kids: forged tokens cannot turn the gateway into a
//     flood against the issuer. A kid the issuer just rotated in is found within
//     minInterval.
//  4. At most one fetch runs at a time; other lookups use the set they have, except
//     that a lookup whose kid is not in it waits for the fetch under way (bounded by
//     fetchTimeout and its own context) and looks again: otherwise every token that
//     reaches a gateway during its first fetch (a restart under load) would be refused
//     as signed by an unknown key.
type jwksCache struct {
	url          string
	client       *http.Client
	refresh      time.Duration
	minInterval  time.Duration
	fetchTimeout time.Duration
	now          func() time.Time
	log          *slog.Logger

	mu          sync.Mutex
	set         jwk.Set
	fetchedAt   time.Time // last successful fetch
	attemptedAt time.Time // last fetch attempt, successful or not
	fetching    bool
	fetched     chan struct{} // closed when the fetch under way ends
}

func (c *jwksCache) key(ctx context.Context, kid string) (jwk.Key, bool) {
	c.mu.Lock()
	set, fetchedAt, attemptedAt, fetching := c.set, c.fetchedAt, c.attemptedAt, c.fetching
	now := c.now()
	var k jwk.Key
	found := false
	if set != nil {
		k, found = set.LookupKeyID(kid)
	}
	stale := set == nil || now.Sub(fetchedAt) >= c.refresh
	// Either reason to fetch is still bounded by minInterval since the last attempt, so an
	// issuer that is down is asked at most once per interval too.
	should := (stale || !found) && !fetching && (attemptedAt.IsZero() || now.Sub(attemptedAt) >= c.minInterval)
	if should {
		c.fetching = true
		c.attemptedAt = now
		c.fetched = make(chan struct{})
	}
	inflight := c.fetched
	c.mu.Unlock()
	if !should {
		if found || !fetching {
			return k, found
		}
		select {
		case <-inflight:
		case <-ctx.Done():
			return nil, false
		}
		c.mu.Lock()
		set = c.set
		c.mu.Unlock()
		if set == nil {
			return nil, false
		}
		return set.LookupKeyID(kid)
	}
	if found {
		// A stale set still holds this key: answer now and refresh behind the request,
		// so no request waits on a slow issuer for a key it already has.
		go c.refreshSet(context.WithoutCancel(ctx))
		return k, true
	}
	if set = c.refreshSet(ctx); set == nil {
		return nil, false
	}
	return set.LookupKeyID(kid)
}

// refreshSet fetches the set (the caller set fetching) and returns the set to use.
func (c *jwksCache) refreshSet(ctx context.Context) jwk.Set {
	fresh, err := c.fetch(ctx)
	c.mu.Lock()
	c.fetching = false
	close(c.fetched)
	if err == nil {
		c.set, c.fetchedAt = fresh, c.now()
	}
	set := c.set
	c.mu.Unlock()
	if err != nil {
		c.log.WarnContext(ctx, "gateway: fetching the issuer's JWKS failed; keeping the keys already known", "url", c.url, "error", err)
	}
	return set
}

// idle reports whether no fetch is running (tests wait for background refreshes).
func (c *jwksCache) idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.fetching
}

func (c *jwksCache) fetch(ctx context.Context) (jwk.Set, error) {
	// The fetch serves every waiting request, not only this one: it must not end when
	// this request's client hangs up.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.fetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	res, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("JWKS %s answered %s", c.url, res.Status)
	}
	body, err := io.ReadAll(io.LimitReader(res.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read JWKS %s: %w", c.url, err)
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("JWKS %s is larger than %d bytes", c.url, maxJWKSBytes)
	}
	set, err := jwk.Parse(body)
	if err != nil {
		return nil, fmt.Errorf("parse JWKS %s: %w", c.url, err)
	}
	if set.Len() == 0 {
		return nil, errors.New("JWKS " + c.url + " holds no keys")
	}
	return set, nil
}
