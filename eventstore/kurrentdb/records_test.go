package kurrentdb

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
)

func sampleEvent() eventstore.RecordedEvent {
	e := eventstore.RecordedEvent{
		Position:      42,
		Stream:        "account-7",
		StreamVersion: 3,
		ID:            "0b9d1c9e-5d1f-4e55-8d0e-6f5f0c2b9a11",
		Type:          "ledger.account.debited.v1",
		RecordedAt:    time.Date(2026, 11, 23, 12, 0, 0, 123456000, time.UTC),
		Data:          []byte{0, 1, 2, 0xff},
		Metadata: eventstore.Metadata{
			CorrelationID: "pay-ü-1",
			CausationID:   "cmd-\"quoted\"\n",
			Actor:         "spiffe://securepay.dev/ns/prod/sa/payments",
			TraceParent:   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		},
	}
	e.PrevHash = eventstore.Hash{1, 2, 3}
	e.Hash = eventstore.ChainHash(e.PrevHash, &e)
	return e
}

// withoutStreamAndData is what the metadata alone can give back.
func withoutStreamAndData(e eventstore.RecordedEvent) eventstore.RecordedEvent {
	e.Stream, e.Data = "", nil
	return e
}

func sameRecorded(a, b eventstore.RecordedEvent) bool {
	return a.Position == b.Position && a.Stream == b.Stream && a.StreamVersion == b.StreamVersion &&
		a.ID == b.ID && a.Type == b.Type && a.RecordedAt.Equal(b.RecordedAt) &&
		a.RecordedAt.Location() == b.RecordedAt.Location() && bytes.Equal(a.Data, b.Data) &&
		a.Metadata == b.Metadata && a.PrevHash == b.PrevHash && a.Hash == b.Hash
}

func TestEventMetaRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		edit func(*eventstore.RecordedEvent)
	}{
		{"full", func(*eventstore.RecordedEvent) {}},
		{"empty metadata fields", func(e *eventstore.RecordedEvent) { e.Metadata = eventstore.Metadata{} }},
		{"first position, zero prev hash", func(e *eventstore.RecordedEvent) { e.Position, e.PrevHash = 1, eventstore.Hash{} }},
		{"largest numbers", func(e *eventstore.RecordedEvent) { e.Position, e.StreamVersion = ^uint64(0), ^uint64(0) }},
		{"time before 1970", func(e *eventstore.RecordedEvent) { e.RecordedAt = time.Date(1969, 7, 20, 20, 17, 0, 1000, time.UTC) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := sampleEvent()
			tc.edit(&e)
			raw, err := encodeEventMeta(&e)
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			// MultiStreamAppend accepts only a JSON object of strings; check we send one.
			var asStrings map[string]string
			if err := json.Unmarshal(raw, &asStrings); err != nil {
				t.Fatalf("encoded metadata %s is not a JSON object of strings: %v", raw, err)
			}
			got, err := decodeEventMeta(raw)
			if err != nil {
				t.Fatalf("decode %s: %v", raw, err)
			}
			if want := withoutStreamAndData(e); !sameRecorded(got, want) {
				t.Fatalf("round trip changed the event:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestEventMetaToleratesServerKeysAndMissingOptionalFields(t *testing.T) {
	e := sampleEvent()
	e.Metadata = eventstore.Metadata{}
	raw, err := encodeEventMeta(&e)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	// What a KurrentDB 25 server adds on read, and what it might drop (empty properties).
	m["$schema.format"] = "Bytes"
	m["$schema.name"] = e.Type
	m["$some.future.number"] = 7.5
	for _, k := range []string{keyCorrelationID, keyCausationID, keyActor, keyTraceParent} {
		delete(m, k)
	}
	raw, err = json.Marshal(m)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	got, err := decodeEventMeta(raw)
	if err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	if want := withoutStreamAndData(e); !sameRecorded(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestEventMetaRefusesDamage(t *testing.T) {
	e := sampleEvent()
	good, err := encodeEventMeta(&e)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	edit := func(f func(m map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatalf("unmarshal: %v", err)
		}
		f(m)
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		return b
	}
	cases := []struct {
		name    string
		raw     []byte
		wantErr string
	}{
		{"not JSON", []byte("{"), "not a JSON object"},
		{"null", []byte("null"), "null"},
		{"array", []byte("[]"), "not a JSON object"},
		{"no id", edit(func(m map[string]any) { delete(m, keyID) }), keyID},
		{"empty type", edit(func(m map[string]any) { m[keyType] = "" }), "empty id or type"},
		{"no position", edit(func(m map[string]any) { delete(m, keyPosition) }), keyPosition},
		{"position zero", edit(func(m map[string]any) { m[keyPosition] = "0" }), "start at 1"},
		{"negative version", edit(func(m map[string]any) { m[keyVersion] = "-1" }), keyVersion},
		{"numeric position", edit(func(m map[string]any) { m[keyPosition] = 5 }), "not a JSON object of strings"},
		{"bad time", edit(func(m map[string]any) { m[keyRecordedAt] = "noon" }), keyRecordedAt},
		{"short hash", edit(func(m map[string]any) { m[keyHash] = "abcd" }), keyHash},
		{"no prev hash", edit(func(m map[string]any) { delete(m, keyPrevHash) }), keyPrevHash},
		{"actor not a string", edit(func(m map[string]any) { m[keyActor] = true }), "not a JSON object of strings"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeEventMeta(tc.raw)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("decode %s: err = %v, want an error mentioning %q", tc.raw, err, tc.wantErr)
			}
		})
	}
}

func TestLogEntryRoundTrip(t *testing.T) {
	cases := []logEntry{
		{Position: 1, Stream: "a", Version: 1, Hash: eventstore.Hash{}},
		{Position: 1_000_001, Stream: "payment-ü-42", Version: 77, Hash: eventstore.Hash{0xde, 0xad, 31: 0xff}},
		{Position: ^uint64(0), Stream: strings.Repeat("s", eventstore.MaxStreamNameBytes), Version: ^uint64(0), Hash: eventstore.Hash{9}},
	}
	for _, want := range cases {
		raw, err := encodeLogEntry(want)
		if err != nil {
			t.Fatalf("encode %+v: %v", want, err)
		}
		got, err := decodeLogEntry(raw, want.Position-1)
		if err != nil {
			t.Fatalf("decode %s: %v", raw, err)
		}
		if got != want {
			t.Fatalf("round trip of %+v gave %+v", want, got)
		}
	}
}

func TestLogEntryAuditorFormat(t *testing.T) {
	// The stored form is documented in the package comment for auditors; pin it.
	raw, err := encodeLogEntry(logEntry{Position: 5, Stream: "account-1", Version: 2, Hash: eventstore.Hash{0xab}})
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	want := `{"position":5,"stream":"account-1","version":2,"hash":"ab` + strings.Repeat("0", 62) + `"}`
	if string(raw) != want {
		t.Fatalf("log entry encodes as\n%s\nwant\n%s", raw, want)
	}
}

func TestLogEntryRefusesDamage(t *testing.T) {
	hash := strings.Repeat("0", 64)
	cases := []struct {
		name     string
		raw      string
		revision uint64
		wantErr  string
	}{
		{"empty", ``, 0, "EOF"},
		{"not an object", `[1]`, 0, "cannot unmarshal"},
		{"wrong position for revision", `{"position":3,"stream":"a","version":1,"hash":"` + hash + `"}`, 0, "want 1"},
		{"position zero", `{"position":0,"stream":"a","version":1,"hash":"` + hash + `"}`, 0, "want 1"},
		{"revision at the end of uint64", `{"position":0,"stream":"a","version":1,"hash":"` + hash + `"}`, ^uint64(0), "want 0"},
		{"version zero", `{"position":1,"stream":"a","version":0,"hash":"` + hash + `"}`, 0, "version 0"},
		{"negative version", `{"position":1,"stream":"a","version":-1,"hash":"` + hash + `"}`, 0, "cannot unmarshal"},
		{"fractional position", `{"position":1.5,"stream":"a","version":1,"hash":"` + hash + `"}`, 0, "cannot unmarshal"},
		{"empty stream", `{"position":1,"stream":"","version":1,"hash":"` + hash + `"}`, 0, "stream name"},
		{"reserved stream", `{"position":1,"stream":"$all","version":1,"hash":"` + hash + `"}`, 0, "'$'"},
		{"bad hash", `{"position":1,"stream":"a","version":1,"hash":"zz"}`, 0, "hash"},
		{"unknown field", `{"position":1,"stream":"a","version":1,"hash":"` + hash + `","x":1}`, 0, "unknown field"},
		{"trailing data", `{"position":1,"stream":"a","version":1,"hash":"` + hash + `"} {}`, 0, "trailing"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeLogEntry([]byte(tc.raw), tc.revision)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("decode %q at revision %d: err = %v, want an error mentioning %q", tc.raw, tc.revision, err, tc.wantErr)
			}
		})
	}
}

// FuzzDecodeLogEntry: the decoder never panics, and whatever it accepts re-encodes to an
// entry it decodes identically (so a stored entry has one meaning).
func FuzzDecodeLogEntry(f *testing.F) {
	for _, e := range []logEntry{
		{Position: 1, Stream: "a", Version: 1},
		{Position: 9, Stream: "account-9", Version: 4, Hash: eventstore.Hash{7}},
	} {
		raw, err := encodeLogEntry(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw, e.Position-1)
	}
	f.Add([]byte(`{"position":1}`), uint64(0))
	f.Add([]byte(`{"position":18446744073709551615,"stream":"x","version":1,"hash":"`+strings.Repeat("A", 64)+`"}`), ^uint64(0)-1)
	f.Fuzz(func(t *testing.T, raw []byte, revision uint64) {
		e, err := decodeLogEntry(raw, revision)
		if err != nil {
			return
		}
		if e.Position != revision+1 || e.Version == 0 || checkStreamName(e.Stream) != nil {
			t.Fatalf("decoder accepted an invalid entry %+v at revision %d from %q", e, revision, raw)
		}
		again, err := encodeLogEntry(e)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", e, err)
		}
		back, err := decodeLogEntry(again, revision)
		if err != nil || back != e {
			t.Fatalf("re-encoded %+v as %s, which decodes as %+v, %v", e, again, back, err)
		}
	})
}

// FuzzDecodeEventMeta: the metadata decoder never panics, and what it accepts survives a
// re-encode unchanged.
func FuzzDecodeEventMeta(f *testing.F) {
	e := sampleEvent()
	raw, err := encodeEventMeta(&e)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add([]byte(`{"securepay.id":"x"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, err := decodeEventMeta(raw)
		if err != nil {
			return
		}
		if got.Position == 0 || got.StreamVersion == 0 || got.ID == "" || got.Type == "" {
			t.Fatalf("decoder accepted an invalid event %+v from %q", got, raw)
		}
		again, err := encodeEventMeta(&got)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		back, err := decodeEventMeta(again)
		if err != nil {
			t.Fatalf("re-encoded %q does not decode: %v", again, err)
		}
		// Invalid UTF-8 in accepted input is replaced by U+FFFD on decode, so compare the
		// decoded forms, which must be a fixed point.
		if !sameRecorded(back, got) {
			t.Fatalf("decode(encode(x)) != x:\n got %+v\nwant %+v", back, got)
		}
	})
}
