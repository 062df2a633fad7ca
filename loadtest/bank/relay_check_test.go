package bank

import (
	"fmt"
	"strings"
	"testing"

	"github.com/IBM/sarama"

	"github.com/securepay/securepay/services/relay"
)

// TestCheckRelayMessages: the relay check of the kill-relay fault finds every kind of
// violation it is there for, and accepts redeliveries.
func TestCheckRelayMessages(t *testing.T) {
	topics := relay.TopicNames{Payments: "p", Notifications: "n"}
	log := []logEvent{
		{1, "e1", "account-a", "h1"},
		{2, "e2", "payment-x", "h2"},
		{3, "e3", "account-a", "h3"},
		{4, "e4", "account-b", "h4"},
	}
	// msg builds the message the relay publishes for log[i], at offset off of partition 0.
	msg := func(i int, off int64) *sarama.ConsumerMessage {
		e := log[i]
		topic, key := "n", strings.TrimPrefix(e.stream, "account-")
		if strings.HasPrefix(e.stream, "payment-") {
			topic, key = "p", strings.TrimPrefix(e.stream, "payment-")
		}
		return &sarama.ConsumerMessage{Topic: topic, Offset: off, Key: []byte(key),
			Headers: []*sarama.RecordHeader{
				{Key: []byte(relay.HeaderEventID), Value: []byte(e.id)},
				{Key: []byte(relay.HeaderPosition), Value: []byte(fmt.Sprint(e.position))},
			},
			Value: fmt.Appendf(nil, `{"position":%d,"stream":%q,"hash":%q}`, e.position, e.stream, e.hash)}
	}
	edit := func(m *sarama.ConsumerMessage, f func(*sarama.ConsumerMessage)) *sarama.ConsumerMessage {
		f(m)
		return m
	}
	for _, tc := range []struct {
		name string
		msgs []*sarama.ConsumerMessage
		want []string // substrings, one per violation; none means accepted
	}{
		{name: "every event once", msgs: []*sarama.ConsumerMessage{msg(0, 0), msg(1, 0), msg(2, 1), msg(3, 2)}},
		{name: "a redelivered suffix", msgs: []*sarama.ConsumerMessage{msg(0, 0), msg(1, 0), msg(2, 1), msg(0, 2), msg(2, 3), msg(3, 4)}},
		{name: "an event lost", msgs: []*sarama.ConsumerMessage{msg(0, 0), msg(1, 0), msg(3, 2)},
			want: []string{"event e3 at position 3 (stream account-a) is in the log but not in Kafka: lost"}},
		{name: "an event invented", msgs: []*sarama.ConsumerMessage{msg(0, 0), msg(1, 0), msg(2, 1), msg(3, 2),
			edit(msg(3, 3), func(m *sarama.ConsumerMessage) { m.Headers[0].Value = []byte("e9") })},
			want: []string{`carries event id "e9", which is not in the log up to its head: invented`}},
		{name: "a hash that is not the log's", msgs: []*sarama.ConsumerMessage{msg(0, 0), msg(1, 0), msg(2, 1),
			edit(msg(3, 2), func(m *sarama.ConsumerMessage) { m.Value = []byte(`{"position":4,"stream":"account-b","hash":"hX"}`) })},
			want: []string{"hash hX", "lost"}},
		{name: "a wrong key", msgs: []*sarama.ConsumerMessage{msg(0, 0), msg(1, 0), msg(2, 1),
			edit(msg(3, 2), func(m *sarama.ConsumerMessage) { m.Key = []byte("a") })},
			want: []string{`key "a"`, "lost"}},
		{name: "a key's events out of order", msgs: []*sarama.ConsumerMessage{msg(2, 0), msg(1, 0), msg(0, 1), msg(3, 2)},
			want: []string{"key n/a: event at position 1 first delivered after position 3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := checkRelayMessages(log, tc.msgs, topics)
			if len(got) != len(tc.want) {
				t.Fatalf("violations %q, want %d like %q", got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("violation %d is %q, want it to say %q", i, got[i], w)
				}
			}
		})
	}
}
