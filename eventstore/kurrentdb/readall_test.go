package kurrentdb

import (
	"errors"
	"testing"

	"github.com/securepay/securepay/eventstore"
)

func entriesOf(refs ...logEntry) []logEntry {
	for i := range refs {
		refs[i].Position = uint64(i + 11)
		refs[i].Hash = eventstore.Hash{byte(i + 1)}
	}
	return refs
}

func TestGroupRuns(t *testing.T) {
	entries := entriesOf(
		logEntry{Stream: "a", Version: 3}, logEntry{Stream: "b", Version: 1},
		logEntry{Stream: "a", Version: 4}, logEntry{Stream: "c", Version: 9}, logEntry{Stream: "a", Version: 5},
	)
	runs, err := groupRuns(entries)
	if err != nil {
		t.Fatalf("groupRuns: %v", err)
	}
	want := []run{{stream: "a", first: 3, last: 5}, {stream: "b", first: 1, last: 1}, {stream: "c", first: 9, last: 9}}
	if len(runs) != len(want) {
		t.Fatalf("%d runs, want %d", len(runs), len(want))
	}
	for i, w := range want {
		if runs[i].stream != w.stream || runs[i].first != w.first || runs[i].last != w.last {
			t.Fatalf("run %d = %s %d..%d, want %s %d..%d", i, runs[i].stream, runs[i].first, runs[i].last, w.stream, w.first, w.last)
		}
	}
}

func TestGroupRunsReportsAGapAtItsPosition(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []logEntry
		wantPos uint64
	}{
		{"skipped version", entriesOf(logEntry{Stream: "a", Version: 1}, logEntry{Stream: "b", Version: 1}, logEntry{Stream: "a", Version: 3}), 13},
		{"repeated version", entriesOf(logEntry{Stream: "a", Version: 1}, logEntry{Stream: "a", Version: 1}), 12},
		{"version going back", entriesOf(logEntry{Stream: "a", Version: 5}, logEntry{Stream: "a", Version: 4}), 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := groupRuns(tc.entries)
			var br *eventstore.ChainBreak
			if !errors.As(err, &br) || br.Position != tc.wantPos {
				t.Fatalf("groupRuns = %v, want a *ChainBreak at position %d", err, tc.wantPos)
			}
		})
	}
}

// storedCopy is an event as its own stream returns it, with its own idea of position and
// hash, which assemble must not trust.
func storedCopy(stream string, version uint64) eventstore.RecordedEvent {
	return eventstore.RecordedEvent{Stream: stream, StreamVersion: version, ID: stream, Type: "t", Position: 999, Hash: eventstore.Hash{0xee}, PrevHash: eventstore.Hash{0xdd}}
}

func TestAssembleTakesPositionAndHashFromTheLog(t *testing.T) {
	entries := entriesOf(logEntry{Stream: "a", Version: 1}, logEntry{Stream: "b", Version: 7}, logEntry{Stream: "a", Version: 2})
	runs, err := groupRuns(entries)
	if err != nil {
		t.Fatal(err)
	}
	runs[0].events = []eventstore.RecordedEvent{storedCopy("a", 1), storedCopy("a", 2)}
	runs[1].events = []eventstore.RecordedEvent{storedCopy("b", 7)}
	got, err := assemble(entries, runs)
	if err != nil {
		t.Fatalf("assemble: %v", err)
	}
	for i, e := range entries {
		g := got[i]
		if g.Position != e.Position || g.Hash != e.Hash || g.Stream != e.Stream || g.StreamVersion != e.Version {
			t.Fatalf("event %d = %s@%d pos %d hash %s, want %s@%d pos %d hash %s", i, g.Stream, g.StreamVersion, g.Position, g.Hash, e.Stream, e.Version, e.Position, e.Hash)
		}
		if g.PrevHash != (eventstore.Hash{0xdd}) {
			t.Fatalf("event %d lost its stored prev hash", i)
		}
	}
}

func TestAssembleReportsMissingEventsAtTheirPosition(t *testing.T) {
	entries := entriesOf(logEntry{Stream: "a", Version: 1}, logEntry{Stream: "a", Version: 2}, logEntry{Stream: "b", Version: 1})
	for _, tc := range []struct {
		name    string
		a, b    []eventstore.RecordedEvent
		wantPos uint64
	}{
		{"stream shorter than the log says", []eventstore.RecordedEvent{storedCopy("a", 1)}, []eventstore.RecordedEvent{storedCopy("b", 1)}, 12},
		{"stream missing", []eventstore.RecordedEvent{storedCopy("a", 1), storedCopy("a", 2)}, nil, 13},
		{"stream returned other versions", []eventstore.RecordedEvent{storedCopy("a", 2), storedCopy("a", 3)}, []eventstore.RecordedEvent{storedCopy("b", 1)}, 11},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runs, err := groupRuns(entries)
			if err != nil {
				t.Fatal(err)
			}
			runs[0].events, runs[1].events = tc.a, tc.b
			_, err = assemble(entries, runs)
			var br *eventstore.ChainBreak
			if !errors.As(err, &br) || br.Position != tc.wantPos {
				t.Fatalf("assemble = %v, want a *ChainBreak at position %d", err, tc.wantPos)
			}
		})
	}
}
