package redis

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/internal/bounded"
	"github.com/securepay/securepay/projections"
)

// The balance cache (see the package comment): its projector, and the reader that answers
// from it and fills it.

// updateBalanceScript: KEYS[1] cache entry, KEYS[2] marker. ARGV: position, ttl ms,
const updateBalanceScript = `
local pos = tonumber(ARGV[1])
local m = tonumber(redis.call('GET', KEYS[2]) or '0')
if pos > m then redis.call('SET', KEYS[2], ARGV[1], 'PX', 2 * tonumber(ARGV[2])) end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = tonumber(redis.call('HGET', KEYS[1], 'position') or '0')
if pos <= cur then return 0 end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'posted', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'held', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[5]) end
redis.call('HSET', KEYS[1], 'position', ARGV[1], 'updated_at', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`

// fillBalanceScript: KEYS[1] cache entry, KEYS[2] marker. ARGV: ttl ms, position, then
// field/value pairs. The fill is refused when the projector has seen a newer event.
const fillBalanceScript = `
local m = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) < m then return 0 end
local cur = redis.call('HGET', KEYS[1], 'position')
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
`

type redisCache struct{ v *Views }

func (p *redisCache) Name() string { return BalanceCacheProjector }

func (p *redisCache) Checkpoint(ctx context.Context) (uint64, error) {
	return p.v.checkpoint(ctx, BalanceCacheProjector)
}

// cacheUpdate is the merged change of one account over a batch.
type cacheUpdate struct {
	position            uint64
	posted, held, state string
	updated             int64
}

func (p *redisCache) Apply(ctx context.Context, batch []eventstore.RecordedEvent) error {
	v := p.v
	if err := v.expect(ctx, BalanceCacheProjector, batch); err != nil {
		return err
	}
	updates := map[domain.AccountID]*cacheUpdate{}
	var order []domain.AccountID
	last := batch[0].Position - 1
	var poison *projections.ApplyError
	for i := range batch {
		rec := &batch[i]
		if acct, _, ok := domain.ParseStream(rec.Stream); !ok || acct == "" {
			last = rec.Position
			continue
		}
		ev, err := projections.Decode(rec)
		if err != nil {
			poison = projections.Poison(BalanceCacheProjector, rec, err)
			break
		}
		id := ev.(domain.AccountEvent).Account()
		u := updates[id]
		if u == nil {
			u = &cacheUpdate{}
			updates[id] = u
			order = append(order, id)
		}
		u.position, u.updated = rec.Position, rec.RecordedAt.UnixMicro()
		switch e := ev.(type) {
		case domain.AccountDebited:
			u.posted = strconv.FormatInt(e.PostedAfter, 10)
		case domain.AccountCredited:
			u.posted = strconv.FormatInt(e.PostedAfter, 10)
		case domain.HoldPlaced:
			u.held = strconv.FormatInt(e.HeldAfter, 10)
		case domain.HoldReleased:
			u.held = strconv.FormatInt(e.HeldAfter, 10)
		case domain.HoldCaptured:
			u.posted, u.held = strconv.FormatInt(e.PostedAfter, 10), strconv.FormatInt(e.HeldAfter, 10)
		case domain.AccountFrozen:
			u.state = domain.AccountStatusFrozen.String()
		case domain.AccountUnfrozen:
			u.state = domain.AccountStatusOpen.String()
		case domain.AccountClosed:
			u.state = domain.AccountStatusClosed.String()
		}
		last = rec.Position
	}
	ttl := v.cfg.CacheTTL.Milliseconds()
	_, err := v.rdb.TxPipelined(ctx, func(pipe goredis.Pipeliner) error {
		for _, id := range order {
			u := updates[id]
			pipe.Eval(ctx, updateBalanceScript, []string{v.BalanceKey(id), v.markerKey(id)},
				u.position, ttl, u.posted, u.held, u.state, u.updated)
		}
		if last >= batch[0].Position {
			pipe.Set(ctx, v.CheckpointKey(BalanceCacheProjector), last, 0)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: apply positions %d..%d: %w", BalanceCacheProjector, batch[0].Position, last, err)
	}
	if poison != nil {
		return poison
	}
	return nil
}

// CachedReader answers Balance for "now" from the Redis cache when it can, and everything
// else (and misses) from next, filling the cache on a miss.
func (v *Views) CachedReader(next projections.Reader) projections.Reader {
	return &cachedReader{v: v, next: next}
}

type cachedReader struct {
	v    *Views
	next projections.Reader
}

func (r *cachedReader) Balance(ctx context.Context, id domain.AccountID, asOf projections.AsOf, minPosition uint64) (projections.Balance, error) {
	if !asOf.IsNow() {
		return r.next.Balance(ctx, id, asOf, minPosition)
	}
	if r.v.reads.skip() {
		return r.next.Balance(ctx, id, asOf, minPosition)
	}
	if b, ok := r.lookup(ctx, id, minPosition); ok {
		return b, nil
	}
	b, err := r.next.Balance(ctx, id, asOf, minPosition)
	if err != nil || r.v.reads.isDown() {
		return b, err
	}
	// A failed fill only costs the next reader a miss.
	err = r.v.withinTimeout(ctx, func(ctx context.Context) error { return r.v.fill(ctx, b) })
	if err != nil && !isScriptRefusal(err) {
		r.v.reads.failed(ctx, err)
	}
	return b, nil
}

// withinTimeout runs call under ReadTimeout and returns when it ends or the bound passes,
// whichever comes first. go-redis honours the context for a command on an established
// connection, but not while it dials and greets a new one (its own DialTimeout and
// ReadTimeout, seconds, apply there): a hung Redis held a read for five seconds. An
// abandoned call finishes in the background within go-redis's own timeouts, and while
// Redis is down the breaker (degradation.skip) lets one read per interval start one, so
// they stay few. call's results may be read only when withinTimeout returned its error,
// not the bound's.
func (v *Views) withinTimeout(ctx context.Context, call func(context.Context) error) error {
	return bounded.Run(ctx, v.cfg.ReadTimeout, call)
}

// isScriptRefusal reports an error Redis itself answered (a script error), which says
// Redis is up; only a call that got no answer counts as an outage.
func isScriptRefusal(err error) bool {
	var rerr goredis.Error
	return errors.As(err, &rerr)
}

// lookup returns a cached balance that is at least as new as minPosition. The cache is
// as new as its projector's checkpoint, so read-your-writes asks for that: the checkpoint
// as Redis holds it, never the runner's count in memory, so a Redis that restarted with
// less (or nothing) answers a miss and the read goes to PostgreSQL. MULTI puts the
// checkpoint and the entry in one atomic step, in the same round trip: nothing (a flush
// and a fill from a lagging view) can come between them.
//
// Whatever goes wrong here is a miss: the cache never fails a read the view can answer.
// What only a broken cache explains (an entry or a checkpoint that does not parse) is
// logged, and the entry is deleted so that the fill after this miss replaces it; deleting
// a read-aside entry is always safe.
func (r *cachedReader) lookup(ctx context.Context, id domain.AccountID, minPosition uint64) (projections.Balance, bool) {
	v := r.v
	var cpCmd *goredis.StringCmd
	var hCmd *goredis.MapStringStringCmd
	err := v.withinTimeout(ctx, func(ctx context.Context) error {
		pipe := v.rdb.TxPipeline()
		cpCmd = pipe.Get(ctx, v.CheckpointKey(BalanceCacheProjector))
		hCmd = pipe.HGetAll(ctx, v.BalanceKey(id))
		_, err := pipe.Exec(ctx)
		return err
	})
	if err != nil && !errors.Is(err, goredis.Nil) {
		if !isScriptRefusal(err) {
			v.reads.failed(ctx, err) // Redis unreachable or too slow: the view answers
		}
		return projections.Balance{}, false
	}
	v.reads.ok()
	if minPosition > 0 {
		cp, err := cpCmd.Uint64()
		switch {
		case errors.Is(err, goredis.Nil):
			return projections.Balance{}, false // no checkpoint: the projector is replaying
		case err != nil:
			v.cfg.Logger.Warn("balance cache: checkpoint does not parse; reading the view", "key", v.CheckpointKey(BalanceCacheProjector), "error", err)
			return projections.Balance{}, false
		case cp < minPosition:
			return projections.Balance{}, false
		}
	}
	m := hCmd.Val()
	if len(m) == 0 {
		return projections.Balance{}, false
	}
	b, err := balanceFromHash(id, m)
	if err != nil {
		v.cfg.Logger.Warn("balance cache: dropping an entry that does not parse", "key", v.BalanceKey(id), "error", err)
		if err := v.withinTimeout(ctx, func(ctx context.Context) error { return v.rdb.Del(ctx, v.BalanceKey(id)).Err() }); err != nil {
			v.cfg.Logger.Warn("balance cache: drop entry", "key", v.BalanceKey(id), "error", err)
		}
		return projections.Balance{}, false
	}
	return b, true
}

// balanceFromHash reads a cache entry; every field fill writes must be there and parse.
func balanceFromHash(id domain.AccountID, m map[string]string) (projections.Balance, error) {
	num := func(k string) (int64, error) { return strconv.ParseInt(m[k], 10, 64) }
	b := projections.Balance{Account: domain.Account{ID: id}}
	var err error
	var scale, pos, updated int64
	for k, dst := range map[string]*int64{"posted": &b.Posted, "held": &b.Held, "asset_scale": &scale, "position": &pos, "updated_at": &updated} {
		if *dst, err = num(k); err != nil {
			return b, fmt.Errorf("cache entry of %s: field %s: %w", id, k, err)
		}
	}
	if b.Kind, err = domain.ParseAccountKind(m["kind"]); err != nil {
		return b, fmt.Errorf("cache entry of %s: %w", id, err)
	}
	if b.Status, err = projections.ParseAccountStatus(m["status"]); err != nil {
		return b, fmt.Errorf("cache entry of %s: %w", id, err)
	}
	if scale < 0 || scale > math.MaxUint8 || pos < 0 {
		return b, fmt.Errorf("cache entry of %s: asset scale %d or position %d out of range", id, scale, pos)
	}
	b.Asset = domain.Asset{Code: m["asset_code"], Scale: uint8(scale)}
	b.Position, b.UpdatedAt = uint64(pos), time.UnixMicro(updated).UTC()
	return b, nil
}

// fill stores b in the cache unless the projector has seen a newer event of the account.
func (v *Views) fill(ctx context.Context, b projections.Balance) error {
	args := []any{v.cfg.CacheTTL.Milliseconds(), b.Position,
		"posted", b.Posted, "held", b.Held, "asset_code", b.Asset.Code, "asset_scale", b.Asset.Scale,
		"kind", b.Kind.String(), "status", b.Status.String(), "position", b.Position, "updated_at", b.UpdatedAt.UnixMicro()}
	return v.rdb.Eval(ctx, fillBalanceScript, []string{v.BalanceKey(b.ID), v.markerKey(b.ID)}, args...).Err()
}

func (r *cachedReader) History(ctx context.Context, id domain.AccountID, afterPosition uint64, limit int, minPosition uint64) ([]projections.Entry, error) {
	return r.next.History(ctx, id, afterPosition, limit, minPosition)
}

func (r *cachedReader) Payment(ctx context.Context, id domain.PaymentID, minPosition uint64) (projections.Payment, error) {
	return r.next.Payment(ctx, id, minPosition)
}

func (r *cachedReader) Position(ctx context.Context) (uint64, error) { return r.next.Position(ctx) }
