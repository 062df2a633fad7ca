package ledger_test

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/securepay/securepay/services/ledger"
	"github.com/securepay/securepay/services/telemetry"
)

// BenchmarkTransfersTelemetry measures what traces and metrics cost the write path: the
// same transfers with no observer ("off"), with metrics only, and with metrics and every
// command traced (sampled at 100%, spans encoded as JSON lines and thrown away, so the
// exporter's encoding is paid too), and with one trace in ten recorded, back to back in
// one run. The spans still queued are exported before the CPU is read, so a run pays for
// every span it made; spans/transfer counts the lines the sink received.
//
//	go test ./services/ledger -run '^$' -bench TransfersTelemetry -benchtime 5000x
func BenchmarkTransfersTelemetry(b *testing.B) {
	for _, be := range backends() {
		for _, conc := range []int{16, 64} {
			for _, mode := range []string{"off", "metrics", "traces", "traces10"} {
				b.Run(fmt.Sprintf("%s/uniform/c%d/%s", be.name, conc, mode), func(b *testing.B) {
					benchTransfers(b, be, false, conc, benchObserver(b, mode))
				})
			}
		}
	}
}

// benchObserved is the observer of a telemetry benchmark and what the timed part must
// finish before it reads the CPU: the spans the batch processor still holds.
type benchObserved struct {
	ledger.Observer
	tel   *telemetry.Telemetry
	spans *spanCounter
}

// finish exports every queued span and reports the spans per transfer.
func (o benchObserved) finish(b *testing.B) {
	if err := o.tel.TracerProvider().(interface{ ForceFlush(context.Context) error }).ForceFlush(context.Background()); err != nil {
		b.Fatalf("flush spans: %v", err)
	}
	b.ReportMetric(float64(o.spans.lines.Load())/float64(b.N), "spans/transfer")
}

// spanCounter is the benchmarks' span sink: it counts the JSON lines and keeps nothing.
type spanCounter struct{ lines atomic.Int64 }

func (c *spanCounter) Write(p []byte) (int, error) {
	c.lines.Add(int64(bytes.Count(p, []byte{'\n'})))
	return len(p), nil
}

func benchObserver(b *testing.B, mode string) ledger.Observer {
	if mode == "off" {
		return nil
	}
	cfg := telemetry.Config{ServiceName: "bench"}
	spans := &spanCounter{}
	switch mode {
	case "traces":
		cfg.SpanWriter = spans
	case "traces10": // one new trace in ten recorded (--trace-sample-ratio 0.1)
		cfg.SpanWriter, cfg.SampleRatio = spans, 0.1
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
	if !tel.Tracing() {
		return obs
	}
	return benchObserved{Observer: obs, tel: tel, spans: spans}
}
