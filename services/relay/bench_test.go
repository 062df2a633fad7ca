package relay_test

import (
	"context"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/internal/kafkatest"
	"github.com/securepay/securepay/services/relay"
)

// BenchmarkRelay measures the relay against the real broker and a PostgreSQL log, in two
// phases (docs/PERFORMANCE.md, "Outbox relay to Kafka"):
//
//   - catch-up: a log of SECUREPAY_RELAY_BENCH_TRANSFERS transfers (default 50,000; three
//     events each) is published from position 0: events/s with acks=all, from the first
//     acknowledgement (after the topics' creation) to the checkpoint at the head;
//   - live: transfers are committed by 64 clients for SECUREPAY_RELAY_BENCH_SECONDS (default
//     20) while the relay runs: the ledger's rate, the relay's rate, and the latency from the
//     store's recorded time to the broker's acknowledgement, p50/p99/max.
//
// Catch-up also reports the relay's CPU time and allocations per event (the log is written
// before the relay starts, so the process does nothing else meanwhile).
// SECUREPAY_RELAY_BENCH_COMPRESSION=lz4|zstd|gzip|snappy measures a compressed producer;
// SECUREPAY_RELAY_BENCH_CLIENTS (default 64) sets the live phase's committing clients (a
// few measure the latency at low rates); SECUREPAY_RELAY_BENCH_SAVE_INTERVAL sets Config.SaveInterval (-1ns: a save after every
// acknowledgement, as before it existed). Live also reports the commit-to-read latency (the
// part before the relay had the event) and the checkpoint saves per second.
//
// Run: go test -run '^$' -bench BenchmarkRelay -benchtime 1x ./services/relay/
func BenchmarkRelay(b *testing.B) {
	addr := kafkatest.Addr(b)
	transfers := envInt("SECUREPAY_RELAY_BENCH_TRANSFERS", 50_000)
	seconds := envInt("SECUREPAY_RELAY_BENCH_SECONDS", 20)
	for range b.N {
		f := newFixture(b, 200)
		f.transfers(b, transfers)
		head := f.head(b)

		var mu sync.Mutex
		var live bool
		var latencies, readLatencies []time.Duration
		var saves atomic.Int64
		var acked atomic.Int64
		var firstAck atomic.Int64 // unix ns of the first acknowledgement: the clock starts once topics exist
		// During catch-up only the relay works in this process (the log is written before
		// it starts), so the process's CPU time and allocations over the phase are the
		// relay's own, per event: the numbers that survive a loaded machine.
		cpu0, mallocs0 := processCPU(b), mallocs()
		_, stop := f.startRelay(b, addr, func(c *relay.Config) {
			c.Topics = &relay.TopicSettings{Partitions: 12, ReplicationFactor: 1}
			c.Window = envInt("SECUREPAY_RELAY_BENCH_WINDOW", 10_000)
			if v := os.Getenv("SECUREPAY_RELAY_BENCH_SAVE_INTERVAL"); v != "" {
				d, err := time.ParseDuration(v)
				if err != nil {
					b.Fatalf("SECUREPAY_RELAY_BENCH_SAVE_INTERVAL=%s: %v", v, err)
				}
				c.SaveInterval = d
			}
			c.Checkpoints = countingCheckpoints{Checkpoints: c.Checkpoints, saves: &saves}
			c.Store = timedStore{Store: c.Store, observe: func(d time.Duration) {
				mu.Lock()
				if live {
					readLatencies = append(readLatencies, d)
				}
				mu.Unlock()
			}}
			if name := os.Getenv("SECUREPAY_RELAY_BENCH_COMPRESSION"); name != "" {
				// Compression is not the relay's setting (docs/KAFKA.md): this measures it.
				p := relay.ProducerConfig("securepay-relay-bench", relay.DefaultKafkaVersion)
				if err := p.Producer.Compression.UnmarshalText([]byte(name)); err != nil {
					b.Fatalf("SECUREPAY_RELAY_BENCH_COMPRESSION=%s: %v", name, err)
				}
				c.Producer = p
			}
			c.Observe = func(p relay.Published) {
				if acked.Add(1) == 1 {
					firstAck.Store(p.AckedAt.UnixNano())
				}
				mu.Lock()
				if live {
					latencies = append(latencies, p.AckedAt.Sub(p.RecordedAt))
				}
				mu.Unlock()
			}
		})
		waitCheckpoint(b, f.checkpoints(b), head, 10*time.Minute)
		catchUp := time.Since(time.Unix(0, firstAck.Load()))
		cpuPerEvent := float64((processCPU(b) - cpu0).Microseconds()) / float64(head)
		allocsPerEvent := float64(mallocs()-mallocs0) / float64(head)
		catchUpSaves := saves.Load()
		b.ReportMetric(cpuPerEvent, "catchup-cpu-us/event")
		b.ReportMetric(allocsPerEvent, "catchup-allocs/event")
		b.Logf("catch-up cost in the relay's process: %.1f µs CPU and %.1f allocations per event; %d checkpoint saves", cpuPerEvent, allocsPerEvent, catchUpSaves)
		b.ReportMetric(float64(head)/catchUp.Seconds(), "catchup-events/s")
		b.Logf("catch-up: %d events in %s = %.0f events/s", head, catchUp.Round(time.Millisecond), float64(head)/catchUp.Seconds())

		mu.Lock()
		live = true
		mu.Unlock()
		before := f.head(b)
		ackedBefore := acked.Load()
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seconds)*time.Second)
		var wg sync.WaitGroup
		var committed atomic.Int64
		liveStart := time.Now()
		for range envInt("SECUREPAY_RELAY_BENCH_CLIENTS", 64) {
			wg.Go(func() {
				for ctx.Err() == nil {
					if err := f.transfer(ctx); err == nil {
						committed.Add(1)
					}
				}
			})
		}
		wg.Wait()
		cancel()
		liveDur := time.Since(liveStart)
		after := f.head(b)
		waitCheckpoint(b, f.checkpoints(b), after, 5*time.Minute)
		drained := time.Since(liveStart)
		_ = stop()

		mu.Lock()
		lat, readLat := slices.Clone(latencies), slices.Clone(readLatencies)
		mu.Unlock()
		slices.Sort(lat)
		slices.Sort(readLat)
		quantile := func(lat []time.Duration, p float64) time.Duration {
			if len(lat) == 0 {
				return 0
			}
			return lat[min(len(lat)-1, int(p*float64(len(lat))))]
		}
		q := func(p float64) time.Duration { return quantile(lat, p) }
		liveSaves := saves.Load() - catchUpSaves
		events := after - before
		b.ReportMetric(float64(committed.Load())/liveDur.Seconds(), "live-transfers/s")
		b.ReportMetric(float64(events)/liveDur.Seconds(), "live-events/s")
		b.ReportMetric(float64(q(0.50).Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(q(0.99).Microseconds())/1000, "p99-ms")
		b.Logf("live: %d transfers (%d events) in %s = %.0f transfers/s, %.0f events/s; relay acknowledged %d, all published %s after the start",
			committed.Load(), events, liveDur.Round(time.Millisecond), float64(committed.Load())/liveDur.Seconds(), float64(events)/liveDur.Seconds(),
			acked.Load()-ackedBefore, drained.Round(time.Millisecond))
		b.Logf("commit-to-Kafka latency over %d events: p50 %s, p90 %s, p99 %s, max %s",
			len(lat), q(0.50).Round(time.Microsecond), q(0.90).Round(time.Microsecond), q(0.99).Round(time.Microsecond), q(1).Round(time.Microsecond))
		// The part of it before the relay had the event: the ledger's commit, the
		// notification and the subscription's read.
		b.ReportMetric(float64(quantile(readLat, 0.99).Microseconds())/1000, "read-p99-ms")
		b.Logf("commit-to-read latency (the subscription had the event) over %d events: p50 %s, p99 %s; %d checkpoint saves while live (%.1f/s)",
			len(readLat), quantile(readLat, 0.50).Round(time.Microsecond), quantile(readLat, 0.99).Round(time.Microsecond), liveSaves, float64(liveSaves)/drained.Seconds())
		b.ReportMetric(float64(liveSaves)/drained.Seconds(), "live-saves/s")
	}
}

// timedStore passes the relay's subscription through, observing for every event the time
// from its commit (recorded_at) to its read.
type timedStore struct {
	eventstore.Store
	observe func(time.Duration)
}

func (s timedStore) Subscribe(ctx context.Context, after uint64, maxBatch int, handle func(context.Context, []eventstore.RecordedEvent) error) error {
	return s.Store.Subscribe(ctx, after, maxBatch, func(ctx context.Context, batch []eventstore.RecordedEvent) error {
		now := time.Now()
		for i := range batch {
			s.observe(now.Sub(batch[i].RecordedAt))
		}
		return handle(ctx, batch)
	})
}

// countingCheckpoints counts the relay's checkpoint saves: each is a PostgreSQL commit.
type countingCheckpoints struct {
	relay.Checkpoints
	saves *atomic.Int64
}

func (c countingCheckpoints) Save(ctx context.Context, position uint64) error {
	c.saves.Add(1)
	return c.Checkpoints.Save(ctx, position)
}

// processCPU is this process's user+system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// mallocs is the number of heap allocations this process made so far.
func mallocs() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.Mallocs
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkReadLog is the relay's input alone: the PostgreSQL subscription of a log like
// BenchmarkRelay's, nothing sent; the ceiling the relay cannot pass.
func BenchmarkReadLog(b *testing.B) {
	transfers := envInt("SECUREPAY_RELAY_BENCH_TRANSFERS", 50_000)
	f := newFixture(b, 200)
	f.transfers(b, transfers)
	head := f.head(b)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		ctx, cancel := context.WithCancel(context.Background())
		var n uint64
		_ = f.store.Subscribe(ctx, 0, 1000, func(ctx context.Context, batch []eventstore.RecordedEvent) error {
			n += uint64(len(batch))
			if n >= head {
				cancel()
			}
			return nil
		})
		cancel()
		b.ReportMetric(float64(head)/time.Since(start).Seconds(), "events/s")
	}
}
