// Package redis keeps two views in Redis: a read-aside balance cache and per-account
// notification streams. (Importers that also use the client name this package apart, as
// redisviews; inside it the client is goredis.)
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
package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
)

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

// Config configures the Redis views.
type Config struct {
	Client goredis.UniversalClient
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
	// Logger hears what the views cannot return to a caller: a corrupt cache entry that a
	// read dropped, a sweep that failed and is retried at the next tick, Redis becoming
	// unreachable for reads and answering again (once each). Default: discard.
	Logger *slog.Logger
	// ReadTimeout bounds each Redis call a read makes (lookup, fill) before the read falls
	// back to the views; default DefaultReadTimeout.
	ReadTimeout time.Duration
}

// Validate reports problems with c.
func (c Config) Validate() error {
	if c.Client == nil {
		return errors.New("redis views: Client is required")
	}
	if c.CacheTTL < 0 || c.NotifyMaxLen < 0 || c.ExpiringWithin < 0 || c.ReadTimeout < 0 {
		return errors.New("redis views: CacheTTL, NotifyMaxLen, ExpiringWithin and ReadTimeout must not be negative")
	}
	return nil
}

// Views are the balance cache and the notification streams.
type Views struct {
	cfg Config
	rdb goredis.UniversalClient
	// notifyMu serialises the notifications projector's batches with the expiry sweeper,
	// which writes the same streams with ids derived from the checkpoint.
	notifyMu sync.Mutex
	reads    *degradation
}

// New checks cfg and returns the views.
func New(cfg Config) (*Views, error) {
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
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ReadTimeout == 0 {
		cfg.ReadTimeout = DefaultReadTimeout
	}
	return &Views{cfg: cfg, rdb: cfg.Client, reads: &degradation{log: cfg.Logger, clock: cfg.Clock}}, nil
}

func (v *Views) key(parts ...string) string { return v.cfg.Prefix + strings.Join(parts, ":") }

// CheckpointKey is where projector name keeps its checkpoint.
func (v *Views) CheckpointKey(name string) string { return v.key("proj", name, "checkpoint") }

// BalanceKey and NotificationsKey name an account's cache entry and notification stream.
func (v *Views) BalanceKey(id domain.AccountID) string       { return v.key("bal", string(id)) }
func (v *Views) NotificationsKey(id domain.AccountID) string { return v.key("notify", string(id)) }
func (v *Views) markerKey(id domain.AccountID) string        { return v.key("balpos", string(id)) }
func (v *Views) expiringKey() string                         { return v.key("notify-expiring") }

// Projectors returns the balance cache and notifications projectors.
func (v *Views) Projectors() []projections.Projector {
	return []projections.Projector{&redisCache{v}, &redisNotify{v}}
}

func (v *Views) checkpoint(ctx context.Context, name string) (uint64, error) {
	s, err := v.rdb.Get(ctx, v.CheckpointKey(name)).Result()
	if errors.Is(err, goredis.Nil) {
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

func (v *Views) expect(ctx context.Context, name string, batch []eventstore.RecordedEvent) error {
	cp, err := v.checkpoint(ctx, name)
	if err != nil {
		return err
	}
	if batch[0].Position != cp+1 {
		return fmt.Errorf("%w: %s is at %d in Redis, batch starts at %d", projections.ErrCheckpointMoved, name, cp, batch[0].Position)
	}
	return nil
}
