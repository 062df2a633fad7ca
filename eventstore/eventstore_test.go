package eventstore

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func TestExpectedVersionAllows(t *testing.T) {
	cases := []struct {
		e      ExpectedVersion
		actual uint64
		want   bool
	}{
		{NoStream(), 0, true},
		{NoStream(), 1, false},
		{Exact(0), 0, true},
		{Exact(3), 3, true},
		{Exact(3), 2, false},
		{Exact(3), 4, false},
		{Any(), 0, true},
		{Any(), 99, true},
		{ExpectedVersion{}, 0, false},
	}
	for _, c := range cases {
		if got := c.e.Allows(c.actual); got != c.want {
			t.Errorf("%s allows version %d: want %v, got %v", c.e, c.actual, c.want, got)
		}
	}
}

func TestValidateAppend(t *testing.T) {
	ok := EventData{ID: "e1", Type: "t.v1", Data: []byte("{}")}
	cases := []struct {
		name    string
		appends []StreamAppend
		wantErr string
	}{
		{"valid", []StreamAppend{{Stream: "s", Expected: Any(), Events: []EventData{ok}}}, ""},
		{"nothing", nil, "no streams"},
		{"unset expectation", []StreamAppend{{Stream: "s", Events: []EventData{ok}}}, "expected version not set"},
		{"empty stream", []StreamAppend{{Stream: "", Expected: Any(), Events: []EventData{ok}}}, "stream name"},
		{"long stream", []StreamAppend{{Stream: strings.Repeat("s", MaxStreamNameBytes+1), Expected: Any(), Events: []EventData{ok}}}, "stream name"},
		{"NUL in stream", []StreamAppend{{Stream: "a\x00b", Expected: Any(), Events: []EventData{ok}}}, "UTF-8 without NUL"},
		{"stream twice", []StreamAppend{{Stream: "s", Expected: Any(), Events: []EventData{ok}}, {Stream: "s", Expected: Any(), Events: []EventData{ok}}}, "named twice"},
		{"no events", []StreamAppend{{Stream: "s", Expected: Any()}}, "no events"},
		{"no id", []StreamAppend{{Stream: "s", Expected: Any(), Events: []EventData{{Type: "t"}}}}, "id must be"},
		{"no type", []StreamAppend{{Stream: "s", Expected: Any(), Events: []EventData{{ID: "e"}}}}, "type must be"},
		{"bad utf-8 actor", []StreamAppend{{Stream: "s", Expected: Any(), Events: []EventData{{ID: "e", Type: "t", Metadata: Metadata{Actor: "\xff"}}}}}, "UTF-8"},
		{"oversize data", []StreamAppend{{Stream: "s", Expected: Any(), Events: []EventData{{ID: "e", Type: "t", Data: make([]byte, MaxEventDataBytes+1)}}}}, "data is"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := ValidateAppend(c.appends)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("want no error, got %v", err)
			case c.wantErr != "" && (!errors.Is(err, ErrInvalidAppend) || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("want ErrInvalidAppend mentioning %q, got %v", c.wantErr, err)
			}
		})
	}
}

func chain(n int) []RecordedEvent {
	out := make([]RecordedEvent, n)
	var prev Hash
	for i := range out {
		e := &out[i]
		*e = RecordedEvent{Position: uint64(i + 1), Stream: "s", StreamVersion: uint64(i + 1), ID: "e", Type: "t",
			RecordedAt: RecordTime(time.Unix(int64(1_700_000_000+i), 123_456_789)), Data: []byte{byte(i)},
			Metadata: Metadata{Actor: "a", CorrelationID: "c"}, PrevHash: prev}
		e.Hash = ChainHash(prev, e)
		prev = e.Hash
	}
	return out
}

func TestChainVerifier(t *testing.T) {
	cases := []struct {
		name   string
		edit   func([]RecordedEvent) []RecordedEvent
		breaks uint64 // 0: verifies
	}{
		{"intact", func(e []RecordedEvent) []RecordedEvent { return e }, 0},
		{"data edited", func(e []RecordedEvent) []RecordedEvent { e[4].Data = []byte("x"); return e }, 5},
		{"actor edited", func(e []RecordedEvent) []RecordedEvent { e[2].Metadata.Actor = "mallory"; return e }, 3},
		{"time edited", func(e []RecordedEvent) []RecordedEvent {
			e[6].RecordedAt = e[6].RecordedAt.Add(time.Microsecond)
			return e
		}, 7},
		{"event deleted", func(e []RecordedEvent) []RecordedEvent { return append(e[:3], e[4:]...) }, 4},
		{"event re-hashed after edit", func(e []RecordedEvent) []RecordedEvent {
			e[1].Data = []byte("x")
			e[1].Hash = ChainHash(e[1].PrevHash, &e[1])
			return e
		}, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			events := c.edit(chain(10))
			v := NewChainVerifier(0, Hash{})
			var got uint64
			for i := range events {
				if err := v.Check(&events[i]); err != nil {
					var b *ChainBreak
					if !errors.As(err, &b) {
						t.Fatalf("want a *ChainBreak, got %v", err)
					}
					got = b.Position
					break
				}
			}
			if got != c.breaks {
				t.Fatalf("want the chain to break at position %d (0: not at all), got %d", c.breaks, got)
			}
		})
	}
}

func TestParseHash(t *testing.T) {
	h := chain(1)[0].Hash
	back, err := ParseHash(h.String())
	if err != nil || back != h {
		t.Fatalf("round trip of %s: got %s, %v", h, back, err)
	}
	for _, bad := range []string{"", "zz", h.String()[:10], h.String() + "00"} {
		if _, err := ParseHash(bad); err == nil {
			t.Errorf("ParseHash(%q): want an error", bad)
		}
	}
}

// lateLog imitates a backend whose positions become visible out of order: position 2 is
// committed after 3 and 4.
type lateLog struct {
	mu      sync.Mutex
	visible map[uint64]RecordedEvent
	reads   int
	signal  *Signal
}

func (l *lateLog) readAll(_ context.Context, after uint64, limit int) ([]RecordedEvent, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reads++
	var out []RecordedEvent
	for p := after + 1; len(out) < limit && p <= after+uint64(limit)+10; p++ {
		if e, ok := l.visible[p]; ok {
			out = append(out, e)
		}
	}
	return out, nil
}

func (l *lateLog) commit(e RecordedEvent) {
	l.mu.Lock()
	l.visible[e.Position] = e
	l.mu.Unlock()
	l.signal.Broadcast()
}

func (l *lateLog) readCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.reads
}

// positions collects what a subscription delivers.
type positions struct {
	mu  sync.Mutex
	got []uint64
}

func (p *positions) handle(_ context.Context, batch []RecordedEvent) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range batch {
		p.got = append(p.got, e.Position)
	}
	return nil
}

func (p *positions) list() []uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.got)
}

// The subscription tests run in a synctest bubble: time is the subject (poll intervals),
// so the fake clock makes "after many polls" and "before any poll" exact instead of a
// sleep that a loaded machine stretches.

func TestPollSubscriptionNeverSkipsALateCommit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const poll = 5 * time.Millisecond
		events := chain(6)
		log := &lateLog{visible: map[uint64]RecordedEvent{}, signal: NewSignal()}
		log.commit(events[0])
		log.commit(events[2]) // 3 and 4 visible before 2
		log.commit(events[3])
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var p positions
		done := make(chan error, 1)
		go func() {
			done <- PollSubscription{ReadAll: log.readAll, Signal: log.signal, PollInterval: poll}.Run(ctx, 0, 100, p.handle)
		}()
		// Twenty poll intervals with 2 still missing: every read sees 3 and 4 after the gap
		// and must hold them back.
		time.Sleep(20 * poll)
		synctest.Wait()
		if got := p.list(); !slices.Equal(got, []uint64{1}) {
			t.Fatalf("before position 2 is visible: want only [1] delivered, got %v", got)
		}
		if n := log.readCount(); n < 20 {
			t.Fatalf("the subscription read %d times in 20 poll intervals; the hold-back was not exercised", n)
		}
		log.commit(events[1])
		log.commit(events[4])
		log.commit(events[5])
		synctest.Wait()
		if got := p.list(); !slices.Equal(got, []uint64{1, 2, 3, 4, 5, 6}) {
			t.Fatalf("want positions 1..6 in order exactly once, got %v", got)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("subscription ended with %v, want context.Canceled", err)
		}
	})
}

// TestPollSubscriptionWakesOnSignal: a commit's Broadcast alone delivers it to an idle
// subscription, with no time passing, so the poll interval is never what delivers it.
func TestPollSubscriptionWakesOnSignal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		events := chain(3)
		log := &lateLog{visible: map[uint64]RecordedEvent{}, signal: NewSignal()}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var p positions
		done := make(chan error, 1)
		go func() {
			done <- PollSubscription{ReadAll: log.readAll, Signal: log.signal, PollInterval: time.Hour}.Run(ctx, 0, 100, p.handle)
		}()
		start := time.Now()
		for i, e := range events {
			synctest.Wait() // idle: blocked until a signal, the hour's poll, or cancel
			log.commit(e)
			synctest.Wait()
			if got := p.list(); len(got) != i+1 {
				t.Fatalf("after commit %d: delivered %v", i+1, got)
			}
		}
		if waited := time.Since(start); waited != 0 {
			t.Fatalf("deliveries took %v of the fake clock; only the wake-up should deliver them", waited)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("subscription ended with %v, want context.Canceled", err)
		}
	})
}

// TestPollSubscriptionStopsOnCancel: an idle subscription (waiting for a signal or a poll)
// ends as soon as its context does, without waiting for either.
func TestPollSubscriptionStopsOnCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &lateLog{visible: map[uint64]RecordedEvent{}, signal: NewSignal()}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			done <- PollSubscription{ReadAll: log.readAll, Signal: log.signal, PollInterval: time.Hour}.Run(ctx, 0, 10, func(context.Context, []RecordedEvent) error { return nil })
		}()
		synctest.Wait()
		if log.readCount() != 1 {
			t.Fatalf("want the subscription idle after its first read, it read %d times", log.readCount())
		}
		cancel()
		synctest.Wait()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("want context.Canceled, got %v", err)
			}
		default:
			t.Fatal("an idle subscription did not end when its context was cancelled")
		}
	})
}
