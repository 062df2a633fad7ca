package pg_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/securepay/securepay/eventstore/postgres"
	"github.com/securepay/securepay/internal/pgtest"
	"github.com/securepay/securepay/internal/projtest"
	"github.com/securepay/securepay/projections"
)

// Benchmarks of the PostgreSQL views over a PostgreSQL log of SECUREPAY_BENCH_EVENTS events
// (default 200,000; the figure is 1,000,000). The log is written once into the
// schema bench_log_N and kept between runs, so repeated runs measure only the projection.
//
//	SECUREPAY_BENCH_EVENTS=1000000 go test ./projections/pg -run '^$' -bench PostgresViews -benchtime 1x -timeout 60m

func benchLog(b *testing.B) (*postgres.Store, uint64) {
	b.Helper()
	return projtest.BenchLog(b)
}

func BenchmarkPostgresViews(b *testing.B) {
	store, head := benchLog(b)
	pool := pgtest.Pool(b, 16)
	for _, batch := range []int{2000, 5000} {
		b.Run(fmt.Sprintf("project/batch=%d", batch), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				v := projtest.PGViews(b, pool, pgtest.Schema(b, "sp_bench"))
				start := time.Now()
				r, err := projections.NewRunner(projections.RunnerConfig{Store: store, Projectors: v.Projectors(), MaxBatch: batch})
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { defer close(done); _ = r.Run(ctx) }()
				wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Minute)
				for _, name := range []string{projections.AccountsProjector, projections.PaymentsProjector} {
					if err := r.Wait(wctx, name, head); err != nil {
						b.Fatal(err)
					}
				}
				wcancel()
				elapsed := time.Since(start)
				cancel()
				<-done
				b.ReportMetric(float64(head)/elapsed.Seconds(), "events/s")
				b.ReportMetric(projtest.PeakRSS(), "peak-RSS-MiB")
				b.Logf("projected %d events into accounts.v1 + payments.v1 (each reads the whole log) in %s: %.0f events/s",
					head, elapsed.Round(time.Millisecond), float64(head)/elapsed.Seconds())
			}
		})
	}
	b.Run("rebuild", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			v := projtest.PGViews(b, pool, pgtest.Schema(b, "sp_bench"))
			start := time.Now()
			for _, name := range []string{projections.AccountsProjector, projections.PaymentsProjector} {
				res, err := v.Rebuild(context.Background(), store, name, projections.RebuildOptions{})
				if err != nil {
					b.Fatal(err)
				}
				b.Logf("rebuild %s: %d events in %s", name, res.Events, res.Elapsed.Round(time.Millisecond))
			}
			elapsed := time.Since(start)
			b.ReportMetric(elapsed.Seconds(), "s/rebuild-all")
			b.ReportMetric(projtest.PeakRSS(), "peak-RSS-MiB")
			var rows int64
			if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM `+pgx.Identifier{v.Schema(), "history"}.Sanitize()).Scan(&rows); err != nil {
				b.Fatal(err)
			}
			b.Logf("rebuilt both views from %d events in %s (%d history lines)", head, elapsed.Round(time.Millisecond), rows)
		}
	})
}

// BenchmarkLagAtSteadyLoad appends commands at a fixed rate (SECUREPAY_BENCH_RATE commands/s,
// default 5,000, as one append of rate/10 commands every 100ms, the way the command processor
// groups commands) for 10 seconds while the PostgreSQL
// projectors follow, and reports how long after each append returned the views had applied
// it (read-your-writes latency = projection lag).
func BenchmarkLagAtSteadyLoad(b *testing.B) {
	rate := 5000
	if s := os.Getenv("SECUREPAY_BENCH_RATE"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 {
			b.Fatalf("SECUREPAY_BENCH_RATE=%q: want a positive number", s)
		}
		rate = v
	}
	for i := 0; i < b.N; i++ {
		store := projtest.PostgresStore(b)
		pool := pgtest.Pool(b, 16)
		v := projtest.PGViews(b, pool, pgtest.Schema(b, "sp_lag"))
		l := projtest.NewLedger(9, "lag-")
		w := projtest.NewWriter(store, l)
		ctx := context.Background()
		if _, err := w.Write(ctx, 2000, 5000, 200); err != nil { // accounts opened and funded
			b.Fatal(err)
		}
		r := projtest.StartRunner(b, store, v.Projectors(), func(c *projections.RunnerConfig) { c.MaxBatch = 5000 })
		const tick = 100 * time.Millisecond
		perTick := rate * int(tick) / int(time.Second)
		var lags []time.Duration
		behind := 0
		lagCh := make(chan time.Duration, 1<<12) // 100 ticks in 10s
		started := time.Now()
		t := time.NewTicker(tick)
		end := time.Now().Add(10 * time.Second)
		for time.Now().Before(end) {
			<-t.C
			pos, err := w.Write(ctx, perTick, 5000, perTick)
			if err != nil {
				b.Fatal(err)
			}
			appended := time.Now()
			// Measured without blocking the writer: the wait runs beside the next appends.
			go func() {
				wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				for _, n := range []string{projections.AccountsProjector, projections.PaymentsProjector} {
					_ = r.Wait(wctx, n, pos)
				}
				lagCh <- time.Since(appended)
			}()
			for len(lagCh) > 0 {
				lags = append(lags, <-lagCh)
			}
			behind++
		}
		t.Stop()
		achieved := float64(behind*perTick) / time.Since(started).Seconds()
		for len(lags) < behind {
			lags = append(lags, <-lagCh)
		}
		slices.Sort(lags)
		p := func(q float64) time.Duration { return lags[int(q*float64(len(lags)-1))] }
		b.ReportMetric(float64(p(0.5).Microseconds())/1000, "p50-lag-ms")
		b.ReportMetric(float64(p(0.99).Microseconds())/1000, "p99-lag-ms")
		b.ReportMetric(float64(lags[len(lags)-1].Microseconds())/1000, "max-lag-ms")
		b.ReportMetric(achieved, "commands/s")
		b.Logf("asked %d commands/s, achieved %.0f commands/s for 10s (%d appends): lag p50 %s p99 %s max %s",
			rate, achieved, len(lags), p(0.5), p(0.99), lags[len(lags)-1])
	}
}
