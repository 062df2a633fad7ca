package dispatch

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/IBM/sarama"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/services/relay"
)

// Notification is one event of the notifications topic, checked: an account event
// (ledger.account.*) of a known type, keyed by its account. Body is the message's value,
// which is what a webhook carries, byte for byte (docs/KAFKA.md "Value").
type Notification struct {
	ID          string
	Type        string
	Account     string
	TraceParent string // from the message's header; "" when none
	// CorrelationID is the event's correlation_id ("" when none), for the logs.
	CorrelationID string
	Body          []byte
}

// NotificationTypes are the event types the dispatcher delivers: every account event the
// ledger writes, old versions included (the log keeps them forever).
func NotificationTypes() []string {
	var out []string
	for _, n := range domain.KnownEventNames() {
		if strings.HasPrefix(n, "ledger.account.") {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// maxBodyBytes bounds a notification's value: an account event is well under 4 KiB; one
// far larger is not something the relay wrote, and it is not posted to anyone.
const maxBodyBytes = 256 << 10

// maxCorrelationBytes is the schema's bound on correlation_id.
const maxCorrelationBytes = 256

// badMessage is a message that can never be delivered: it goes to the dead-letter topic
// with its reason, and the dispatcher moves on.
type badMessage struct {
	reason string // ReasonMalformed or ReasonUnknownType
	detail string
}

func (e *badMessage) Error() string { return e.reason + ": " + e.detail }

// decode checks a message of the notifications topic. known holds NotificationTypes.
func decode(m *sarama.ConsumerMessage, known map[string]bool) (Notification, error) {
	bad := func(reason, format string, args ...any) (Notification, error) {
		return Notification{}, &badMessage{reason: reason, detail: fmt.Sprintf(format, args...)}
	}
	if len(m.Value) > maxBodyBytes {
		return bad(ReasonMalformed, "value of %d bytes, more than %d", len(m.Value), maxBodyBytes)
	}
	var env struct {
		ID      string          `json:"id"`
		Type    string          `json:"type"`
		Stream  string          `json:"stream"`
		Payload json.RawMessage `json:"payload"`
		// Raw: a correlation id that is not a string only goes unlogged; it does not make
		// the notification undeliverable.
		Corr json.RawMessage `json:"correlation_id"`
	}
	if err := json.Unmarshal(m.Value, &env); err != nil {
		return bad(ReasonMalformed, "value is not the JSON object of docs/kafka/event.v1.schema.json: %v", err)
	}
	switch {
	case env.ID == "":
		return bad(ReasonMalformed, "no id")
	case env.Type == "":
		return bad(ReasonMalformed, "no type")
	case !known[env.Type]:
		return bad(ReasonUnknownType, "type %q is not a notification (ledger.account.*) this dispatcher knows", clip(env.Type))
	case len(bytes.TrimSpace(env.Payload)) == 0 || bytes.Equal(bytes.TrimSpace(env.Payload), []byte("null")):
		return bad(ReasonMalformed, "no payload")
	}
	account, _, ok := domain.ParseStream(env.Stream)
	if !ok || account == "" {
		return bad(ReasonMalformed, "stream %q is not an account's", clip(env.Stream))
	}
	if string(m.Key) != string(account) {
		return bad(ReasonMalformed, "key %q is not the account %q of the stream", clip(string(m.Key)), clip(string(account)))
	}
	if h := header(m, relay.HeaderEventID); h != "" && h != env.ID {
		return bad(ReasonMalformed, "header %s %q differs from the value's id %q", relay.HeaderEventID, clip(h), clip(env.ID))
	}
	var corr string
	if json.Unmarshal(env.Corr, &corr) != nil || len(corr) > maxCorrelationBytes {
		corr = "" // the schema's bound: anything longer is not the relay's, and not logged
	}
	return Notification{ID: env.ID, Type: env.Type, Account: string(account), TraceParent: header(m, relay.HeaderTraceParent), CorrelationID: corr, Body: m.Value}, nil
}

func header(m *sarama.ConsumerMessage, key string) string {
	for _, h := range m.Headers {
		if h != nil && string(h.Key) == key {
			return string(h.Value)
		}
	}
	return ""
}
