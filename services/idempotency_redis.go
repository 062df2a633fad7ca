package services

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisIdempotencyStore keeps idempotency records in Redis, shared by every instance of
// the service, each with its own TTL. Every operation is one Lua script, so a claim, a
// completion or a release is atomic with the check that guards it.
type RedisIdempotencyStore struct {
	rdb    redis.UniversalClient
	prefix string
}

// NewRedisIdempotencyStore uses rdb; keys are prefix + the scoped key hash (prefix ""
// means "securepay:idem:v1:").
func NewRedisIdempotencyStore(rdb redis.UniversalClient, prefix string) *RedisIdempotencyStore {
	if prefix == "" {
		prefix = "securepay:idem:v1:"
	}
	return &RedisIdempotencyStore{rdb: rdb, prefix: prefix}
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
	v, err := claimScript.Run(ctx, s.rdb, []string{s.prefix + key}, claim, ttl.Milliseconds()).Result()
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
	if err := ownedScript.Run(ctx, s.rdb, []string{s.prefix + key}, claim, done, ttl.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("redis idempotency complete: %w", err)
	}
	return nil
}

// Release needs the fingerprint to rebuild the claim's bytes; it reads the record first.
func (s *RedisIdempotencyStore) Release(ctx context.Context, key, owner string) error {
	v, err := s.rdb.Get(ctx, s.prefix+key).Bytes()
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
	if err := ownedScript.Run(ctx, s.rdb, []string{s.prefix + key}, string(v), "", 0).Err(); err != nil {
		return fmt.Errorf("redis idempotency release: %w", err)
	}
	return nil
}
