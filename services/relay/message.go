package relay

import (
	"encoding/hex"
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

// messages builds the Kafka messages of a batch of events, in order. Their Metadata is a
// *uint64 holding the event's position, which the acknowledgement carries back
// (positionOf). On an event it cannot publish it returns the messages of the events
// before it and the error.
//
// The batch costs a handful of allocations however many events it holds: the values, keys
// and header values share one byte arena, and the messages, headers, encoders and
// positions sit in slabs of the batch's size. sarama holds pointers into them until each
// message is acknowledged, so every batch gets slabs of its own, never reused: the garbage
// collector frees a batch once the producer dropped all of its messages. The window bounds
// how many batches that can be.
func (n TopicNames) messages(batch []eventstore.RecordedEvent) ([]*sarama.ProducerMessage, error) {
	if len(batch) == 0 {
		return nil, nil
	}
	size := len(headerKeys)
	for i := range batch {
		size += messageSize(&batch[i])
	}
	arena := make([]byte, 0, size)
	// The header names, once per batch: sarama only reads them.
	var keys [len(headerKeys)][]byte
	for i, k := range headerKeys {
		start := len(arena)
		arena = append(arena, k...)
		keys[i] = arena[start:len(arena):len(arena)]
	}
	// take returns what was appended to arena since start. If an append outgrew the
	// estimate, earlier slices keep the old array, which is never written again.
	take := func(start int) []byte { return arena[start:len(arena):len(arena)] }

	msgs := make([]sarama.ProducerMessage, len(batch))
	ptrs := make([]*sarama.ProducerMessage, 0, len(batch))
	headers := make([]sarama.RecordHeader, 0, len(batch)*len(headerKeys))
	encoders := make([]bytesEncoder, 2*len(batch))
	positions := make([]uint64, len(batch))
	for i := range batch {
		e := &batch[i]
		topic, key, err := n.route(e)
		if err != nil {
			return ptrs, err
		}
		start := len(arena)
		if arena, err = appendEnvelope(arena, e); err != nil {
			return ptrs, err
		}
		encoders[2*i] = take(start)
		start = len(arena)
		arena = append(arena, key...)
		encoders[2*i+1] = take(start)

		h := len(headers)
		headers = append(headers, sarama.RecordHeader{Key: keys[hEventID]})
		start = len(arena)
		arena = append(arena, e.ID...)
		headers[h].Value = take(start)
		headers = append(headers, sarama.RecordHeader{Key: keys[hEventType]})
		start = len(arena)
		arena = append(arena, e.Type...)
		headers[h+1].Value = take(start)
		headers = append(headers, sarama.RecordHeader{Key: keys[hPosition]})
		start = len(arena)
		arena = strconv.AppendUint(arena, e.Position, 10)
		headers[h+2].Value = take(start)
		headers = append(headers, sarama.RecordHeader{Key: keys[hStream]})
		start = len(arena)
		arena = append(arena, e.Stream...)
		headers[h+3].Value = take(start)
		headers = append(headers, sarama.RecordHeader{Key: keys[hContentType], Value: keys[hContentTypeValue]})
		if e.Metadata.TraceParent != "" {
			headers = append(headers, sarama.RecordHeader{Key: keys[hTraceParent]})
			start = len(arena)
			arena = append(arena, e.Metadata.TraceParent...)
			headers[len(headers)-1].Value = take(start)
		}

		positions[i] = e.Position
		msgs[i] = sarama.ProducerMessage{
			Topic:    topic,
			Key:      &encoders[2*i+1],
			Value:    &encoders[2*i],
			Headers:  headers[h:len(headers):len(headers)],
			Metadata: &positions[i],
			// The broker's record time is when the ledger committed the event, so a
			// consumer can measure how late it sees it.
			Timestamp: e.RecordedAt,
		}
		ptrs = append(ptrs, &msgs[i])
	}
	return ptrs, nil
}

// message builds the Kafka message of one event (messages of a batch of one).
func (n TopicNames) message(e *eventstore.RecordedEvent) (*sarama.ProducerMessage, error) {
	m, err := n.messages([]eventstore.RecordedEvent{*e})
	if err != nil {
		return nil, err
	}
	return m[0], nil
}

// positionOf returns the log position a message of messages carries in its Metadata.
func positionOf(m *sarama.ProducerMessage) (uint64, bool) {
	p, ok := m.Metadata.(*uint64)
	if !ok || p == nil {
		return 0, false
	}
	return *p, true
}

// bytesEncoder is a key or value in a batch's arena. Its methods are on the pointer, so
// storing &slab[i] in sarama's Encoder interface allocates nothing (a sarama.ByteEncoder,
// a slice, would be copied to the heap for every message).
type bytesEncoder []byte

func (b *bytesEncoder) Encode() ([]byte, error) { return *b, nil }
func (b *bytesEncoder) Length() int             { return len(*b) }

// headerKeys are the header names in the arena's order, and the content type's value.
var headerKeys = [...]string{
	hEventID: HeaderEventID, hEventType: HeaderEventType, hPosition: HeaderPosition, hStream: HeaderStream,
	hContentType: HeaderContentType, hTraceParent: HeaderTraceParent, hContentTypeValue: ContentType,
}

const (
	hEventID = iota
	hEventType
	hPosition
	hStream
	hContentType
	hTraceParent
	hContentTypeValue
)

// messageSize is about the bytes messages appends for e: the envelope's fixed text, its
// fields (room for a few escapes), the payload, then the key and header values. Only an
// estimate: a larger message makes the arena grow, which is correct, only slower.
func messageSize(e *eventstore.RecordedEvent) int {
	text := len(e.ID) + len(e.Type) + len(e.Stream) + len(e.Metadata.CorrelationID) + len(e.Metadata.CausationID) + len(e.Metadata.TraceParent)
	const fixed = 160 + 20 + 20 + 32 + 2*len(eventstore.Hash{}) // field names, two numbers, the time, the hex hash
	return fixed + text + text/8 + len(e.Data) +                // the envelope
		len(e.Stream) + text + 20 // the key (at most the stream), the header values
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
	b = hex.AppendEncode(b, e.Hash[:])
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
		// Most text (ids, types, streams) needs no escape: copy such runs whole.
		j := i
		for j < len(s) && s[j] >= 0x20 && s[j] < utf8.RuneSelf && s[j] != '"' && s[j] != '\\' {
			j++
		}
		if j > i {
			b = append(b, s[i:j]...)
			i = j
			continue
		}
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

// messageKey names a message's topic and key, for the relay's per-key bookkeeping.
func messageKey(m *sarama.ProducerMessage) string {
	if m.Key == nil {
		return m.Topic
	}
	k, _ := m.Key.Encode()
	return m.Topic + "/" + string(k)
}
