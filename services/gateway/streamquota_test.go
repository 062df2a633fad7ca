package gateway_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/gateway"
)

// The leases of these tests live 3 s (the least allowed), refreshed every second.
const testLeaseTTL = 3 * time.Second

type watchStream = connect.ServerStreamForClient[ledgerv1.WatchAccountResponse]

// openWatch opens a watch of account and waits for its first message (the stream is
// established), or returns the refusal.
func openWatch(ctx context.Context, a api, account string) (*watchStream, error) {
	s, err := a.balances.WatchAccount(ctx, connect.NewRequest(&ledgerv1.WatchAccountRequest{AccountId: account}))
	if err != nil {
		return nil, err
	}
	if !s.Receive() {
		err := s.Err()
		s.Close()
		return nil, err
	}
	return s, nil
}

// eventuallyOpen retries openWatch until it succeeds or within is over: a released slot
// is given back once the gateway sees the stream end, asynchronously.
func eventuallyOpen(t *testing.T, ctx context.Context, a api, account string, within time.Duration) (*watchStream, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		s, err := openWatch(ctx, a, account)
		if err == nil {
			return s, time.Since(start)
		}
		if connect.CodeOf(err) != connect.CodeResourceExhausted || time.Since(start) > within {
			t.Fatalf("a stream of %s after a slot was freed: %v (waited %s)", account, err, time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func wantQuotaRefusal(t *testing.T, what string, err error) {
	t.Helper()
	if connect.CodeOf(err) != connect.CodeResourceExhausted || services.ReasonOf(err) != services.ReasonRateLimited ||
		!strings.Contains(err.Error(), "already holds 2 open streams") || !strings.Contains(err.Error(), "across all gateways") {
		t.Fatalf("%s: want RESOURCE_EXHAUSTED (RATE_LIMITED) saying the principal already holds 2 open streams across all gateways, got %s", what, errorSummary(err))
	}
}

// TestStreamQuotaSharedAcrossGateways: two gateway instances on one Redis give a
// principal 2 streams in all, not 2 each; the third, on either gateway, is refused with
// RESOURCE_EXHAUSTED and a message that says why; another principal is not affected;
// ending a stream on one gateway frees its slot for the other; and when every stream has
// ended no lease is left in Redis.
func TestStreamQuotaSharedAcrossGateways(t *testing.T) {
	rdb := redisClient(t)
	quota := func() gateway.StreamQuota {
		q, err := gateway.NewRedisStreamQuota(rdb, 2, testLeaseTTL, nil)
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
	f := newFixture(t, fixtureOptions{})
	aliceTok, bobTok := f.seed(t)
	_, url1, c1 := startGateway(t, f.issuer, f.ledger, fixtureOptions{limiter: f.limiter(t), streamQuota: quota()})
	_, url2, c2 := startGateway(t, f.issuer, f.ledger, fixtureOptions{limiter: f.limiter(t), streamQuota: quota()})
	alice1, alice2 := apiAt(c1, url1, aliceTok), apiAt(c2, url2, aliceTok)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	s1, err := openWatch(ctx, alice1, "alice")
	if err != nil {
		t.Fatalf("alice's first stream, on gateway 1: %v", err)
	}
	s2, err := openWatch(ctx, alice2, "alice")
	if err != nil {
		t.Fatalf("alice's second stream, on gateway 2: %v", err)
	}
	_, err = openWatch(ctx, alice1, "alice")
	wantQuotaRefusal(t, "alice's third stream, on gateway 1", err)
	_, err = openWatch(ctx, alice2, "alice")
	wantQuotaRefusal(t, "alice's third stream, on gateway 2", err)
	bob, err := openWatch(ctx, apiAt(c2, url2, bobTok), "bob")
	if err != nil {
		t.Fatalf("bob's stream while alice holds all of hers: %v", err)
	}
	bob.Close()

	s2.Close() // on gateway 2: its slot serves gateway 1
	s3, _ := eventuallyOpen(t, ctx, alice1, "alice", 10*time.Second)
	_, err = openWatch(ctx, alice2, "alice")
	wantQuotaRefusal(t, "alice's third stream after one ended and another began", err)

	s1.Close()
	s3.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		keys, err := rdb.Keys(ctx, "securepay:gateway:streams:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		var leases int64
		for _, k := range keys {
			n, err := rdb.ZCard(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			leases += n
		}
		if leases == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("every stream ended 10s ago, yet %d leases remain in Redis (%v): release does not remove them", leases, keys)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// limiter is a generous limiter of its own for one more gateway.
func (f *fixture) limiter(t *testing.T) gateway.Limiter {
	t.Helper()
	l, err := gateway.NewMemoryLimiter(gateway.Limit{Rate: 10000, Burst: 10000, Period: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// helperEnv makes the test binary, run again, hold alice's streams as a gateway would and
// wait to be killed (TestStreamQuotaHelperProcess).
const helperEnv = "SECUREPAY_TEST_STREAM_QUOTA_HOLDER"

// TestStreamLeasesOfAKilledGatewayExpire: another process takes alice's 2 slots with the
// same quota code a gateway runs, and keeps them while it lives — past several lease
// lifetimes, because it refreshes them — so a gateway here refuses alice's stream. Once
// that process is killed with SIGKILL (nothing released), its leases expire and the
// gateway admits alice again without anyone's help.
func TestStreamLeasesOfAKilledGatewayExpire(t *testing.T) {
	rdb := redisClient(t)
	q, err := gateway.NewRedisStreamQuota(rdb, 2, testLeaseTTL, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, fixtureOptions{})
	aliceTok, _ := f.seed(t)
	_, url, c := startGateway(t, f.issuer, f.ledger, fixtureOptions{limiter: f.limiter(t), streamQuota: q})
	alice := apiAt(c, url, aliceTok)

	holder := exec.Command(os.Args[0], "-test.run=^TestStreamQuotaHelperProcess$", "-test.v")
	holder.Env = append(os.Environ(), helperEnv+"=alice")
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	holder.Stderr = os.Stderr
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = holder.Process.Kill()
			_ = holder.Wait()
		}
	})
	held := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "holding") {
				held <- sc.Text()
			}
		}
		close(held)
	}()
	select {
	case line, ok := <-held:
		if !ok {
			t.Fatal("the holder process ended before it held alice's streams")
		}
		t.Log("holder process:", line)
	case <-time.After(30 * time.Second):
		t.Fatal("the holder process did not take alice's streams within 30s")
	}
	ctx := context.Background()
	_, err = openWatch(ctx, alice, "alice")
	wantQuotaRefusal(t, "alice's stream while another gateway process holds her 2", err)
	time.Sleep(2 * testLeaseTTL) // its leases would have expired twice over without refreshes
	_, err = openWatch(ctx, alice, "alice")
	wantQuotaRefusal(t, fmt.Sprintf("alice's stream %s later, the holder alive and refreshing", 2*testLeaseTTL), err)

	if err := holder.Process.Kill(); err != nil { // SIGKILL: no release, no goodbye
		t.Fatal(err)
	}
	_ = holder.Wait()
	killed = true
	s, waited := eventuallyOpen(t, ctx, alice, "alice", 5*testLeaseTTL)
	s.Close()
	t.Logf("alice's slots came back %s after the holder was killed (lease TTL %s)", waited.Round(time.Millisecond), testLeaseTTL)
}

// TestStreamQuotaHelperProcess is the holder of TestStreamLeasesOfAKilledGatewayExpire
// when run by it; run alone it has nothing to do.
func TestStreamQuotaHelperProcess(t *testing.T) {
	principal := os.Getenv(helperEnv)
	if principal == "" {
		return // not the helper: the parent test above runs it
	}
	rdb := redis.NewClient(&redis.Options{Addr: os.Getenv("SECUREPAY_TEST_REDIS_ADDR"), DB: 12})
	q, err := gateway.NewRedisStreamQuota(rdb, 2, testLeaseTTL, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, ok, err := q.Acquire(context.Background(), principal); err != nil || !ok {
			t.Fatalf("holder: slot %d of %s: ok=%v err=%v", i+1, principal, ok, err)
		}
	}
	fmt.Printf("holding 2 streams of %s\n", principal)
	time.Sleep(10 * time.Minute) // until killed
}

// TestStreamQuotaDownFailsClosed: a quota that cannot be read refuses the stream
// (UNAVAILABLE) instead of letting it through unbounded.
func TestStreamQuotaDownFailsClosed(t *testing.T) {
	rdb := redisClient(t)
	q, err := gateway.NewRedisStreamQuota(rdb, 2, testLeaseTTL, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, fixtureOptions{})
	aliceTok, _ := f.seed(t)
	_ = rdb.Close()
	_, url, c := startGateway(t, f.issuer, f.ledger, fixtureOptions{limiter: f.limiter(t), streamQuota: q})
	_, err = openWatch(context.Background(), apiAt(c, url, aliceTok), "alice")
	if connect.CodeOf(err) != connect.CodeUnavailable || services.ReasonOf(err) != services.ReasonRateLimiterDown || !strings.Contains(err.Error(), "stream quota is unavailable") {
		t.Fatalf("a stream with the quota's Redis closed: want UNAVAILABLE (RATE_LIMITER_UNAVAILABLE) naming the stream quota, got %s", errorSummary(err))
	}
}

// TestNewRedisStreamQuotaRefusesBadSettings: the bounds are checked at construction.
func TestNewRedisStreamQuotaRefusesBadSettings(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	for _, tc := range []struct {
		name string
		rdb  redis.UniversalClient
		max  int
		ttl  time.Duration
		want string
	}{
		{"no client", nil, 2, 0, "needs a Redis client"},
		{"no streams", rdb, 0, 0, "must be positive, got 0"},
		{"negative streams", rdb, -1, 0, "must be positive, got -1"},
		{"a TTL too short to refresh", rdb, 2, time.Second, "at least 3s, got 1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := gateway.NewRedisStreamQuota(tc.rdb, tc.max, tc.ttl, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want a refusal saying %q, got %v", tc.want, err)
			}
		})
	}
}
