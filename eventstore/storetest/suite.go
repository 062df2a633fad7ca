package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
)

// testTimeout bounds every subtest's context, so a backend that hangs fails with a message
// instead of eating the whole `go test` timeout. It is generous because it is not a
// performance bound: under -race on a 2-core machine shared with the rest of the test
// command, the KurrentDB protocol model's 9,999-event append took 41 s.
const testTimeout = 2 * time.Minute

// slowPollInterval and wakeDeadline: a subscription test gives a store's wake-up
// wakeDeadline to deliver a commit, a generous bound for a loaded machine, on a store that
// polls only every slowPollInterval (the longest interval every backend accepts). The gap
// between the two is what makes a delivery in time proof of a wake-up.
const (
	slowPollInterval = time.Minute
	wakeDeadline     = 10 * time.Second
)

// Run runs the whole conformance suite against one backend. Every subtest gets a fresh
// store from h.New, or from h.NewWithPollInterval where it tests wake-ups; the durability
// subtests also need h.NewLocation and h.Open.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.New == nil || h.NewWithPollInterval == nil {
		t.Fatal("storetest: Harness.New and Harness.NewWithPollInterval are required")
	}
	type test struct {
		name string
		fn   func(t *testing.T, h Harness)
	}
	tests := []test{
		{"RoundTrip", testRoundTrip},
		{"ExpectedVersion", testExpectedVersion},
		{"InvalidAppends", testInvalidAppends},
		{"MultiStreamAtomicity", testMultiStreamAtomicity},
		{"RacingWriters", testRacingWriters},
		{"GlobalOrder", testGlobalOrder},
		{"Paging", testPaging},
		{"SubscribeConcurrentWriters", testSubscribeConcurrentWriters},
		{"SubscribeEnds", testSubscribeEnds},
		{"SubscribeLive", testSubscribeLive},
		{"HashChain", testHashChain},
		{"Snapshots", testSnapshots},
	}
	if h.Tamper != nil {
		tests = append(tests, test{"Tamper", testTamper})
	} else {
		t.Log("storetest: Harness.Tamper is nil, the tamper-detection test does not run for this backend")
	}
	if h.NewLocation != nil && h.Open != nil {
		tests = append(tests,
			test{"Reopen", testReopen},
			test{"CloseWhileAppending", testCloseWhileAppending},
			test{"CrashKill9", testCrash},
		)
	} else {
		t.Log("storetest: Harness.NewLocation or Open is nil, the reopen and kill -9 tests do not run for this backend")
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, h) })
	}
}

// fresh returns a new empty store from the harness, closed when the test ends.
func fresh(t *testing.T, h Harness) eventstore.Store {
	t.Helper()
	return closing(t, h.New(t))
}

// freshSlowPolling returns a new empty store whose subscriptions poll only every
// slowPollInterval, closed when the test ends.
func freshSlowPolling(t *testing.T, h Harness) eventstore.Store {
	t.Helper()
	return closing(t, h.NewWithPollInterval(t, slowPollInterval))
}

func closing(t *testing.T, s eventstore.Store) eventstore.Store {
	t.Helper()
	if s == nil {
		t.Fatal("storetest: the harness returned a nil store")
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, eventstore.ErrClosed) {
			t.Errorf("close store: %v", err)
		}
	})
	return s
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// ev builds an event whose id is unique within the test and whose payload names it.
func ev(id string) eventstore.EventData {
	return eventstore.EventData{
		ID:   id,
		Type: "storetest.thing.happened.v1",
		Data: []byte(`{"id":"` + id + `"}`),
		Metadata: eventstore.Metadata{
			CorrelationID: "corr-" + id,
			CausationID:   "cause-" + id,
			Actor:         "spiffe://securepay.dev/storetest",
		},
	}
}

func evs(prefix string, n int) []eventstore.EventData {
	out := make([]eventstore.EventData, n)
	for i := range out {
		out[i] = ev(fmt.Sprintf("%s-%d", prefix, i+1))
	}
	return out
}

func one(stream string, exp eventstore.ExpectedVersion, events ...eventstore.EventData) eventstore.StreamAppend {
	return eventstore.StreamAppend{Stream: stream, Expected: exp, Events: events}
}

// mustAppend appends and fails the test on error.
func mustAppend(t *testing.T, ctx context.Context, s eventstore.Store, appends ...eventstore.StreamAppend) eventstore.AppendResult {
	t.Helper()
	res, err := s.Append(ctx, appends...)
	if err != nil {
		t.Fatalf("append %s: %v", describe(appends), err)
	}
	return res
}

func describe(appends []eventstore.StreamAppend) string {
	var b bytes.Buffer
	for i, a := range appends {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s(%s, %d events)", a.Stream, a.Expected, len(a.Events))
	}
	return b.String()
}

// readAll reads the whole log in pages of limit events.
func readAll(t *testing.T, ctx context.Context, s eventstore.Store, limit int) []eventstore.RecordedEvent {
	t.Helper()
	var out []eventstore.RecordedEvent
	var after uint64
	for range 1_000_000 { // bounded: no suite log gets anywhere near this many pages
		page, err := s.ReadAll(ctx, after, limit)
		if err != nil {
			t.Fatalf("ReadAll after %d limit %d: %v", after, limit, err)
		}
		if len(page) == 0 {
			return out
		}
		out = append(out, page...)
		after = page[len(page)-1].Position
	}
	t.Fatal("ReadAll never reached the end of the log")
	return nil
}

func readStream(t *testing.T, ctx context.Context, s eventstore.Store, stream string) []eventstore.RecordedEvent {
	t.Helper()
	var out []eventstore.RecordedEvent
	var after uint64
	for range 1_000_000 {
		page, err := s.ReadStream(ctx, stream, after, 1000)
		if err != nil {
			t.Fatalf("ReadStream %s after %d: %v", stream, after, err)
		}
		if len(page) == 0 {
			return out
		}
		out = append(out, page...)
		after = page[len(page)-1].StreamVersion
	}
	t.Fatal("ReadStream never reached the end of the stream")
	return nil
}

func head(t *testing.T, ctx context.Context, s eventstore.Store) uint64 {
	t.Helper()
	h, err := s.Head(ctx)
	if err != nil {
		t.Fatalf("Head: %v", err)
	}
	return h
}

func sameEvent(want eventstore.EventData, got eventstore.RecordedEvent) error {
	switch {
	case got.ID != want.ID:
		return fmt.Errorf("id %q, want %q", got.ID, want.ID)
	case got.Type != want.Type:
		return fmt.Errorf("event %s: type %q, want %q", want.ID, got.Type, want.Type)
	case !bytes.Equal(got.Data, want.Data):
		return fmt.Errorf("event %s: data %q, want %q", want.ID, got.Data, want.Data)
	case got.Metadata != want.Metadata:
		return fmt.Errorf("event %s: metadata %+v, want %+v", want.ID, got.Metadata, want.Metadata)
	}
	return nil
}

func testRoundTrip(t *testing.T, h Harness) {
	ctx := testContext(t)
	s := fresh(t, h)

	if got := head(t, ctx, s); got != 0 {
		t.Fatalf("Head of an empty store = %d, want 0", got)
	}
	full := eventstore.EventData{
		ID:   "round-trip-1",
		Type: "storetest.round.trip.v1",
		// Every byte value, so a backend that treats data as text is caught.
		Data: func() []byte {
			b := make([]byte, 256)
			for i := range b {
				b[i] = byte(i)
			}
			return b
		}(),
		Metadata: eventstore.Metadata{
			CorrelationID: "corr-ü-1",
			CausationID:   "cause-1",
			Actor:         "spiffe://securepay.dev/ns/test/sa/storetest",
			TraceParent:   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		},
	}
	empty := eventstore.EventData{ID: "round-trip-2", Type: "storetest.empty.v1"}
	big := eventstore.EventData{ID: "round-trip-3", Type: "storetest.big.v1", Data: bytes.Repeat([]byte{0xA5}, eventstore.MaxEventDataBytes)}

	res := mustAppend(t, ctx, s, one("rt-1", eventstore.NoStream(), full, empty, big))
	if res.FirstPosition != 1 || res.LastPosition != 3 {
		t.Fatalf("append result positions %d..%d, want 1..3", res.FirstPosition, res.LastPosition)
	}
	if v := res.Versions["rt-1"]; v != 3 || len(res.Versions) != 1 {
		t.Fatalf("append result versions %v, want map[rt-1:3]", res.Versions)
	}

	want := []eventstore.EventData{full, empty, big}
	for _, read := range []struct {
		name   string
		events []eventstore.RecordedEvent
	}{
		{"ReadStream", readStream(t, ctx, s, "rt-1")},
		{"ReadAll", readAll(t, ctx, s, 100)},
	} {
		if len(read.events) != len(want) {
			t.Fatalf("%s returned %d events, want %d", read.name, len(read.events), len(want))
		}
		var prev eventstore.Hash
		for i, got := range read.events {
			if err := sameEvent(want[i], got); err != nil {
				t.Errorf("%s: %v", read.name, err)
			}
			if got.Stream != "rt-1" || got.StreamVersion != uint64(i+1) || got.Position != uint64(i+1) {
				t.Errorf("%s event %d: stream %q version %d position %d, want rt-1 version %d position %d",
					read.name, i, got.Stream, got.StreamVersion, got.Position, i+1, i+1)
			}
			if got.RecordedAt.Location() != time.UTC {
				t.Errorf("%s event %d: RecordedAt %v is not in UTC", read.name, i, got.RecordedAt)
			}
			if !got.RecordedAt.Equal(got.RecordedAt.Truncate(time.Microsecond)) {
				t.Errorf("%s event %d: RecordedAt %v has sub-microsecond precision", read.name, i, got.RecordedAt)
			}
			if got.RecordedAt.IsZero() {
				t.Errorf("%s event %d: RecordedAt is not set", read.name, i)
			}
			if got.PrevHash != prev {
				t.Errorf("%s event %d: PrevHash %s, want %s", read.name, i, got.PrevHash, prev)
			}
			if h := eventstore.ChainHash(got.PrevHash, &got); got.Hash != h {
				t.Errorf("%s event %d: Hash %s, want ChainHash %s", read.name, i, got.Hash, h)
			}
			prev = got.Hash
		}
	}
	if byStream, byLog := readStream(t, ctx, s, "rt-1"), readAll(t, ctx, s, 100); !reflect.DeepEqual(byStream, byLog) {
		t.Errorf("ReadStream and ReadAll disagree about the same events:\n%+v\n%+v", byStream, byLog)
	}
	if got := head(t, ctx, s); got != 3 {
		t.Fatalf("Head = %d after 3 events, want 3", got)
	}
	if got, err := s.ReadStream(ctx, "no-such-stream", 0, 10); err != nil || len(got) != 0 {
		t.Fatalf("ReadStream of an unknown stream = %d events, %v; want none, nil", len(got), err)
	}
}

func testExpectedVersion(t *testing.T, h Harness) {
	ctx := testContext(t)
	s := fresh(t, h)

	// Steps run in order against one store; each says what it expects.
	steps := []struct {
		name        string
		expected    eventstore.ExpectedVersion
		wantVersion uint64 // stream version after a successful append
		wantErr     error  // nil, ErrConflict or ErrInvalidAppend
		wantActual  uint64 // ConflictError.Actual when wantErr is ErrConflict
	}{
		{"unset is refused on a new stream", eventstore.ExpectedVersion{}, 0, eventstore.ErrInvalidAppend, 0},
		{"exact on a new stream conflicts", eventstore.Exact(1), 0, eventstore.ErrConflict, 0},
		{"no stream creates it", eventstore.NoStream(), 1, nil, 0},
		{"no stream again conflicts", eventstore.NoStream(), 0, eventstore.ErrConflict, 1},
		{"exact 0 means no stream", eventstore.Exact(0), 0, eventstore.ErrConflict, 1},
		{"exact current version", eventstore.Exact(1), 2, nil, 0},
		{"exact stale version", eventstore.Exact(1), 0, eventstore.ErrConflict, 2},
		{"exact future version", eventstore.Exact(5), 0, eventstore.ErrConflict, 2},
		{"any appends", eventstore.Any(), 3, nil, 0},
		{"unset is refused on an existing stream", eventstore.ExpectedVersion{}, 0, eventstore.ErrInvalidAppend, 0},
		{"exact after any", eventstore.Exact(3), 4, nil, 0},
	}
	var version uint64
	for i, st := range steps {
		res, err := s.Append(ctx, one("ev-1", st.expected, ev(fmt.Sprintf("ev-%d", i))))
		switch {
		case st.wantErr == nil && err != nil:
			t.Fatalf("step %q: append failed: %v", st.name, err)
		case st.wantErr == nil:
			if res.Versions["ev-1"] != st.wantVersion {
				t.Fatalf("step %q: version after append %d, want %d", st.name, res.Versions["ev-1"], st.wantVersion)
			}
			version = st.wantVersion
		case !errors.Is(err, st.wantErr):
			t.Fatalf("step %q: err = %v, want %v", st.name, err, st.wantErr)
		case st.wantErr == eventstore.ErrConflict:
			var ce *eventstore.ConflictError
			if !errors.As(err, &ce) {
				t.Fatalf("step %q: conflict %v is not a *ConflictError", st.name, err)
			}
			if ce.Stream != "ev-1" || ce.Actual != st.wantActual || ce.Expected != st.expected {
				t.Fatalf("step %q: ConflictError{%q, %s, %d}, want {ev-1, %s, %d}", st.name, ce.Stream, ce.Expected, ce.Actual, st.expected, st.wantActual)
			}
		}
		if got := readStream(t, ctx, s, "ev-1"); uint64(len(got)) != version {
			t.Fatalf("step %q: stream holds %d events, want %d", st.name, len(got), version)
		}
	}
}
