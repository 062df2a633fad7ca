package kurrentdb

import (
	"bytes"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	kdb "github.com/kurrent-io/KurrentDB-Client-Go/kurrentdb"

	"github.com/securepay/securepay/eventstore"
)

// seqIDs returns a deterministic UUID source, so tests can tell every id apart.
func seqIDs() func() uuid.UUID {
	var n uint64
	return func() uuid.UUID {
		n++
		var u uuid.UUID
		for i := range 8 {
			u[15-i] = byte(n >> (8 * i))
		}
		return u
	}
}

func data(stream string, n int) []eventstore.EventData {
	out := make([]eventstore.EventData, n)
	for i := range out {
		id := fmt.Sprintf("%s-e%d", stream, i+1)
		out[i] = eventstore.EventData{ID: id, Type: "test.thing.v1", Data: []byte(id), Metadata: eventstore.Metadata{Actor: "tester", CorrelationID: "c-" + id}}
	}
	return out
}

var planTime = time.Date(2026, 11, 23, 13, 0, 0, 987654321, time.FixedZone("CET", 3600))

func TestExpectedStateArithmetic(t *testing.T) {
	cases := []struct {
		events uint64
		want   kdb.StreamState
	}{
		{0, kdb.NoStream{}},
		{1, kdb.StreamRevision{Value: 0}},
		{10, kdb.StreamRevision{Value: 9}},
		{math.MaxInt64 + 1, kdb.StreamRevision{Value: math.MaxInt64}}, // the largest revision KurrentDB can carry
	}
	for _, tc := range cases {
		got := expectedState(tc.events)
		if got != tc.want {
			t.Errorf("expectedState(%d) = %#v, want %#v", tc.events, got, tc.want)
		}
		back, ok := stateVersion(got)
		if !ok || back != tc.events {
			t.Errorf("stateVersion(expectedState(%d)) = %d, %v; want %d, true", tc.events, back, ok, tc.events)
		}
	}
	for _, s := range []kdb.StreamState{kdb.Any{}, kdb.StreamExists{}, kdb.StreamRevision{Value: uint64(math.MaxUint64 - 2)}} {
		if v, ok := stateVersion(s); ok {
			t.Errorf("stateVersion(%#v) = %d, true; want no version", s, v)
		}
	}
}

func TestBuildPlanPositionsVersionsAndChain(t *testing.T) {
	appends := []eventstore.StreamAppend{
		{Stream: "account-1", Expected: eventstore.Exact(4), Events: data("account-1", 2)},
		{Stream: "payment-9", Expected: eventstore.NoStream(), Events: data("payment-9", 1)},
		{Stream: "account-2", Expected: eventstore.Any(), Events: data("account-2", 3)},
	}
	tip := logTip{position: 100, hash: eventstore.Hash{0x11, 0x22}}
	p, err := buildPlan(tip, appends, []uint64{4, 0, 17}, planTime, seqIDs())
	if err != nil {
		t.Fatalf("buildPlan: %v", err)
	}
	if p.result.FirstPosition != 101 || p.result.LastPosition != 106 {
		t.Fatalf("positions %d..%d, want 101..106", p.result.FirstPosition, p.result.LastPosition)
	}
	wantVersions := map[string]uint64{"account-1": 6, "payment-9": 1, "account-2": 20}
	if fmt.Sprint(p.result.Versions) != fmt.Sprint(wantVersions) {
		t.Fatalf("versions %v, want %v", p.result.Versions, wantVersions)
	}
	// Every planned event must verify as the continuation of the chain at the tip, in the
	// order given, with stream versions counted from each base.
	v := eventstore.NewChainVerifier(tip.position, tip.hash)
	wantStreamVersion := []struct {
		stream  string
		version uint64
	}{{"account-1", 5}, {"account-1", 6}, {"payment-9", 1}, {"account-2", 18}, {"account-2", 19}, {"account-2", 20}}
	k := 0
	for i, ps := range p.streams {
		for j := range ps.events {
			e := &ps.events[j]
			if err := v.Check(e); err != nil {
				t.Fatalf("planned event %s: %v", e.ID, err)
			}
			w := wantStreamVersion[k]
			if e.Stream != w.stream || e.StreamVersion != w.version {
				t.Fatalf("event %d is %s@%d, want %s@%d", k, e.Stream, e.StreamVersion, w.stream, w.version)
			}
			if e.ID != appends[i].Events[j].ID || !bytes.Equal(e.Data, appends[i].Events[j].Data) || e.Metadata != appends[i].Events[j].Metadata {
				t.Fatalf("event %d does not carry its input %+v", k, appends[i].Events[j])
			}
			if !e.RecordedAt.Equal(eventstore.RecordTime(planTime)) || e.RecordedAt.Location() != time.UTC {
				t.Fatalf("event %d recorded at %v, want %v in UTC", k, e.RecordedAt, eventstore.RecordTime(planTime))
			}
			entry := p.entries[k]
			if entry.Position != e.Position || entry.Stream != e.Stream || entry.Version != e.StreamVersion || entry.Hash != e.Hash {
				t.Fatalf("log entry %+v does not name event %s@%d at %d", entry, e.Stream, e.StreamVersion, e.Position)
			}
			k++
		}
	}
	if k != 6 || len(p.entries) != 6 || len(p.entryIDs) != 6 {
		t.Fatalf("planned %d events, %d entries, %d entry ids; want 6 each", k, len(p.entries), len(p.entryIDs))
	}
	last, lastHash := v.Verified()
	if p.after != (logTip{position: last, hash: lastHash}) {
		t.Fatalf("tip after the plan %+v, want {%d %s}", p.after, last, lastHash)
	}

	// A second append planned from the first one's tip continues the same chain.
	p2, err := buildPlan(p.after, []eventstore.StreamAppend{{Stream: "account-1", Expected: eventstore.Exact(6), Events: data("x", 1)}}, []uint64{6}, planTime, seqIDs())
	if err != nil {
		t.Fatalf("second buildPlan: %v", err)
	}
	if err := v.Check(&p2.streams[0].events[0]); err != nil {
		t.Fatalf("second plan does not continue the chain: %v", err)
	}
}

func TestBuildPlanFromEmptyLog(t *testing.T) {
	p, err := buildPlan(logTip{}, []eventstore.StreamAppend{{Stream: "s", Expected: eventstore.NoStream(), Events: data("s", 1)}}, []uint64{0}, planTime, seqIDs())
	if err != nil {
		t.Fatalf("buildPlan: %v", err)
	}
	e := p.streams[0].events[0]
	if e.Position != 1 || e.StreamVersion != 1 || !e.PrevHash.IsZero() {
		t.Fatalf("first event: position %d version %d prev %s; want 1, 1, zero", e.Position, e.StreamVersion, e.PrevHash)
	}
	if err := eventstore.NewChainVerifier(0, eventstore.Hash{}).Check(&e); err != nil {
		t.Fatalf("first event does not verify from the start of the log: %v", err)
	}
}

func TestBuildPlanRefuses(t *testing.T) {
	one := func(exp eventstore.ExpectedVersion) []eventstore.StreamAppend {
		return []eventstore.StreamAppend{{Stream: "s", Expected: exp, Events: data("s", 2)}}
	}
	cases := []struct {
		name    string
		tip     logTip
		appends []eventstore.StreamAppend
		bases   []uint64
		wantErr string
	}{
		{"bases do not match streams", logTip{}, one(eventstore.Any()), nil, "base versions"},
		{"base contradicts exact", logTip{}, one(eventstore.Exact(3)), []uint64{2}, "contradicts"},
		{"base contradicts no stream", logTip{}, one(eventstore.NoStream()), []uint64{1}, "contradicts"},
		{"stream version overflow", logTip{}, one(eventstore.Any()), []uint64{math.MaxInt64 - 1}, "version would overflow"},
		{"position overflow", logTip{position: math.MaxInt64 - 1}, one(eventstore.Any()), []uint64{0}, "position would overflow"},
		{"no events", logTip{}, []eventstore.StreamAppend{{Stream: "s", Expected: eventstore.Any()}}, []uint64{0}, "no events"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := buildPlan(tc.tip, tc.appends, tc.bases, planTime, seqIDs())
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want an error mentioning %q", err, tc.wantErr)
			}
		})
	}
}

// TestPlanRequests checks the MultiStreamAppend a plan becomes: user streams in order with
// their exact expectations under the namespace, the log stream last at exactly the tip,
// fresh distinct ids, and metadata and log entries that decode back to the plan.
func TestPlanRequests(t *testing.T) {
	appends := []eventstore.StreamAppend{
		{Stream: "account-1", Expected: eventstore.Exact(2), Events: data("account-1", 2)},
		{Stream: "account-2", Expected: eventstore.Any(), Events: data("account-2", 1)},
		{Stream: "payment-1", Expected: eventstore.NoStream(), Events: data("payment-1", 1)},
	}
	tip := logTip{position: 7, hash: eventstore.Hash{7}}
	p, err := buildPlan(tip, appends, []uint64{2, 5, 0}, planTime, seqIDs())
	if err != nil {
		t.Fatalf("buildPlan: %v", err)
	}
	names := streamNames{namespace: "ns-1-"}
	reqs, err := p.requests(names)
	if err != nil {
		t.Fatalf("requests: %v", err)
	}
	want := []struct {
		stream string
		state  kdb.StreamState
		events int
	}{
		{"ns-1-account-1", kdb.StreamRevision{Value: 1}, 2},
		{"ns-1-account-2", kdb.StreamRevision{Value: 4}, 1},
		{"ns-1-payment-1", kdb.NoStream{}, 1},
		{"ns-1-securepay-$log", kdb.StreamRevision{Value: 6}, 4},
	}
	if len(reqs) != len(want) {
		t.Fatalf("%d requests, want %d", len(reqs), len(want))
	}
	seen := map[uuid.UUID]bool{}
	for i, w := range want {
		r := reqs[i]
		if r.StreamName != w.stream || r.ExpectedStreamState != w.state {
			t.Fatalf("request %d: %s expected %#v, want %s expected %#v", i, r.StreamName, r.ExpectedStreamState, w.stream, w.state)
		}
		var evs []kdb.EventData
		for e := range r.Events {
			evs = append(evs, e)
		}
		// MultiStreamAppend ranges over Events twice (validation, then sending).
		n2 := 0
		for range r.Events {
			n2++
		}
		if len(evs) != w.events || n2 != w.events {
			t.Fatalf("request %d: %d events (second pass %d), want %d", i, len(evs), n2, w.events)
		}
		for j, e := range evs {
			if seen[e.EventID] {
				t.Fatalf("request %d event %d reuses id %s", i, j, e.EventID)
			}
			seen[e.EventID] = true
			if e.ContentType != kdb.ContentTypeBinary {
				t.Fatalf("request %d event %d: content type %v, want binary", i, j, e.ContentType)
			}
			if i == len(want)-1 {
				if e.EventType != logEntryType || e.EventID != p.entryIDs[j] {
					t.Fatalf("log event %d: type %q id %s, want %q %s", j, e.EventType, e.EventID, logEntryType, p.entryIDs[j])
				}
				entry, err := decodeLogEntry(e.Data, tip.position+uint64(j))
				if err != nil || entry != p.entries[j] {
					t.Fatalf("log event %d decodes as %+v, %v; want %+v", j, entry, err, p.entries[j])
				}
				continue
			}
			planned := p.streams[i].events[j]
			got, err := decodeEventMeta(e.Metadata)
			if err != nil {
				t.Fatalf("request %d event %d metadata: %v", i, j, err)
			}
			got.Stream, got.Data = planned.Stream, e.Data
			if !sameRecorded(got, planned) || e.EventType != planned.Type {
				t.Fatalf("request %d event %d round trips as %+v (type %q), want %+v", i, j, got, e.EventType, planned)
			}
		}
	}
}

func TestPlansNeverShareIDs(t *testing.T) {
	// Two attempts of the same append (after a lost race) must not share KurrentDB ids, or
	// the server could take the second for an idempotent repeat of the first.
	appends := []eventstore.StreamAppend{{Stream: "s", Expected: eventstore.Any(), Events: data("s", 3)}}
	a, err := buildPlan(logTip{position: 1}, appends, []uint64{0}, planTime, uuid.New)
	if err != nil {
		t.Fatal(err)
	}
	b, err := buildPlan(logTip{position: 2}, appends, []uint64{0}, planTime, uuid.New)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[uuid.UUID]bool{}
	for _, p := range []*appendPlan{a, b} {
		for _, id := range append(append([]uuid.UUID{}, p.entryIDs...), p.streams[0].ids...) {
			if ids[id] {
				t.Fatalf("id %s used twice across attempts", id)
			}
			ids[id] = true
		}
	}
}
