package embedded

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
)

// benchPayload is the size of a typical ledger event (a posting with ids, amount, asset).
var benchPayload = []byte(`{"payment_id":"7d1f0c4e-3b7a-4d55-9a0e-5c2f8b9e6a11","account_id":"acct-000042","amount_minor":"123456","asset":"USD/2","direction":"debit"}`)

func benchEvent(id string) eventstore.EventData {
	return eventstore.EventData{
		ID:   id,
		Type: "ledger.account.debited.v1",
		Data: benchPayload,
		Metadata: eventstore.Metadata{
			CorrelationID: "pay-" + id,
			CausationID:   "cmd-" + id,
			Actor:         "spiffe://securepay.dev/ns/ledger/sa/payment",
			TraceParent:   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		},
	}
}

// benchAppends runs b.N appends from `workers` goroutines, each building its own appends
// (prepared before the timer starts, so allocations counted are the store's), and reports
// throughput and latency percentiles.
func benchAppends(b *testing.B, workers int, eventsPerAppend int, prepare func(worker, i int) []eventstore.StreamAppend) {
	s, err := Open(b.TempDir(), Options{Logger: quietLogger{}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	per := make([]int, workers)
	for i := range b.N {
		per[i%workers]++
	}
	work := make([][][]eventstore.StreamAppend, workers)
	for w := range workers {
		work[w] = make([][]eventstore.StreamAppend, per[w])
		for i := range per[w] {
			work[w][i] = prepare(w, i)
		}
	}
	latencies := make([][]time.Duration, workers)
	for w := range workers {
		latencies[w] = make([]time.Duration, 0, per[w])
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU(b)
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for _, appends := range work[w] {
				t0 := time.Now()
				if _, err := s.Append(ctx, appends...); err != nil {
					errs <- err
					return
				}
				latencies[w] = append(latencies[w], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU(b) - cpu0
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	all := slices.Concat(latencies...)
	slices.Sort(all)
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[min(len(all)-1, int(p*float64(len(all))))].Microseconds())
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "appends/s")
	b.ReportMetric(float64(b.N*eventsPerAppend)/elapsed.Seconds(), "events/s")
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	// CPU per event (the whole process: writer, pebble flushes and compactions, callers)
	// says more than wall time on a shared machine: 2 cores / this = the ceiling.
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(b.N*eventsPerAppend), "cpu-µs/event")
}

// processCPU is the user+system CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAppendSingle: one event per append, each writer on its own stream with exact
// expected versions.
func BenchmarkAppendSingle(b *testing.B) {
	for _, workers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("parallel=%d", workers), func(b *testing.B) {
			benchAppends(b, workers, 1, func(w, i int) []eventstore.StreamAppend {
				return []eventstore.StreamAppend{{
					Stream:   fmt.Sprintf("account-%d", w),
					Expected: eventstore.Exact(uint64(i)),
					Events:   []eventstore.EventData{benchEvent(fmt.Sprintf("w%d-e%d", w, i))},
				}}
			})
		})
	}
}

// BenchmarkAppendTransfer: the shape of a transfer, one atomic append of three streams:
// a new payment stream and the two accounts it moves money between.
func BenchmarkAppendTransfer(b *testing.B) {
	for _, workers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("parallel=%d", workers), func(b *testing.B) {
			benchAppends(b, workers, 3, func(w, i int) []eventstore.StreamAppend {
				id := fmt.Sprintf("w%d-p%d", w, i)
				return []eventstore.StreamAppend{
					{Stream: "payment-" + id, Expected: eventstore.NoStream(), Events: []eventstore.EventData{benchEvent(id + "-t")}},
					{Stream: fmt.Sprintf("account-%d-a", w), Expected: eventstore.Exact(uint64(i)), Events: []eventstore.EventData{benchEvent(id + "-d")}},
					{Stream: fmt.Sprintf("account-%d-b", w), Expected: eventstore.Exact(uint64(i)), Events: []eventstore.EventData{benchEvent(id + "-c")}},
				}
			})
		})
	}
}

// BenchmarkAppendTransferBatch: what the command layer does under load, many transfers
// (here 100, 300 events on 201 streams) in one append.
func BenchmarkAppendTransferBatch(b *testing.B) {
	const transfers = 100
	for _, workers := range []int{1, 4} {
		b.Run(fmt.Sprintf("parallel=%d", workers), func(b *testing.B) {
			benchAppends(b, workers, 3*transfers, func(w, i int) []eventstore.StreamAppend {
				appends := make([]eventstore.StreamAppend, 0, 2*transfers+1)
				var accounts []eventstore.EventData
				for k := range transfers {
					id := fmt.Sprintf("w%d-b%d-p%d", w, i, k)
					appends = append(appends, eventstore.StreamAppend{Stream: "payment-" + id, Expected: eventstore.NoStream(), Events: []eventstore.EventData{benchEvent(id + "-t")}})
					accounts = append(accounts, benchEvent(id+"-d"), benchEvent(id+"-c"))
				}
				// The accounts of one worker's batch: a hot merchant and its payers.
				appends = append(appends, eventstore.StreamAppend{Stream: fmt.Sprintf("merchant-%d", w), Expected: eventstore.Any(), Events: accounts[:transfers]})
				for k := range transfers {
					appends = append(appends, eventstore.StreamAppend{Stream: fmt.Sprintf("payer-%d-%d", w, k), Expected: eventstore.Any(), Events: accounts[transfers+k : transfers+k+1]})
				}
				return appends
			})
		})
	}
}

// BenchmarkAppendTransferLog grows one log by b.N appends of 100 transfers each (a new
// payment stream, a debit on one of 100,000 payers, a credit on one of 10 merchants), from
// one caller, the way a batching command processor drives the store. It reports peak RSS,
// which must stay bounded however long the log grows: -benchtime=10000x is one million
// transfers (3 million events). Peak RSS is the whole process's, so run this benchmark
// alone (-bench AppendTransferLog) for a number that is its own.
func BenchmarkAppendTransferLog(b *testing.B) {
	const perAppend, payers, merchants = 100, 100_000, 10
	s, err := Open(b.TempDir(), Options{Logger: quietLogger{}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU(b)
	start := time.Now()
	appends := make([]eventstore.StreamAppend, 0, 2*perAppend+1)
	credits := make([]eventstore.EventData, perAppend)
	for n := range b.N {
		// Building the request is the caller's work, not the store's; it is inside the
		// timer but small (fmt for ids) next to the append.
		appends = appends[:0]
		for k := range perAppend {
			id := fmt.Sprintf("n%d-t%d", n, k)
			appends = append(appends,
				eventstore.StreamAppend{Stream: "payment-" + id, Expected: eventstore.NoStream(), Events: []eventstore.EventData{benchEvent(id)}},
				eventstore.StreamAppend{Stream: fmt.Sprintf("payer-%d", (n*perAppend+k)%payers), Expected: eventstore.Any(), Events: []eventstore.EventData{benchEvent(id + "-d")}})
			credits[k] = benchEvent(id + "-c")
		}
		appends = append(appends, eventstore.StreamAppend{Stream: fmt.Sprintf("merchant-%d", n%merchants), Expected: eventstore.Any(), Events: credits})
		if _, err := s.Append(ctx, appends...); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	cpu := processCPU(b) - cpu0
	b.StopTimer()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	events := float64(b.N * 3 * perAppend)
	b.ReportMetric(float64(b.N*perAppend)/elapsed.Seconds(), "transfers/s")
	b.ReportMetric(events/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/events, "cpu-µs/event")
	b.ReportMetric(float64(ru.Maxrss)/1024, "peak-RSS-MiB")
}

// BenchmarkReadAll reads a 300,000-event log (flushed and compacted, as a log that has
// grown is) from start to end in pages of 1,000, the way subscriptions, projections and
// the auditor tools do. One op is one full read.
func BenchmarkReadAll(b *testing.B) {
	const transfers, perAppend = 100_000, 100
	s, err := Open(b.TempDir(), Options{Logger: quietLogger{}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	appends := make([]eventstore.StreamAppend, 0, 2*perAppend+1)
	credits := make([]eventstore.EventData, perAppend)
	for n := range transfers / perAppend {
		appends = appends[:0]
		for k := range perAppend {
			id := fmt.Sprintf("n%d-t%d", n, k)
			appends = append(appends,
				eventstore.StreamAppend{Stream: "payment-" + id, Expected: eventstore.NoStream(), Events: []eventstore.EventData{benchEvent(id)}},
				eventstore.StreamAppend{Stream: fmt.Sprintf("payer-%d", (n*perAppend+k)%10_000), Expected: eventstore.Any(), Events: []eventstore.EventData{benchEvent(id + "-d")}})
			credits[k] = benchEvent(id + "-c")
		}
		appends = append(appends, eventstore.StreamAppend{Stream: fmt.Sprintf("merchant-%d", n%10), Expected: eventstore.Any(), Events: credits})
		if _, err := s.Append(ctx, appends...); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.db.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := s.db.Compact(ctx, []byte{0}, []byte{0xff}, true); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU(b)
	start := time.Now()
	for range b.N {
		var after uint64
		for {
			page, err := s.ReadAll(ctx, after, 1000)
			if err != nil {
				b.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			after = page[len(page)-1].Position
		}
		if after != 3*transfers {
			b.Fatalf("read up to position %d, want %d", after, 3*transfers)
		}
	}
	elapsed := time.Since(start)
	cpu := processCPU(b) - cpu0
	events := float64(b.N * 3 * transfers)
	b.ReportMetric(events/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/events, "cpu-µs/event")
}
