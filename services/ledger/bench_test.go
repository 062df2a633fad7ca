package ledger_test

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/services/ledger"
)

// BenchmarkTransfers measures committed transfers per second through command processing
// (decide + one atomic 3-stream append per transfer, batched), for each backend, at
// concurrency 1, 16 and 64, with uniform traffic and with a hot merchant that receives half
// of all transfers. Reported: transfers/s, p50/p99 latency of Execute, allocs per transfer
// (process-wide, so store and loop allocations are included).
//
//	go test ./services/ledger -run '^$' -bench Transfers -benchtime 20000x
func BenchmarkTransfers(b *testing.B) {
	for _, be := range backends() {
		for _, hot := range []bool{false, true} {
			for _, conc := range []int{1, 16, 64} {
				traffic := "uniform"
				if hot {
					traffic = "hot"
				}
				b.Run(fmt.Sprintf("%s/%s/c%d", be.name, traffic, conc), func(b *testing.B) {
					benchTransfers(b, be, hot, conc, nil)
				})
			}
		}
	}
}

const benchPayers = 1024

// alongside, if given, starts background work on the store for the timed part (the Merkle
// tree's follower and signer in BenchmarkTransfersCheckpoints).
func benchTransfers(b *testing.B, be backend, hot bool, conc int, obs ledger.Observer, alongside ...func(testing.TB, eventstore.Store)) {
	store, _ := be.open(b)
	p := newProcessor(b, store, ledger.Config{SharedStore: be.shared, Observer: obs})
	ctx := ctxT(b)
	open(b, p, "world", usd, domain.KindExternal, 0)
	open(b, p, "merchant-hot", usd, domain.KindMerchant, 0)
	setup := make([]domain.Command, 0, 2*benchPayers)
	for i := range benchPayers {
		id := domain.AccountID(fmt.Sprintf("payer-%d", i))
		setup = append(setup, domain.OpenAccount{AccountID: id, Asset: usd, Kind: domain.KindCustomer})
	}
	runAll(b, p, setup)
	setup = setup[:0]
	for i := range benchPayers {
		setup = append(setup, domain.Transfer{PaymentID: domain.PaymentID(fmt.Sprintf("fund-%d", i)), Source: "world",
			Destination: domain.AccountID(fmt.Sprintf("payer-%d", i)), Amount: money(100_000_000_000, usd)}) // 1,000,000,000.00: under the default per-asset ceiling, enough for any run
	}
	runAll(b, p, setup)

	for _, start := range alongside {
		start(b, store)
	}
	var next atomic.Int64
	lat := make([][]time.Duration, conc)
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	start, cpuStart := time.Now(), processCPU(b)
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				src := domain.AccountID(fmt.Sprintf("payer-%d", i%benchPayers))
				dst := domain.AccountID(fmt.Sprintf("payer-%d", (i*7+3)%benchPayers))
				if dst == src {
					dst = "merchant-hot"
				}
				if hot && i%2 == 0 {
					dst = "merchant-hot"
				}
				t0 := time.Now()
				_, err := p.Execute(ctx, ledger.Request{Command: domain.Transfer{
					PaymentID: domain.PaymentID(fmt.Sprintf("b-%d", i)), Source: src, Destination: dst, Amount: money(1+i%500, usd)},
					Meta: eventstore.Metadata{Actor: "bench"}})
				lat[w] = append(lat[w], time.Since(t0))
				if err != nil {
					b.Errorf("transfer %d: %v", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if o, ok := obs.(interface{ finish(*testing.B) }); ok {
		o.finish(b) // the work the run queued (spans to export) is the run's
	}
	cpu := processCPU(b) - cpuStart
	b.StopTimer()
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) > 0 {
		b.ReportMetric(float64(b.N)/elapsed.Seconds(), "transfers/s")
		b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
		// CPU of this process per transfer: steadier than transfers/s on a shared machine,
		// and what an on/off comparison (BenchmarkTransfersTelemetry) needs.
		b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/transfer")
	}
}

// processCPU is the user+system CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runAll executes commands concurrently (so they batch) and fails on any error.
func runAll(b testing.TB, p *ledger.Processor, cmds []domain.Command) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 128)
	for _, c := range cmds {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := p.Execute(ctxT(b), ledger.Request{Command: c}); err != nil {
				b.Errorf("setup %T: %v", c, err)
			}
		}()
	}
	wg.Wait()
}
