package gateway_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/securepay/securepay/services/gateway"
)

// TestRedisLimiterLeasesNeverExceedGCRA, property-style: for random limits, numbers of
// gateways (limiters on one Redis), callers and pacing, a hot principal is never admitted
// more than GCRA allows from its first call to its last: burst + rate × elapsed, leases
// and batches included. The seed is logged and each case's parameters are its name.
func TestRedisLimiterLeasesNeverExceedGCRA(t *testing.T) {
	rdb := redisClient(t)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, seed>>7))
	t.Logf("seed %d", seed)
	for run := range 6 {
		rate := 200 + rng.IntN(20000) // some runs far from the limit (leases), some at it
		burst := 8 + rng.IntN(2000)
		gateways := 1 + rng.IntN(3)
		callers := 1 + rng.IntN(32)
		duration := time.Duration(150+rng.IntN(250)) * time.Millisecond
		pacing := rng.IntN(3) // 0: back to back; 1: a pause of up to 200 µs; 2: now and then a pause of up to 5 ms
		name := fmt.Sprintf("run %d: %d/s, burst %d, %d gateways, %d callers, %v, pacing %d", run, rate, burst, gateways, callers, duration, pacing)
		t.Run(name, func(t *testing.T) {
			lims := newLimiters(t, rdb, gateway.Limit{Rate: rate, Burst: burst, Period: time.Second}, gateways)
			principal := fmt.Sprintf("property-%d-%d", seed, run)
			var admitted, refused atomic.Int64
			errs := make(chan error, callers)
			var wg sync.WaitGroup
			start := time.Now()
			deadline := start.Add(duration)
			for c := range callers {
				lim := lims[c%gateways]
				crng := rand.New(rand.NewPCG(seed+uint64(run), uint64(c)))
				wg.Go(func() {
					for time.Now().Before(deadline) {
						ok, wait, err := lim.Allow(context.Background(), principal)
						switch {
						case err != nil:
							errs <- err
							return
						case ok:
							admitted.Add(1)
						case wait <= 0:
							errs <- fmt.Errorf("a refusal without a retry-after (%v)", wait)
							return
						default:
							refused.Add(1)
						}
						switch pacing {
						case 1:
							time.Sleep(time.Duration(crng.IntN(200)) * time.Microsecond)
						case 2:
							if crng.IntN(20) == 0 {
								time.Sleep(time.Duration(crng.IntN(5000)) * time.Microsecond)
							}
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			bound := int64(burst) + int64(math.Floor(float64(rate)*elapsed.Seconds()))
			if admitted.Load() > bound {
				t.Fatalf("admitted %d calls (refused %d) in %v; GCRA allows at most %d (burst %d + %d/s × elapsed)",
					admitted.Load(), refused.Load(), elapsed, bound, burst, rate)
			}
			if admitted.Load() == 0 {
				t.Fatalf("no call admitted of %d", refused.Load())
			}
		})
	}
}

// TestRedisLimiterLeasesExactNearTheLimit: a hot principal (many concurrent callers,
// which take leases while far from the limit) making burst + 1 calls with no refill gets
// exactly burst admitted and one refused with a retry-after: leases are spent by the
// calls that follow and none is taken near the limit, where calls are checked one by
// one. Its next call is refused on every gateway.
func TestRedisLimiterLeasesExactNearTheLimit(t *testing.T) {
	rdb := redisClient(t)
	for _, tc := range []struct{ burst, gateways, callers int }{
		{burst: 64, gateways: 1, callers: 16},
		{burst: 5000, gateways: 1, callers: 16},
		{burst: 10000, gateways: 2, callers: 32},
	} {
		t.Run(fmt.Sprintf("burst %d, %d gateways, %d callers", tc.burst, tc.gateways, tc.callers), func(t *testing.T) {
			// One call an hour refills: nothing refills while the test runs.
			lims := newLimiters(t, rdb, gateway.Limit{Rate: 1, Burst: tc.burst, Period: time.Hour}, tc.gateways)
			principal := fmt.Sprintf("exact-%d-%d", tc.burst, tc.gateways)
			var tickets, admitted atomic.Int64
			var mu sync.Mutex
			var refusals []time.Duration
			errs := make(chan error, tc.callers)
			var wg sync.WaitGroup
			for c := range tc.callers {
				lim := lims[c%tc.gateways]
				wg.Go(func() {
					for tickets.Add(1) <= int64(tc.burst+1) {
						ok, wait, err := lim.Allow(context.Background(), principal)
						switch {
						case err != nil:
							errs <- err
							return
						case ok:
							admitted.Add(1)
						default:
							mu.Lock()
							refusals = append(refusals, wait)
							mu.Unlock()
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if admitted.Load() != int64(tc.burst) || len(refusals) != 1 || refusals[0] <= 0 {
				t.Fatalf("%d calls with a burst of %d: %d admitted, refusals with retry-after %v; want %d admitted and one refusal with a positive retry-after",
					tc.burst+1, tc.burst, admitted.Load(), refusals, tc.burst)
			}
			for i, lim := range lims {
				if ok, wait, err := lim.Allow(context.Background(), principal); ok || err != nil || wait <= 0 {
					t.Errorf("gateway %d, the call after the burst: allowed %v, wait %v, err %v; want refused with a retry-after", i, ok, wait, err)
				}
			}
		})
	}
}

// newLimiters is n gateways' limiters on one Redis.
func newLimiters(t *testing.T, rdb *redis.Client, l gateway.Limit, n int) []*gateway.RedisLimiter {
	t.Helper()
	lims := make([]*gateway.RedisLimiter, n)
	for i := range lims {
		var err error
		if lims[i], err = gateway.NewRedisLimiter(rdb, l); err != nil {
			t.Fatal(err)
		}
	}
	return lims
}

// BenchmarkRedisLimiterCPU is the limiter's cost per call where it runs and in Redis,
// for 64 goroutines of one principal (one client's concurrent requests) and of 64
// principals (one each), back to back, and for 64 goroutines of one principal that each
// pause 0-20 ms between calls (paced: about 6,000 calls/s, few of them overlapping a check
// in flight, as the gateway sees a client whose requests spend their time downstream):
// CPU of this process (user + system, all of it: the benchmark loop, the timers, go-redis
// and the limiter) and of Redis per call, and scripts per call. No limit is reached.
//
//	go test -c -o /tmp/gw.test ./services/gateway
//	SECUREPAY_TEST_REDIS_ADDR=127.0.0.1:PORT /tmp/gw.test -test.run '^$' -test.bench RedisLimiterCPU -test.benchmem -test.benchtime 200000x
func BenchmarkRedisLimiterCPU(b *testing.B) {
	for _, bc := range []struct {
		principals int
		pause      time.Duration
	}{{1, 0}, {64, 0}, {1, 10 * time.Millisecond}} {
		name := fmt.Sprintf("principals=%d", bc.principals)
		if bc.pause > 0 {
			name += ",paced"
		}
		principals := bc.principals
		b.Run(name, func(b *testing.B) {
			rdb := redisClient(b)
			lim, err := gateway.NewRedisLimiter(rdb, gateway.Limit{Rate: 1_000_000_000, Burst: 1_000_000_000, Period: time.Second})
			if err != nil {
				b.Fatal(err)
			}
			scripts0, redisCPU0 := redisStats(b, rdb)
			cpu0 := processCPU(b)
			var next atomic.Int64
			b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0))) // 64 goroutines
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				principal := "cpu-bench-" + strconv.FormatInt(next.Add(1)%int64(principals), 10)
				for pb.Next() {
					if ok, _, err := lim.Allow(context.Background(), principal); !ok || err != nil {
						b.Errorf("Allow = %v, %v", ok, err)
						return
					}
					if bc.pause > 0 {
						// Spread, or the goroutines wake together and meet in batches.
						time.Sleep(time.Duration(rand.Int64N(int64(2 * bc.pause))))
					}
				}
			})
			b.StopTimer()
			cpu := processCPU(b) - cpu0
			scripts, redisCPU := redisStats(b, rdb)
			b.ReportMetric(float64(scripts-scripts0)/float64(b.N), "scripts/call")
			b.ReportMetric(cpu.Seconds()*1e6/float64(b.N), "cpu-µs/call")
			b.ReportMetric((redisCPU-redisCPU0).Seconds()*1e6/float64(b.N), "redis-cpu-µs/call")
		})
	}
}

// redisStats is the scripts Redis has run (EVAL and EVALSHA) and its CPU (user + system)
// so far.
func redisStats(b *testing.B, rdb *redis.Client) (scripts int64, cpu time.Duration) {
	b.Helper()
	info, err := rdb.Info(context.Background(), "commandstats", "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch name {
		case "cmdstat_evalsha", "cmdstat_eval":
			calls, _, _ := strings.Cut(strings.TrimPrefix(value, "calls="), ",")
			n, _ := strconv.ParseInt(calls, 10, 64)
			scripts += n
		case "used_cpu_sys", "used_cpu_user":
			secs, _ := strconv.ParseFloat(value, 64)
			cpu += time.Duration(secs * float64(time.Second))
		}
	}
	return scripts, cpu
}
