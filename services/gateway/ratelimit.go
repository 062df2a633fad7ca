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
type RedisLimiter struct {
	limiter *redis_rate.Limiter
	limit   redis_rate.Limit
}

// NewRedisLimiter limits each principal to l across every gateway on rdb.
func NewRedisLimiter(rdb redis.UniversalClient, l Limit) (*RedisLimiter, error) {
	if !l.valid() {
		return nil, fmt.Errorf("gateway: rate limit %+v: rate, burst and period must be positive", l)
	}
	return &RedisLimiter{
		limiter: redis_rate.NewLimiter(rdb),
		limit:   redis_rate.Limit{Rate: l.Rate, Burst: l.Burst, Period: l.Period},
	}, nil
}

// Allow spends one call of principal's allowance.
func (r *RedisLimiter) Allow(ctx context.Context, principal string) (bool, time.Duration, error) {
	res, err := r.limiter.Allow(ctx, rateKey(principal), r.limit)
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
