package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// Limit is a principal's allowance: Rate calls per Period on average, up to Burst at once
// (GCRA: the generic cell rate algorithm, which needs one timestamp per key).
type Limit struct {
	Rate   int
	Burst  int
	Period time.Duration
}

func (l Limit) valid() bool { return l.Rate > 0 && l.Burst > 0 && l.Period > 0 }

// Limiter decides whether a principal may make one more call now. allowed false comes
// with the wait after which a call would be allowed.
type Limiter interface {
	Allow(ctx context.Context, principal string) (allowed bool, retryAfter time.Duration, err error)
}

// RedisLimiter shares each principal's allowance among every gateway instance that uses
// the same Redis, so running more gateways does not multiply what one token may do.
//
// Calls of one principal that arrive while a check of that principal is on its way to
// Redis are checked together when it returns: one GCRA script for n calls (AllowN), which
// admits all n only if n calls in a row would all be admitted, so a batch never lets
// through more than the calls one by one would. A batch refused as a whole (the principal
// is near its limit) is decided call by call, as without batching, so each refused call
// gets its own retry-after and no call is refused that one by one would have passed. A
// principal with one call at a time costs exactly what it did: one script per call. One
// check per principal is in flight at a time on this gateway; calls of other principals
// are not held by it.
type RedisLimiter struct {
	limiter *redis_rate.Limiter
	limit   redis_rate.Limit

	mu      sync.Mutex
	pending map[string]*principalChecks // by rate key; only while a check is in flight
}

// principalChecks is one principal's check in flight and the calls waiting for it.
type principalChecks struct {
	next *rateBatch // calls that arrived during the check in flight; nil: none
}

// rateBatch is calls waiting to be checked together. done is closed once allowed and err
// are set.
type rateBatch struct {
	n       int
	done    chan struct{}
	allowed bool
	err     error
}

// batchTimeout bounds one batch's check: it runs for several callers, so on no one
// caller's context (one client going away must not fail the others' calls).
const batchTimeout = 5 * time.Second

// NewRedisLimiter limits each principal to l across every gateway on rdb.
func NewRedisLimiter(rdb redis.UniversalClient, l Limit) (*RedisLimiter, error) {
	if !l.valid() {
		return nil, fmt.Errorf("gateway: rate limit %+v: rate, burst and period must be positive", l)
	}
	return &RedisLimiter{
		limiter: redis_rate.NewLimiter(rdb),
		limit:   redis_rate.Limit{Rate: l.Rate, Burst: l.Burst, Period: l.Period},
		pending: map[string]*principalChecks{},
	}, nil
}

// Allow spends one call of principal's allowance.
func (r *RedisLimiter) Allow(ctx context.Context, principal string) (bool, time.Duration, error) {
	key := rateKey(principal)
	r.mu.Lock()
	pc, busy := r.pending[key]
	if !busy {
		// Nothing in flight for this principal: check this call alone, now.
		pc = &principalChecks{}
		r.pending[key] = pc
		r.mu.Unlock()
		allowed, wait, err := r.allowOne(ctx, key)
		r.checkNext(key, pc)
		return allowed, wait, err
	}
	b := pc.next
	if b != nil && b.n >= r.limit.Burst {
		// A batch beyond the burst would be refused whole: this call goes alone.
		r.mu.Unlock()
		return r.allowOne(ctx, key)
	}
	if b == nil {
		b = &rateBatch{done: make(chan struct{})}
		pc.next = b
	}
	b.n++
	r.mu.Unlock()
	select {
	case <-b.done:
	case <-ctx.Done():
		// The batch may still spend this call's share: never more than the call would have.
		return false, 0, fmt.Errorf("rate limit in Redis: %w", ctx.Err())
	}
	switch {
	case b.err != nil:
		return false, 0, b.err
	case b.allowed:
		return true, 0, nil
	}
	return r.allowOne(ctx, key)
}

// checkNext starts the check of the calls that waited for the one just done, or, with
// none waiting, ends this principal's turn.
func (r *RedisLimiter) checkNext(key string, pc *principalChecks) {
	r.mu.Lock()
	b := pc.next
	pc.next = nil
	if b == nil {
		delete(r.pending, key)
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
		res, err := r.limiter.AllowN(ctx, key, r.limit, b.n)
		cancel()
		if err != nil {
			b.err = fmt.Errorf("rate limit in Redis: %w", err)
		} else {
			b.allowed = res.Allowed == b.n
		}
		close(b.done)
		r.checkNext(key, pc)
	}()
}

func (r *RedisLimiter) allowOne(ctx context.Context, key string) (bool, time.Duration, error) {
	res, err := r.limiter.Allow(ctx, key, r.limit)
	if err != nil {
		return false, 0, fmt.Errorf("rate limit in Redis: %w", err)
	}
	if res.Allowed > 0 {
		return true, 0, nil
	}
	return false, res.RetryAfter, nil
}

// rateKey hashes the principal: subjects can be e-mail addresses, which have no place in
// a shared cache's key space, and a fixed length bounds the keys.
func rateKey(principal string) string {
	h := sha256.Sum256([]byte(principal))
	return "securepay:gateway:rate:" + hex.EncodeToString(h[:16])
}

// MemoryLimiter is GCRA in this process only: for securepay dev and tests, where there is
// one gateway. It keeps one timestamp per principal and forgets principals idle for longer
// than a full burst takes to refill, so its size is bounded by the active principals.
type MemoryLimiter struct {
	limit    Limit
	interval time.Duration // Period / Rate: the emission interval
	now      func() time.Time

	mu  sync.Mutex
	tat map[string]time.Time // theoretical arrival time of the next call, per principal
}

// NewMemoryLimiter limits each principal to l in this process.
func NewMemoryLimiter(l Limit) (*MemoryLimiter, error) {
	if !l.valid() {
		return nil, fmt.Errorf("gateway: rate limit %+v: rate, burst and period must be positive", l)
	}
	return &MemoryLimiter{limit: l, interval: l.Period / time.Duration(l.Rate), now: time.Now, tat: map[string]time.Time{}}, nil
}

// Allow spends one call of principal's allowance.
func (m *MemoryLimiter) Allow(_ context.Context, principal string) (bool, time.Duration, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	tat, ok := m.tat[principal]
	if !ok || tat.Before(now) {
		tat = now
	}
	// A call is allowed when the next theoretical arrival is at most burst-1 intervals
	// ahead of now.
	tolerance := m.interval * time.Duration(min(m.limit.Burst-1, math.MaxInt32))
	if allowAt := tat.Add(-tolerance); allowAt.After(now) {
		return false, allowAt.Sub(now), nil
	}
	m.tat[principal] = tat.Add(m.interval)
	if len(m.tat) > 4096 {
		for p, t := range m.tat {
			if t.Before(now) {
				delete(m.tat, p)
			}
		}
	}
	return true, 0, nil
}
