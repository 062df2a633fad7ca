package relay

import (
	"encoding/json"
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
	if m.Topic != TopicPayments || m.Metadata != uint64(5) || !m.Timestamp.Equal(e.RecordedAt) {
		t.Fatalf("message topic %q metadata %v timestamp %v", m.Topic, m.Metadata, m.Timestamp)
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
