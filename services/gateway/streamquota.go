package gateway

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// StreamQuota bounds the server streams (watch, log) one principal holds open, so that
// one token cannot take every stream slot of the components behind the gateways.
type StreamQuota interface {
	// Acquire takes one of principal's stream slots. ok false (and a nil error) means the
	// principal already holds Max streams; an error means the quota could not be read,
	// and the stream must be refused (failing open would be no quota). release gives
	// the slot back; it may be called more than once.
	Acquire(ctx context.Context, principal string) (release func(), ok bool, err error)
	// Max is the streams one principal may hold.
	Max() int
}

// MemoryStreamQuota counts streams in this process only: for securepay dev and tests,
// where there is one gateway. With several gateways each would allow Max, so production
// uses [RedisStreamQuota].
type MemoryStreamQuota struct {
	max  int
	mu   sync.Mutex
	open map[string]int
}

// NewMemoryStreamQuota allows each principal max open streams in this process.
func NewMemoryStreamQuota(max int) (*MemoryStreamQuota, error) {
	if max <= 0 {
		return nil, fmt.Errorf("gateway: streams per principal must be positive, got %d", max)
	}
	return &MemoryStreamQuota{max: max, open: map[string]int{}}, nil
}

// Max is the streams one principal may hold.
func (q *MemoryStreamQuota) Max() int { return q.max }

// Acquire takes one of principal's slots.
func (q *MemoryStreamQuota) Acquire(_ context.Context, principal string) (func(), bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.open[principal] >= q.max {
		return nil, false, nil
	}
	q.open[principal]++
	var once sync.Once
	return func() {
		once.Do(func() {
			q.mu.Lock()
			defer q.mu.Unlock()
			if q.open[principal]--; q.open[principal] <= 0 {
				delete(q.open, principal)
			}
		})
	}, true, nil
}

// RedisStreamQuota shares each principal's stream slots among every gateway instance on
// the same Redis. A principal's open streams are the members of one sorted set, one
// lease per stream, scored by the time the lease expires (Redis's own clock, so the
// gateways' clocks do not matter). The gateway holding a stream refreshes its lease every
// TTL/3 and removes it when the stream ends; a gateway that dies (kill -9, a lost
// machine) stops refreshing, and its leases expire after at most TTL, giving their slots
// back without anyone's help.
type RedisStreamQuota struct {
	rdb     redis.UniversalClient
	max     int
	ttl     time.Duration
	refresh time.Duration
	log     *slog.Logger
}

// DefaultStreamLeaseTTL is how long a dead gateway's streams keep their slots.
const DefaultStreamLeaseTTL = 30 * time.Second

// redisCallTimeout bounds one quota call to Redis: the acquire sits in front of a
// stream's first message, and a refresh must not pile up behind a stalled Redis.
const redisCallTimeout = 2 * time.Second

// NewRedisStreamQuota allows each principal max open streams across every gateway on
// rdb; a lease not refreshed for ttl (DefaultStreamLeaseTTL when 0; at least 3 s) is
// dropped. log receives refresh and release failures (nil: discarded).
func NewRedisStreamQuota(rdb redis.UniversalClient, max int, ttl time.Duration, log *slog.Logger) (*RedisStreamQuota, error) {
	if ttl == 0 {
		ttl = DefaultStreamLeaseTTL
	}
	switch {
	case rdb == nil:
		return nil, errors.New("gateway: the stream quota needs a Redis client")
	case max <= 0:
		return nil, fmt.Errorf("gateway: streams per principal must be positive, got %d", max)
	case ttl < 3*time.Second:
		// A refresh every TTL/3 must fit a Redis round trip with room to spare.
		return nil, fmt.Errorf("gateway: the stream lease TTL must be at least 3s, got %s", ttl)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &RedisStreamQuota{rdb: rdb, max: max, ttl: ttl, refresh: ttl / 3, log: log}, nil
}

// Max is the streams one principal may hold.
func (q *RedisStreamQuota) Max() int { return q.max }

// acquireScript drops the principal's expired leases, refuses when Max remain, and
// otherwise adds one. The key lives as long as its longest lease.
// KEYS[1] the principal's set; ARGV: max, ttl in ms, lease id. Returns 1 or 0.
var acquireScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(top[2]))
return 1
`)

// refreshScript extends a lease by ttl. A lease that is gone (it expired while Redis or
// this gateway stalled, or Redis was flushed) is added back: the stream is open, so it
// counts, even if that briefly puts the principal over Max (new streams are refused
// until it is under again). KEYS[1] the set; ARGV: ttl in ms, lease id.
var refreshScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(top[2]))
return 1
`)

// Acquire takes one of principal's slots across the gateways and keeps its lease alive
// until release.
func (q *RedisStreamQuota) Acquire(ctx context.Context, principal string) (func(), bool, error) {
	key := streamsKey(principal)
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	lease := hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(ctx, redisCallTimeout)
	got, err := acquireScript.Run(ctx, q.rdb, []string{key}, q.max, q.ttl.Milliseconds(), lease).Int()
	cancel()
	if err != nil {
		return nil, false, fmt.Errorf("stream quota in Redis: %w", err)
	}
	if got != 1 {
		return nil, false, nil
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		q.keepAlive(key, lease, stop)
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(stop)
			<-done
			// Not the stream's context: it has usually ended by now.
			ctx, cancel := context.WithTimeout(context.Background(), redisCallTimeout)
			defer cancel()
			if err := q.rdb.ZRem(ctx, key, lease).Err(); err != nil {
				q.log.Warn("gateway: stream lease not released; it expires on its own", "ttl", q.ttl.String(), "error", err)
			}
		})
	}, true, nil
}

// keepAlive refreshes one lease every TTL/3 until stop is closed. A failed refresh is
// retried at the next tick; two more failures in a row let the lease expire, which frees
// a slot this stream still uses: the quota errs towards the principal, never towards
// blocking it for a dead stream.
func (q *RedisStreamQuota) keepAlive(key, lease string, stop <-chan struct{}) {
	t := time.NewTicker(q.refresh)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), redisCallTimeout)
		err := refreshScript.Run(ctx, q.rdb, []string{key}, q.ttl.Milliseconds(), lease).Err()
		cancel()
		if err != nil {
			q.log.Warn("gateway: stream lease not refreshed", "error", err)
		}
	}
}

// streamsKey hashes the principal, as rateKey does: subjects may be e-mail addresses.
func streamsKey(principal string) string {
	h := sha256.Sum256([]byte(principal))
	return "securepay:gateway:streams:" + hex.EncodeToString(h[:16])
}
