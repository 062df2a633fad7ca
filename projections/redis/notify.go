package redis

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
)

// The notification streams (see the package comment): their projector, the sweeper that
// announces authorisations about to expire, and the reader of a stream.

type redisNotify struct{ v *Views }

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
	var poison *projections.ApplyError
	for i := range batch {
		rec := &batch[i]
		if _, _, ok := domain.ParseStream(rec.Stream); !ok {
			last = rec.Position
			continue
		}
		ev, err := projections.Decode(rec)
		if err != nil {
			poison = projections.Poison(NotificationsProjector, rec, err)
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
	cmds, err := v.rdb.TxPipelined(ctx, func(pipe goredis.Pipeliner) error {
		for _, n := range notes {
			key := v.NotificationsKey(n.AccountID)
			sk := key + "@" + strconv.FormatUint(n.Position, 10)
			id := fmt.Sprintf("%d-%d", n.Position, seq[sk])
			seq[sk]++
			pipe.XAdd(ctx, &goredis.XAddArgs{Stream: key, MaxLen: v.cfg.NotifyMaxLen, Approx: true, ID: id, Values: n.values()})
		}
		for _, z := range zops {
			if z.add {
				pipe.ZAdd(ctx, v.expiringKey(), goredis.Z{Score: z.score, Member: z.member})
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
func onlyDuplicateIDs(cmds []goredis.Cmder, err error) bool {
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
func (v *Views) SweepExpiring(ctx context.Context, now time.Time) (int, error) {
	v.notifyMu.Lock()
	defer v.notifyMu.Unlock()
	cp, err := v.checkpoint(ctx, NotificationsProjector)
	if err != nil {
		return 0, err
	}
	const maxPerSweep = 1000 // bounded; the next sweep takes the rest
	due, err := v.rdb.ZRangeByScoreWithScores(ctx, v.expiringKey(), &goredis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(now.Add(v.cfg.ExpiringWithin).UnixMilli(), 10), Count: maxPerSweep}).Result()
	if err != nil {
		return 0, fmt.Errorf("sweep expiring: %w", err)
	}
	if len(due) == 0 {
		return 0, nil
	}
	announced := 0
	_, err = v.rdb.TxPipelined(ctx, func(pipe goredis.Pipeliner) error {
		for _, z := range due {
			member, _ := z.Member.(string)
			pipe.ZRem(ctx, v.expiringKey(), member)
			pay, acct, ok := strings.Cut(member, "\x1f")
			if !ok || pay == "" || acct == "" {
				// Not written by expiringMember: announcing it would write to the stream of
				// no account, and keeping it would return it at every sweep.
				v.cfg.Logger.Warn("notifications: dropping a malformed member of the expiring set", "key", v.expiringKey(), "member", member)
				continue
			}
			n := Notification{Type: "authorisation.expiring", AccountID: domain.AccountID(acct), PaymentID: domain.PaymentID(pay),
				ExpiresAt: time.UnixMilli(int64(z.Score)).UTC(), Position: cp, RecordedAt: now.UTC()}
			// "<checkpoint>-*": after every entry the projector wrote so far, before any it
			// writes next.
			pipe.XAdd(ctx, &goredis.XAddArgs{Stream: v.NotificationsKey(n.AccountID), MaxLen: v.cfg.NotifyMaxLen, Approx: true,
				ID: strconv.FormatUint(cp, 10) + "-*", Values: n.values()})
			announced++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("sweep expiring: %w", err)
	}
	return announced, nil
}

// RunSweeper calls SweepExpiring every interval until ctx ends.
func (v *Views) RunSweeper(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			// A failure is retried at the next tick, and the set keeps what is due until a
			// sweep announces it; so it is only logged.
			if _, err := v.SweepExpiring(ctx, v.cfg.Clock()); err != nil && ctx.Err() == nil {
				v.cfg.Logger.Warn("notifications: sweep of expiring authorisations failed; retrying at the next tick", "error", err)
			}
		}
	}
}

// ReadNotifications returns up to count entries of an account's stream after the entry id
// after ("0" or "" for the oldest kept), waiting up to block for new ones when there are
// none (0: do not wait).
func (v *Views) ReadNotifications(ctx context.Context, id domain.AccountID, after string, count int64, block time.Duration) ([]Notification, error) {
	if after == "" {
		after = "0"
	}
	if count <= 0 || count > 1000 {
		count = 1000
	}
	args := &goredis.XReadArgs{Streams: []string{v.NotificationsKey(id), after}, Count: count, Block: -1}
	if block > 0 {
		args.Block = block
	}
	res, err := v.rdb.XRead(ctx, args).Result()
	if errors.Is(err, goredis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read notifications of %s: %w", id, err)
	}
	var out []Notification
	for _, s := range res {
		for _, m := range s.Messages {
			n, err := notificationFrom(m)
			if err != nil {
				return nil, fmt.Errorf("read notifications of %s: %w", id, err)
			}
			out = append(out, n)
		}
	}
	return out, nil
}

// notificationFrom reads back an entry written with values(). A field that values() leaves
// out for the entry's type reads as zero; a field that is there and does not parse, or one
// that every entry has and this one lacks, is an error: only another writer makes such an
// entry, and a client must not be told of a zero amount that is really unreadable.
func notificationFrom(m goredis.XMessage) (Notification, error) {
	var bad error
	fail := func(k string, err error) {
		if bad == nil {
			bad = fmt.Errorf("notification %s: field %s: %w", m.ID, k, err)
		}
	}
	str := func(k string) string { s, _ := m.Values[k].(string); return s }
	num := func(k string, lo, hi int64) int64 {
		s := str(k)
		if s == "" {
			return 0
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err == nil && (n < lo || n > hi) {
			err = fmt.Errorf("%d is outside %d..%d", n, lo, hi)
		}
		if err != nil {
			fail(k, err)
		}
		return n
	}
	when := func(k string) time.Time {
		s := str(k)
		if s == "" {
			return time.Time{}
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			fail(k, err)
		}
		return t
	}
	for _, k := range []string{"type", "account_id", "position", "recorded_at"} {
		if str(k) == "" {
			fail(k, errors.New("missing"))
		}
	}
	n := Notification{ID: m.ID, Type: str("type"), AccountID: domain.AccountID(str("account_id")), PaymentID: domain.PaymentID(str("payment_id")),
		PostedAfter: num("posted_after_minor", math.MinInt64, math.MaxInt64), Threshold: num("threshold_minor", math.MinInt64, math.MaxInt64),
		Position: uint64(num("position", 0, math.MaxInt64)), RecordedAt: when("recorded_at"), ExpiresAt: when("expires_at")}
	if code := str("asset_code"); code != "" {
		n.Amount = domain.Money{Minor: num("amount_minor", math.MinInt64, math.MaxInt64),
			Asset: domain.Asset{Code: code, Scale: uint8(num("asset_scale", 0, math.MaxUint8))}}
	}
	if bad != nil {
		return Notification{}, bad
	}
	return n, nil
}
