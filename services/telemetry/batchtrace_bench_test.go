package telemetry

import (
	"context"
	"fmt"
	"io"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/securepay/securepay/eventstore"
)

// BenchmarkRelayTrace is the relay's tracing of one 1,000-event batch (333 commands of 3
// events, each command in a trace of its own, every one or one in ten sampled), spans
// exported as JSON lines to
// io.Discard through the batch exporter: "batch" is the batch span with its links alone,
// "per-command" adds the relay.publish child of each command (what RelayTracer does).
// ns/op divided by 1,000 is the CPU the relay spends per event on tracing.
//
//	go test -run '^$' -bench BenchmarkRelayTrace -benchmem ./services/telemetry/
func BenchmarkRelayTrace(b *testing.B) {
	tel, err := New(context.Background(), Config{ServiceName: "bench", SpanWriter: io.Discard})
	if err != nil {
		b.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	batch := func(sampledEvery int) []eventstore.RecordedEvent {
		events := make([]eventstore.RecordedEvent, 1000)
		for i := range events {
			cmd := i / 3
			var flags trace.TraceFlags
			if cmd%sampledEvery == 0 {
				flags = trace.FlagsSampled
			}
			sc := trace.NewSpanContext(trace.SpanContextConfig{
				TraceID: trace.TraceID{1, byte(cmd >> 8), byte(cmd)}, SpanID: trace.SpanID{2, byte(cmd >> 8), byte(cmd)}, TraceFlags: flags,
			})
			events[i] = eventstore.RecordedEvent{Position: uint64(i + 1), Metadata: eventstore.Metadata{TraceParent: FormatTraceParent(sc)}}
		}
		return events
	}
	for _, c := range []struct {
		perCommand   bool
		sampledEvery int
	}{{false, 1}, {true, 1}, {true, 10}} {
		events := batch(c.sampledEvery)
		bt := batchTrace{tracer: tel.Tracer(relayTracer), batchName: SpanRelayBatch, name: SpanRelayPublish, kind: trace.SpanKindProducer, noChildren: !c.perCommand}
		b.Run(fmt.Sprintf("per-command=%v/sampled=1in%d", c.perCommand, c.sampledEvery), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _, end := bt.start(context.Background(), events)
				end(nil)
			}
		})
	}
}
