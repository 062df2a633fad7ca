package telemetry_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/services/ledger"
	"github.com/securepay/securepay/services/telemetry"
)

// BenchmarkRequestTelemetry is the telemetry work of one transfer request and nothing
// else, on one goroutine: a Connect unary handler (the protocol, no network) with the
// process's interceptors (otelconnect's server span, the RPC metrics) whose body does what
// the ledger's observer does for a command — Command, then, every batchOf requests,
// Append of the batch and each command's done — and the batch processor exporting the
// spans as JSON lines. "off" is the same handler with no telemetry: cpu-ns/request of a
// mode minus off's is what telemetry adds to a request, a figure that survives a loaded
// machine better than the difference of two whole-request runs
// (services BenchmarkTransferTelemetry).
//
//	go test ./services/telemetry -run '^$' -bench RequestTelemetry -benchtime 20000x
func BenchmarkRequestTelemetry(b *testing.B) {
	const batchOf = 16 // commands per batch append; a loaded ledger commits more at once, an idle one fewer
	body, err := proto.Marshal(wrapperspb.String("pay-1"))
	if err != nil {
		b.Fatal(err)
	}
	for _, mode := range []string{"off", "metrics", "traces", "traces10"} {
		b.Run(mode, func(b *testing.B) {
			var (
				ics   []connect.Interceptor
				obs   *telemetry.LedgerObserver
				flush func()
				spans atomic.Int64
			)
			if mode != "off" {
				cfg := telemetry.Config{ServiceName: "securepay-bench"}
				sink := lineCounter{&spans}
				switch mode {
				case "traces":
					cfg.SpanWriter = sink
				case "traces10":
					cfg.SpanWriter, cfg.SampleRatio = sink, 0.1
				}
				tel, err := telemetry.New(context.Background(), cfg)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
				if ics, err = tel.RPCInterceptors(nil); err != nil {
					b.Fatal(err)
				}
				if obs, err = tel.LedgerObserver(); err != nil {
					b.Fatal(err)
				}
				if p, ok := tel.TracerProvider().(interface{ ForceFlush(context.Context) error }); ok {
					flush = func() { _ = p.ForceFlush(context.Background()) }
				}
			}
			var (
				batch []context.Context
				dones []func(ledger.Result, error)
				pos   uint64
			)
			handler := connect.NewUnaryHandler(paymentProcedure,
				func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
					if obs != nil {
						cctx, _, done := obs.Command(ctx, domain.Transfer{})
						batch, dones = append(batch, cctx), append(dones, done)
						if len(batch) == batchOf {
							_, appended := obs.Append(context.Background(), batch, 3*len(batch))
							appended(eventstore.AppendResult{FirstPosition: pos + 1, LastPosition: pos + uint64(3*len(batch))}, nil)
							for _, d := range dones {
								pos += 3
								d(ledger.Result{Position: pos}, nil)
							}
							batch, dones = batch[:0], dones[:0]
						}
					}
					return connect.NewResponse(req.Msg), nil
				}, connect.WithInterceptors(ics...))
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := processCPU(b)
			for range b.N {
				req := httptest.NewRequest(http.MethodPost, paymentProcedure, bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/proto")
				rec := httptest.NewRecorder()
				handler.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("handler answered %d: %s", rec.Code, rec.Body)
				}
			}
			if flush != nil {
				flush()
			}
			cpu := processCPU(b) - cpu0
			b.StopTimer()
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/request")
			if mode == "traces" || mode == "traces10" {
				b.ReportMetric(float64(spans.Load())/float64(b.N), "spans/request")
			}
		})
	}
}

// lineCounter is a span sink that counts the JSON lines and keeps nothing.
type lineCounter struct{ n *atomic.Int64 }

func (c lineCounter) Write(p []byte) (int, error) {
	c.n.Add(int64(bytes.Count(p, []byte{'\n'})))
	return len(p), nil
}

// processCPU is the user and system CPU time this process has used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
