package postgres

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
)

// tailEvent is an event at position pos with a payload naming it.
func tailEvent(pos uint64) eventstore.RecordedEvent {
	return eventstore.RecordedEvent{Position: pos, Stream: "s", StreamVersion: pos, ID: fmt.Sprint("e", pos), Type: "t", Data: []byte(fmt.Sprint("data ", pos))}
}

func tailRun(first, last uint64) []eventstore.RecordedEvent {
	var out []eventstore.RecordedEvent
	for p := first; p <= last; p++ {
		out = append(out, tailEvent(p))
	}
	return out
}

func positions(evs []eventstore.RecordedEvent) []uint64 {
	out := make([]uint64, len(evs))
	for i, e := range evs {
		out[i] = e.Position
	}
	return out
}

// TestTailAnswersOnlyInsideItsRun drives the tail with appends and reads: it answers a read
// only when the read starts inside its one contiguous run, never past the run's end, never
// more than the limit, and forgets the run when an append does not continue it.
func TestTailAnswersOnlyInsideItsRun(t *testing.T) {
	type read struct {
		after uint64
		limit int
		want  []uint64 // nil: not answered (the database is asked)
	}
	cases := []struct {
		name  string
		adds  [][2]uint64 // runs of positions appended, in order
		reads []read
	}{
		{"empty", nil, []read{{0, 10, nil}, {5, 10, nil}}},
		{"one run", [][2]uint64{{1, 3}}, []read{
			{0, 10, []uint64{1, 2, 3}},
			{1, 10, []uint64{2, 3}},
			{2, 1, []uint64{3}},
			{0, 2, []uint64{1, 2}},
			{3, 10, nil}, // at the end: others may have appended
			{7, 10, nil},
			{0, 0, nil},
		}},
		{"runs that continue", [][2]uint64{{1, 2}, {3, 3}, {4, 6}}, []read{
			{0, 10, []uint64{1, 2, 3, 4, 5, 6}},
			{4, 10, []uint64{5, 6}},
		}},
		{"a gap starts a new run", [][2]uint64{{1, 3}, {6, 7}}, []read{
			{0, 10, nil}, // 1..3 are no longer held: 4 and 5 are unknown
			{3, 10, nil},
			{5, 10, []uint64{6, 7}},
			{6, 10, []uint64{7}},
		}},
		{"a run starting late", [][2]uint64{{100, 101}}, []read{
			{98, 10, nil},
			{99, 10, []uint64{100, 101}},
		}},
		{"the oldest are dropped past the bound", [][2]uint64{{1, tailEvents}, {tailEvents + 1, tailEvents + 3}}, []read{
			{0, 10, nil},
			{2, 10, nil},
			{3, 2, []uint64{4, 5}},
			{tailEvents, 10, []uint64{tailEvents + 1, tailEvents + 2, tailEvents + 3}},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var tl tail
			for _, a := range tc.adds {
				tl.add(tailRun(a[0], a[1]))
			}
			for _, r := range tc.reads {
				got, ok := tl.read(r.after, r.limit)
				switch {
				case r.want == nil && ok:
					t.Errorf("read after %d limit %d: answered %v, want the database asked", r.after, r.limit, positions(got))
				case r.want != nil && !ok:
					t.Errorf("read after %d limit %d: not answered, want %v", r.after, r.limit, r.want)
				case r.want != nil && !reflect.DeepEqual(positions(got), r.want):
					t.Errorf("read after %d limit %d: got %v, want %v", r.after, r.limit, positions(got), r.want)
				}
				for _, e := range got {
					if want := tailEvent(e.Position); !reflect.DeepEqual(e, want) {
						t.Errorf("event %d read back as %+v, want %+v", e.Position, e, want)
					}
				}
			}
		})
	}
}

// TestTailOwnsItsCopies: the caller's payload may be reused after Append, and a reader may
// keep (or scribble on) its batch while others read.
func TestTailOwnsItsCopies(t *testing.T) {
	var tl tail
	evs := tailRun(1, 2)
	tl.add(evs)
	evs[0].Data[0] = 'X'
	evs[1].Stream = "changed"
	first, _ := tl.read(0, 10)
	first[0].Stream = "mine"
	second, _ := tl.read(0, 10)
	if want := tailRun(1, 2); !reflect.DeepEqual(second, want) {
		t.Fatalf("after the caller and a reader changed their copies, the tail holds %+v, want %+v", second, want)
	}
}

// TestSubscriptionFromTailEqualsDatabase appends events of every shape (empty and large
// payloads, metadata, several streams, groups of requests) and checks that what a
// subscription is handed from the tail is exactly what the database returns for the same
// positions: a view built from either is the same view.
func TestSubscriptionFromTailEqualsDatabase(t *testing.T) {
	ctx := testContext(t)
	s := openStore(t, freshSchema(t))
	big := make([]byte, 64<<10)
	for i := range big {
		big[i] = byte(i)
	}
	payloads := [][]byte{nil, {}, []byte(`{"a":1}`), big}
	n := 0
	for round := range 3 {
		var appends []eventstore.StreamAppend
		for st := range 3 {
			var evs []eventstore.EventData
			for _, p := range payloads {
				n++
				evs = append(evs, eventstore.EventData{ID: fmt.Sprint("ev-", n), Type: "t.v1", Data: p,
					Metadata: eventstore.Metadata{CorrelationID: fmt.Sprint("c", round), CausationID: "k", Actor: "ü-actor",
						TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}})
			}
			appends = append(appends, eventstore.StreamAppend{Stream: fmt.Sprint("stream-", st), Expected: eventstore.Any(), Events: evs})
		}
		if _, err := s.Append(ctx, appends...); err != nil {
			t.Fatalf("append round %d: %v", round, err)
		}
	}
	fromTail, ok := s.tail.read(0, eventstore.MaxReadLimit)
	if !ok || len(fromTail) != n {
		t.Fatalf("the tail answered %d events (ok=%v) after %d appended, want all", len(fromTail), ok, n)
	}
	fromDB, err := s.ReadAll(ctx, 0, eventstore.MaxReadLimit)
	if err != nil {
		t.Fatal(err)
	}
	if len(fromDB) != n {
		t.Fatalf("the database returned %d events, want %d", len(fromDB), n)
	}
	for i := range fromDB {
		if !reflect.DeepEqual(fromTail[i], fromDB[i]) {
			t.Fatalf("position %d from the tail:\n%+v\nfrom the database:\n%+v", fromDB[i].Position, fromTail[i], fromDB[i])
		}
	}
	got := subscribeUntil(t, ctx, s, 0, uint64(n))
	if !reflect.DeepEqual(got, fromDB) {
		t.Fatalf("the subscription delivered %d events that differ from the database's %d", len(got), len(fromDB))
	}
}

// TestSubscriptionSeesOtherStoresAppends: two stores on one schema (two processes) append
// in turns; each one's tail holds only its own runs, and a subscription on either still
// gets every position in order, including those the other appended after its tail's end.
func TestSubscriptionSeesOtherStoresAppends(t *testing.T) {
	ctx := testContext(t)
	schema := freshSchema(t)
	a := openStore(t, schema)
	b := openStore(t, schema)
	a.startListener()
	waitForListener(t, ctx, superPool(t), a)
	appendOne := func(s *Store, id string) {
		t.Helper()
		if _, err := s.Append(ctx, eventstore.StreamAppend{Stream: "shared", Expected: eventstore.Any(),
			Events: []eventstore.EventData{{ID: id, Type: "t.v1", Data: []byte(id)}}}); err != nil {
			t.Fatalf("append %s: %v", id, err)
		}
	}
	// a: 1, 2; b: 3; a: 4 (a new run in a's tail); b: 5, 6.
	appendOne(a, "1")
	appendOne(a, "2")
	appendOne(b, "3")
	appendOne(a, "4")
	appendOne(b, "5")
	appendOne(b, "6")
	want, err := a.ReadAll(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Store{a, b} {
		if got := subscribeUntil(t, ctx, s, 0, 6); !reflect.DeepEqual(got, want) {
			t.Errorf("subscription delivered positions %v, want %v", positions(got), positions(want))
		}
	}
	// Past the end of a's tail (4), b's later appends come from the database once their
	// NOTIFY was heard, without waiting a poll interval.
	waitForAnnounced(t, a, 6)
	got, err := a.readFollowing(ctx, 3, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(positions(got), []uint64{4, 5, 6}) {
		t.Fatalf("read after 3 on the store whose tail ends at 4 returned %v, want [4 5 6]", positions(got))
	}
}

// waitForAnnounced waits until s's listener has heard a notification of position pos.
func waitForAnnounced(t *testing.T, s *Store, pos uint64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for s.announced.Load() < pos {
		if time.Now().After(deadline) {
			t.Fatalf("the listener never heard position %d (heard %d)", pos, s.announced.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// subscribeUntil subscribes after position after and returns every event delivered up to
// and including position last.
func subscribeUntil(t *testing.T, ctx context.Context, s *Store, after, last uint64) []eventstore.RecordedEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var got []eventstore.RecordedEvent
	done := fmt.Errorf("reached %d", last)
	err := s.Subscribe(ctx, after, 3, func(_ context.Context, batch []eventstore.RecordedEvent) error {
		got = append(got, batch...)
		if got[len(got)-1].Position >= last {
			return done
		}
		return nil
	})
	if err != done {
		t.Fatalf("subscription after %d ended with %v having delivered %v, want it to reach %d", after, err, positions(got), last)
	}
	return got
}

// TestNothingNewOnlyWhenEverythingKnownWasReadRecently: a subscriber is told "nothing new"
// without a query only when it has every position this store appended, every announced
// one and everything the last database read saw, and that read is recent; otherwise the
// database is asked.
func TestNothingNewOnlyWhenEverythingKnownWasReadRecently(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	const poll = 250 * time.Millisecond
	cases := []struct {
		name      string
		tailTo    uint64 // this store appended 1..tailTo (0: nothing)
		announced uint64
		checked   time.Duration // how long ago the last read reached the head (0: never)
		after     uint64
		want      bool
	}{
		{"at this store's head, read just now", 10, 10, time.Millisecond, 10, true},
		{"at the head, read 100ms ago", 10, 0, 100 * time.Millisecond, 10, true},
		{"at the head, last read half a poll interval ago", 10, 10, poll / 2, 10, false},
		{"never read the database", 10, 10, 0, 10, false},
		{"another process announced more", 10, 12, time.Millisecond, 10, false},
		{"behind this store's head", 10, 0, time.Millisecond, 9, false},
		{"at an announced head beyond the tail", 10, 12, time.Millisecond, 12, true},
		{"nothing known at all", 0, 0, time.Millisecond, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &Store{cfg: Config{PollInterval: poll}}
			if tc.tailTo > 0 {
				s.tail.add(tailRun(1, tc.tailTo))
			}
			s.announced.Store(tc.announced)
			if tc.checked > 0 {
				s.checkedAt.Store(now.Add(-tc.checked).UnixNano())
			}
			if got := s.nothingNew(tc.after, now); got != tc.want {
				t.Fatalf("nothingNew(after %d) = %v, want %v", tc.after, got, tc.want)
			}
		})
	}
}

// TestSubscriptionFindsUnannouncedAppends: a store that hears no NOTIFY at all (its
// listener is not running) still delivers another store's appends to its subscriber once
// the subscriber sits at this store's own head, by the poll that checks the database.
func TestSubscriptionFindsUnannouncedAppends(t *testing.T) {
	ctx := testContext(t)
	schema := freshSchema(t)
	a := openStore(t, schema, func(c *Config) { c.PollInterval = 20 * time.Millisecond })
	b := openStore(t, schema)
	appendOne := func(s *Store, id string) {
		t.Helper()
		if _, err := s.Append(ctx, eventstore.StreamAppend{Stream: "shared", Expected: eventstore.Any(),
			Events: []eventstore.EventData{{ID: id, Type: "t.v1", Data: []byte(id)}}}); err != nil {
			t.Fatalf("append %s: %v", id, err)
		}
	}
	appendOne(a, "1")
	appendOne(a, "2")
	// A subscriber's reads: 1..2, then it sits at a's head while b appends 3..4. a's
	// listener is not running (only Subscribe starts it), so nothing announces them: they
	// are found by the first read half a poll interval after the last database read.
	got, err := a.readFollowing(ctx, 0, 100)
	if err != nil || !reflect.DeepEqual(positions(got), []uint64{1, 2}) {
		t.Fatalf("first read: %v, %v; want [1 2]", positions(got), err)
	}
	appendOne(b, "3")
	appendOne(b, "4")
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err = a.readFollowing(ctx, 2, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("another store's appends, never announced, were not read within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !reflect.DeepEqual(positions(got), []uint64{3, 4}) {
		t.Fatalf("read after 2: %v, want [3 4]", positions(got))
	}
}
