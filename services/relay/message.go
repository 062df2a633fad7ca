package relay

import (
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/IBM/sarama"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// The topics and what goes to each (docs/KAFKA.md). Every event of the log goes to exactly
// one topic, chosen by its stream, so a consumer of both topics sees the whole log.
const (
	// TopicPayments carries the payment events (ledger.payment.*), keyed by payment id:
	// what happened to a payment, for settlement, reconciliation and reporting.
	TopicPayments = "securepay.payments.v1"
	// TopicNotifications carries the account events (ledger.account.*), keyed by account
	// id: every balance movement, hold and status change of an account, which is what
	// account holders are notified of (webhooks).
	TopicNotifications = "securepay.notifications.v1"
)

// TopicNames names the relay's two topics; the zero value means the constants above. Only
// tests, which share a broker, and operators running several ledgers on one cluster name
// them otherwise.
type TopicNames struct {
	Payments      string
	Notifications string
}

func (n TopicNames) withDefaults() TopicNames {
	if n.Payments == "" {
		n.Payments = TopicPayments
	}
	if n.Notifications == "" {
		n.Notifications = TopicNotifications
	}
	return n
}

func (n TopicNames) list() []string { return []string{n.Payments, n.Notifications} }

// The record headers of every message. Values are UTF-8 text.
const (
	HeaderEventID     = "securepay-event-id"
	HeaderEventType   = "securepay-event-type"
	HeaderPosition    = "securepay-position" // decimal
	HeaderStream      = "securepay-stream"
	HeaderTraceParent = "traceparent" // W3C trace context; absent when the event has none
	HeaderContentType = "content-type"
)

// ContentType is the value's media type: one JSON object (docs/kafka/event.v1.schema.json).
const ContentType = "application/json"

// route returns the topic and key of an event, from its stream.
func (n TopicNames) route(e *eventstore.RecordedEvent) (topic, key string, err error) {
	account, payment, ok := domain.ParseStream(e.Stream)
	switch {
	case !ok:
		return "", "", fmt.Errorf("relay: event %s at position %d is on stream %q, which is neither an account nor a payment: no topic for it", e.ID, e.Position, e.Stream)
	case payment != "":
		return n.Payments, string(payment), nil
	default:
		return n.Notifications, string(account), nil
	}
}

// message builds the Kafka message of an event. Its Metadata is the event's position,
// which the acknowledgement carries back.
func (n TopicNames) message(e *eventstore.RecordedEvent) (*sarama.ProducerMessage, error) {
	topic, key, err := n.route(e)
	if err != nil {
		return nil, err
	}
	value, err := appendEnvelope(make([]byte, 0, 512+len(e.Data)), e)
	if err != nil {
		return nil, err
	}
	pos := strconv.FormatUint(e.Position, 10)
	headers := make([]sarama.RecordHeader, 0, 6)
	headers = append(headers,
		sarama.RecordHeader{Key: []byte(HeaderEventID), Value: []byte(e.ID)},
		sarama.RecordHeader{Key: []byte(HeaderEventType), Value: []byte(e.Type)},
		sarama.RecordHeader{Key: []byte(HeaderPosition), Value: []byte(pos)},
		sarama.RecordHeader{Key: []byte(HeaderStream), Value: []byte(e.Stream)},
		sarama.RecordHeader{Key: []byte(HeaderContentType), Value: []byte(ContentType)},
	)
	if e.Metadata.TraceParent != "" {
		headers = append(headers, sarama.RecordHeader{Key: []byte(HeaderTraceParent), Value: []byte(e.Metadata.TraceParent)})
	}
	return &sarama.ProducerMessage{
		Topic:    topic,
		Key:      sarama.StringEncoder(key),
		Value:    sarama.ByteEncoder(value),
		Headers:  headers,
		Metadata: e.Position,
		// The broker's record time is when the ledger committed the event, so a consumer
		// can measure how late it sees it.
		Timestamp: e.RecordedAt,
	}, nil
}

// appendEnvelope appends the JSON value of an event's message (docs/kafka/event.v1.schema.json):
//
//	{"id":…,"type":…,"position":…,"stream":…,"stream_version":…,"recorded_at":…,
//	 "correlation_id":…,"causation_id":…,"traceparent":…,"hash":…,"payload":{…}}
//
// The payload is the stored event's JSON as it is in the log, byte for byte; the store
// holds JSON only, and anything else is refused here rather than sent.
func appendEnvelope(b []byte, e *eventstore.RecordedEvent) ([]byte, error) {
	if !json.Valid(e.Data) {
		return nil, fmt.Errorf("relay: event %s at position %d (%s): payload is not JSON", e.ID, e.Position, e.Type)
	}
	b = append(b, `{"id":`...)
	b = appendString(b, e.ID)
	b = append(b, `,"type":`...)
	b = appendString(b, e.Type)
	b = append(b, `,"position":`...)
	b = strconv.AppendUint(b, e.Position, 10)
	b = append(b, `,"stream":`...)
	b = appendString(b, e.Stream)
	b = append(b, `,"stream_version":`...)
	b = strconv.AppendUint(b, e.StreamVersion, 10)
	b = append(b, `,"recorded_at":"`...)
	b = e.RecordedAt.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000Z07:00")
	b = append(b, `","correlation_id":`...)
	b = appendString(b, e.Metadata.CorrelationID)
	b = append(b, `,"causation_id":`...)
	b = appendString(b, e.Metadata.CausationID)
	b = append(b, `,"traceparent":`...)
	b = appendString(b, e.Metadata.TraceParent)
	b = append(b, `,"hash":"`...)
	b = append(b, e.Hash.String()...)
	b = append(b, `","payload":`...)
	b = append(b, e.Data...)
	b = append(b, '}')
	return b, nil
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. The store holds valid UTF-8 text only; an
// invalid byte is written as U+FFFD rather than producing invalid JSON.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
