package relay

import (
	"encoding/json"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/securepay/securepay/eventstore"
)

func TestRouteByStream(t *testing.T) {
	names := TopicNames{}.withDefaults()
	for _, tc := range []struct {
		stream, topic, key string
	}{
		{"payment-pay-42", TopicPayments, "pay-42"},
		{"account-acc-alice", TopicNotifications, "acc-alice"},
		{"account-payment-x", TopicNotifications, "payment-x"},
	} {
		topic, key, err := names.route(&eventstore.RecordedEvent{Stream: tc.stream})
		if err != nil || topic != tc.topic || key != tc.key {
			t.Errorf("route(%q) = %q, %q, %v; want %q, %q", tc.stream, topic, key, err, tc.topic, tc.key)
		}
	}
	for _, stream := range []string{"", "ledger-1", "account-", "payment-", "Account-x"} {
		if topic, _, err := names.route(&eventstore.RecordedEvent{Stream: stream, Position: 9}); err == nil {
			t.Errorf("route(%q) = %q, want an error: no topic for that stream", stream, topic)
		}
	}
}

func TestMessageCarriesTheEvent(t *testing.T) {
	e := &eventstore.RecordedEvent{
		Position: 5, Stream: "payment-pay-42", StreamVersion: 1, ID: "01955d6c-1f8a-7c3e-9a41-000000000003",
		Type: "ledger.payment.transferred.v1", RecordedAt: time.Date(2026, 3, 2, 9, 30, 0, 123456000, time.UTC),
		Data:     []byte(`{"payment_id":"pay-42","source":"world"}`),
		Metadata: eventstore.Metadata{CorrelationID: "pay-42", CausationID: "key \"7\"", Actor: "anonymous", TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
	}
	m, err := TopicNames{}.withDefaults().message(e)
	if err != nil {
		t.Fatal(err)
	}
	if pos, ok := positionOf(m); m.Topic != TopicPayments || !ok || pos != 5 || !m.Timestamp.Equal(e.RecordedAt) {
		t.Fatalf("message topic %q position %d (%t) timestamp %v; want %s, 5, %v", m.Topic, pos, ok, m.Timestamp, TopicPayments, e.RecordedAt)
	}
	if k, _ := m.Key.Encode(); string(k) != "pay-42" {
		t.Fatalf("key %q, want pay-42", k)
	}
	headers := map[string]string{}
	for _, h := range m.Headers {
		headers[string(h.Key)] = string(h.Value)
	}
	want := map[string]string{HeaderEventID: e.ID, HeaderEventType: e.Type, HeaderPosition: "5", HeaderStream: e.Stream,
		HeaderContentType: ContentType, HeaderTraceParent: e.Metadata.TraceParent}
	if len(headers) != len(want) {
		t.Fatalf("headers %v, want %v", headers, want)
	}
	for k, v := range want {
		if headers[k] != v {
			t.Fatalf("header %s = %q, want %q", k, headers[k], v)
		}
	}
	v, _ := m.Value.Encode()
	const golden = `{"id":"01955d6c-1f8a-7c3e-9a41-000000000003","type":"ledger.payment.transferred.v1","position":5,` +
		`"stream":"payment-pay-42","stream_version":1,"recorded_at":"2026-03-02T09:30:00.123456Z","correlation_id":"pay-42",` +
		`"causation_id":"key \"7\"","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",` +
		`"hash":"0000000000000000000000000000000000000000000000000000000000000000","payload":{"payment_id":"pay-42","source":"world"}}`
	if string(v) != golden {
		t.Fatalf("value\n%s\nwant\n%s", v, golden)
	}

	// No trace context, no header.
	e.Metadata.TraceParent = ""
	m, _ = TopicNames{}.withDefaults().message(e)
	for _, h := range m.Headers {
		if string(h.Key) == HeaderTraceParent {
			t.Fatalf("traceparent header %q for an event without trace context", h.Value)
		}
	}
	// A payload that is not JSON is never sent.
	e.Data = []byte("not json")
	if _, err := (TopicNames{}.withDefaults()).message(e); err == nil || !strings.Contains(err.Error(), "not JSON") {
		t.Fatalf("non-JSON payload: %v, want a refusal", err)
	}
	var _ sarama.Encoder = m.Value
}

// FuzzAppendString: whatever the text, the result is one JSON string that decodes to the
// text (invalid UTF-8 becoming U+FFFD, as encoding/json does).
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", "quote\" back\\slash", "\x00\x1f\n\t", "é€😀", "\xff\xfe", "<>&\u2028"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := appendString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("appendString(%q) = %s, not a JSON string: %v", s, b, err)
		}
		want, _ := json.Marshal(s)
		var wantS string
		_ = json.Unmarshal(want, &wantS)
		if got != wantS {
			t.Fatalf("appendString(%q) decodes to %q, want %q", s, got, wantS)
		}
	})
}

// TestMessagesOfABatch: the messages of one batch share an arena and slabs; each must still
// be its own event's message, even when escapes make the arena outgrow its estimate, and an
// event that cannot be published stops the batch right before it.
func TestMessagesOfABatch(t *testing.T) {
	at := time.Date(2026, 3, 2, 9, 30, 0, 0, time.UTC)
	batch := []eventstore.RecordedEvent{
		{Position: 7, Stream: "payment-pay-1", ID: "id-7", Type: "ledger.payment.transferred.v1", RecordedAt: at, Data: []byte(`{"a":1}`),
			Metadata: eventstore.Metadata{TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}},
		// Control characters are escaped to six bytes each: far beyond the estimate.
		{Position: 8, Stream: "account-acc-2", ID: "id-8", Type: "ledger.account.credited.v1", RecordedAt: at, Data: []byte(`{"b":"x"}`),
			Metadata: eventstore.Metadata{CausationID: strings.Repeat("\x01", 500)}},
		{Position: 9, Stream: "account-acc-3", ID: "id-9", Type: "ledger.account.debited.v1", RecordedAt: at, Data: []byte(`[]`)},
	}
	names := TopicNames{}.withDefaults()
	msgs, err := names.messages(batch)
	if err != nil || len(msgs) != len(batch) {
		t.Fatalf("messages of %d events: %d messages, %v; want %d, nil", len(batch), len(msgs), err, len(batch))
	}
	for i, m := range msgs {
		e := &batch[i]
		wantValue, _ := appendEnvelope(nil, e)
		value, _ := m.Value.Encode()
		if string(value) != string(wantValue) {
			t.Errorf("event %d: value\n%s\nwant\n%s", e.Position, value, wantValue)
		}
		if !json.Valid(value) {
			t.Errorf("event %d: value is not JSON: %s", e.Position, value)
		}
		if m.Value.Length() != len(wantValue) {
			t.Errorf("event %d: value length %d, want %d", e.Position, m.Value.Length(), len(wantValue))
		}
		_, wantKey, _ := names.route(e)
		if k, _ := m.Key.Encode(); string(k) != wantKey || m.Key.Length() != len(wantKey) {
			t.Errorf("event %d: key %q (length %d), want %q", e.Position, k, m.Key.Length(), wantKey)
		}
		if pos, ok := positionOf(m); !ok || pos != e.Position {
			t.Errorf("event %d: position %d (%t)", e.Position, pos, ok)
		}
		got := map[string]string{}
		for _, h := range m.Headers {
			got[string(h.Key)] = string(h.Value)
		}
		want := map[string]string{HeaderEventID: e.ID, HeaderEventType: e.Type, HeaderPosition: strconv.FormatUint(e.Position, 10),
			HeaderStream: e.Stream, HeaderContentType: ContentType}
		if e.Metadata.TraceParent != "" {
			want[HeaderTraceParent] = e.Metadata.TraceParent
		}
		if !maps.Equal(got, want) {
			t.Errorf("event %d: headers %v, want %v", e.Position, got, want)
		}
	}

	// The second event cannot be routed: the first one's message comes back with the error.
	batch[1].Stream = "ledger-x"
	msgs, err = names.messages(batch)
	if err == nil || len(msgs) != 1 {
		t.Fatalf("a batch with an unroutable second event: %d messages, %v; want 1 and an error", len(msgs), err)
	}
	if pos, _ := positionOf(msgs[0]); pos != 7 {
		t.Fatalf("the message before the unroutable event is position %d, want 7", pos)
	}
}

// TestPositionOfForeignMessage: a message the relay did not build has no position.
func TestPositionOfForeignMessage(t *testing.T) {
	for _, md := range []any{nil, uint64(5), (*uint64)(nil), "5"} {
		if pos, ok := positionOf(&sarama.ProducerMessage{Metadata: md}); ok {
			t.Errorf("positionOf(metadata %#v) = %d, true; want false", md, pos)
		}
	}
}

// BenchmarkMessages is the relay's encoding alone: allocations and time per event for
// batches of 1,000 transfer-like events.
func BenchmarkMessages(b *testing.B) {
	batch := make([]eventstore.RecordedEvent, 1000)
	for i := range batch {
		batch[i] = eventstore.RecordedEvent{Position: uint64(i + 1), Stream: "account-cust-17", StreamVersion: 42, ID: "01955d6c-1f8a-7c3e-9a41-000000000003",
			Type: "ledger.account.credited.v1", RecordedAt: time.Now(),
			Data:     []byte(`{"account_id":"cust-17","payment_id":"pay-000123","amount":{"minor":"100","asset":{"code":"USD","scale":2}},"balance_after":{"minor":"4200","asset":{"code":"USD","scale":2}}}`),
			Metadata: eventstore.Metadata{CorrelationID: "pay-000123", TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}
	}
	names := TopicNames{}.withDefaults()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := names.messages(batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/event")
}
