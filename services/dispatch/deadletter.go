package dispatch

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/IBM/sarama"
)

// TopicDeadLetters receives the notifications the dispatcher gave up on: the original
// message (key, value and headers unchanged) plus the headers below, one message per
// endpoint that did not get it (docs/WEBHOOKS.md "Dead letters").
const TopicDeadLetters = "securepay.notifications.dlq.v1"

// The headers a dead letter adds to the original message's.
const (
	HeaderDLQReason   = "securepay-dlq-reason"   // one of the Reason constants
	HeaderDLQEndpoint = "securepay-dlq-endpoint" // the endpoint's id; empty when the message reached none
	HeaderDLQAttempts = "securepay-dlq-attempts" // attempts made (decimal), 0 when none was
	HeaderDLQError    = "securepay-dlq-error"    // the last error, at most 1 KiB
	HeaderDLQSource   = "securepay-dlq-source"   // topic/partition/offset of the original
)

// Why a notification was dead-lettered: a closed set, so dashboards and replay tools can
// switch on it.
const (
	// ReasonExhausted: every attempt failed (network error, timeout, 5xx, 429, or the
	// endpoint's circuit open).
	ReasonExhausted = "attempts-exhausted"
	// ReasonRejected: the endpoint answered a 4xx other than 408, 425 and 429 (or a 3xx:
	// redirects are not followed): it refused this notification, and would refuse it again.
	ReasonRejected = "rejected"
	// ReasonMalformed: the message is not a notification the relay writes (not the JSON
	// envelope, no id, key and stream disagree...); sent to no endpoint.
	ReasonMalformed = "malformed"
	// ReasonUnknownType: the event type is not an account event this dispatcher knows
	// (a newer ledger, or a message that does not belong on the topic).
	ReasonUnknownType = "unknown-type"
	// ReasonDirectory: the endpoint directory failed every time it was asked.
	ReasonDirectory = "directory-unavailable"
	// ReasonCircuitOpen: the endpoint's circuit was open and had been for longer than
	// Config.CircuitOpenGrace, or its partition's window was full: the notification was
	// given up on at once, so that a dead endpoint's backlog does not hold the partition's
	// other endpoints (docs/WEBHOOKS.md). The error header is the breaker's last failure.
	ReasonCircuitOpen = "circuit-open"
)

// Reasons lists every Reason constant.
func Reasons() []string {
	return []string{ReasonExhausted, ReasonRejected, ReasonMalformed, ReasonUnknownType, ReasonDirectory, ReasonCircuitOpen}
}

const (
	maxDLQErrorBytes = 1024
	dlqSendAttempts  = 5
)

// deadLetter is one notification given up on, for one endpoint or for all.
type deadLetter struct {
	msg      *sarama.ConsumerMessage
	reason   string
	endpoint string
	attempts int
	err      error
}

func (dl deadLetter) message(topic string) *sarama.ProducerMessage {
	errText := ""
	if dl.err != nil {
		errText = dl.err.Error()
	}
	if len(errText) > maxDLQErrorBytes {
		errText = errText[:maxDLQErrorBytes]
	}
	headers := make([]sarama.RecordHeader, 0, len(dl.msg.Headers)+5)
	for _, h := range dl.msg.Headers {
		if h != nil {
			headers = append(headers, *h)
		}
	}
	headers = append(headers,
		sarama.RecordHeader{Key: []byte(HeaderDLQReason), Value: []byte(dl.reason)},
		sarama.RecordHeader{Key: []byte(HeaderDLQEndpoint), Value: []byte(dl.endpoint)},
		sarama.RecordHeader{Key: []byte(HeaderDLQAttempts), Value: []byte(strconv.Itoa(dl.attempts))},
		sarama.RecordHeader{Key: []byte(HeaderDLQError), Value: []byte(errText)},
		sarama.RecordHeader{Key: []byte(HeaderDLQSource), Value: fmt.Appendf(nil, "%s/%d/%d", dl.msg.Topic, dl.msg.Partition, dl.msg.Offset)},
	)
	pm := &sarama.ProducerMessage{Topic: topic, Value: sarama.ByteEncoder(dl.msg.Value), Headers: headers}
	if dl.msg.Key != nil {
		pm.Key = sarama.ByteEncoder(dl.msg.Key) // same key, same per-account order in the DLQ
	}
	return pm
}

// sendDeadLetter publishes dl, retrying a few times (the producer retries too); an error
// means the dead-letter topic is unreachable, and the caller must not mark the message
// handled.
func (d *Dispatcher) sendDeadLetter(ctx context.Context, producer sarama.SyncProducer, dl deadLetter) error {
	var err error
	for i := range dlqSendAttempts {
		if i > 0 && !sleep(ctx, d.cfg.Backoff.Ceiling(i)) {
			return ctx.Err()
		}
		if _, _, err = producer.SendMessage(dl.message(d.cfg.DeadLetterTopic)); err == nil {
			if d.cfg.Metrics != nil {
				d.cfg.Metrics.DeadLettered(dl.reason)
			}
			d.log.WarnContext(ctx, "notification dead-lettered", "event_id", eventID(dl.msg), "endpoint", dl.endpoint,
				"reason", dl.reason, "attempts", dl.attempts, "error", dl.err)
			return nil
		}
	}
	return fmt.Errorf("dispatch: publish a dead letter to %s: %w", d.cfg.DeadLetterTopic, err)
}

// sleep waits d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
