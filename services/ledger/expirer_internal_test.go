package ledger

import (
	"bytes"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

func foldRecords(t *testing.T, evs ...domain.Event) []eventstore.RecordedEvent {
	t.Helper()
	out := make([]eventstore.RecordedEvent, len(evs))
	for i, e := range evs {
		name, data, err := domain.EncodeEvent(e)
		if err != nil {
			t.Fatalf("encode %T: %v", e, err)
		}
		out[i] = eventstore.RecordedEvent{Position: uint64(i + 1), Type: name, Data: data, Hash: eventstore.Hash{byte(i + 1)}}
	}
	return out
}

// The fold keeps exactly the authorisations still open, whatever closes them.
func TestExpirerFold(t *testing.T) {
	usd := domain.Asset{Code: "USD", Scale: 2}
	at := time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)
	auth := func(id string, amount int64) domain.Event {
		return domain.PaymentAuthorised{PaymentID: domain.PaymentID(id), Source: "a", Destination: "b", Amount: domain.Money{Asset: usd, Minor: amount}, ExpiresAt: at}
	}
	capture := func(id string, total int64) domain.Event {
		return domain.PaymentCaptured{PaymentID: domain.PaymentID(id), CaptureID: "c", Amount: domain.Money{Asset: usd, Minor: total}, CapturedTotal: total}
	}
	for _, tc := range []struct {
		name string
		evs  []domain.Event
		want map[domain.PaymentID]openAuth
	}{
		{"authorised stays open", []domain.Event{auth("p", 100)}, map[domain.PaymentID]openAuth{"p": {expiresAt: at, deadline: at, authorised: 100}}},
		{"partial capture stays open", []domain.Event{auth("p", 100), capture("p", 40)}, map[domain.PaymentID]openAuth{"p": {expiresAt: at, deadline: at, authorised: 100, captured: 40}}},
		{"full capture closes", []domain.Event{auth("p", 100), capture("p", 40), capture("p", 100)}, map[domain.PaymentID]openAuth{}},
		{"void closes", []domain.Event{auth("p", 100), domain.PaymentVoided{PaymentID: "p", Released: domain.Money{Asset: usd, Minor: 100}}}, map[domain.PaymentID]openAuth{}},
		{"expiry closes", []domain.Event{auth("p", 100), domain.PaymentExpired{PaymentID: "p", Released: domain.Money{Asset: usd, Minor: 100}}}, map[domain.PaymentID]openAuth{}},
		{"close of an unknown payment is ignored", []domain.Event{domain.PaymentVoided{PaymentID: "q", Released: domain.Money{Asset: usd, Minor: 5}}, capture("q", 5), auth("p", 1)}, map[domain.PaymentID]openAuth{"p": {expiresAt: at, deadline: at, authorised: 1}}},
		{"other events are skipped", []domain.Event{domain.AccountOpened{AccountID: "a", Asset: usd}, auth("p", 1)}, map[domain.PaymentID]openAuth{"p": {expiresAt: at, deadline: at, authorised: 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := &Expirer{open: map[domain.PaymentID]*openAuth{}}
			recs := foldRecords(t, tc.evs...)
			// One event a batch and all in one batch must fold the same.
			for _, split := range []bool{false, true} {
				x.open, x.queue = map[domain.PaymentID]*openAuth{}, nil
				if split {
					for i := range recs {
						if err := x.observe(t.Context(), recs[i:i+1]); err != nil {
							t.Fatal(err)
						}
					}
				} else if err := x.observe(t.Context(), recs); err != nil {
					t.Fatal(err)
				}
				got := map[domain.PaymentID]openAuth{}
				for id, a := range x.open {
					got[id] = *a
				}
				if !maps.Equal(got, tc.want) {
					t.Fatalf("split=%v: open authorisations: want %+v, got %+v", split, tc.want, got)
				}
				if last := recs[len(recs)-1]; x.pos != last.Position || x.hash != last.Hash {
					t.Fatalf("split=%v: folded position: want %d (hash %x), got %d (hash %x)", split, last.Position, last.Hash[:2], x.pos, x.hash[:2])
				}
			}
		})
	}
}

// An undecodable event fails the batch and the torn fold is never checkpointed.
func TestExpirerFoldTornBatch(t *testing.T) {
	x := &Expirer{open: map[domain.PaymentID]*openAuth{}}
	err := x.observe(t.Context(), []eventstore.RecordedEvent{{Position: 1, Type: domain.NamePaymentAuthorise, Data: []byte("{")}})
	if err == nil || !x.torn {
		t.Fatalf("undecodable authorisation: want an error and a torn fold, got err %v torn %v", err, x.torn)
	}
}

// A checkpoint opens only if this key made it, unchanged, in this schema and at its version.
func TestExpirerCheckpointCodec(t *testing.T) {
	key := bytes.Repeat([]byte{7}, MinSnapshotKeyBytes)
	at := time.Date(2026, 11, 28, 9, 0, 0, 123, time.UTC)
	open := map[domain.PaymentID]*openAuth{"p": {expiresAt: at, deadline: at, authorised: 100, captured: 40}, "q": {expiresAt: at.Add(time.Hour), deadline: at.Add(2 * time.Hour), authorised: 5}}
	snap, err := encodeCheckpoint(key, 42, eventstore.Hash{9}, checkpointOf(open))
	if err != nil {
		t.Fatal(err)
	}
	if snap.Stream != ExpirerCheckpointStream || snap.Version != 42 {
		t.Fatalf("checkpoint stored as %s at %d, want %s at 42", snap.Stream, snap.Version, ExpirerCheckpointStream)
	}
	body, got, err := openCheckpoint(key, snap)
	// The checkpoint keeps the log's deadline, not the next retry: a restart tries again at once.
	wantQ := openAuth{expiresAt: at.Add(time.Hour), deadline: at.Add(time.Hour), authorised: 5}
	if err != nil || body.Position != 42 || len(got) != 2 || *got["p"] != *open["p"] || *got["q"] != wantQ {
		t.Fatalf("round trip: want %+v, %+v at 42, got %+v, %+v at %d (err %v)", *open["p"], wantQ, got["p"], got["q"], body.Position, err)
	}
	flip := func(i int) []byte { s := bytes.Clone(snap.State); s[i] ^= 1; return s }
	for _, tc := range []struct {
		name string
		mod  func(s *eventstore.Snapshot)
		want string
	}{
		{"body changed", func(s *eventstore.Snapshot) { s.State = flip(len(s.State) - 3) }, "MAC"},
		{"mac changed", func(s *eventstore.Snapshot) { s.State = flip(0) }, "MAC"},
		{"truncated", func(s *eventstore.Snapshot) { s.State = s.State[:10] }, "shorter than its MAC"},
		{"other schema", func(s *eventstore.Snapshot) { s.Schema = accountSnapshotSchema }, "schema"},
		{"moved to another position", func(s *eventstore.Snapshot) { s.Version = 43 }, "position"},
		{"other key", func(s *eventstore.Snapshot) {
			o, _ := encodeCheckpoint(bytes.Repeat([]byte{8}, MinSnapshotKeyBytes), 42, eventstore.Hash{9}, checkpointOf(open))
			s.State = o.State
		}, "MAC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := snap
			tc.mod(&s)
			if _, _, err := openCheckpoint(key, s); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error mentioning %q, got %v", tc.want, err)
			}
		})
	}
}
