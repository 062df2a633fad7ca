package kurrentdb

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/storetest"
)

// The tests in this file run the store against fakeKurrent, an in-process model of the
// KurrentDB protocol (see its comment): they check this package's logic through the real
// client library, NOT KurrentDB itself.

func openOnFake(t *testing.T, url, namespace string) *Store {
	t.Helper()
	s, err := openNamespace(url, namespace)
	if err != nil {
		t.Fatalf("open store on the fake server: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, eventstore.ErrClosed) {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

func TestConformanceAgainstProtocolModel(t *testing.T) {
	type placed struct {
		f  *fakeKurrent
		ns string
	}
	var mu sync.Mutex
	where := map[eventstore.Store]placed{} // so Tamper can reach a store's server
	newStore := func(tb testing.TB, poll time.Duration) eventstore.Store {
		f, url := startFakeKurrent(tb)
		ns := newNamespace(tb)
		s, err := openNamespacePolling(url, ns, poll)
		if err != nil {
			tb.Fatalf("open store on the fake server: %v", err)
		}
		mu.Lock()
		where[s] = placed{f, ns}
		mu.Unlock()
		return s
	}
	storetest.Run(t, storetest.Harness{
		New:                 func(tb testing.TB) eventstore.Store { return newStore(tb, 0) },
		NewWithPollInterval: newStore,
		// Tamper edits the payload of the user-stream event the log names at position, on
		// the server, leaving its metadata (hashes included) and the log entry untouched.
		Tamper: func(tb testing.TB, s eventstore.Store, position uint64) {
			mu.Lock()
			p, ok := where[s]
			mu.Unlock()
			if !ok {
				tb.Fatalf("tamper: store %p was not made by this harness", s)
			}
			p.f.mu.Lock()
			defer p.f.mu.Unlock()
			logEvs := p.f.streams[p.ns+logStreamName]
			if position == 0 || position > uint64(len(logEvs)) {
				tb.Fatalf("tamper: position %d is not in the log (%d entries)", position, len(logEvs))
			}
			entry, err := decodeLogEntry(logEvs[position-1].data, position-1)
			if err != nil {
				tb.Fatalf("tamper: %v", err)
			}
			evs := p.f.streams[p.ns+entry.Stream]
			e := &evs[entry.Version-1]
			e.data = append(append([]byte(nil), e.data...), []byte(" (edited)")...)
		},
		NewLocation: func(tb testing.TB) string {
			_, url := startFakeKurrent(tb)
			return fakeLocation(url, newNamespace(tb))
		},
		Open: func(location string) (eventstore.Store, error) { return openFakeLocation(location) },
	})
}

func evAt(id string) eventstore.EventData {
	return eventstore.EventData{ID: id, Type: "model.test.v1", Data: []byte(id)}
}

// verifyLog reads the whole log, checks the chain and returns it.
func verifyLog(t *testing.T, ctx context.Context, s eventstore.Store) []eventstore.RecordedEvent {
	t.Helper()
	n, err := eventstore.VerifyChain(ctx, s, 7, nil)
	if err != nil {
		t.Fatalf("VerifyChain after %d events: %v", n, err)
	}
	var all []eventstore.RecordedEvent
	for after := uint64(0); ; {
		page, err := s.ReadAll(ctx, after, 100)
		if err != nil {
			t.Fatalf("ReadAll after %d: %v", after, err)
		}
		if len(page) == 0 {
			break
		}
		all = append(all, page...)
		after = page[len(page)-1].Position
	}
	if uint64(len(all)) != n {
		t.Fatalf("ReadAll returned %d events, VerifyChain verified %d", len(all), n)
	}
	return all
}

func TestTwoProcessesShareOneGapFreeLog(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	_, url := startFakeKurrent(t)
	ns := newNamespace(t)
	stores := []*Store{openOnFake(t, url, ns), openOnFake(t, url, ns)} // two clients: two "processes"
	const writers, perWriter = 6, 15
	type ack struct {
		id          string
		first, last uint64
	}
	var mu sync.Mutex
	var acks []ack
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			s := stores[w%2]
			for i := range perWriter {
				id := fmt.Sprintf("w%d-%d", w, i)
				res, err := s.Append(ctx,
					eventstore.StreamAppend{Stream: fmt.Sprintf("shared-%d", i%3), Expected: eventstore.Any(), Events: []eventstore.EventData{evAt(id + "-a")}},
					eventstore.StreamAppend{Stream: fmt.Sprintf("own-%d", w), Expected: eventstore.Exact(uint64(i)), Events: []eventstore.EventData{evAt(id + "-b")}},
				)
				if err != nil {
					errs <- fmt.Errorf("writer %d append %d: %w", w, i, err)
					return
				}
				mu.Lock()
				acks = append(acks, ack{id, res.FirstPosition, res.LastPosition})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	all := verifyLog(t, ctx, stores[0])
	if len(all) != 2*writers*perWriter {
		t.Fatalf("log holds %d events, want %d", len(all), 2*writers*perWriter)
	}
	for _, a := range acks {
		if a.last != a.first+1 || all[a.first-1].ID != a.id+"-a" || all[a.last-1].ID != a.id+"-b" {
			t.Fatalf("append %s acknowledged at %d..%d, the log holds %s, %s there", a.id, a.first, a.last, all[a.first-1].ID, all[a.last-1].ID)
		}
	}
	// Both processes read the same log, and each stream reads back with the log's view.
	other := verifyLog(t, ctx, stores[1])
	for i := range all {
		if all[i].Hash != other[i].Hash {
			t.Fatalf("the two stores disagree at position %d", i+1)
		}
	}
	for _, e := range all {
		got, err := stores[1].ReadStream(ctx, e.Stream, e.StreamVersion-1, 1)
		if err != nil || len(got) != 1 || got[0].Position != e.Position || got[0].Hash != e.Hash || got[0].PrevHash != e.PrevHash {
			t.Fatalf("ReadStream %s@%d = %+v, %v; want the event at position %d", e.Stream, e.StreamVersion, got, err, e.Position)
		}
	}
}

func TestUnknownOutcomeIsSettledThroughTheLogSlot(t *testing.T) {
	cases := []struct {
		name            string
		before, after   int32 // faults injected before / after the server commits
		wantErr         error
		wantSessions    int64
		wantEventsInLog int
	}{
		{"committed but the answer was lost", 0, 1, nil, 1, 1},
		{"lost before commit, then resent", 1, 0, nil, 2, 1},
		{"lost before and after commit", 2, 1, nil, 3, 1},
		{"never reaches the server", int32(DefaultMaxResends + 1), 0, ErrOutcomeUnknown, int64(DefaultMaxResends + 1), 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			f, url := startFakeKurrent(t)
			s := openOnFake(t, url, newNamespace(t))
			f.failBeforeCommit.Store(tc.before)
			f.failAfterCommit.Store(tc.after)
			res, err := s.Append(ctx, eventstore.StreamAppend{Stream: "acct", Expected: eventstore.NoStream(), Events: []eventstore.EventData{evAt("e1")}})
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("Append err = %v, want %v", err, tc.wantErr)
			}
			if got := f.appendSessions.Load(); got != tc.wantSessions {
				t.Fatalf("server received %d MultiStreamAppend requests, want %d", got, tc.wantSessions)
			}
			all := verifyLog(t, ctx, s)
			if len(all) != tc.wantEventsInLog {
				t.Fatalf("log holds %d events, want %d (never a duplicate)", len(all), tc.wantEventsInLog)
			}
			if tc.wantErr == nil && (res.FirstPosition != 1 || res.Versions["acct"] != 1) {
				t.Fatalf("result %+v, want position 1, version 1", res)
			}
		})
	}
}

func TestConflictNamesTheFirstFailingStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	_, url := startFakeKurrent(t)
	s := openOnFake(t, url, newNamespace(t))
	for _, st := range []string{"a", "b", "c"} {
		if _, err := s.Append(ctx, eventstore.StreamAppend{Stream: st, Expected: eventstore.NoStream(), Events: []eventstore.EventData{evAt(st + "1")}}); err != nil {
			t.Fatalf("seed %s: %v", st, err)
		}
	}
	// b and c both fail; the model reports the last failing stream (c), the contract wants b.
	_, err := s.Append(ctx,
		eventstore.StreamAppend{Stream: "a", Expected: eventstore.Exact(1), Events: []eventstore.EventData{evAt("a2")}},
		eventstore.StreamAppend{Stream: "b", Expected: eventstore.Exact(7), Events: []eventstore.EventData{evAt("b2")}},
		eventstore.StreamAppend{Stream: "c", Expected: eventstore.NoStream(), Events: []eventstore.EventData{evAt("c2")}},
	)
	var ce *eventstore.ConflictError
	if !errors.As(err, &ce) || !errors.Is(err, eventstore.ErrConflict) {
		t.Fatalf("err = %v, want a *ConflictError", err)
	}
	if ce.Stream != "b" || ce.Actual != 1 || ce.Expected != eventstore.Exact(7) {
		t.Fatalf("ConflictError{%s, %s, %d}, want {b, version 7, 1}", ce.Stream, ce.Expected, ce.Actual)
	}
	if got := verifyLog(t, ctx, s); len(got) != 3 {
		t.Fatalf("log holds %d events after a refused append, want 3", len(got))
	}
}

func TestStaleTipAndPinnedAnyAreRetried(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	f, url := startFakeKurrent(t)
	ns := newNamespace(t)
	p1, p2 := openOnFake(t, url, ns), openOnFake(t, url, ns)
	for i, s := range []*Store{p1, p2, p1, p2, p1} {
		// Each store's cached tip is stale every other time, so the log-stream conflict path
		// runs; Any is pinned to a version read fresh each attempt.
		if _, err := s.Append(ctx, eventstore.StreamAppend{Stream: "hot", Expected: eventstore.Any(), Events: []eventstore.EventData{evAt(fmt.Sprintf("h%d", i))}}); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	all := verifyLog(t, ctx, p2)
	for i, e := range all {
		if e.StreamVersion != uint64(i+1) || e.ID != fmt.Sprintf("h%d", i) {
			t.Fatalf("position %d holds %s@%d (%s), want hot@%d (h%d)", i+1, e.Stream, e.StreamVersion, e.ID, i+1, i)
		}
	}
	if got := f.appendSessions.Load(); got < 7 {
		t.Fatalf("server saw %d MultiStreamAppend requests; with stale tips at least 7 were expected, so the retry path did not run", got)
	}
}

func TestSnapshotsAgainstProtocolModel(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	f, url := startFakeKurrent(t)
	ns := newNamespace(t)
	s := openOnFake(t, url, ns)
	for _, v := range []uint64{3, 8, 5} {
		if err := s.SaveSnapshot(ctx, eventstore.Snapshot{Stream: "acct", Version: v, Schema: "acct.v1", State: []byte(fmt.Sprint(v))}); err != nil {
			t.Fatalf("save version %d: %v", v, err)
		}
	}
	got, ok, err := s.LoadSnapshot(ctx, "acct")
	if err != nil || !ok || got.Version != 8 || string(got.State) != "8" {
		t.Fatalf("LoadSnapshot = %+v, %v, %v; want version 8", got, ok, err)
	}
	if n := len(f.stream(ns + snapshotStreamPrefix + "acct")); n != 2 {
		t.Fatalf("snapshot stream holds %d events, want 2 (the lower version 5 is not written)", n)
	}
	if n := len(f.stream("$$" + ns + snapshotStreamPrefix + "acct")); n != 1 {
		t.Fatalf("snapshot stream metadata written %d times, want once", n)
	}
}

func TestSubscriberIsWokenByAnotherProcessCommit(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	_, url := startFakeKurrent(t)
	ns := newNamespace(t)
	writer := openOnFake(t, url, ns)
	if _, err := writer.Append(ctx, eventstore.StreamAppend{Stream: "s", Expected: eventstore.NoStream(), Events: []eventstore.EventData{evAt("seed")}}); err != nil {
		t.Fatalf("seed append: %v", err)
	}
	// Polling every minute: only the log-stream watch can deliver within the test's time.
	reader, err := Open(ctx, Config{URL: url, Namespace: ns, PollInterval: MaxPollInterval})
	if err != nil {
		t.Fatalf("open reader: %v", err)
	}
	defer func() {
		if err := reader.Close(); err != nil {
			t.Errorf("close reader: %v", err)
		}
	}()
	got := make(chan eventstore.RecordedEvent, 10)
	subCtx, stop := context.WithCancel(ctx)
	subDone := make(chan error, 1)
	go func() {
		subDone <- reader.Subscribe(subCtx, 0, 10, func(_ context.Context, batch []eventstore.RecordedEvent) error {
			for _, e := range batch {
				got <- e
			}
			return nil
		})
	}()
	// The seed's delivery shows the subscription has read the log once and is now waiting.
	select {
	case e := <-got:
		if e.ID != "seed" {
			t.Fatalf("first delivery %s, want the seed", e.ID)
		}
	case <-ctx.Done():
		t.Fatal("the seed event was never delivered")
	}
	// The watch subscribes from the log's end, so a commit made before it is established
	// wakes nobody; commit once a second until a delivery shows the watch works. Each
	// commit is far inside the one-minute poll interval.
	var first eventstore.RecordedEvent
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	for i := 0; ; i++ {
		if _, err := writer.Append(ctx, eventstore.StreamAppend{Stream: "s", Expected: eventstore.Exact(uint64(i + 1)), Events: []eventstore.EventData{evAt(fmt.Sprintf("x%d", i))}}); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		select {
		case first = <-got:
		case <-ticker.C:
			continue
		case <-ctx.Done():
			t.Fatal("no commit of the other process was delivered within 30s (poll interval is a minute): the log-stream watch did not wake the subscriber")
		}
		break
	}
	if first.Position != 2 || first.ID != "x0" {
		t.Fatalf("first live delivery is %s at %d, want x0 at 2", first.ID, first.Position)
	}
	stop()
	if err := <-subDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe returned %v after its context was cancelled, want context.Canceled", err)
	}
}
