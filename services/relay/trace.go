package relay

import (
	"context"
	"sync"

	"github.com/IBM/sarama"

	"github.com/securepay/securepay/eventstore"
)

// Tracer traces what the relay publishes; services/telemetry's RelayTracer is one.
type Tracer interface {
	// Publish is called once per batch read from the log, before its events are sent. It
	// returns the traceparent each event's message is to carry (index for index; "" keeps
	// the event's own, the span of the command that caused it) and done, which the relay
	// calls exactly once: with nil when the broker has acknowledged every event of the
	// batch, or with the error that ended the session before it did.
	Publish(ctx context.Context, batch []eventstore.RecordedEvent) (traceParents []string, done func(error))
}

// tracedBatches are the batches sent in one session whose done has not been called yet,
// in log order. The sender adds one before sending its first event, so an
// acknowledgement never arrives for a batch it does not know.
type tracedBatches struct {
	mu      sync.Mutex
	pending []tracedBatch
}

type tracedBatch struct {
	last uint64 // the batch's last position
	done func(error)
}

func (t *tracedBatches) add(last uint64, done func(error)) {
	t.mu.Lock()
	t.pending = append(t.pending, tracedBatch{last: last, done: done})
	t.mu.Unlock()
}

// acked ends every batch the contiguous acknowledged run now covers.
func (t *tracedBatches) acked(through uint64) {
	t.mu.Lock()
	n := 0
	for n < len(t.pending) && t.pending[n].last <= through {
		n++
	}
	ended := t.pending[:n:n]
	t.pending = t.pending[n:]
	t.mu.Unlock()
	for _, b := range ended {
		b.done(nil)
	}
}

// abandon ends every batch still pending with err: the session is over.
func (t *tracedBatches) abandon(err error) {
	t.mu.Lock()
	ended := t.pending
	t.pending = nil
	t.mu.Unlock()
	for _, b := range ended {
		b.done(err)
	}
}

// setTraceParent makes msg carry tp as its traceparent header.
func setTraceParent(msg *sarama.ProducerMessage, tp string) {
	for i := range msg.Headers {
		if string(msg.Headers[i].Key) == HeaderTraceParent {
			msg.Headers[i].Value = []byte(tp)
			return
		}
	}
	msg.Headers = append(msg.Headers, sarama.RecordHeader{Key: []byte(HeaderTraceParent), Value: []byte(tp)})
}
