package gateway

import (
	"context"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestLeaseSize: a lease is what the principal spends here in leaseHorizon or in
// leaseRTTs round trips to Redis (at most a quarter of the lease's life), capped by
// maxLease and an eighth of the burst, and taken only out of what is left above half the
// burst; a principal calling rarely, or near its limit, or not yet answered, takes none.
func TestLeaseSize(t *testing.T) {
	const ms = time.Millisecond
	for _, tc := range []struct {
		name      string
		burst     int
		rate      float64
		rtt       time.Duration
		remaining int
		n         int
		want      int
	}{
		{name: "no rate measured yet", burst: 1_000_000, rate: 0, rtt: ms / 10, remaining: 999_999, n: 1, want: 0},
		{name: "one call a second", burst: 1_000_000, rate: 1, rtt: ms / 10, remaining: 999_999, n: 1, want: 0},
		{name: "199 calls a second: less than one call per horizon", burst: 1_000_000, rate: 199, rtt: ms / 10, remaining: 999_999, n: 1, want: 0},
		{name: "200 calls a second: one call per horizon", burst: 1_000_000, rate: 200, rtt: ms / 10, remaining: 999_999, n: 1, want: 1},
		{name: "3,300 calls a second, a quick Redis", burst: 1_000_000, rate: 3300, rtt: ms / 7, remaining: 999_999, n: 1, want: 16},
		{name: "no round trip measured yet", burst: 1_000_000, rate: 3300, rtt: 0, remaining: 999_999, n: 1, want: 16},
		{name: "1,500 calls a second, 4 ms round trips: 4 of them", burst: 1_000_000, rate: 1500, rtt: 4 * ms, remaining: 999_999, n: 6, want: 24},
		{name: "round trips of a second: a quarter of the lease's life", burst: 1_000_000, rate: 1000, rtt: 1000 * ms, remaining: 999_999, n: 1, want: int(1000 * leaseLifetime.Seconds() / 4)},
		{name: "capped by maxLease", burst: 1_000_000, rate: 1_000_000, rtt: ms / 10, remaining: 999_999, n: 1, want: maxLease},
		{name: "an absurd rate does not overflow", burst: 1_000_000, rate: 1e300, rtt: ms, remaining: 999_999, n: 1, want: maxLease},
		{name: "capped by an eighth of the burst", burst: 80, rate: 100_000, rtt: ms / 10, remaining: 79, n: 1, want: 10},
		{name: "a burst under 8 never leases", burst: 7, rate: 100_000, rtt: ms / 10, remaining: 6, n: 1, want: 0},
		{name: "only out of what is above half the burst", burst: 1000, rate: 100_000, rtt: ms / 10, remaining: 510, n: 4, want: 6},
		{name: "exactly half the burst left: none", burst: 1000, rate: 100_000, rtt: ms / 10, remaining: 501, n: 1, want: 0},
		{name: "near the limit: none", burst: 1000, rate: 100_000, rtt: ms / 10, remaining: 3, n: 1, want: 0},
		{name: "after a refusal: none", burst: 1000, rate: 100_000, rtt: ms / 10, remaining: 0, n: 1, want: 0},
		{name: "a batch bigger than the room: none", burst: 1000, rate: 100_000, rtt: ms / 10, remaining: 600, n: 200, want: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := leaseSize(tc.burst, tc.rate, tc.rtt, tc.remaining, tc.n); got != tc.want {
				t.Errorf("leaseSize(burst %d, rate %g/s, rtt %v, remaining %d, n %d) = %d, want %d", tc.burst, tc.rate, tc.rtt, tc.remaining, tc.n, got, tc.want)
			}
		})
	}
}

// internalRedis connects to the test Redis, or fails the test (never skips: see
// redisClient in harness_test.go, which this package's internal tests cannot reach).
func internalRedis(t *testing.T) *redis.Client {
	t.Helper()
	addr := os.Getenv("SECUREPAY_TEST_REDIS_ADDR")
	if addr == "" {
		t.Fatal("SECUREPAY_TEST_REDIS_ADDR is not set: run the tests with infra/local/test.sh (or start one with infra/local/redis.sh start DIR PORT)")
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, DB: 12})
	t.Cleanup(func() { _ = rdb.Close() })
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("redis at %s does not answer (%v): run the tests with infra/local/test.sh", addr, err)
	}
	return rdb
}

// TestRedisLimiterExpiredLeaseIsNotUsed, on a clock the test moves and the real Redis:
// a principal calling every millisecond takes a lease, whose calls are admitted with no
// script; once leaseLifetime has passed, its unused calls are lost and the next call goes
// to Redis. The calls Redis counted (read from the GCRA key: one emission interval of
// an hour per call) are exactly those admitted plus those lost, never fewer.
func TestRedisLimiterExpiredLeaseIsNotUsed(t *testing.T) {
	rdb := internalRedis(t)
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	l, err := NewRedisLimiter(rdb, Limit{Rate: 1, Burst: 1000, Period: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	l.now = clock.now
	principal := "expired-lease-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	ctx := context.Background()
	state := func() principalState {
		l.mu.Lock()
		defer l.mu.Unlock()
		return *l.principals[principal]
	}
	// counted is how many calls Redis has counted for the principal: with one call an
	// hour, each moves the key's theoretical arrival time by 3600 s.
	key := "rate:" + rateKey(principal)
	var first float64
	counted := func() int {
		v, err := rdb.Get(ctx, key).Float64()
		if err != nil {
			t.Fatalf("GET %s: %v", key, err)
		}
		return int((v-first)/3600+0.5) + 1
	}
	admitted := 0
	call := func() {
		t.Helper()
		ok, wait, err := l.Allow(ctx, principal)
		if !ok || err != nil {
			t.Fatalf("call %d: allowed %v, wait %v, err %v; want admitted (the burst is 1000)", admitted+1, ok, wait, err)
		}
		admitted++
	}
	call()
	v, err := rdb.Get(ctx, key).Float64()
	if err != nil {
		t.Fatal(err)
	}
	first = v // the first call's own interval counts as 1 in counted
	// One call a millisecond: after rateWindow the rate is 1000/s and a check leases
	// 1000 × leaseHorizon calls.
	for state().leased == 0 {
		if admitted > 100 {
			t.Fatalf("after %d calls a millisecond apart no lease was taken (state %+v)", admitted, state())
		}
		clock.advance(time.Millisecond)
		call()
	}
	lease := state().leased
	// The rate is measured over the first window (a call more than a millisecond's worth).
	if want := int(1000 * leaseHorizon.Seconds()); lease < want-1 || lease > want+1 {
		t.Errorf("lease of %d calls at 1000 calls/s, want %d±1 (leaseHorizon's worth)", lease, want)
	}
	if got, want := counted(), admitted+lease; got != want {
		t.Fatalf("Redis counted %d calls, want %d admitted + %d leased", got, admitted, lease)
	}
	// One call from the lease: no script.
	clock.advance(time.Millisecond)
	call()
	if got := state().leased; got != lease-1 {
		t.Fatalf("after a call within the lease's life %d calls are left in it, want %d", got, lease-1)
	}
	if got, want := counted(), admitted+lease-1; got != want {
		t.Fatalf("a call from the lease reached Redis: counted %d, want %d", got, want)
	}
	// Past the lease's life (measured from when its check was sent), the lease is lost:
	// the next call goes to Redis even though calls were left in it.
	lost := lease - 1
	clock.advance(leaseLifetime)
	before := counted()
	call()
	after := counted()
	if after <= before {
		t.Fatalf("a call after the lease expired was admitted from it: Redis counted %d before and %d after", before, after)
	}
	st := state()
	if got, want := after, admitted+lost+st.leased; got != want {
		t.Errorf("Redis counted %d calls, want %d admitted + %d lost + %d in the new lease", got, admitted, lost, st.leased)
	}
	if st.leased > 0 && !st.expires.After(clock.now()) {
		t.Errorf("the lease in hand expires at %v, not after now %v", st.expires, clock.now())
	}
}

// TestRedisLimiterForgetsIdlePrincipals: the state kept per principal is bounded by the
// principals active within forgetAfter, not by every principal ever seen.
func TestRedisLimiterForgetsIdlePrincipals(t *testing.T) {
	rdb := internalRedis(t)
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	l, err := NewRedisLimiter(rdb, Limit{Rate: 1000, Burst: 1000, Period: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	l.now = clock.now
	ctx := context.Background()
	prefix := "forget-" + strconv.FormatInt(time.Now().UnixNano(), 10) + "-"
	for round := range 4 {
		for i := range minSweep {
			if ok, _, err := l.Allow(ctx, prefix+strconv.Itoa(round)+"-"+strconv.Itoa(i)); !ok || err != nil {
				t.Fatalf("round %d, principal %d: %v %v", round, i, ok, err)
			}
		}
		clock.advance(2 * forgetAfter)
	}
	l.mu.Lock()
	n := len(l.principals)
	l.mu.Unlock()
	if n > 2*minSweep {
		t.Errorf("after 4 rounds of %d principals, each idle for %v, %d are kept; want at most %d", minSweep, 2*forgetAfter, n, 2*minSweep)
	}
}

// tcpProxy forwards connections to a real server until cut, which closes its listener
// and every connection: the server becomes unreachable mid-run.
type tcpProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			p.wg.Go(func() { _, _ = io.Copy(s, c); _ = s.Close() })
			p.wg.Go(func() { _, _ = io.Copy(c, s); _ = c.Close() })
		}
	})
	t.Cleanup(p.cut)
	return p
}

func (p *tcpProxy) cut() {
	_ = p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestRedisLimiterRedisCutMidRun: a hot principal's calls (leases and batches in use)
// while Redis becomes unreachable: no call that starts leaseLifetime after the cut is
// admitted (a lease in hand is the most that outlives Redis), every call from then on
// fails with the limiter's error (which the gateway turns into limiter_unavailable),
// none hangs past the client's timeouts, and once the calls end no goroutine of the
// limiter is left.
func TestRedisLimiterRedisCutMidRun(t *testing.T) {
	rdb := internalRedis(t)
	baseline := runtime.NumGoroutine()
	proxy := startProxy(t, rdb.Options().Addr)
	via := redis.NewClient(&redis.Options{Addr: proxy.ln.Addr().String(), DB: 12, MaxRetries: -1,
		// Generous timeouts: a loaded machine must not fail calls before the cut. After it,
		// calls fail at once (connections reset, dials refused).
		DialTimeout: time.Second, ReadTimeout: 3 * time.Second, WriteTimeout: 3 * time.Second})
	l, err := NewRedisLimiter(via, Limit{Rate: 1_000_000, Burst: 1_000_000, Period: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	principal := "cut-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	type result struct {
		start time.Time
		took  time.Duration
		ok    bool
		err   error
	}
	var mu sync.Mutex
	var results []result
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				ok, _, err := l.Allow(context.Background(), principal)
				r := result{start: start, took: time.Since(start), ok: ok, err: err}
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	cutAt := time.Now()
	proxy.cut()
	time.Sleep(leaseLifetime + 400*time.Millisecond)
	close(stop)
	wg.Wait()

	var before, leasedAfter, failedLate, late int
	for _, r := range results {
		switch {
		case r.start.Before(cutAt):
			if r.err != nil && r.start.Add(r.took).Before(cutAt) {
				t.Errorf("a call before the cut failed: %v", r.err)
			}
			if r.ok {
				before++
			}
		case r.start.Before(cutAt.Add(leaseLifetime)):
			if r.ok {
				leasedAfter++
			}
		default:
			late++
			if r.ok {
				t.Errorf("a call %v after the cut (past the lease's life, %v) was admitted", r.start.Sub(cutAt), leaseLifetime)
			} else if r.err == nil || !strings.Contains(r.err.Error(), "rate limit in Redis") {
				t.Errorf("a call %v after the cut: err %v, want the limiter's error", r.start.Sub(cutAt), r.err)
			} else {
				failedLate++
			}
		}
		if r.took > batchTimeout {
			t.Errorf("a call took %v: more than the client's timeouts and batchTimeout allow", r.took)
		}
	}
	t.Logf("%d calls admitted before the cut, %d from leases within %v after it, %d failed after that", before, leasedAfter, leaseLifetime, failedLate)
	if before == 0 || late == 0 {
		t.Fatalf("%d calls admitted before the cut and %d calls late after it: the test did not exercise the cut", before, late)
	}
	if leasedAfter > 16*maxLease {
		t.Errorf("%d calls admitted after the cut: more than one lease can hold", leasedAfter)
	}
	_ = via.Close()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left after the calls ended, %d before the test:\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
