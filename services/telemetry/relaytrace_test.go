package telemetry_test

import (
	"context"
	"errors"
	"testing"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/services/telemetry"
)

// A batch whose commands' events are interleaved (the ledger appends a batch ordered by
// stream) still gives each sampled command one relay.publish child, which all of that
// command's messages name; an unsampled command and an event without a traceparent keep
// their own (""), and a failed publish marks every span as an error.
func TestRelayTracerOneChildPerCommand(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tel := newTelemetry(t, "securepay-relay", telemetry.Config{Exporter: spans})
	const (
		a        = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
		b        = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01"
		unsample = "00-2af7651916cd43dd8448eb211c80319c-d7ad6b7169203331-00"
	)
	var events []eventstore.RecordedEvent
	for i, tp := range []string{a, b, unsample, a, "", b, a} {
		events = append(events, eventstore.RecordedEvent{Position: uint64(i + 1), Metadata: eventstore.Metadata{TraceParent: tp}})
	}
	tps, done := tel.RelayTracer().Publish(context.Background(), events)
	done(errors.New("broker gone"))
	if len(tps) != len(events) {
		t.Fatalf("%d traceparents for %d events", len(tps), len(events))
	}
	if tps[0] == "" || tps[0] != tps[3] || tps[0] != tps[6] || tps[1] == "" || tps[1] != tps[5] || tps[0] == tps[1] {
		t.Errorf("traceparents %q: want one per sampled command, the same for all of its events", tps)
	}
	if tps[2] != "" || tps[4] != "" {
		t.Errorf("unsampled and missing traceparents became %q and %q, want \"\" (the event's own)", tps[2], tps[4])
	}
	children, batches := 0, 0
	for _, s := range spans.GetSpans() {
		if s.Status.Code.String() != "Error" {
			t.Errorf("span %s is not marked failed after a failed publish", s.Name)
		}
		switch s.Name {
		case telemetry.SpanRelayPublish:
			children++
			if p := telemetry.FormatTraceParent(s.SpanContext); p != tps[0] && p != tps[1] {
				t.Errorf("child span %s is not what any message carries", p)
			}
		case telemetry.SpanRelayBatch:
			batches++
			if len(s.Links) != 3 {
				t.Errorf("batch span has %d links, want 3 (one per command with a traceparent)", len(s.Links))
			}
		}
	}
	if children != 2 || batches != 1 {
		t.Errorf("%d %s and %d %s spans, want 2 and 1", children, telemetry.SpanRelayPublish, batches, telemetry.SpanRelayBatch)
	}
}
