package gateway_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	hopv1 "github.com/securepay/securepay/api/gen/securepay/hop/v1"
	"github.com/securepay/securepay/api/gen/securepay/hop/v1/hopv1connect"
	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/gateway"
	"github.com/securepay/securepay/services/mtls"
	"github.com/securepay/securepay/services/telemetry"
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

// BenchmarkForward measures the gateway alone: Transfer calls by 64 concurrent callers
// through the gateway (RPC metrics, JWT, policy, in-memory rate limit, the mTLS hop) to a stub
// payments component that answers at once, so that what changes between two builds is
// the gateway's own work; "alone" sends each call on its own stream (Config.Hop
// HopAlone, the measure of builds before HopService), "batched" in Forwards (the
// default). Everything runs in this process, so cpu-µs/op (getrusage, user + system, per
// call) counts the callers and the stub too; compare it between builds of this
// benchmark, interleaved (go test -c), not with the gateway's share of a real run. The
// stub answers at once, so fewer calls queue behind the Forwards in flight than behind a
// real component's.
//
//	go test -run XXX -bench BenchmarkForward -benchmem -benchtime 20000x ./services/gateway
func BenchmarkForward(b *testing.B) {
	for _, mode := range []struct {
		name string
		hop  gateway.HopMode
	}{{"alone", gateway.HopAlone}, {"batched", gateway.HopBatched}} {
		b.Run(mode.name, func(b *testing.B) { benchmarkForward(b, mode.hop) })
	}
}

func benchmarkForward(b *testing.B, hop gateway.HopMode) {
	td := spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)
	ca, err := mtls.NewDevCA(td, time.Hour, time.Now)
	if err != nil {
		b.Fatal(err)
	}
	ids := mtls.WellKnownIDs(td)
	stubURL := startStubPayments(b, ca, ids.Payments)
	gwSrc, err := ca.Source(ids.Gateway)
	if err != nil {
		b.Fatal(err)
	}
	up := gateway.Upstream{URL: stubURL, Client: mtls.HTTPClient(gwSrc, ids.Payments)}
	is := newIssuer(b)
	limiter, err := gateway.NewMemoryLimiter(gateway.Limit{Rate: 1_000_000_000, Burst: 1_000_000_000, Period: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	// The RPC metrics and refusal counter, as serve gateway wires them.
	tel, err := telemetry.New(context.Background(), telemetry.Config{ServiceName: "securepay-gateway"})
	if err != nil {
		b.Fatal(err)
	}
	ics, err := tel.RPCInterceptors(nil)
	if err != nil {
		b.Fatal(err)
	}
	refusals, err := tel.GatewayMetrics()
	if err != nil {
		b.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{
		Payments: up, Queries: up, Audit: up,
		Auth:         gateway.Auth{Issuer: testIssuer, Audience: testAudience, JWKSURL: is.srv.URL + "/certs", JWKSClient: is.srv.Client()},
		Limiter:      limiter,
		AllowH2C:     true,
		Interceptors: ics,
		Refusals:     refusals,
		Hop:          hop,
	})
	if err != nil {
		b.Fatal(err)
	}
	hs := serveH2(b, gw.Handler())
	client := apiAt(hs.Client(), hs.URL, is.token(b, "bench-customer", []string{"customer"}, "acc-a", "acc-b")).payments
	ctx := context.Background()
	req := &ledgerv1.TransferRequest{PaymentId: "pay-warm", SourceAccountId: "acc-a", DestinationAccountId: "acc-b", Amount: usd("0.01")}
	if _, err := client.Transfer(ctx, connect.NewRequest(req)); err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	callers := benchCallers()
	var wg sync.WaitGroup
	b.ReportAllocs()
	cpu0 := processCPU(b)
	b.ResetTimer()
	for c := 0; c < callers; c++ {
		wg.Go(func() {
			for {
				i := n.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				_, err := client.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{
					PaymentId: "pay-" + strconv.FormatInt(i, 10), SourceAccountId: "acc-a", DestinationAccountId: "acc-b", Amount: usd("0.01"),
				}))
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
}

// stubPayments answers every Transfer at once with a write result, as payments would.
type stubPayments struct {
	ledgerv1connect.UnimplementedPaymentServiceHandler
	position atomic.Uint64
}

func (s *stubPayments) Transfer(_ context.Context, req *connect.Request[ledgerv1.TransferRequest]) (*connect.Response[ledgerv1.TransferResponse], error) {
	m := req.Msg
	return connect.NewResponse(&ledgerv1.TransferResponse{
		Payment: &ledgerv1.Payment{
			PaymentId: m.GetPaymentId(), Kind: ledgerv1.PaymentKind_PAYMENT_KIND_TRANSFER, Status: ledgerv1.PaymentStatus_PAYMENT_STATUS_COMPLETED,
			Legs:     []*ledgerv1.Leg{{SourceAccountId: m.GetSourceAccountId(), DestinationAccountId: m.GetDestinationAccountId(), Amount: m.GetAmount()}},
			Captured: m.GetAmount(),
		},
		Result: &ledgerv1.WriteResult{Position: s.position.Add(1), Balances: []*ledgerv1.Balance{
			{AccountId: m.GetSourceAccountId(), Asset: "USD/2", Posted: "999.99"},
			{AccountId: m.GetDestinationAccountId(), Asset: "USD/2", Posted: "1000.01"},
		}},
	}), nil
}

// stubHop serves Forward of Transfers with stubPayments' answers.
type stubHop struct{ payments *stubPayments }

func (s stubHop) Forward(ctx context.Context, req *connect.Request[hopv1.ForwardRequest]) (*connect.Response[hopv1.ForwardResponse], error) {
	out := &hopv1.ForwardResponse{Results: make([]*hopv1.Result, len(req.Msg.GetCalls()))}
	for i, c := range req.Msg.GetCalls() {
		var m ledgerv1.TransferRequest
		if c.GetProcedure() != ledgerv1connect.PaymentServiceTransferProcedure || proto.Unmarshal(c.GetMessage(), &m) != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("the stub forwards Transfers only, not %s", c.GetProcedure()))
		}
		res, _ := s.payments.Transfer(ctx, connect.NewRequest(&m))
		b, err := proto.Marshal(res.Msg)
		if err != nil {
			return nil, err
		}
		out.Results[i] = &hopv1.Result{Outcome: &hopv1.Result_Message{Message: b}}
	}
	return connect.NewResponse(out), nil
}

// startStubPayments serves stubPayments over mTLS with id's SVID and returns its URL.
func startStubPayments(b *testing.B, ca *mtls.DevCA, id spiffeid.ID) string {
	src, err := ca.Source(id)
	if err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	stub := &stubPayments{}
	mux.Handle(ledgerv1connect.NewPaymentServiceHandler(stub))
	mux.Handle(hopv1connect.NewHopServiceHandler(stubHop{stub}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var p http.Protocols
	p.SetHTTP2(true)
	hs := &http.Server{Handler: mux, TLSConfig: mtls.ServerTLS(src), Protocols: &p}
	go func() { _ = hs.ServeTLS(ln, "", "") }()
	b.Cleanup(func() { _ = hs.Close() })
	return "https://" + ln.Addr().String()
}

// processCPU is this process's CPU time so far, user + system.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
