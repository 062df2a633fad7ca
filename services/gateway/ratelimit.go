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
// A principal calling often takes its allowance from Redis in leases: the check that
// goes to Redis asks, in one GCRA script (redis_rate's AllowN, all or nothing), for the
// calls waiting for it plus k more, and this gateway admits the principal's next k calls
// from that lease without a round trip. k is about what the principal spends here in
// leaseHorizon or in leaseRTTs round trips to Redis, whichever is longer (its rate on
// this gateway, measured over windows of rateWindow or more; the round trip as this
// gateway sees it), at most maxLease and an eighth of the burst; and a lease is only
// taken while the principal had more than half its burst left at the last answer: a
// principal calling rarely, or near its limit, takes none and costs one script per call
// (or per batch, below), as without leases. So:
//
//   - Never more than the shared GCRA allows: every admitted call was counted in Redis
//     before it was admitted, so over any run the calls admitted by all gateways together
//     are at most what GCRA admitted (rate × elapsed + burst). A leased call is admitted
//     up to leaseLifetime after Redis counted it, as if it had reached Redis that much
//     earlier: over a window shorter than that, each gateway may admit its one lease (k)
//     beyond what GCRA alone would admit in the window.
//   - Waste: a lease's calls not used within leaseLifetime are lost (the principal gets
//     fewer calls, never more): at most k per gateway per principal per leaseLifetime,
//     and only while the principal has more than half its burst left.
//   - The trade-off: a call may be refused that one-by-one checks would have admitted
//     when the allowance it needed sits in another gateway's unexpired lease (at most k
//     per gateway, for at most leaseLifetime), or was lost in an expired one.
//   - Near the limit it is exact: a lease refused (AllowN of the calls plus k) is retried
//     call by call, and a refused principal takes no lease until Redis again reports more
//     than half its burst left, so every refused call was refused by a one-call script
//     and carries its own retry-after.
//
// Calls of one principal that arrive while a check of that principal is on its way to
// Redis wait for it and are then served from the lease it brought, or checked together
// (AllowN of all of them, plus a lease), which admits all only if that many calls in a
// row would all be admitted; a batch refused as a whole is decided call by call. One
// check per principal is in flight at a time on this gateway, and calls of other
// principals do not wait for it; the lock that guards the principals' state is held only
// to read and update it, never across a round trip. Redis unreachable: calls fail (the
// gateway refuses them as limiter_unavailable) once the lease in hand, if any, is spent
// or has expired.
type RedisLimiter struct {
	limiter *redis_rate.Limiter
	limit   redis_rate.Limit
	now     func() time.Time

	mu         sync.Mutex
	principals map[string]*principalState // by principal; idle ones are forgotten
	sweepAt    int                        // size of principals at which idle ones are swept
	rtt        time.Duration              // a check's round trip to Redis, smoothed
}

// principalState is what this gateway knows of one principal. Guarded by RedisLimiter.mu.
type principalState struct {
	key string // rateKey(principal)

	leased  int       // calls left in this gateway's lease
	expires time.Time // when they are lost

	windowStart time.Time // the principal's rate here: calls since windowStart...
	windowCalls int
	rate        float64   // ...and the rate over the last window, in calls per second
	remaining   int       // what the shared GCRA had left at its last answer; 0 after a refusal
	lastCall    time.Time // for forgetting idle principals

	checking bool       // a check of this principal is on its way to Redis
	next     *rateBatch // calls that arrived during it; nil: none
}

// rateBatch is calls waiting to be checked together. done is closed once allowed and err
// are set.
type rateBatch struct {
	n       int
	done    chan struct{}
	allowed bool
	err     error
}

const (
	// batchTimeout bounds one batch's check: it runs for several callers, so on no one
	// caller's context (one client going away must not fail the others' calls).
	batchTimeout = 5 * time.Second
	// leaseHorizon: a lease is about what the principal spends here in this long. A few
	// round trips to Redis (~0.15 ms each on a quiet machine), so that a hot principal
	// needs a script every few milliseconds instead of one per call or per small batch.
	leaseHorizon = 5 * time.Millisecond
	// leaseRTTs: a lease also covers at least this many of the principal's round trips
	// to Redis. Calls that arrive while a check is on its way wait for it and are served
	// together, so with a lease shorter than a round trip's worth of calls a hot principal
	// would still need a script per round trip, as with batching alone; where Redis
	// answers slowly (a loaded machine: milliseconds), the lease grows with the round
	// trip, up to a quarter of its life (leaseLifetime/4).
	leaseRTTs = 4
	// leaseLifetime: leased calls not used by then are lost. Twenty horizons, so that a
	// lease sized to the principal's rate is spent long before it expires even when the
	// machine stalls the gateway, and short, because the allowance in a lease is held from
	// the other gateways and may be admitted this much later than Redis counted it.
	leaseLifetime = 100 * time.Millisecond
	// maxLease bounds a lease whatever the rate: 256 calls is ~5 ms at 50,000 calls/s.
	maxLease = 256
	// leaseBurstShare: a lease is at most this share of the burst (1/8), so that a few
	// gateways' leases together cannot hold most of a principal's burst.
	leaseBurstShare = 8
	// rateWindow: the shortest window over which a principal's rate is measured, long
	// enough to count several calls of a hot principal, short enough to follow it.
	rateWindow = 10 * time.Millisecond
	// forgetAfter: a principal idle this long, with no check in flight and no lease, is
	// forgotten (its rate then starts again from nothing: it takes no lease at first).
	forgetAfter = time.Second
	// minSweep: the principals' map is swept for idle ones when it reaches this size, then
	// at twice the size it had after the sweep, so sweeping costs O(1) per new principal.
	minSweep = 1024
)

// NewRedisLimiter limits each principal to l across every gateway on rdb.
func NewRedisLimiter(rdb redis.UniversalClient, l Limit) (*RedisLimiter, error) {
	if !l.valid() {
		return nil, fmt.Errorf("gateway: rate limit %+v: rate, burst and period must be positive", l)
	}
	return &RedisLimiter{
		limiter:    redis_rate.NewLimiter(rdb),
		limit:      redis_rate.Limit{Rate: l.Rate, Burst: l.Burst, Period: l.Period},
		now:        time.Now,
		principals: map[string]*principalState{},
		sweepAt:    minSweep,
	}, nil
}

// Allow spends one call of principal's allowance.
func (r *RedisLimiter) Allow(ctx context.Context, principal string) (bool, time.Duration, error) {
	now := r.now()
	r.mu.Lock()
	ps := r.state(principal, now)
	ps.windowCalls++
	ps.lastCall = now
	if ps.leased > 0 {
		if now.Before(ps.expires) {
			ps.leased--
			r.mu.Unlock()
			return true, 0, nil
		}
		ps.leased = 0 // expired: lost
	}
	if !ps.checking {
		// Nothing in flight for this principal: check this call now, with a lease if the
		// principal calls often.
		ps.checking = true
		extra := r.leaseExtra(ps, now, 1)
		r.mu.Unlock()
		allowed, wait, err := r.check(ctx, ps, 1, extra, now)
		r.checkNext(ps)
		if err == nil && !allowed && extra > 0 {
			// The lease was refused, not necessarily this call: check it alone.
			return r.allowOne(ctx, ps)
		}
		return allowed, wait, err
	}
	b := ps.next
	if b != nil && b.n >= r.limit.Burst {
		// A batch beyond the burst would be refused whole: this call goes alone.
		r.mu.Unlock()
		return r.allowOne(ctx, ps)
	}
	if b == nil {
		b = &rateBatch{done: make(chan struct{})}
		ps.next = b
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
	return r.allowOne(ctx, ps)
}

// state is principal's state, made on its first call. r.mu is held.
func (r *RedisLimiter) state(principal string, now time.Time) *principalState {
	if ps, ok := r.principals[principal]; ok {
		return ps
	}
	if len(r.principals) >= r.sweepAt {
		for p, s := range r.principals {
			if !s.checking && (s.leased == 0 || !now.Before(s.expires)) && now.Sub(s.lastCall) > forgetAfter {
				delete(r.principals, p)
			}
		}
		r.sweepAt = max(minSweep, 2*len(r.principals))
	}
	ps := &principalState{key: rateKey(principal), windowStart: now}
	r.principals[principal] = ps
	return ps
}

// leaseExtra updates the principal's rate and returns how many calls beyond the n being
// checked to lease: none while a lease is in hand (calls that waited for a check while
// one was in hand are more than it had left), so that a lease is never replaced or
// extended and each leased call is admitted within leaseLifetime of being counted.
// r.mu is held.
func (r *RedisLimiter) leaseExtra(ps *principalState, now time.Time, n int) int {
	if elapsed := now.Sub(ps.windowStart); elapsed >= rateWindow {
		ps.rate = float64(ps.windowCalls) / elapsed.Seconds()
		ps.windowStart, ps.windowCalls = now, 0
	}
	if ps.leased > 0 && now.Before(ps.expires) {
		return 0
	}
	return leaseSize(r.limit.Burst, ps.rate, r.rtt, ps.remaining, n)
}

// leaseSize is how many calls to lease beyond the n being checked, for a principal
// calling rate times a second here, whose allowance had remaining calls left at Redis's
// last answer, when a check takes rtt: what it spends in leaseHorizon or leaseRTTs × rtt
// (at most leaseLifetime/4), at most maxLease and burst/leaseBurstShare, and only out of
// what it has left above half its burst (so near its limit, or with no answer yet, none).
func leaseSize(burst int, rate float64, rtt time.Duration, remaining, n int) int {
	span := min(max(leaseHorizon, leaseRTTs*rtt), leaseLifetime/4)
	k := int(math.Min(rate*span.Seconds(), maxLease))
	k = min(k, burst/leaseBurstShare, remaining-burst/2-n)
	return max(k, 0)
}

// check asks Redis for n calls plus extra to lease, all or none. Admitted, the extra
// become the lease, which expires leaseLifetime after sent (when the check was sent:
// never later than Redis counted them). wait is the retry-after of a refusal, exact only
// for extra 0.
func (r *RedisLimiter) check(ctx context.Context, ps *principalState, n, extra int, sent time.Time) (bool, time.Duration, error) {
	res, err := r.limiter.AllowN(ctx, ps.key, r.limit, n+extra)
	if err != nil {
		return false, 0, fmt.Errorf("rate limit in Redis: %w", err)
	}
	allowed := res.Allowed == n+extra
	took := r.now().Sub(sent)
	r.mu.Lock()
	r.rtt += (took - r.rtt) / 8
	r.noteAnswer(ps, allowed, res.Remaining)
	if allowed && extra > 0 {
		// No lease is in hand: extra is 0 when one was at sending, and only a check
		// brings one, one check at a time.
		ps.leased, ps.expires = extra, sent.Add(leaseLifetime)
	}
	r.mu.Unlock()
	if allowed {
		return true, 0, nil
	}
	return false, res.RetryAfter, nil
}

// noteAnswer keeps what Redis said the principal has left. r.mu is held.
func (r *RedisLimiter) noteAnswer(ps *principalState, allowed bool, remaining int) {
	if allowed {
		ps.remaining = remaining
	} else {
		ps.remaining = 0
	}
}

// checkNext serves the calls that waited for the check just done from the lease it
// brought, or starts their check, or, with none waiting, ends this principal's turn.
func (r *RedisLimiter) checkNext(ps *principalState) {
	r.mu.Lock()
	b := ps.next
	if b == nil {
		ps.checking = false
		r.mu.Unlock()
		return
	}
	ps.next = nil
	now := r.now()
	if ps.leased >= b.n && now.Before(ps.expires) {
		ps.leased -= b.n
		ps.checking = false
		r.mu.Unlock()
		b.allowed = true
		close(b.done)
		return
	}
	extra := r.leaseExtra(ps, now, b.n)
	r.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
		b.allowed, _, b.err = r.check(ctx, ps, b.n, extra, now)
		cancel()
		close(b.done)
		r.checkNext(ps)
	}()
}

// allowOne checks one call alone: the exact answer, with its own retry-after.
func (r *RedisLimiter) allowOne(ctx context.Context, ps *principalState) (bool, time.Duration, error) {
	res, err := r.limiter.Allow(ctx, ps.key, r.limit)
	if err != nil {
		return false, 0, fmt.Errorf("rate limit in Redis: %w", err)
	}
	r.mu.Lock()
	r.noteAnswer(ps, res.Allowed > 0, res.Remaining)
	r.mu.Unlock()
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
