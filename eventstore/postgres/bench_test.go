package postgres

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
)

// benchAccounts is the pool of account streams transfers move money between. Appends use
// Any (the store reads and checks every stream's version all the same) so the benchmark
// measures the store, not a retry policy, and so that each goroutine can cycle through a
// few requests built before the timer starts: allocs/op are then the store's own.
const benchAccounts = 20_000

// payload is about the size of a serialised transfer event.
var benchPayload = []byte(`{"payment_id":"pay-00000000-0000-0000-0000-000000000000","amount_minor":"12345","asset":"USD","source":"acct-000001","destination":"acct-000002","client_ref":"order-000000000"}`)

// transfer returns the three stream appends of one transfer: the payment's own stream and
// the two accounts it touches, skipping accounts already named in used.
func transfer(rng *rand.Rand, id string, used map[int]struct{}) []eventstore.StreamAppend {
	pick := func() int {
		for {
			a := rng.IntN(benchAccounts)
			if _, dup := used[a]; !dup {
				used[a] = struct{}{}
				return a
			}
		}
	}
	src, dst := pick(), pick()
	md := eventstore.Metadata{CorrelationID: id, CausationID: "cmd-" + id, Actor: "spiffe://securepay.dev/bench"}
	ev := func(suffix, typ string) []eventstore.EventData {
		return []eventstore.EventData{{ID: id + suffix, Type: typ, Data: benchPayload, Metadata: md}}
	}
	return []eventstore.StreamAppend{
		{Stream: "payment-" + id, Expected: eventstore.Any(), Events: ev("-p", "ledger.payment.transferred.v1")},
		{Stream: fmt.Sprintf("account-%06d", src), Expected: eventstore.Any(), Events: ev("-d", "ledger.account.debited.v1")},
		{Stream: fmt.Sprintf("account-%06d", dst), Expected: eventstore.Any(), Events: ev("-c", "ledger.account.credited.v1")},
	}
}

// BenchmarkAppend measures appends of `transfers` transfers (3 events, 3 streams each) from
// `parallel` goroutines: appends/s, transfers/s, latency p50/p99 and allocations.
func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{1, 64} {
		for _, parallel := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("transfers=%d/parallel=%d", size, parallel), func(b *testing.B) {
				benchAppend(b, size, parallel)
			})
		}
	}
}

// BenchmarkAppendWriters compares the number of append transactions in flight.
func BenchmarkAppendWriters(b *testing.B) {
	for _, tc := range []struct{ transfers, parallel int }{{1, 64}, {64, 16}} {
		for _, writers := range []int{1, 2, 4} {
			b.Run(fmt.Sprintf("transfers=%d/parallel=%d/writers=%d", tc.transfers, tc.parallel, writers), func(b *testing.B) {
				benchAppend(b, tc.transfers, tc.parallel, func(c *Config) { c.Writers = writers })
			})
		}
	}
}

func benchAppend(b *testing.B, transfers, parallel int, edit ...func(*Config)) {
	s := openStore(b, freshSchema(b), append([]func(*Config){func(c *Config) { c.MaxConns = 8 }}, edit...)...)
	ctx := context.Background()
	var (
		next      atomic.Int64
		latencies = make([]time.Duration, b.N)
		wg        sync.WaitGroup
		errMu     sync.Mutex
		firstErr  error
	)
	const ring = 8 // requests each goroutine cycles through
	requests := make([][][]eventstore.StreamAppend, parallel)
	for g := range parallel {
		rng := rand.New(rand.NewPCG(uint64(g), 42))
		used := make(map[int]struct{}, 2*transfers)
		for r := range ring {
			clear(used)
			var appends []eventstore.StreamAppend
			for k := range transfers {
				appends = append(appends, transfer(rng, fmt.Sprintf("%d-%d-%d", g, r, k), used)...)
			}
			requests[g] = append(requests[g], appends)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for g := range parallel {
		wg.Go(func() {
			for n := 0; ; n++ {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				t0 := time.Now()
				_, err := s.Append(ctx, requests[g][n%ring]...)
				latencies[i] = time.Since(t0)
				if err != nil {
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if firstErr != nil {
		b.Fatalf("append: %v", firstErr)
	}
	slices.Sort(latencies)
	q := func(p float64) float64 {
		return float64(latencies[min(len(latencies)-1, int(p*float64(len(latencies))))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "appends/s")
	b.ReportMetric(float64(b.N*transfers)/elapsed.Seconds(), "transfers/s")
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}
