package storetest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
)

func open(t *testing.T, h Harness, loc string) eventstore.Store {
	t.Helper()
	s, err := h.Open(loc)
	if err != nil {
		t.Fatalf("open store at %s: %v", loc, err)
	}
	return s
}

func closeStore(t *testing.T, s eventstore.Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("close store: %v", err)
	}
}

// testReopen: a store closed and opened again holds exactly what it held, and carries on
// with the next position, the chain and the stream versions.
func testReopen(t *testing.T, h Harness) {
	ctx := testContext(t)
	loc := h.NewLocation(t)
	s := open(t, h, loc)
	for i := range 10 {
		mustAppend(t, ctx, s, one(fmt.Sprintf("reopen-%d", i%3), eventstore.Any(), ev(fmt.Sprintf("reopen-%d-a", i)), ev(fmt.Sprintf("reopen-%d-b", i))))
	}
	before := readAll(t, ctx, s, 100)
	closeStore(t, s)

	s = open(t, h, loc)
	defer func() { closeStore(t, s) }()
	after := readAll(t, ctx, s, 100)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("after reopen the log differs:\nbefore %+v\nafter  %+v", before, after)
	}
	if got := head(t, ctx, s); got != 20 {
		t.Fatalf("Head after reopen = %d, want 20", got)
	}
	if _, err := s.Append(ctx, one("reopen-0", eventstore.NoStream(), ev("reopen-x"))); !errors.Is(err, eventstore.ErrConflict) {
		t.Fatalf("NoStream on a stream written before reopen: err = %v, want ErrConflict", err)
	}
	v := uint64(len(readStream(t, ctx, s, "reopen-1")))
	res := mustAppend(t, ctx, s, one("reopen-1", eventstore.Exact(v), ev("reopen-next")))
	if res.FirstPosition != 21 || res.Versions["reopen-1"] != v+1 {
		t.Fatalf("append after reopen landed at %d with version %d, want 21 and %d", res.FirstPosition, res.Versions["reopen-1"], v+1)
	}
	if n, err := eventstore.VerifyChain(ctx, s, 7, nil); err != nil || n != 21 {
		t.Fatalf("VerifyChain after reopen = %d, %v; want 21, nil", n, err)
	}
}

// testCloseWhileAppending: Close while appends are in flight ends every one of them
// (success or ErrClosed, never a hang), every call after Close says ErrClosed, and every
// acknowledged append is there when the store is opened again.
func testCloseWhileAppending(t *testing.T, h Harness) {
	const writers = 8
	ctx := testContext(t)
	loc := h.NewLocation(t)
	s := open(t, h, loc)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		acked   []string
		errs    []error
		closing atomic.Bool  // set just before Close is called
		spanned atomic.Int32 // appends that began before Close was called and ended after it
		running sync.WaitGroup
	)
	// Close waits until every writer has had an append acknowledged, so that all of them
	// are looping on Append when it comes, however slowly they were scheduled.
	running.Add(writers)
	for w := range writers {
		wg.Go(func() {
			first := true
			defer func() {
				if first {
					running.Done() // ended before its first ack: do not hold Close back
				}
			}()
			for i := range 100_000 { // bounded; Close ends it long before
				id := fmt.Sprintf("close-w%d-%d", w, i)
				before := closing.Load()
				_, err := s.Append(ctx, one(fmt.Sprintf("close-%d", w), eventstore.Any(), ev(id)))
				if !before && closing.Load() {
					spanned.Add(1)
				}
				mu.Lock()
				switch {
				case err == nil:
					acked = append(acked, id)
					if first {
						first = false
						running.Done()
					}
				case errors.Is(err, eventstore.ErrClosed):
					mu.Unlock()
					return
				default:
					errs = append(errs, fmt.Errorf("writer %d: %w", w, err))
					mu.Unlock()
					return
				}
				mu.Unlock()
			}
		})
	}
	allRunning := make(chan struct{})
	go func() { running.Wait(); close(allRunning) }()
	select {
	case <-allRunning:
	case <-ctx.Done():
		t.Fatalf("the %d writers did not all get an append acknowledged: %v", writers, ctx.Err())
	}
	closing.Store(true)
	if err := s.Close(); err != nil {
		t.Fatalf("Close with appends in flight: %v", err)
	}
	waited := make(chan struct{})
	go func() { wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("appends in flight at Close did not return within 10s")
	}
	if len(errs) > 0 {
		t.Fatalf("appends racing Close failed with something other than ErrClosed: %v", errors.Join(errs...))
	}
	if spanned.Load() == 0 {
		t.Fatal("no append was in flight when Close was called, so the test proved nothing; every writer was between two appends")
	}

	calls := map[string]error{}
	_, calls["Append"] = s.Append(ctx, one("close-x", eventstore.Any(), ev("close-x")))
	_, calls["ReadAll"] = s.ReadAll(ctx, 0, 10)
	_, calls["ReadStream"] = s.ReadStream(ctx, "close-0", 0, 10)
	_, calls["Head"] = s.Head(ctx)
	calls["Subscribe"] = s.Subscribe(ctx, 0, 10, func(context.Context, []eventstore.RecordedEvent) error { return nil })
	for name, err := range calls {
		if !errors.Is(err, eventstore.ErrClosed) {
			t.Errorf("%s after Close: err = %v, want ErrClosed", name, err)
		}
	}

	s = open(t, h, loc)
	defer closeStore(t, s)
	stored := map[string]bool{}
	for _, e := range readAll(t, ctx, s, 1000) {
		stored[e.ID] = true
	}
	for _, id := range acked {
		if !stored[id] {
			t.Fatalf("append %s was acknowledged before Close but is missing after reopen", id)
		}
	}
	if n, err := eventstore.VerifyChain(ctx, s, 100, nil); err != nil {
		t.Fatalf("VerifyChain after Close and reopen: %d, %v", n, err)
	}
	t.Logf("%d appends acknowledged before Close, all present after reopen; %d were in flight when Close was called", len(acked), spanned.Load())
}

// crashAcks is how many acknowledged appends the parent waits for before the kill.
const crashAcks = 300

// testCrash: kill -9 a child process that is appending from several goroutines, reopen,
// and check that every acknowledged append is there at the positions it was given, no
// append is torn, the log is gap-free and verifies, and new appends carry on. Two rounds,
// so recovery from a crash is itself recovered from.
func testCrash(t *testing.T, h Harness) {
	loc := h.NewLocation(t)
	acked := map[uint64][2]uint64{}
	for round := range 2 {
		ctx := testContext(t)
		firstBatch := uint64(round) * crashMaxBatches
		for b, pos := range runCrashChild(t, ctx, loc, firstBatch) {
			acked[b] = pos
		}
		checkAfterCrash(t, ctx, h, loc, acked, firstBatch)
	}
}

// runCrashChild starts the child, reads its acks until it has crashAcks of them, kills it
// with SIGKILL, and returns every ack it printed before dying: batch -> [first, last].
func runCrashChild(t *testing.T, ctx context.Context, loc string, firstBatch uint64) map[uint64][2]uint64 {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashEnv+"="+loc, crashFirstBatchEnv+"="+fmt.Sprint(firstBatch))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("crash child stdout: %v", err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("crash child stdin: %v", err)
	}
	defer stdin.Close()
	var stderr bytes.Buffer
	cmd.Stderr = &limitedWriter{w: &stderr, n: 64 << 10}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start crash child %s: %v", os.Args[0], err)
	}
	acks := map[uint64][2]uint64{}
	killed := false
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var b, first, last uint64
		if _, err := fmt.Sscanf(sc.Text(), "ack %d %d %d", &b, &first, &last); err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("crash child printed %q, want \"ack <batch> <first> <last>\": %v", sc.Text(), err)
		}
		acks[b] = [2]uint64{first, last}
		if len(acks) == crashAcks && !killed {
			// SIGKILL: no deferred code, no flush, no Close runs in the child.
			if err := cmd.Process.Kill(); err != nil {
				t.Fatalf("kill crash child: %v", err)
			}
			killed = true
		}
	}
	err = cmd.Wait()
	if !killed {
		t.Fatalf("crash child ended by itself after %d acks (%v); stderr:\n%s", len(acks), err, stderr.String())
	}
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("crash child exit: %v, want killed; stderr:\n%s", err, stderr.String())
	}
	t.Logf("crash child killed after %d acknowledged appends (%d printed in all)", crashAcks, len(acks))
	return acks
}

// checkAfterCrash checks the store at loc against every ack of every round so far; the
// round that just crashed numbers its batches after firstBatch.
func checkAfterCrash(t *testing.T, ctx context.Context, h Harness, loc string, acked map[uint64][2]uint64, firstBatch uint64) {
	t.Helper()
	s := open(t, h, loc)
	defer closeStore(t, s)
	log := readAll(t, ctx, s, 1000)

	type batchSeen struct {
		first, last uint64
		n, count    int
	}
	batches := map[uint64]*batchSeen{}
	for i, e := range log {
		if e.Position != uint64(i+1) {
			t.Fatalf("after the crash, log entry %d has position %d: the log has a gap", i, e.Position)
		}
		if !strings.HasPrefix(e.ID, "crash-") {
			continue // an event appended by the parent after an earlier round
		}
		b, idx, n, err := parseCrashEventID(e.ID)
		if err != nil {
			t.Fatal(err)
		}
		bs := batches[b]
		if bs == nil {
			bs = &batchSeen{first: e.Position, n: n}
			batches[b] = bs
		}
		bs.count++
		if idx != bs.count || e.Position != bs.first+uint64(idx-1) {
			t.Fatalf("batch %d: event %d of %d at position %d, batch starts at %d: an append is not consecutive", b, idx, n, e.Position, bs.first)
		}
		bs.last = e.Position
	}
	var unacked []uint64
	for b, bs := range batches {
		if bs.count != bs.n {
			t.Fatalf("batch %d is torn: %d of its %d events are stored", b, bs.count, bs.n)
		}
		if _, ok := acked[b]; !ok && b > firstBatch {
			unacked = append(unacked, b)
		}
	}
	for b, pos := range acked {
		bs, ok := batches[b]
		if !ok {
			t.Fatalf("acknowledged batch %d (positions %d..%d) is missing after the crash", b, pos[0], pos[1])
		}
		if bs.first != pos[0] || bs.last != pos[1] {
			t.Fatalf("acknowledged batch %d was at %d..%d, after the crash it is at %d..%d", b, pos[0], pos[1], bs.first, bs.last)
		}
	}
	// Only appends in flight at the kill may be there unacknowledged: at most one per
	// child worker (their acks may also just not have been printed yet).
	sort.Slice(unacked, func(i, j int) bool { return unacked[i] < unacked[j] })
	if len(unacked) > crashWorkers {
		t.Fatalf("%d batches are stored but were never acknowledged (%v), more than the %d the child had in flight", len(unacked), unacked, crashWorkers)
	}
	if n, err := eventstore.VerifyChain(ctx, s, 500, nil); err != nil || n != uint64(len(log)) {
		t.Fatalf("VerifyChain after the crash = %d, %v; want %d, nil", n, err, len(log))
	}
	res := mustAppend(t, ctx, s, one("after-crash", eventstore.Any(), ev(fmt.Sprintf("after-crash-%d", len(log)))))
	if res.FirstPosition != uint64(len(log))+1 {
		t.Fatalf("first append after the crash landed at %d, want %d", res.FirstPosition, len(log)+1)
	}
	if n, err := eventstore.VerifyChain(ctx, s, 500, nil); err != nil || n != uint64(len(log))+1 {
		t.Fatalf("VerifyChain after appending past the crash = %d, %v; want %d, nil", n, err, len(log)+1)
	}
	for k := range 11 {
		stream := fmt.Sprintf("crash-%d", k)
		for i, e := range readStream(t, ctx, s, stream) {
			if e.StreamVersion != uint64(i+1) {
				t.Fatalf("after the crash, stream %s entry %d has version %d", stream, i, e.StreamVersion)
			}
		}
	}
	t.Logf("after the crash: %d events, %d acknowledged batches all present, %d unacknowledged batches complete", len(log), len(acked), len(unacked))
}

// limitedWriter keeps the first n bytes written to it and drops the rest, so a chatty
// child cannot grow the parent's memory without bound.
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.n -= k
		if _, err := l.w.Write(p[:k]); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}
