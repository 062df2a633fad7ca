package telemetry

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/services/relay"
)

// relayTracer is the instrumentation scope of the relay's spans.
const relayTracer = "github.com/securepay/securepay/services/relay"

// Span names of the relay.
const (
	SpanRelayBatch   = "relay.publish_batch" // one batch sent to Kafka, until the broker acknowledged all of it
	SpanRelayPublish = "relay.publish"       // in a command's own trace: the publish of its events (kind producer)
)

// RelayTracer is relay.Config.Tracer: each batch the relay sends is a span from the send
// to the broker's acknowledgement of its last event, linking to every command whose events
// it holds; each sampled command gets a relay.publish child span (kind producer) in its
// own trace, and its events' messages carry THAT span as their traceparent header, so a
// consumer's span (the dispatcher's) is a child of the publish, which is a child of the
// ledger command that caused the events. Nil when tracing is off.
func (t *Telemetry) RelayTracer() relay.Tracer {
	if !t.Tracing() {
		return nil
	}
	return relayTrace{batchTrace{tracer: t.Tracer(relayTracer), batchName: SpanRelayBatch, name: SpanRelayPublish, kind: trace.SpanKindProducer}}
}

type relayTrace struct{ bt batchTrace }

func (r relayTrace) Publish(ctx context.Context, batch []eventstore.RecordedEvent) ([]string, func(error)) {
	_, tps, end := r.bt.start(ctx, batch, attribute.String("messaging.system", "kafka"))
	return tps, end
}
