package services_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	hopv1 "github.com/securepay/securepay/api/gen/securepay/hop/v1"
	"github.com/securepay/securepay/api/gen/securepay/hop/v1/hopv1connect"
	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services/edge"
)

// BenchmarkHop compares the two ways the gateway can send transfers to the payments
// component over the real hop (HTTP/2, mTLS with development-CA SVIDs, the component's
// policy and edge identity, the PostgreSQL store, the Redis idempotency store): each
// transfer as a lone Transfer call, 64 callers at once, or 16 transfers per
// HopService.Forward from 16 callers, or 64 per Forward from 4 (64 lone callers already
// keep the batcher busy; 256 in flight behind Forwards keep it as busy). b.N counts
// transfers. cpu-µs/op is this process's CPU (the gateway's client side and the
// component's server side together, PostgreSQL and Redis excluded) per transfer, and
// allocs/op the allocations per transfer, which unlike transfers/s do not depend on the
// machine's load; commits/op the ledger's store transactions per transfer (its batches:
// calls that arrive together share one).
//
//	go test ./services -run '^$' -bench 'BenchmarkHop' -benchtime 20000x -benchmem
func BenchmarkHop(b *testing.B) {
	b.Run("lone", func(b *testing.B) { benchHop(b, 0, 64) })
	b.Run("forward-16", func(b *testing.B) { benchHop(b, 16, 16) })
	b.Run("forward-64", func(b *testing.B) { benchHop(b, 64, 4) })
}

// benchHop sends b.N transfers from callers goroutines, as lone calls when perForward is
// 0, else perForward to a Forward.
func benchHop(b *testing.B, perForward, callers int) {
	appends := &appendCounter{}
	n := startPaymentsNode(b, paymentsOptions{observer: appends})
	ctx := context.Background()
	gw := n.client(b, n.ids.Gateway)
	const dests = 64
	accounts := ledgerv1connect.NewAccountServiceClient(gw, n.url)
	open := func(id string, kind ledgerv1.AccountKind) {
		if _, err := accounts.OpenAccount(ctx, asGateway(&ledgerv1.OpenAccountRequest{AccountId: id, Asset: "USD", Kind: kind}, "operator", "seed")); err != nil {
			b.Fatalf("open %s: %v", id, err)
		}
	}
	open("world", ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL)
	for d := range dests {
		open(fmt.Sprintf("dest-%d", d), ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER)
	}
	payments := ledgerv1connect.NewPaymentServiceClient(gw, n.url)
	hop := hopv1connect.NewHopServiceClient(gw, n.url)
	run := time.Now().UnixNano()
	transfer := func(i int64) *ledgerv1.TransferRequest {
		return &ledgerv1.TransferRequest{
			PaymentId: fmt.Sprintf("h%d-%d", run, i), SourceAccountId: "world",
			DestinationAccountId: fmt.Sprintf("dest-%d", i%dests), Amount: usd("1.00"),
		}
	}
	var next, failed atomic.Int64
	var firstErr error
	var once sync.Once
	fail := func(err error) {
		failed.Add(1)
		once.Do(func() { firstErr = err })
	}
	lone := func() {
		for {
			i := next.Add(1) - 1
			if i >= int64(b.N) {
				return
			}
			if _, err := payments.Transfer(ctx, asGateway(transfer(i), "operator", fmt.Sprintf("c-%d", i))); err != nil {
				fail(err)
			}
		}
	}
	forward := func() {
		for {
			first := next.Add(int64(perForward)) - int64(perForward)
			if first >= int64(b.N) {
				return
			}
			req := &hopv1.ForwardRequest{}
			for i := first; i < min(first+int64(perForward), int64(b.N)); i++ {
				msg, err := proto.Marshal(transfer(i))
				if err != nil {
					fail(err)
					return
				}
				req.Calls = append(req.Calls, &hopv1.Call{
					Procedure: ledgerv1connect.PaymentServiceTransferProcedure,
					Message:   msg,
					Headers: []*hopv1.Header{
						{Name: edge.PrincipalHeader, Value: "operator"},
						{Name: edge.CorrelationHeader, Value: fmt.Sprintf("c-%d", i)},
					},
				})
			}
			res, err := hop.Forward(ctx, connect.NewRequest(req))
			if err != nil {
				fail(err)
				continue
			}
			for _, r := range res.Msg.GetResults() {
				if e := r.GetError(); e != nil {
					fail(fmt.Errorf("%s: %s", e.GetCode(), e.GetMessage()))
				}
			}
		}
	}
	work := lone
	if perForward > 0 {
		work = forward
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU(b)
	appends0 := appends.appends.Load()
	start := time.Now()
	var wg sync.WaitGroup
	for range callers {
		wg.Go(work)
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU(b) - cpu0
	commits := appends.appends.Load() - appends0
	b.StopTimer()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d transfers failed; first: %v", f, b.N, firstErr)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "transfers/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(commits)/float64(b.N), "commits/op")
}
