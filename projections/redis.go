package projections

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// Redis views: a read-aside balance cache and per-account notification streams.
//
// Both projectors keep their checkpoint in Redis and write each batch with one MULTI/EXEC
// (the batch's writes and the checkpoint land together or not at all). Their writes are
// also idempotent (cache updates are guarded by position, notification entries have
// position-derived ids that Redis refuses twice), so even a replay changes nothing.
//
// Redis must not evict the checkpoint keys: run it with maxmemory-policy noeviction or
// volatile-* (checkpoints have no TTL, cache entries do). If the checkpoint is lost anyway
// (FLUSHALL, a new instance), the projector notices at its next batch and replays the log
// from the start, which rebuilds the notification streams with the same ids.
//
// The balance cache. Entries are filled by readers on a miss (from PostgreSQL) and then
// kept current by the cache projector, which writes the after-balances the events carry
// (posted_after, held_after), so it needs no state of its own. A per-account marker holds
// the last position the projector saw for the account; a reader's fill is accepted only
// if its data is at least that new, so a fill from a lagging PostgreSQL view can never
// overwrite what the projector already knows. Entries expire after CacheTTL, so an update
// lost in any way heals within the TTL.
//
// Notifications. Per account a capped stream (XADD MAXLEN ~ NotifyMaxLen) with entries
// whose ids are "<log position>-<n>", so a client can resume from the last id it saw and
// relate an entry to the log. Types:
//
//	payment.received      a credit (transfer, capture, refund in)
//	payment.sent          a debit or a captured hold
//	authorisation.expired an authorisation's hold released because it expired
//	authorisation.expiring an open authorisation expires within ExpiringWithin (from the sweeper)
//	balance.low           the posted balance fell below the account's threshold
//
// There is no "payment.failed": a refused command appends nothing to the log (refusals are
// answered to the caller synchronously), so the log has no failure to project.

// Redis projector names.
const (
	BalanceCacheProjector  = "balance-cache.v1"
	NotificationsProjector = "notifications.v1"
)

// Thresholds configures balance.low notifications: a threshold in minor units per account,
// else per asset code; an account with neither gets none.
type Thresholds struct {
	Accounts map[domain.AccountID]int64
	Assets   map[string]int64
}

func (t Thresholds) of(id domain.AccountID, asset domain.Asset) (int64, bool) {
	if v, ok := t.Accounts[id]; ok {
		return v, true
	}
	v, ok := t.Assets[asset.Code]
	return v, ok
}

// RedisConfig configures the Redis views.
type RedisConfig struct {
	Client redis.UniversalClient
	// Prefix of every key; default "sp:".
	Prefix string
	// CacheTTL of balance entries; default 10 minutes.
	CacheTTL time.Duration
	// NotifyMaxLen caps each account's notification stream (approximately); default 1,000.
	NotifyMaxLen int64
	// ExpiringWithin: the sweeper announces authorisations expiring within it; default 15m.
	ExpiringWithin time.Duration
	LowBalance     Thresholds
	Clock          func() time.Time
}

// Validate reports problems with c.
func (c RedisConfig) Validate() error {
	if c.Client == nil {
		return errors.New("redis views: Client is required")
	}
	if c.CacheTTL < 0 || c.NotifyMaxLen < 0 || c.ExpiringWithin < 0 {
		return errors.New("redis views: CacheTTL, NotifyMaxLen and ExpiringWithin must not be negative")
	}
	return nil
}

// RedisViews are the balance cache and the notification streams.
type RedisViews struct {
	cfg RedisConfig
	rdb redis.UniversalClient
	// notifyMu serialises the notifications projector's batches with the expiry sweeper,
	// which writes the same streams with ids derived from the checkpoint.
	notifyMu sync.Mutex
}

// NewRedisViews checks cfg and returns the views.
func NewRedisViews(cfg RedisConfig) (*RedisViews, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "sp:"
	}
	if cfg.CacheTTL == 0 {
		cfg.CacheTTL = 10 * time.Minute
	}
	if cfg.NotifyMaxLen == 0 {
		cfg.NotifyMaxLen = 1000
	}
	if cfg.ExpiringWithin == 0 {
		cfg.ExpiringWithin = 15 * time.Minute
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	return &RedisViews{cfg: cfg, rdb: cfg.Client}, nil
}

func (v *RedisViews) key(parts ...string) string { return v.cfg.Prefix + strings.Join(parts, ":") }

// CheckpointKey is where projector name keeps its checkpoint.
func (v *RedisViews) CheckpointKey(name string) string { return v.key("proj", name, "checkpoint") }

// BalanceKey and NotificationsKey name an account's cache entry and notification stream.
func (v *RedisViews) BalanceKey(id domain.AccountID) string       { return v.key("bal", string(id)) }
func (v *RedisViews) NotificationsKey(id domain.AccountID) string { return v.key("notify", string(id)) }
func (v *RedisViews) markerKey(id domain.AccountID) string        { return v.key("balpos", string(id)) }
func (v *RedisViews) expiringKey() string                         { return v.key("notify-expiring") }

// Projectors returns the balance cache and notifications projectors.
func (v *RedisViews) Projectors() []Projector {
	return []Projector{&redisCache{v}, &redisNotify{v}}
}

func (v *RedisViews) checkpoint(ctx context.Context, name string) (uint64, error) {
	s, err := v.rdb.Get(ctx, v.CheckpointKey(name)).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("%s: read checkpoint: %w", name, err)
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: checkpoint %q: %w", name, s, err)
	}
	return n, nil
}

func (v *RedisViews) expect(ctx context.Context, name string, batch []eventstore.RecordedEvent) error {
	cp, err := v.checkpoint(ctx, name)
	if err != nil {
		return err
	}
	if batch[0].Position != cp+1 {
		return fmt.Errorf("%w: %s is at %d in Redis, batch starts at %d", ErrCheckpointMoved, name, cp, batch[0].Position)
	}
	return nil
}

// updateBalanceScript: KEYS[1] cache entry, KEYS[2] marker. ARGV: position, ttl ms,
// posted ("" = unchanged), held (""), status (""), updated_at micros.
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

type redisCache struct{ v *RedisViews }

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
	var poison *ApplyError
	for i := range batch {
		rec := &batch[i]
		if kindOf(rec.Stream) != streamAccount {
			last = rec.Position
			continue
		}
		ev, err := decodeFor(rec)
		if err != nil {
			poison = &ApplyError{Projector: BalanceCacheProjector, Position: rec.Position, Type: rec.Type, Stream: rec.Stream, Err: err}
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
	_, err := v.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
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
func (v *RedisViews) CachedReader(next Reader) Reader { return &cachedReader{v: v, next: next} }

type cachedReader struct {
	v    *RedisViews
	next Reader
}

func (r *cachedReader) Balance(ctx context.Context, id domain.AccountID, asOf AsOf, minPosition uint64) (Balance, error) {
	if !asOf.IsNow() {
		return r.next.Balance(ctx, id, asOf, minPosition)
	}
	if b, ok := r.lookup(ctx, id, minPosition); ok {
		return b, nil
	}
	b, err := r.next.Balance(ctx, id, asOf, minPosition)
	if err != nil {
		return b, err
	}
	// A failed fill only costs the next reader a miss.
	_ = r.v.fill(ctx, b)
	return b, nil
}

// lookup returns a cached balance that is at least as new as minPosition. The cache is
// as new as its projector's checkpoint, so read-your-writes asks for that: the checkpoint
// as Redis holds it, never the runner's count in memory, so a Redis that restarted with
// less (or nothing) answers a miss and the read goes to PostgreSQL. MULTI puts the
// checkpoint and the entry in one atomic step, in the same round trip: nothing (a flush
// and a fill from a lagging view) can come between them.
func (r *cachedReader) lookup(ctx context.Context, id domain.AccountID, minPosition uint64) (Balance, bool) {
	v := r.v
	pipe := v.rdb.TxPipeline()
	cpCmd := pipe.Get(ctx, v.CheckpointKey(BalanceCacheProjector))
	hCmd := pipe.HGetAll(ctx, v.BalanceKey(id))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return Balance{}, false
	}
	if minPosition > 0 {
		cp, err := cpCmd.Uint64()
		if err != nil || cp < minPosition {
			return Balance{}, false
		}
	}
	m := hCmd.Val()
	if len(m) == 0 {
		return Balance{}, false
	}
	b, err := balanceFromHash(id, m)
	if err != nil {
		return Balance{}, false
	}
	return b, true
}

func balanceFromHash(id domain.AccountID, m map[string]string) (Balance, error) {
	num := func(k string) (int64, error) { return strconv.ParseInt(m[k], 10, 64) }
	b := Balance{AccountID: id}
	var err error
	var scale, pos, updated int64
	for k, dst := range map[string]*int64{"posted": &b.Posted, "held": &b.Held, "asset_scale": &scale, "position": &pos, "updated_at": &updated} {
		if *dst, err = num(k); err != nil {
			return b, fmt.Errorf("cache entry of %s: field %s: %w", id, k, err)
		}
	}
	if b.Kind, err = domain.ParseAccountKind(m["kind"]); err != nil {
		return b, err
	}
	if b.Status, err = parseAccountStatus(m["status"]); err != nil {
		return b, err
	}
	b.Asset = domain.Asset{Code: m["asset_code"], Scale: uint8(scale)}
	b.Available, b.Position, b.UpdatedAt = b.Posted-b.Held, uint64(pos), time.UnixMicro(updated).UTC()
	return b, nil
}

// fill stores b in the cache unless the projector has seen a newer event of the account.
func (v *RedisViews) fill(ctx context.Context, b Balance) error {
	args := []any{v.cfg.CacheTTL.Milliseconds(), b.Position,
		"posted", b.Posted, "held", b.Held, "asset_code", b.Asset.Code, "asset_scale", b.Asset.Scale,
		"kind", b.Kind.String(), "status", b.Status.String(), "position", b.Position, "updated_at", b.UpdatedAt.UnixMicro()}
	return v.rdb.Eval(ctx, fillBalanceScript, []string{v.BalanceKey(b.AccountID), v.markerKey(b.AccountID)}, args...).Err()
}

func (r *cachedReader) History(ctx context.Context, id domain.AccountID, afterPosition uint64, limit int, minPosition uint64) ([]Entry, error) {
	return r.next.History(ctx, id, afterPosition, limit, minPosition)
}

func (r *cachedReader) Payment(ctx context.Context, id domain.PaymentID, minPosition uint64) (Payment, error) {
	return r.next.Payment(ctx, id, minPosition)
}

func (r *cachedReader) Position(ctx context.Context) (uint64, error) { return r.next.Position(ctx) }

type redisNotify struct{ v *RedisViews }

func (p *redisNotify) Name() string { return NotificationsProjector }

func (p *redisNotify) Checkpoint(ctx context.Context) (uint64, error) {
	return p.v.checkpoint(ctx, NotificationsProjector)
}

// Notification is one entry of an account's notification stream.
type Notification struct {
	ID        string // stream entry id, "<position>-<n>"
	Type      string
	AccountID domain.AccountID
	PaymentID domain.PaymentID
	Amount    domain.Money
	// PostedAfter is the posted balance after the event (payment.*, balance.low).
	PostedAfter int64
	Threshold   int64     // balance.low
	ExpiresAt   time.Time // authorisation.expiring
	Position    uint64
	RecordedAt  time.Time
}

func (n Notification) values() []any {
	vals := []any{"type", n.Type, "account_id", string(n.AccountID), "position", n.Position, "recorded_at", n.RecordedAt.Format(time.RFC3339Nano)}
	if n.PaymentID != "" {
		vals = append(vals, "payment_id", string(n.PaymentID))
	}
	if !n.Amount.Asset.IsZero() {
		vals = append(vals, "amount_minor", n.Amount.Minor, "asset_code", n.Amount.Asset.Code, "asset_scale", n.Amount.Asset.Scale)
	}
	switch n.Type {
	case "payment.received", "payment.sent", "balance.low":
		vals = append(vals, "posted_after_minor", n.PostedAfter)
	}
	if n.Type == "balance.low" {
		vals = append(vals, "threshold_minor", n.Threshold)
	}
	if !n.ExpiresAt.IsZero() {
		vals = append(vals, "expires_at", n.ExpiresAt.Format(time.RFC3339Nano))
	}
	return vals
}

func expiringMember(pay domain.PaymentID, acct domain.AccountID) string {
	return string(pay) + "\x1f" + string(acct)
}

func (p *redisNotify) Apply(ctx context.Context, batch []eventstore.RecordedEvent) error {
	v := p.v
	v.notifyMu.Lock()
	defer v.notifyMu.Unlock()
	if err := v.expect(ctx, NotificationsProjector, batch); err != nil {
		return err
	}
	var notes []Notification
	type zop struct {
		add    bool
		member string
		score  float64
	}
	var zops []zop
	last := batch[0].Position - 1
	var poison *ApplyError
	for i := range batch {
		rec := &batch[i]
		k := kindOf(rec.Stream)
		if k == streamOther {
			last = rec.Position
			continue
		}
		ev, err := decodeFor(rec)
		if err != nil {
			poison = &ApplyError{Projector: NotificationsProjector, Position: rec.Position, Type: rec.Type, Stream: rec.Stream, Err: err}
			break
		}
		base := Notification{Position: rec.Position, RecordedAt: rec.RecordedAt}
		low := func(acct domain.AccountID, amount domain.Money, postedAfter int64) {
			thr, ok := v.cfg.LowBalance.of(acct, amount.Asset)
			if ok && postedAfter+amount.Minor >= thr && postedAfter < thr {
				n := base
				n.Type, n.AccountID, n.Amount, n.PostedAfter, n.Threshold = "balance.low", acct, amount, postedAfter, thr
				notes = append(notes, n)
			}
		}
		switch e := ev.(type) {
		case domain.AccountCredited:
			n := base
			n.Type, n.AccountID, n.PaymentID, n.Amount, n.PostedAfter = "payment.received", e.AccountID, e.PaymentID, e.Amount, e.PostedAfter
			notes = append(notes, n)
		case domain.AccountDebited:
			n := base
			n.Type, n.AccountID, n.PaymentID, n.Amount, n.PostedAfter = "payment.sent", e.AccountID, e.PaymentID, e.Amount, e.PostedAfter
			notes = append(notes, n)
			low(e.AccountID, e.Amount, e.PostedAfter)
		case domain.HoldCaptured:
			n := base
			n.Type, n.AccountID, n.PaymentID, n.Amount, n.PostedAfter = "payment.sent", e.AccountID, e.PaymentID, e.Amount, e.PostedAfter
			notes = append(notes, n)
			low(e.AccountID, e.Amount, e.PostedAfter)
			if e.Closes {
				zops = append(zops, zop{member: expiringMember(e.PaymentID, e.AccountID)})
			}
		case domain.HoldReleased:
			zops = append(zops, zop{member: expiringMember(e.PaymentID, e.AccountID)})
			if e.Reason == domain.ReleaseExpired {
				n := base
				n.Type, n.AccountID, n.PaymentID, n.Amount = "authorisation.expired", e.AccountID, e.PaymentID, e.Amount
				notes = append(notes, n)
			}
		case domain.PaymentAuthorised:
			zops = append(zops, zop{add: true, member: expiringMember(e.PaymentID, e.Source), score: float64(e.ExpiresAt.UnixMilli())})
		}
		last = rec.Position
	}
	seq := map[string]int{} // per stream and position: the n of "<position>-<n>"
	cmds, err := v.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, n := range notes {
			key := v.NotificationsKey(n.AccountID)
			sk := key + "@" + strconv.FormatUint(n.Position, 10)
			id := fmt.Sprintf("%d-%d", n.Position, seq[sk])
			seq[sk]++
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: key, MaxLen: v.cfg.NotifyMaxLen, Approx: true, ID: id, Values: n.values()})
		}
		for _, z := range zops {
			if z.add {
				pipe.ZAdd(ctx, v.expiringKey(), redis.Z{Score: z.score, Member: z.member})
			} else {
				pipe.ZRem(ctx, v.expiringKey(), z.member)
			}
		}
		if last >= batch[0].Position {
			pipe.Set(ctx, v.CheckpointKey(NotificationsProjector), last, 0)
		}
		return nil
	})
	if err != nil && !onlyDuplicateIDs(cmds, err) {
		return fmt.Errorf("%s: apply positions %d..%d: %w", NotificationsProjector, batch[0].Position, last, err)
	}
	if poison != nil {
		return poison
	}
	return nil
}

// onlyDuplicateIDs reports whether err is Redis refusing an entry id it already has: a
// replayed batch, whose entries are already there. (MULTI runs every other command.)
func onlyDuplicateIDs(cmds []redis.Cmder, err error) bool {
	if len(cmds) == 0 {
		return false // the transaction itself failed
	}
	for _, c := range cmds {
		if e := c.Err(); e != nil && !strings.Contains(e.Error(), "equal or smaller than the target stream top item") {
			return false
		}
	}
	return err != nil
}

// SweepExpiring announces, once each, open authorisations expiring within ExpiringWithin
// of now. Call it periodically (RunSweeper does).
func (v *RedisViews) SweepExpiring(ctx context.Context, now time.Time) (int, error) {
	v.notifyMu.Lock()
	defer v.notifyMu.Unlock()
	cp, err := v.checkpoint(ctx, NotificationsProjector)
	if err != nil {
		return 0, err
	}
	const maxPerSweep = 1000 // bounded; the next sweep takes the rest
	due, err := v.rdb.ZRangeByScoreWithScores(ctx, v.expiringKey(), &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(now.Add(v.cfg.ExpiringWithin).UnixMilli(), 10), Count: maxPerSweep}).Result()
	if err != nil {
		return 0, fmt.Errorf("sweep expiring: %w", err)
	}
	if len(due) == 0 {
		return 0, nil
	}
	_, err = v.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, z := range due {
			member, _ := z.Member.(string)
			pay, acct, _ := strings.Cut(member, "\x1f")
			n := Notification{Type: "authorisation.expiring", AccountID: domain.AccountID(acct), PaymentID: domain.PaymentID(pay),
				ExpiresAt: time.UnixMilli(int64(z.Score)).UTC(), Position: cp, RecordedAt: now.UTC()}
			// "<checkpoint>-*": after every entry the projector wrote so far, before any it
			// writes next.
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: v.NotificationsKey(n.AccountID), MaxLen: v.cfg.NotifyMaxLen, Approx: true,
				ID: strconv.FormatUint(cp, 10) + "-*", Values: n.values()})
			pipe.ZRem(ctx, v.expiringKey(), member)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("sweep expiring: %w", err)
	}
	return len(due), nil
}

// RunSweeper calls SweepExpiring every interval until ctx ends.
func (v *RedisViews) RunSweeper(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if _, err := v.SweepExpiring(ctx, v.cfg.Clock()); err != nil && ctx.Err() == nil {
				continue // transient; the next tick tries again and the set keeps what is due
			}
		}
	}
}

// ReadNotifications returns up to count entries of an account's stream after the entry id
// after ("0" or "" for the oldest kept), waiting up to block for new ones when there are
// none (0: do not wait).
func (v *RedisViews) ReadNotifications(ctx context.Context, id domain.AccountID, after string, count int64, block time.Duration) ([]Notification, error) {
	if after == "" {
		after = "0"
	}
	if count <= 0 || count > 1000 {
		count = 1000
	}
	args := &redis.XReadArgs{Streams: []string{v.NotificationsKey(id), after}, Count: count, Block: -1}
	if block > 0 {
		args.Block = block
	}
	res, err := v.rdb.XRead(ctx, args).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read notifications of %s: %w", id, err)
	}
	var out []Notification
	for _, s := range res {
		for _, m := range s.Messages {
			out = append(out, notificationFrom(m))
		}
	}
	return out, nil
}

func notificationFrom(m redis.XMessage) Notification {
	str := func(k string) string { s, _ := m.Values[k].(string); return s }
	num := func(k string) int64 { n, _ := strconv.ParseInt(str(k), 10, 64); return n }
	n := Notification{ID: m.ID, Type: str("type"), AccountID: domain.AccountID(str("account_id")), PaymentID: domain.PaymentID(str("payment_id")),
		PostedAfter: num("posted_after_minor"), Threshold: num("threshold_minor"), Position: uint64(num("position"))}
	if code := str("asset_code"); code != "" {
		n.Amount = domain.Money{Minor: num("amount_minor"), Asset: domain.Asset{Code: code, Scale: uint8(num("asset_scale"))}}
	}
	n.RecordedAt, _ = time.Parse(time.RFC3339Nano, str("recorded_at"))
	n.ExpiresAt, _ = time.Parse(time.RFC3339Nano, str("expires_at"))
	return n
}
