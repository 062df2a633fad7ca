package gateway_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/securepay/securepay/services/gateway"
)

// TestRedisLimiterConcurrentCallsAdmitExactlyTheBurst: calls of one principal that
// arrive together are checked in batches, and a batch never admits more than the calls
// one by one would, nor refuses one they would have admitted: with a burst of B and no
// refill during the test, many concurrent calls over two gateways' limiters on the same
// Redis admit exactly B, refuse the rest each with a retry-after, and fail none. Another
// principal keeps its own allowance.
func TestRedisLimiterConcurrentCallsAdmitExactlyTheBurst(t *testing.T) {
	rdb := redisClient(t)
	for _, tc := range []struct{ burst, callers, callsEach int }{
		{burst: 1, callers: 16, callsEach: 4},
		{burst: 50, callers: 64, callsEach: 5},
		{burst: 300, callers: 64, callsEach: 10},
	} {
		t.Run(fmt.Sprintf("burst %d, %d callers", tc.burst, tc.callers), func(t *testing.T) {
			// One call an hour refills: nothing refills while the test runs.
			l := gateway.Limit{Rate: 1, Burst: tc.burst, Period: time.Hour}
			a, errA := gateway.NewRedisLimiter(rdb, l)
			b, errB := gateway.NewRedisLimiter(rdb, l)
			if errA != nil || errB != nil {
				t.Fatal(errA, errB)
			}
			principal := "burst-" + strconv.Itoa(tc.burst)
			var allowed, refused atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, tc.callers*tc.callsEach)
			for c := range tc.callers {
				lim := a
				if c%2 == 1 {
					lim = b
				}
				wg.Go(func() {
					for range tc.callsEach {
						ok, wait, err := lim.Allow(context.Background(), principal)
						switch {
						case err != nil:
							errs <- err
						case ok:
							allowed.Add(1)
						case wait <= 0:
							errs <- fmt.Errorf("a refusal without a retry-after (%v)", wait)
						default:
							refused.Add(1)
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			total := int64(tc.callers * tc.callsEach)
			if allowed.Load() != int64(tc.burst) || allowed.Load()+refused.Load() != total {
				t.Fatalf("%d concurrent calls: %d admitted, %d refused; want exactly %d admitted (the burst) and the rest refused",
					total, allowed.Load(), refused.Load(), tc.burst)
			}
			if ok, _, err := a.Allow(context.Background(), principal+"-other"); !ok || err != nil {
				t.Fatalf("another principal was refused after this one used its burst: %v %v", ok, err)
			}
		})
	}
}

// TestRedisLimiterDownFailsEveryWaitingCall: with Redis unreachable, every one of many
// concurrent calls (the one checked alone and those batched behind it) gets an error:
// none is admitted.
func TestRedisLimiterDownFailsEveryWaitingCall(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	lim, err := gateway.NewRedisLimiter(rdb, gateway.Limit{Rate: 1000, Burst: 1000, Period: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var admitted, failed atomic.Int64
	for range 32 {
		wg.Go(func() {
			ok, _, err := lim.Allow(context.Background(), "down")
			if ok {
				admitted.Add(1)
			}
			if err != nil && strings.Contains(err.Error(), "rate limit in Redis") {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if admitted.Load() != 0 || failed.Load() != 32 {
		t.Fatalf("32 calls with Redis down: %d admitted, %d failed with the limiter's error; want 0 and 32", admitted.Load(), failed.Load())
	}
}

// BenchmarkRedisLimiter is the limiter on the hot path: parallel calls of one principal
// (one client's concurrent requests), reporting the GCRA scripts Redis ran per call.
//
//	SECUREPAY_TEST_REDIS_ADDR=127.0.0.1:PORT go test -run '^$' -bench RedisLimiter -cpu 64 ./services/gateway
func BenchmarkRedisLimiter(b *testing.B) {
	rdb := redisClient(b)
	lim, err := gateway.NewRedisLimiter(rdb, gateway.Limit{Rate: 1_000_000_000, Burst: 1_000_000_000, Period: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	scripts := func() int64 {
		info, err := rdb.Info(context.Background(), "commandstats").Result()
		if err != nil {
			b.Fatal(err)
		}
		var n int64
		for _, line := range strings.Split(info, "\n") {
			// cmdstat_evalsha:calls=N,... (and eval, the first time the script is loaded)
			if strings.HasPrefix(line, "cmdstat_evalsha:") || strings.HasPrefix(line, "cmdstat_eval:") {
				calls, _, _ := strings.Cut(strings.TrimPrefix(line[strings.Index(line, ":")+1:], "calls="), ",")
				v, _ := strconv.ParseInt(calls, 10, 64)
				n += v
			}
		}
		return n
	}
	before := scripts()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if ok, _, err := lim.Allow(context.Background(), "bench"); !ok || err != nil {
				b.Errorf("Allow = %v, %v", ok, err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(scripts()-before)/float64(b.N), "scripts/call")
}
