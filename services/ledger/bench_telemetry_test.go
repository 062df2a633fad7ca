package ledger_test

import (
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/securepay/securepay/services/ledger"
	"github.com/securepay/securepay/services/telemetry"
)

// BenchmarkTransfersTelemetry measures what traces and metrics cost the write path: the
// same transfers with no observer ("off"), with metrics only, and with metrics and every
// command traced (sampled at 100%, spans encoded as JSON lines and thrown away, so the
// exporter's encoding is paid too), and with one trace in ten recorded, back to back in
// one run.
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

func benchObserver(b *testing.B, mode string) ledger.Observer {
	if mode == "off" {
		return nil
	}
	cfg := telemetry.Config{ServiceName: "bench"}
	switch mode {
	case "traces":
		cfg.SpanWriter = io.Discard
	case "traces10": // one new trace in ten recorded (--trace-sample-ratio 0.1)
		cfg.SpanWriter, cfg.SampleRatio = io.Discard, 0.1
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
	return obs
}
