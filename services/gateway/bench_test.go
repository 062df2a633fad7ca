package gateway_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/gateway"
	"github.com/securepay/securepay/services/mtls"
)

// BenchmarkTransfer measures the gateway's cost on the hot path in one run: transfers
// between 64 accounts by 64 concurrent callers, (direct) to the payments component over
// its mTLS client, as the gateway itself calls it, and (gateway) through the gateway
// with JWT verification, the policy, an in-memory rate limiter and the mTLS hop, and
// (gateway-redis, when SECUREPAY_TEST_REDIS_ADDR is set) with the production limiter in
// Redis. Reported: transfers/s and p99.
//
//	go test -run XXX -bench BenchmarkTransfer -benchtime 4000x ./services/gateway
func BenchmarkTransfer(b *testing.B) {
	f := newFixture(b, fixtureOptions{})
	ctx := context.Background()
	const accounts = 64
	ids := make([]string, accounts)
	for i := range ids {
		ids[i] = fmt.Sprintf("acc-%d", i)
	}
	op := f.as(f.issuer.token(b, "bench-operator", []string{"operator"}))
	if _, err := op.accounts.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{AccountId: "world", Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL})); err != nil {
		b.Fatal(err)
	}
	owner := f.as(f.issuer.token(b, "bench-customer", []string{"customer"}, append(ids, "world")...))
	for _, id := range ids {
		if _, err := op.accounts.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{AccountId: id, Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER})); err != nil {
			b.Fatal(err)
		}
		if _, err := owner.payments.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{PaymentId: "fund-" + id, SourceAccountId: "world", DestinationAccountId: id, Amount: usd("1000000.00")})); err != nil {
			b.Fatal(err)
		}
	}
	gwSrc, err := f.ledger.ca.Source(f.ledger.ids.Gateway)
	if err != nil {
		b.Fatal(err)
	}
	direct := ledgerv1connect.NewPaymentServiceClient(mtls.HTTPClient(gwSrc, f.ledger.ids.Payments), f.ledger.url[services.ComponentPayments])
	paths := []struct {
		name   string
		client ledgerv1connect.PaymentServiceClient
	}{{"direct", direct}, {"gateway", owner.payments}}
	if os.Getenv("SECUREPAY_TEST_REDIS_ADDR") != "" {
		// The production limiter: one GCRA script in Redis per call.
		limiter, err := gateway.NewRedisLimiter(redisClient(b), gateway.Limit{Rate: 1_000_000, Burst: 1_000_000, Period: time.Second})
		if err != nil {
			b.Fatal(err)
		}
		_, url, c := startGateway(b, f.issuer, f.ledger, fixtureOptions{limiter: limiter})
		tok := f.issuer.token(b, "bench-customer", []string{"customer"}, append(ids, "world")...)
		paths = append(paths, struct {
			name   string
			client ledgerv1connect.PaymentServiceClient
		}{"gateway-redis", apiAt(c, url, tok).payments})
	}
	for _, path := range paths {
		b.Run(path.name, func(b *testing.B) {
			var n atomic.Int64
			lat := make([]time.Duration, b.N)
			callers := benchCallers()
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for c := 0; c < callers; c++ {
				wg.Go(func() {
					for {
						i := n.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						from, to := ids[i%accounts], ids[(i+1+i/accounts)%accounts]
						if from == to {
							to = ids[(i+2)%accounts]
						}
						t0 := time.Now()
						_, err := path.client.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{
							PaymentId: fmt.Sprintf("%s-%d-%d", path.name, b.N, i), SourceAccountId: from, DestinationAccountId: to, Amount: usd("0.01"),
						}))
						lat[i] = time.Since(t0)
						if err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "transfers/s")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}

// benchCallers is the number of concurrent callers: SECUREPAY_BENCH_CALLERS, default 64.
// The load is a closed loop, so at a fixed number of callers a hop that adds latency
// also lowers throughput; more callers show what the path can carry.
func benchCallers() int {
	if n, err := strconv.Atoi(os.Getenv("SECUREPAY_BENCH_CALLERS")); err == nil && n > 0 {
		return n
	}
	return 64
}
