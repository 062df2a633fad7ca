package eventstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/chain.golden.json from ChainHash (a breaking change for auditors: read the file first)")

const chainGolden = "testdata/chain.golden.json"

// chainGoldenAbout heads the golden file, for whoever opens it without this test.
const chainGoldenAbout = "Test vectors of the SecurePay hash chain (eventstore.ChainHash, docs/EVENTS.md section 3). " +
	"Each vector gives an event's stored fields, the exact bytes that are hashed (preimage, hex) and the hash; " +
	"the vectors form a chain from the all-zero hash. Auditors check their own implementation against them. " +
	"A changed hash or preimage is a changed persisted format and a BREAKING CHANGE FOR AUDITORS: every stored " +
	"chain stops verifying. Regenerate (go test ./eventstore -run TestChainHashGolden -update) only together " +
	"with a new, documented hash format."

// chainVector is one event of the golden chain, in the names of docs/EVENTS.md. Data is
// text here because every payload is JSON; the hash covers its UTF-8 bytes.
type chainVector struct {
	Name             string `json:"name"`
	PrevHash         string `json:"prev_hash"`
	Position         uint64 `json:"position"`
	StreamVersion    uint64 `json:"stream_version"`
	RecordedAtUnixUS int64  `json:"recorded_at_unix_us"`
	Stream           string `json:"stream"`
	ID               string `json:"id"`
	Type             string `json:"type"`
	Data             string `json:"data"`
	CorrelationID    string `json:"correlation_id"`
	CausationID      string `json:"causation_id"`
	Actor            string `json:"actor"`
	TraceParent      string `json:"traceparent"`
	Preimage         string `json:"preimage"`
	Hash             string `json:"hash"`
}

type chainGoldenFile struct {
	About   string        `json:"about"`
	Vectors []chainVector `json:"vectors"`
}

// goldenChain returns the events of the golden chain, hashed by ChainHash.
func goldenChain() []RecordedEvent {
	events := []RecordedEvent{
		{ // The first event of a log: it chains onto the all-zero hash; no metadata.
			Position: 1, StreamVersion: 1, RecordedAt: time.Date(2026, 3, 14, 15, 9, 26, 535897000, time.UTC),
			Stream: "account-acc-alice", ID: "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", Type: "ledger.account.opened.v2",
			Data: []byte(`{"account_id":"acc-alice","asset":{"code":"USD","scale":2},"kind":"customer","credit_limit_minor":"0"}`),
		},
		{ // Every metadata field set.
			Position: 2, StreamVersion: 1, RecordedAt: time.Date(2026, 3, 14, 15, 9, 26, 536001000, time.UTC),
			Stream: "payment-pay-42", ID: "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c", Type: "ledger.payment.transferred.v1",
			Data: []byte(`{"payment_id":"pay-42","source":"acc-alice","destination":"acc-bob","amount":{"minor":"1234","asset":{"code":"USD","scale":2}}}`),
			Metadata: Metadata{
				CorrelationID: "pay-42",
				CausationID:   "cmd-7f3a9c",
				Actor:         "spiffe://securepay.dev/ns/payments/sa/api",
				TraceParent:   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			},
		},
		{ // Multi-byte UTF-8 in the stream, the payload and the metadata: lengths are in bytes.
			Position: 3, StreamVersion: 7, RecordedAt: time.Date(2026, 3, 14, 15, 9, 27, 0, time.UTC),
			Stream: "account-café-東京", ID: "évènement-3", Type: "ledger.account.frozen.v1",
			Data:     []byte(`{"account_id":"café-東京","reason":"Prüfung ☕ — 審査中"}`),
			Metadata: Metadata{CorrelationID: "corrélation-✓", Actor: "用户@例子.测试"},
		},
		{ // Edges: a stream version above 2^32, an instant before 1970 (negative, two's
			// complement) and an empty payload.
			Position: 4, StreamVersion: 1<<40 + 3, RecordedAt: time.Date(1969, 7, 20, 20, 17, 40, 123456000, time.UTC),
			Stream: "s", ID: "e", Type: "t.v1", Data: []byte{},
		},
	}
	var prev Hash
	for i := range events {
		e := &events[i]
		e.PrevHash = prev
		e.Hash = ChainHash(prev, e)
		prev = e.Hash
	}
	return events
}

var goldenNames = []string{
	"first event: position 1 after the zero hash, no metadata",
	"every metadata field: correlation, causation, actor, traceparent",
	"unicode in stream, id, payload and metadata",
	"stream version above 2^32, recorded before 1970, empty payload",
}

// docPreimage builds the bytes that docs/EVENTS.md section 3 says are hashed, on its own,
// from the document rather than from ChainHash, so that the golden preimage shows an
// auditor the exact bytes and the test sees the two agree.
func docPreimage(e *RecordedEvent) []byte {
	var b []byte
	b = append(b, e.PrevHash[:]...)
	b = binary.BigEndian.AppendUint64(b, e.Position)
	b = binary.BigEndian.AppendUint64(b, e.StreamVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(e.RecordedAt.UnixMicro()))
	for _, field := range [][]byte{
		[]byte(e.Stream), []byte(e.ID), []byte(e.Type), e.Data,
		[]byte(e.Metadata.CorrelationID), []byte(e.Metadata.CausationID),
		[]byte(e.Metadata.Actor), []byte(e.Metadata.TraceParent),
	} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(field)))
		b = append(b, field...)
	}
	return b
}

// TestChainHashGolden pins ChainHash to fixed vectors. Every other hash test compares two
// computations of ours, which a change to both (or to the record they share) would leave
// passing; a change of these bytes fails here, loudly, before it reaches an auditor.
func TestChainHashGolden(t *testing.T) {
	events := goldenChain()
	file := chainGoldenFile{About: chainGoldenAbout}
	for i := range events {
		e := &events[i]
		pre := docPreimage(e)
		if got := Hash(sha256.Sum256(pre)); got != e.Hash {
			t.Errorf("vector %d: ChainHash %s, SHA-256 of the preimage docs/EVENTS.md describes %s", i+1, e.Hash, got)
		}
		file.Vectors = append(file.Vectors, chainVector{
			Name: goldenNames[i], PrevHash: e.PrevHash.String(), Position: e.Position, StreamVersion: e.StreamVersion,
			RecordedAtUnixUS: e.RecordedAt.UnixMicro(), Stream: e.Stream, ID: e.ID, Type: e.Type, Data: string(e.Data),
			CorrelationID: e.Metadata.CorrelationID, CausationID: e.Metadata.CausationID, Actor: e.Metadata.Actor,
			TraceParent: e.Metadata.TraceParent, Preimage: hex.EncodeToString(pre), Hash: e.Hash.String(),
		})
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(file); err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(chainGolden, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewrote %s: every auditor's stored chain now fails to verify", chainGolden)
		return
	}

	raw, err := os.ReadFile(chainGolden)
	if err != nil {
		t.Fatalf("%v (create it with -update)", err)
	}
	var golden chainGoldenFile
	if err := json.Unmarshal(raw, &golden); err != nil {
		t.Fatalf("%s: %v", chainGolden, err)
	}
	if len(golden.Vectors) != len(file.Vectors) {
		t.Fatalf("%s holds %d vectors, the test makes %d", chainGolden, len(golden.Vectors), len(file.Vectors))
	}
	for i, want := range golden.Vectors {
		got := file.Vectors[i]
		switch {
		case got.Preimage != want.Preimage:
			t.Errorf("vector %d (%s): the hashed bytes changed: the persisted format is no longer what auditors recompute\n golden %s\n now    %s", i+1, want.Name, want.Preimage, got.Preimage)
		case got.Hash != want.Hash:
			t.Errorf("vector %d (%s): ChainHash changed: golden %s, now %s", i+1, want.Name, want.Hash, got.Hash)
		case got != want:
			t.Errorf("vector %d: golden %+v, now %+v", i+1, want, got)
		}
	}
	if !bytes.Equal(raw, out.Bytes()) && !t.Failed() {
		t.Errorf("%s differs from what the test writes outside the vectors' values (layout or the about text); run with -update", chainGolden)
	}

	// The vectors read back from the file form a chain the verifier accepts, so an auditor
	// may also use them whole.
	v := NewChainVerifier(0, Hash{})
	for i, gv := range golden.Vectors {
		e := RecordedEvent{Position: gv.Position, StreamVersion: gv.StreamVersion, RecordedAt: time.UnixMicro(gv.RecordedAtUnixUS).UTC(),
			Stream: gv.Stream, ID: gv.ID, Type: gv.Type, Data: []byte(gv.Data),
			Metadata: Metadata{CorrelationID: gv.CorrelationID, CausationID: gv.CausationID, Actor: gv.Actor, TraceParent: gv.TraceParent}}
		var err error
		if e.PrevHash, err = ParseHash(gv.PrevHash); err != nil {
			t.Fatalf("vector %d prev_hash: %v", i+1, err)
		}
		if e.Hash, err = ParseHash(gv.Hash); err != nil {
			t.Fatalf("vector %d hash: %v", i+1, err)
		}
		if err := v.Check(&e); err != nil {
			t.Errorf("golden vector %d does not verify: %v", i+1, err)
		}
	}
}
