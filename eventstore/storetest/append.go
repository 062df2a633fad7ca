package storetest

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/securepay/securepay/eventstore"
)

// testInvalidAppends: every request ValidateAppend refuses is refused by the store with
// ErrInvalidAppend (never ErrConflict), and stores nothing; requests exactly at the limits
// are accepted.
func testInvalidAppends(t *testing.T, h Harness) {
	ctx := testContext(t)
	s := fresh(t, h)
	mustAppend(t, ctx, s, one("inv-existing", eventstore.NoStream(), ev("inv-0")))

	withEvent := func(mod func(*eventstore.EventData)) []eventstore.StreamAppend {
		e := ev("inv-x")
		mod(&e)
		return []eventstore.StreamAppend{one("inv-1", eventstore.NoStream(), e)}
	}
	tooMany := evs("inv-many", eventstore.MaxEventsPerAppend+1)
	cases := []struct {
		name    string
		appends []eventstore.StreamAppend
	}{
		{"no streams", nil},
		{"empty stream name", []eventstore.StreamAppend{one("", eventstore.NoStream(), ev("inv-a"))}},
		{"stream name too long", []eventstore.StreamAppend{one(strings.Repeat("s", eventstore.MaxStreamNameBytes+1), eventstore.NoStream(), ev("inv-a"))}},
		{"stream named twice", []eventstore.StreamAppend{one("inv-1", eventstore.NoStream(), ev("inv-a")), one("inv-1", eventstore.Any(), ev("inv-b"))}},
		{"no events", []eventstore.StreamAppend{one("inv-1", eventstore.NoStream())}},
		{"unset expectation beside a valid stream", []eventstore.StreamAppend{one("inv-1", eventstore.NoStream(), ev("inv-a")), one("inv-existing", eventstore.ExpectedVersion{}, ev("inv-b"))}},
		{"empty event id", withEvent(func(e *eventstore.EventData) { e.ID = "" })},
		{"event id too long", withEvent(func(e *eventstore.EventData) { e.ID = strings.Repeat("i", eventstore.MaxEventIDBytes+1) })},
		{"empty event type", withEvent(func(e *eventstore.EventData) { e.Type = "" })},
		{"event type too long", withEvent(func(e *eventstore.EventData) { e.Type = strings.Repeat("t", eventstore.MaxEventTypeBytes+1) })},
		{"data too large", withEvent(func(e *eventstore.EventData) { e.Data = make([]byte, eventstore.MaxEventDataBytes+1) })},
		{"too many events", []eventstore.StreamAppend{one("inv-1", eventstore.NoStream(), tooMany[:5]...), one("inv-2", eventstore.NoStream(), tooMany[5:]...)}},
	}
	for _, tc := range cases {
		_, err := s.Append(ctx, tc.appends...)
		if !errors.Is(err, eventstore.ErrInvalidAppend) || errors.Is(err, eventstore.ErrConflict) {
			t.Errorf("%s: err = %v, want ErrInvalidAppend", tc.name, err)
		}
	}
	if got := readAll(t, ctx, s, 100); len(got) != 1 {
		t.Fatalf("after refused appends the log holds %d events, want the 1 appended first", len(got))
	}

	// Exactly at every limit is fine.
	edge := ev(strings.Repeat("i", eventstore.MaxEventIDBytes))
	edge.Type = strings.Repeat("t", eventstore.MaxEventTypeBytes)
	edge.Data = make([]byte, eventstore.MaxEventDataBytes)
	longName := strings.Repeat("s", eventstore.MaxStreamNameBytes)
	res := mustAppend(t, ctx, s, one(longName, eventstore.NoStream(), edge))
	if res.Versions[longName] != 1 {
		t.Fatalf("append at the limits: versions %v, want %s:1", res.Versions, longName)
	}
	most := evs("inv-most", eventstore.MaxEventsPerAppend)
	res = mustAppend(t, ctx, s, one("inv-most-a", eventstore.NoStream(), most[:1]...), one("inv-most-b", eventstore.NoStream(), most[1:]...))
	if n := res.LastPosition - res.FirstPosition + 1; n != eventstore.MaxEventsPerAppend {
		t.Fatalf("append of MaxEventsPerAppend events covered %d positions, want %d", n, eventstore.MaxEventsPerAppend)
	}
}

// testMultiStreamAtomicity: a conflict on any one stream of a multi-stream append stores
// nothing on any stream, and the error names the stream that failed.
func testMultiStreamAtomicity(t *testing.T, h Harness) {
	ctx := testContext(t)
	s := fresh(t, h)
	mustAppend(t, ctx, s, one("atom-a", eventstore.NoStream(), ev("atom-a1")))
	mustAppend(t, ctx, s, one("atom-b", eventstore.NoStream(), ev("atom-b1"), ev("atom-b2")))
	before := readAll(t, ctx, s, 100)

	cases := []struct {
		name       string
		appends    []eventstore.StreamAppend
		badStream  string
		wantActual uint64
	}{
		{"first stream conflicts", []eventstore.StreamAppend{
			one("atom-a", eventstore.Exact(2), ev("x1")), one("atom-b", eventstore.Exact(2), ev("x2")), one("atom-c", eventstore.NoStream(), ev("x3"))}, "atom-a", 1},
		{"middle stream conflicts", []eventstore.StreamAppend{
			one("atom-a", eventstore.Exact(1), ev("x1")), one("atom-b", eventstore.NoStream(), ev("x2")), one("atom-c", eventstore.NoStream(), ev("x3"))}, "atom-b", 2},
		{"last (new) stream conflicts", []eventstore.StreamAppend{
			one("atom-a", eventstore.Any(), ev("x1")), one("atom-b", eventstore.Exact(2), ev("x2"), ev("x3")), one("atom-c", eventstore.Exact(1), ev("x4"))}, "atom-c", 0},
	}
	for _, tc := range cases {
		_, err := s.Append(ctx, tc.appends...)
		if !errors.Is(err, eventstore.ErrConflict) {
			t.Fatalf("%s: err = %v, want ErrConflict", tc.name, err)
		}
		var ce *eventstore.ConflictError
		if !errors.As(err, &ce) || ce.Stream != tc.badStream || ce.Actual != tc.wantActual {
			t.Fatalf("%s: err = %#v, want a *ConflictError naming %s at version %d", tc.name, err, tc.badStream, tc.wantActual)
		}
		if got := head(t, ctx, s); got != uint64(len(before)) {
			t.Fatalf("%s: Head = %d after a refused append, want %d", tc.name, got, len(before))
		}
		after := readAll(t, ctx, s, 100)
		if len(after) != len(before) {
			t.Fatalf("%s: the log holds %d events after a refused append, want %d", tc.name, len(after), len(before))
		}
		for stream, want := range map[string]int{"atom-a": 1, "atom-b": 2, "atom-c": 0} {
			if got := readStream(t, ctx, s, stream); len(got) != want {
				t.Fatalf("%s: stream %s holds %d events after a refused append, want %d", tc.name, stream, len(got), want)
			}
		}
	}

	res := mustAppend(t, ctx, s,
		one("atom-a", eventstore.Exact(1), ev("ok-a2")),
		one("atom-b", eventstore.Exact(2), ev("ok-b3"), ev("ok-b4")),
		one("atom-c", eventstore.NoStream(), ev("ok-c1")))
	if res.FirstPosition != 4 || res.LastPosition != 7 {
		t.Fatalf("multi-stream append landed at %d..%d, want 4..7", res.FirstPosition, res.LastPosition)
	}
	want := map[string]uint64{"atom-a": 2, "atom-b": 4, "atom-c": 1}
	if fmt.Sprint(res.Versions) != fmt.Sprint(want) {
		t.Fatalf("multi-stream append versions %v, want %v", res.Versions, want)
	}
	wantIDs := []string{"ok-a2", "ok-b3", "ok-b4", "ok-c1"}
	got := readAll(t, ctx, s, 100)[3:]
	for i, e := range got {
		if e.ID != wantIDs[i] {
			t.Fatalf("position %d holds %s, want %s (events keep the order given)", e.Position, e.ID, wantIDs[i])
		}
	}
}

// testRacingWriters: 32 goroutines race Exact(v) appends on one stream. In lock-step
// rounds exactly one of them wins each version; free-running, the wins still number the
// final version and no version is won twice.
func testRacingWriters(t *testing.T, h Harness) {
	const (
		writers = 32
		rounds  = 12
	)
	ctx := testContext(t)
	s := fresh(t, h)

	// Lock-step: every writer tries Exact(round) at once.
	for round := range uint64(rounds) {
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			winners []int
			errs    []error
		)
		start := make(chan struct{})
		for w := range writers {
			wg.Go(func() {
				<-start
				_, err := s.Append(ctx, one("race-1", eventstore.Exact(round), ev(fmt.Sprintf("race-r%d-w%d", round, w))))
				mu.Lock()
				defer mu.Unlock()
				var ce *eventstore.ConflictError
				switch {
				case err == nil:
					winners = append(winners, w)
				case errors.As(err, &ce) && errors.Is(err, eventstore.ErrConflict):
					if ce.Stream != "race-1" || ce.Actual <= round {
						errs = append(errs, fmt.Errorf("writer %d: conflict %+v, want stream race-1 at a version above %d", w, *ce, round))
					}
				default:
					errs = append(errs, fmt.Errorf("writer %d: %w", w, err))
				}
			})
		}
		close(start)
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("round %d: unexpected errors: %v", round, errors.Join(errs...))
		}
		if len(winners) != 1 {
			t.Fatalf("round %d: %d writers won Exact(%d), want exactly 1 (winners %v)", round, len(winners), round, winners)
		}
		events := readStream(t, ctx, s, "race-1")
		if uint64(len(events)) != round+1 || events[round].ID != fmt.Sprintf("race-r%d-w%d", round, winners[0]) {
			t.Fatalf("round %d: stream holds %d events, last %s; want %d ending with writer %d's", round, len(events), events[len(events)-1].ID, round+1, winners[0])
		}
	}

	// Free-running: read the version, append Exact(it), repeat until every writer has won
	// a few times. Attempts are bounded so a broken backend fails instead of spinning.
	const winsEach, maxAttempts = 3, 2000
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		won  = map[uint64]string{}
		errs []error
	)
	for w := range writers {
		wg.Go(func() {
			wins := 0
			for attempt := 0; wins < winsEach; attempt++ {
				if attempt == maxAttempts {
					mu.Lock()
					errs = append(errs, fmt.Errorf("writer %d: only %d wins after %d attempts", w, wins, attempt))
					mu.Unlock()
					return
				}
				page, err := s.ReadStream(ctx, "race-2", 0, eventstore.MaxReadLimit)
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
				v := uint64(len(page))
				id := fmt.Sprintf("free-w%d-a%d", w, attempt)
				res, err := s.Append(ctx, one("race-2", eventstore.Exact(v), ev(id)))
				if errors.Is(err, eventstore.ErrConflict) {
					continue
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("writer %d: %w", w, err))
					mu.Unlock()
					return
				}
				if prev, dup := won[res.Versions["race-2"]]; dup || res.Versions["race-2"] != v+1 {
					errs = append(errs, fmt.Errorf("writer %d won version %d expecting %d (already won by %q)", w, res.Versions["race-2"], v, prev))
				}
				won[res.Versions["race-2"]] = id
				mu.Unlock()
				wins++
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("free-running writers: %v", errors.Join(errs...))
	}
	events := readStream(t, ctx, s, "race-2")
	if len(events) != writers*winsEach || len(won) != len(events) {
		t.Fatalf("stream holds %d events and %d versions were won, want both %d", len(events), len(won), writers*winsEach)
	}
	for _, e := range events {
		if won[e.StreamVersion] != e.ID {
			t.Fatalf("version %d holds %s, but %s won it", e.StreamVersion, e.ID, won[e.StreamVersion])
		}
	}
}

// testGlobalOrder: concurrent multi-stream appends land at consecutive positions in the
// order given, the log is gap-free from 1, and every stream's versions count up from 1 in
// position order.
func testGlobalOrder(t *testing.T, h Harness) {
	const writers, appendsEach = 16, 12
	ctx := testContext(t)
	s := fresh(t, h)

	type landed struct {
		ids []string
		res eventstore.AppendResult
	}
	results := make([][]landed, writers)
	var wg sync.WaitGroup
	errc := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for i := range appendsEach {
				// 1 to 3 streams of a pool of 5, shared by all writers, 1 or 2 events each.
				var appends []eventstore.StreamAppend
				var ids []string
				for k := range 1 + (w+i)%3 {
					stream := fmt.Sprintf("order-%d", (w+i+k)%5)
					var events []eventstore.EventData
					for j := range 1 + (w+k)%2 {
						id := fmt.Sprintf("order-w%d-a%d-s%d-e%d", w, i, k, j)
						events = append(events, ev(id))
						ids = append(ids, id)
					}
					appends = append(appends, one(stream, eventstore.Any(), events...))
				}
				res, err := s.Append(ctx, appends...)
				if err != nil {
					errc <- fmt.Errorf("writer %d append %d: %w", w, i, err)
					return
				}
				results[w] = append(results[w], landed{ids, res})
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}

	log := readAll(t, ctx, s, 37) // an odd page size, so pages end mid-append
	byPos := make(map[uint64]eventstore.RecordedEvent, len(log))
	for i, e := range log {
		if e.Position != uint64(i+1) {
			t.Fatalf("log entry %d has position %d, want %d (positions are gap-free from 1)", i, e.Position, i+1)
		}
		byPos[e.Position] = e
	}
	total := 0
	for w := range results {
		for _, l := range results[w] {
			total += len(l.ids)
			if n := l.res.LastPosition - l.res.FirstPosition + 1; n != uint64(len(l.ids)) {
				t.Fatalf("append of %d events reported positions %d..%d", len(l.ids), l.res.FirstPosition, l.res.LastPosition)
			}
			last := map[string]uint64{}
			for i, id := range l.ids {
				e := byPos[l.res.FirstPosition+uint64(i)]
				if e.ID != id {
					t.Fatalf("position %d holds %s, want %s (an append's events are consecutive and in order)", l.res.FirstPosition+uint64(i), e.ID, id)
				}
				last[e.Stream] = e.StreamVersion
			}
			if fmt.Sprint(last) != fmt.Sprint(l.res.Versions) {
				t.Fatalf("append at %d reported versions %v, the log says %v", l.res.FirstPosition, l.res.Versions, last)
			}
		}
	}
	if total != len(log) {
		t.Fatalf("log holds %d events, writers appended %d", len(log), total)
	}
	versions := map[string]uint64{}
	for _, e := range log {
		if e.StreamVersion != versions[e.Stream]+1 {
			t.Fatalf("position %d: %s version %d follows version %d", e.Position, e.Stream, e.StreamVersion, versions[e.Stream])
		}
		versions[e.Stream] = e.StreamVersion
	}
	if got := head(t, ctx, s); got != uint64(len(log)) {
		t.Fatalf("Head = %d, log holds %d events", got, len(log))
	}
}
