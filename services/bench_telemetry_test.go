package services_test

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"

	"github.com/securepay/securepay/services/telemetry"
)

// BenchmarkTransferTelemetry is what traces and metrics cost a whole request: transfers
// over HTTP/2 through the Connect handler, its otelconnect server interceptor and RPC
// metrics, the ledger (its observer) and the embedded store, as BenchmarkTransfer, four
// ways: off (no telemetry), metrics (Prometheus only), traces (metrics and every request
// traced, spans encoded as JSON lines by the batch processor and thrown away) and
// traces10 (one new trace in ten, --trace-sample-ratio 0.1). The spans still queued are
// exported before the CPU is read; spans/transfer counts what the sink received.
//
// cpu-µs/op counts the whole process: the server and the 64 calling clients (whose own
// calls are not traced), so it is the denominator of "≤ 10 % of a request", not the
// server's share alone.
//
//	go test ./services -run '^$' -bench TransferTelemetry -benchtime 20000x
func BenchmarkTransferTelemetry(b *testing.B) {
	for _, mode := range []string{"off", "metrics", "traces", "traces10"} {
		b.Run(mode, func(b *testing.B) {
			o, finish := telemetryNode(b, mode)
			benchTransfer(b, o, finish)
		})
	}
}

// telemetryNode is the node options of one mode of BenchmarkTransferTelemetry, wired as
// serve wires a payment component: the ledger's observer and the RPC interceptors of one
// Telemetry.
func telemetryNode(b *testing.B, mode string) (nodeOptions, func(*testing.B)) {
	if mode == "off" {
		return nodeOptions{}, nil
	}
	cfg := telemetry.Config{ServiceName: "securepay-bench"}
	spans := &spanLines{}
	switch mode {
	case "metrics":
	case "traces":
		cfg.SpanWriter = spans
	case "traces10":
		cfg.SpanWriter, cfg.SampleRatio = spans, 0.1
	default:
		b.Fatalf("unknown telemetry mode %q", mode)
	}
	tel, err := telemetry.New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	obs, err := tel.LedgerObserver()
	if err != nil {
		b.Fatal(err)
	}
	ics, err := tel.RPCInterceptors(nil) // the caller is a stranger: its server span starts the trace
	if err != nil {
		b.Fatal(err)
	}
	o := nodeOptions{observer: obs, interceptors: ics}
	if !tel.Tracing() {
		return o, nil
	}
	return o, func(b *testing.B) {
		if err := tel.TracerProvider().(interface{ ForceFlush(context.Context) error }).ForceFlush(context.Background()); err != nil {
			b.Fatalf("flush spans: %v", err)
		}
		b.ReportMetric(float64(spans.lines.Load())/float64(b.N), "spans/transfer")
	}
}

// spanLines is the benchmark's span sink: it counts the JSON lines and keeps nothing.
type spanLines struct{ lines atomic.Int64 }

func (c *spanLines) Write(p []byte) (int, error) {
	c.lines.Add(int64(bytes.Count(p, []byte{'\n'})))
	return len(p), nil
}
