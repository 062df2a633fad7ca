package audit_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/securepay/securepay/audit"
	"github.com/securepay/securepay/internal/projtest"
)

// Throughput and peak memory of the auditor's tools over the PostgreSQL benchmark log
// (SECUREPAY_BENCH_EVENTS events, see projtest.BenchLog). Run each alone so the peak RSS
// is that tool's:
//
//	SECUREPAY_BENCH_EVENTS=1000000 go test ./audit -run '^$' -bench 'Audit/verify' -benchtime 1x
func BenchmarkAudit(b *testing.B) {
	store, head := projtest.BenchLog(b)
	ctx := context.Background()
	run := func(b *testing.B, f func() error) {
		for i := 0; i < b.N; i++ {
			start := time.Now()
			if err := f(); err != nil {
				b.Fatal(err)
			}
			el := time.Since(start)
			b.ReportMetric(float64(head)/el.Seconds(), "events/s")
			b.ReportMetric(projtest.PeakRSS(), "peak-RSS-MiB")
			b.Logf("%d events in %s", head, el.Round(time.Millisecond))
		}
	}
	b.Run("export", func(b *testing.B) {
		run(b, func() error { _, err := audit.Export(ctx, store, io.Discard, audit.ExportOptions{}); return err })
	})
	b.Run("verify", func(b *testing.B) {
		run(b, func() error { _, err := audit.Verify(ctx, store, io.Discard, audit.VerifyOptions{}); return err })
	})
	b.Run("balances", func(b *testing.B) {
		run(b, func() error { _, err := audit.Balances(ctx, store, io.Discard, audit.BalancesOptions{}); return err })
	})
}
