package services_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
)

// BenchmarkTransfer measures one transfer over the real stack: the generated Connect
// client, HTTP/2 (h2c) over loopback, the server with all its interceptors, the ledger
// processor and the embedded store (fsync on every group commit), at 64 concurrent
// callers over 4 HTTP/2 connections. It reports transfers/s, p50 and p99 latency, and the
// process's CPU time per transfer (cpu-µs/op), which unlike transfers/s does not depend on
// what else the machine runs; cpu-µs/op and allocs/op count the whole process, client and
// server together.
//
//	go test ./services -run '^$' -bench 'BenchmarkTransfer$' -benchtime 20000x
func BenchmarkTransfer(b *testing.B) {
	benchTransfer(b, nodeOptions{}, nil)
}

// benchTransfer runs b.N transfers against a node started with o; before it reads the CPU
// it calls finish, if given, to complete the work the transfers left queued.
func benchTransfer(b *testing.B, o nodeOptions, finish func(*testing.B)) {
	const concurrency = 64
	n := startNode(b, o)
	ctx := context.Background()
	hc := h2cClient()
	accounts := ledgerv1connect.NewAccountServiceClient(hc, n.url)
	// Callers spread over a few HTTP/2 connections, as behind a load balancer: one
	// connection serialises every frame of 64 callers through one writer.
	const conns = 4
	payments := make([]ledgerv1connect.PaymentServiceClient, conns)
	for i := range payments {
		payments[i] = ledgerv1connect.NewPaymentServiceClient(h2cClient(), n.url)
	}
	open := func(id string, kind ledgerv1.AccountKind) {
		if _, err := accounts.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{AccountId: id, Asset: "USD", Kind: kind})); err != nil {
			b.Fatalf("open %s: %v", id, err)
		}
	}
	open("world", ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL)
	for w := 0; w < concurrency; w++ {
		open(fmt.Sprintf("dest-%d", w), ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER)
	}
	run := fmt.Sprintf("%d", time.Now().UnixNano()) // payment ids unique across -count runs

	latencies := make([]time.Duration, b.N)
	var next atomic.Int64
	var failed atomic.Int64
	var firstErr error
	var errOnce sync.Once
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU(b)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dest := fmt.Sprintf("dest-%d", w)
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				t0 := time.Now()
				_, err := payments[w%conns].Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{
					PaymentId: fmt.Sprintf("b%s-%d", run, i), SourceAccountId: "world", DestinationAccountId: dest,
					Amount: &ledgerv1.Money{Value: "1.00", Asset: "USD"},
				}))
				latencies[i] = time.Since(t0)
				if err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstErr = err })
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if finish != nil {
		finish(b)
	}
	cpu := processCPU(b) - cpu0
	b.StopTimer()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d transfers failed; first: %v", f, b.N, firstErr)
	}
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[min(len(latencies)-1, int(p*float64(len(latencies))))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "transfers/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
}

// processCPU is the user and system CPU time this process has used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
