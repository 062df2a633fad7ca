package embedded

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
)

func sampleRecord() eventstore.RecordedEvent {
	e := eventstore.RecordedEvent{
		Position:      42,
		Stream:        "account-7",
		StreamVersion: 3,
		ID:            "5f0c8f8e-1111-4c1b-9c71-000000000042",
		Type:          "ledger.account.credited.v1",
		RecordedAt:    time.Date(2026, 11, 23, 12, 0, 0, 123456000, time.UTC),
		Data:          []byte(`{"amount":"12.34","asset":"USD/2"}`),
		Metadata: eventstore.Metadata{
			CorrelationID: "pay-1",
			CausationID:   "cmd-1",
			Actor:         "spiffe://securepay.dev/payment",
			TraceParent:   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		},
	}
	e.PrevHash[0] = 0xAB
	e.Hash = eventstore.ChainHash(e.PrevHash, &e)
	return e
}

func TestRecordRoundTrip(t *testing.T) {
	full := sampleRecord()
	bare := sampleRecord()
	bare.Data, bare.Metadata = nil, eventstore.Metadata{}
	for name, e := range map[string]eventstore.RecordedEvent{"full": full, "no data, no metadata": bare} {
		b := appendRecord(nil, &e)
		got, err := decodeRecord(e.Position, b)
		if err != nil {
			t.Fatalf("%s: decode: %v", name, err)
		}
		if !reflect.DeepEqual(got, e) {
			t.Fatalf("%s: round trip changed the record:\n got %+v\nwant %+v", name, got, e)
		}
	}
}

// TestDecodeRecordRefuses: every kind of damage gives an errCorrupt that says what is wrong.
func TestDecodeRecordRefuses(t *testing.T) {
	e := sampleRecord()
	good := appendRecord(nil, &e)
	edit := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := []struct {
		name    string
		record  []byte
		wantMsg string
	}{
		{"empty", nil, "shorter than"},
		{"header cut short", good[:recordHeaderSize-1], "shorter than"},
		{"unknown format", edit(func(b []byte) []byte { b[0] = 9; return b }), "unknown record format 9"},
		{"body cut short", good[:len(good)-1], "add up to"},
		{"trailing byte", append(append([]byte(nil), good...), 0), "add up to"},
		{"version 0", edit(func(b []byte) []byte { copy(b[1:9], make([]byte, 8)); return b }), "stream version 0"},
		{"empty stream name", edit(func(b []byte) []byte {
			// Move the stream's bytes to the type, so only the stream's length is wrong.
			n := binary.BigEndian.Uint32(b[81:])
			binary.BigEndian.PutUint32(b[81:], 0)
			binary.BigEndian.PutUint32(b[89:], binary.BigEndian.Uint32(b[89:])+n)
			return b
		}), "stream name is 0 bytes"},
		{"huge length", edit(func(b []byte) []byte { copy(b[109:113], []byte{0xff, 0xff, 0xff, 0xff}); return b }), "add up to"},
	}
	for _, tc := range cases {
		_, err := decodeRecord(7, tc.record)
		if !errors.Is(err, errCorrupt) || !strings.Contains(err.Error(), tc.wantMsg) || !strings.Contains(err.Error(), "position 7") {
			t.Errorf("%s: err = %v, want errCorrupt at position 7 mentioning %q", tc.name, err, tc.wantMsg)
		}
	}
}

// FuzzDecodeRecord: the decoder never panics, and whatever it accepts re-encodes to the
// same bytes (the format is canonical, so a stored record has one reading).
func FuzzDecodeRecord(f *testing.F) {
	e := sampleRecord()
	f.Add(appendRecord(nil, &e))
	e.Data, e.Metadata = nil, eventstore.Metadata{}
	f.Add(appendRecord(nil, &e))
	f.Add([]byte{recordFormatV1})
	f.Add(make([]byte, recordHeaderSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodeRecord(1, b)
		if err != nil {
			if !errors.Is(err, errCorrupt) {
				t.Fatalf("decode error %v does not wrap errCorrupt", err)
			}
			return
		}
		if again := appendRecord(nil, &got); !bytes.Equal(again, b) {
			t.Fatalf("decoded record re-encodes differently:\n in %x\nout %x", b, again)
		}
	})
}

// TestChainHasherMatchesChainHash: the writer's allocation-free hasher is the contract's
// ChainHash, byte for byte.
func TestChainHasherMatchesChainHash(t *testing.T) {
	e := sampleRecord()
	cases := []eventstore.RecordedEvent{e}
	e.Data, e.Metadata = nil, eventstore.Metadata{}
	cases = append(cases, e)
	e.Data = bytes.Repeat([]byte{7}, eventstore.MaxEventDataBytes)
	cases = append(cases, e)
	var c chainHasher
	for i, rec := range cases {
		checkHasher(t, &c, string(rune('a'+i)), rec)
	}
}

func checkHasher(t *testing.T, c *chainHasher, name string, rec eventstore.RecordedEvent) {
	t.Helper()
	data := eventstore.EventData{ID: rec.ID, Type: rec.Type, Data: rec.Data, Metadata: rec.Metadata}
	got := c.sum(&rec.PrevHash, rec.Position, rec.StreamVersion, rec.RecordedAt.UnixMicro(), rec.Stream, &data)
	if want := eventstore.ChainHash(rec.PrevHash, &rec); got != want {
		t.Fatalf("case %s: chainHasher %s, ChainHash %s", name, got, want)
	}
}

func FuzzChainHasher(f *testing.F) {
	f.Add(uint64(1), uint64(1), int64(0), "s", "id", "type", []byte("data"), "c", "k", "a", "tp")
	f.Add(uint64(1<<63), uint64(99), int64(-5), "", "", "", []byte(nil), "", "", "", "")
	var c chainHasher
	f.Fuzz(func(t *testing.T, pos, ver uint64, micros int64, stream, id, typ string, data []byte, corr, cause, actor, tp string) {
		rec := eventstore.RecordedEvent{
			Position: pos, StreamVersion: ver, RecordedAt: time.UnixMicro(micros), Stream: stream, ID: id, Type: typ, Data: data,
			Metadata: eventstore.Metadata{CorrelationID: corr, CausationID: cause, Actor: actor, TraceParent: tp},
		}
		rec.PrevHash[31] = byte(pos)
		checkHasher(t, &c, "fuzz", rec)
	})
}
