package services

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	boundedcall "github.com/securepay/securepay/internal/bounded"
)

// RedisIdempotencyStore keeps idempotency records in Redis, shared by every instance of
// the service, each with its own TTL. Every operation is one Lua script, so a claim, a
// completion or a release is atomic with the check that guards it.
//
// Every call is bounded by a short timeout (DefaultRedisIdempotencyTimeout): go-redis
// retries a refused connection with backoff for seconds, and a request must learn that
// the store is down (IDEMPOTENCY_STORE_UNAVAILABLE, retryable) in milliseconds instead.
type RedisIdempotencyStore struct {
	rdb     redis.UniversalClient
	prefix  string
	timeout time.Duration
}

// DefaultRedisIdempotencyTimeout bounds one idempotency call to Redis. A healthy Redis
// answers in well under a millisecond, but this is the write path: a call cut short fails
// the write (retryable) and may leave a claim that holds retries off until it lapses, so
// the margin is wide — 100ms and 500ms were both cut short by a loaded test machine. It
// still ends go-redis's redialling of a dead Redis (about 2s) and a hung dial (5s) early;
// the read path, which only falls back, is bounded much tighter.
const DefaultRedisIdempotencyTimeout = time.Second

// NewRedisIdempotencyStore uses rdb; keys are prefix + the scoped key hash (prefix ""
// means "securepay:idem:v1:").
func NewRedisIdempotencyStore(rdb redis.UniversalClient, prefix string) *RedisIdempotencyStore {
	if prefix == "" {
		prefix = "securepay:idem:v1:"
	}
	return &RedisIdempotencyStore{rdb: rdb, prefix: prefix, timeout: DefaultRedisIdempotencyTimeout}
}

// WithTimeout sets the bound of one call (d <= 0 keeps the default) and returns s.
func (s *RedisIdempotencyStore) WithTimeout(d time.Duration) *RedisIdempotencyStore {
	if d > 0 {
		s.timeout = d
	}
	return s
}

// claimScript: return the existing record, or store the claim and return false.
var claimScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
`)

// ownedScript runs only while the key still holds the caller's claim (compared as the
// exact stored bytes): a claim that lapsed and was taken by another request is left alone.
// ARGV[2] empty means delete, else set ARGV[2] with TTL ARGV[3].
var ownedScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
`)

func claimBytes(owner, fingerprint string) ([]byte, error) {
	return encodeRecord(IdempotencyRecord{Owner: owner, Fingerprint: fingerprint})
}

func (s *RedisIdempotencyStore) Claim(ctx context.Context, key, owner, fingerprint string, ttl time.Duration) (IdempotencyRecord, bool, error) {
	claim, err := claimBytes(owner, fingerprint)
	if err != nil {
		return IdempotencyRecord{}, false, err
	}
	var v any
	err = s.bounded(ctx, func(ctx context.Context) (err error) {
		v, err = claimScript.Run(ctx, s.rdb, []string{s.prefix + key}, claim, ttl.Milliseconds()).Result()
		return err
	})
	if errors.Is(err, redis.Nil) {
		return IdempotencyRecord{}, true, nil
	}
	if err != nil {
		return IdempotencyRecord{}, false, fmt.Errorf("redis idempotency claim: %w", err)
	}
	str, ok := v.(string)
	if !ok {
		return IdempotencyRecord{}, false, fmt.Errorf("redis idempotency claim: unexpected reply %T", v)
	}
	rec, err := decodeRecord([]byte(str))
	if err != nil {
		return IdempotencyRecord{}, false, err
	}
	return rec, false, nil
}

func (s *RedisIdempotencyStore) Complete(ctx context.Context, key, owner string, rec IdempotencyRecord, ttl time.Duration) error {
	claim, err := claimBytes(owner, rec.Fingerprint)
	if err != nil {
		return err
	}
	rec.Owner = ""
	done, err := encodeRecord(rec)
	if err != nil {
		return err
	}
	err = s.bounded(ctx, func(ctx context.Context) error {
		return ownedScript.Run(ctx, s.rdb, []string{s.prefix + key}, claim, done, ttl.Milliseconds()).Err()
	})
	if err != nil {
		return fmt.Errorf("redis idempotency complete: %w", err)
	}
	return nil
}

// Release needs the fingerprint to rebuild the claim's bytes; it reads the record first.
func (s *RedisIdempotencyStore) Release(ctx context.Context, key, owner string) error {
	var v []byte
	err := s.bounded(ctx, func(ctx context.Context) (err error) {
		v, err = s.rdb.Get(ctx, s.prefix+key).Bytes()
		return err
	})
	if errors.Is(err, redis.Nil) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("redis idempotency release: %w", err)
	}
	rec, err := decodeRecord(v)
	if err != nil {
		return err
	}
	if rec.Owner != owner || rec.Done {
		return nil
	}
	err = s.bounded(ctx, func(ctx context.Context) error {
		return ownedScript.Run(ctx, s.rdb, []string{s.prefix + key}, string(v), "", 0).Err()
	})
	if err != nil {
		return fmt.Errorf("redis idempotency release: %w", err)
	}
	return nil
}

// bounded runs call under the store's timeout and returns when it ends or the bound
// passes (see internal/bounded: go-redis does not honour the context while it dials).
func (s *RedisIdempotencyStore) bounded(ctx context.Context, call func(context.Context) error) error {
	return boundedcall.Run(ctx, s.timeout, call)
}
