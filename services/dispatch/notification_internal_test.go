package dispatch

import (
	"errors"
	"strings"
	"testing"

	"github.com/IBM/sarama"

	"github.com/securepay/securepay/services/relay"
)

func TestDecode(t *testing.T) {
	known := map[string]bool{}
	for _, n := range NotificationTypes() {
		known[n] = true
	}
	good := `{"id":"e1","type":"ledger.account.credited.v1","position":7,"stream":"account-alice","payload":{"account_id":"alice"}}`
	withCorr := func(corr string) string {
		return `{"id":"e1","type":"ledger.account.credited.v1","correlation_id":` + corr + `,"stream":"account-alice","payload":{"account_id":"alice"}}`
	}
	cases := []struct {
		name, key, value, idHeader string
		reason                     string // "": accepted
		corr                       string // when accepted: the correlation id for the logs
	}{
		{"a credit", "alice", good, "e1", "", ""},
		{"with its correlation id", "alice", withCorr(`"pay-1"`), "", "", "pay-1"},
		{"a correlation id that is not a string is not logged", "alice", withCorr(`42`), "", "", ""},
		{"a correlation id longer than the schema's 256 is not logged", "alice", withCorr(`"` + strings.Repeat("c", 257) + `"`), "", "", ""},
		{"no id header is fine", "alice", good, "", "", ""},
		{"not JSON", "alice", "not json", "", ReasonMalformed, ""},
		{"a JSON array", "alice", `[1,2]`, "", ReasonMalformed, ""},
		{"no id", "alice", `{"type":"ledger.account.credited.v1","stream":"account-alice","payload":{}}`, "", ReasonMalformed, ""},
		{"no type", "alice", `{"id":"e1","stream":"account-alice","payload":{}}`, "", ReasonMalformed, ""},
		{"a payment event", "alice", `{"id":"e1","type":"ledger.payment.transferred.v1","stream":"account-alice","payload":{}}`, "", ReasonUnknownType, ""},
		{"a future account event", "alice", `{"id":"e1","type":"ledger.account.renamed.v9","stream":"account-alice","payload":{}}`, "", ReasonUnknownType, ""},
		{"no payload", "alice", `{"id":"e1","type":"ledger.account.credited.v1","stream":"account-alice"}`, "", ReasonMalformed, ""},
		{"null payload", "alice", `{"id":"e1","type":"ledger.account.credited.v1","stream":"account-alice","payload":null}`, "", ReasonMalformed, ""},
		{"a payment stream", "alice", `{"id":"e1","type":"ledger.account.credited.v1","stream":"payment-p1","payload":{}}`, "", ReasonMalformed, ""},
		{"key and stream disagree", "bob", good, "", ReasonMalformed, ""},
		{"no key", "", good, "", ReasonMalformed, ""},
		{"header id and value id disagree", "alice", good, "e2", ReasonMalformed, ""},
		{"too large", "alice", `{"id":"` + strings.Repeat("x", maxBodyBytes) + `"}`, "", ReasonMalformed, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := &sarama.ConsumerMessage{Key: []byte(tc.key), Value: []byte(tc.value)}
			if tc.idHeader != "" {
				m.Headers = []*sarama.RecordHeader{{Key: []byte(relay.HeaderEventID), Value: []byte(tc.idHeader)}}
			}
			n, err := decode(m, known)
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("decode = %v, want accepted", err)
				}
				if n.ID != "e1" || n.Account != "alice" || n.Type != "ledger.account.credited.v1" || string(n.Body) != tc.value || n.CorrelationID != tc.corr {
					t.Fatalf("decode = %+v, want e1/alice/credited with the value as body and correlation id %q", n, tc.corr)
				}
				return
			}
			var bad *badMessage
			if !errors.As(err, &bad) || bad.reason != tc.reason {
				t.Fatalf("decode = %v, want a bad message with reason %s", err, tc.reason)
			}
		})
	}
}

// Every account event the ledger knows is delivered, and nothing else.
func TestNotificationTypesAreTheAccountEvents(t *testing.T) {
	types := NotificationTypes()
	if len(types) < 9 {
		t.Fatalf("NotificationTypes = %v: want at least the 9 account events of docs/KAFKA.md", types)
	}
	for _, n := range types {
		if !strings.HasPrefix(n, "ledger.account.") {
			t.Errorf("NotificationTypes includes %q, not an account event", n)
		}
	}
}
