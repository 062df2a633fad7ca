package storetest

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
)

// The crash child is the test binary re-executed with crashEnv set to the store location.
const (
	crashEnv           = "SECUREPAY_STORETEST_CRASH_CHILD_LOCATION"
	crashFirstBatchEnv = "SECUREPAY_STORETEST_CRASH_CHILD_FIRST_BATCH" // batch ids start after it
)

// CrashChildMain must be called from the TestMain of every backend test package that runs
// the suite with Open set. In the crash child (the test binary re-executed by the kill -9
// test) it runs the child's append loop and exits; otherwise it runs the tests and exits
// with their code.
func CrashChildMain(m *testing.M, open func(location string) (eventstore.Store, error)) {
	if loc, ok := os.LookupEnv(crashEnv); ok {
		os.Exit(crashChild(loc, open))
	}
	os.Exit(m.Run())
}

// Crash child tuning: enough concurrent appenders that the kill lands while a group commit
// is in flight, and a hard stop so an orphaned child never runs for ever.
const (
	crashWorkers     = 8
	crashMaxBatches  = 1_000_000
	crashMaxDuration = 2 * time.Minute
)

// crashChild opens the store at loc and appends multi-stream batches from several
// goroutines until it is killed. After each acknowledged append it writes one line
// "ack <batch> <first position> <last position>" to stdout. Batch b's event ids are
// "crash-<b>-<i>-<n>" for i in 1..n, so the parent can tell a torn batch from a whole one.
func crashChild(loc string, open func(string) (eventstore.Store, error)) int {
	s, err := open(loc)
	if err != nil {
		fmt.Fprintf(os.Stderr, "crash child: open %s: %v\n", loc, err)
		return 2
	}
	// Only reached when the child stops on its own (its time limit, or the parent gone).
	defer func() { _ = s.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), crashMaxDuration)
	defer cancel()
	// The parent holds our stdin open; EOF means it died, so stop rather than linger.
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	first, err := strconv.ParseUint(os.Getenv(crashFirstBatchEnv), 10, 64)
	if err != nil {
		fmt.Fprintf(os.Stderr, "crash child: %s: %v\n", crashFirstBatchEnv, err)
		return 2
	}
	var (
		next  atomic.Uint64
		outMu sync.Mutex
		wg    sync.WaitGroup
		fail  atomic.Value
	)
	next.Store(first)
	for range crashWorkers {
		wg.Go(func() {
			for ctx.Err() == nil {
				b := next.Add(1)
				if b > first+crashMaxBatches {
					return
				}
				appends := crashBatch(b)
				res, err := s.Append(ctx, appends...)
				if err != nil {
					if ctx.Err() == nil {
						fail.CompareAndSwap(nil, fmt.Errorf("append batch %d: %w", b, err))
						cancel()
					}
					return
				}
				outMu.Lock()
				// One unbuffered write per ack: once it returns, the parent can read it
				// even if we are killed the next instant.
				_, werr := fmt.Fprintf(os.Stdout, "ack %d %d %d\n", b, res.FirstPosition, res.LastPosition)
				outMu.Unlock()
				if werr != nil {
					cancel()
					return
				}
			}
		})
	}
	wg.Wait()
	if err, _ := fail.Load().(error); err != nil {
		fmt.Fprintf(os.Stderr, "crash child: %v\n", err)
		return 3
	}
	return 0
}

// crashBatch is batch b: 1 to 3 streams out of a small pool (so batches share streams and
// the writer must order them), 1 or 2 events each, all expectations Any (several workers
// write the same streams at once; conflicts are tested elsewhere).
func crashBatch(b uint64) []eventstore.StreamAppend {
	nStreams := int(b%3) + 1
	perStream := int(b%2) + 1
	total := nStreams * perStream
	appends := make([]eventstore.StreamAppend, nStreams)
	i := 0
	for k := range appends {
		events := make([]eventstore.EventData, perStream)
		for j := range events {
			i++
			id := crashEventID(b, i, total)
			events[j] = eventstore.EventData{ID: id, Type: "storetest.crash.v1", Data: []byte(id)}
		}
		appends[k] = eventstore.StreamAppend{
			Stream:   fmt.Sprintf("crash-%d", (b+uint64(k)*7)%11),
			Expected: eventstore.Any(),
			Events:   events,
		}
	}
	return appends
}

func crashEventID(batch uint64, i, n int) string {
	return fmt.Sprintf("crash-%d-%d-%d", batch, i, n)
}

func parseCrashEventID(id string) (batch uint64, i, n int, err error) {
	if _, err := fmt.Sscanf(id, "crash-%d-%d-%d", &batch, &i, &n); err != nil {
		return 0, 0, 0, fmt.Errorf("event id %q is not crash-<batch>-<i>-<n>: %w", id, err)
	}
	return batch, i, n, nil
}
