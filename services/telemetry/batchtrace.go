package telemetry

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/securepay/securepay/eventstore"
)

// batchTrace is how a stage that handles events in batches (a projector, the relay) shows
// up in the traces of the commands that caused them.
//
// One batch holds the events of hundreds of commands, each in a trace of its own: a span
// has one parent, so the batch's own span is a new root that links to every command's
// span (the events' traceparent). So that one payment's trace still shows the stage, each
// sampled command also gets a child span of its events' traceparent, with the batch's
// timing, that links back to the batch span: the shape of the ledger's batch append
// (LedgerObserver). The events with one traceparent (one command's) share one child. At
// most MaxLinks commands of a batch are linked and get a child.
type batchTrace struct {
	tracer          trace.Tracer
	batchName, name string
	kind            trace.SpanKind // of the per-command spans
	noChildren      bool           // the batch span alone (BenchmarkRelayTrace's baseline)
}

// start begins the batch's spans. traceParents[i] is the traceparent of the child span
// covering events[i] ("" when it has none: no traceparent, or one not sampled); end ends
// every span, as failed when err is not nil. attrs go on every span; the batch's size and
// positions on the batch span only.
func (b batchTrace) start(ctx context.Context, events []eventstore.RecordedEvent, attrs ...attribute.KeyValue) (_ context.Context, traceParents []string, end func(error)) {
	now := time.Now()
	// A command's events may be interleaved with other commands' in one batch (the
	// ledger's batch append orders them by stream), so commands are told apart by their
	// traceparent, not by runs of it. index maps a traceparent to its command's number.
	index := make(map[string]int, 16)
	var contexts []trace.SpanContext // by command number; invalid when it did not parse
	for i := range events {
		tp := events[i].Metadata.TraceParent
		if tp == "" || len(contexts) >= MaxLinks {
			continue
		}
		if _, seen := index[tp]; seen {
			continue
		}
		sc, _ := ParseTraceParent(tp)
		index[tp] = len(contexts)
		contexts = append(contexts, sc)
	}
	links := make([]trace.Link, 0, len(contexts))
	for _, sc := range contexts {
		if sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	nOwn := len(attrs) // the caller's attributes, which the children carry too
	attrs = append(attrs, attribute.Int("securepay.batch.events", len(events)))
	if len(events) > 0 {
		attrs = append(attrs, attribute.Int64("securepay.log_position.first", int64(events[0].Position)),
			attribute.Int64("securepay.log_position.last", int64(events[len(events)-1].Position)))
	}
	ctx, batch := b.tracer.Start(ctx, b.batchName, trace.WithNewRoot(), trace.WithLinks(links...),
		trace.WithAttributes(attrs...), trace.WithTimestamp(now))
	var children []trace.Span
	if batch.IsRecording() && !b.noChildren {
		toBatch := trace.WithLinks(trace.Link{SpanContext: batch.SpanContext()})
		childTP := make([]string, len(contexts)) // by command number; "" for none
		for n, sc := range contexts {
			if !sc.IsSampled() {
				continue
			}
			// The batch's attributes stay on the batch span, one link away: a child
			// costs the relay about 4 µs of CPU as it is (exported).
			_, child := b.tracer.Start(trace.ContextWithRemoteSpanContext(context.Background(), sc), b.name,
				trace.WithSpanKind(b.kind), toBatch, trace.WithAttributes(attrs[:nOwn]...), trace.WithTimestamp(now))
			children = append(children, child)
			childTP[n] = FormatTraceParent(child.SpanContext())
		}
		if len(children) > 0 {
			traceParents = make([]string, len(events))
			for i := range events {
				if n, ok := index[events[i].Metadata.TraceParent]; ok {
					traceParents[i] = childTP[n]
				}
			}
		}
	}
	return ctx, traceParents, func(err error) {
		at := trace.WithTimestamp(time.Now())
		for _, s := range append(children, batch) {
			if err != nil {
				s.SetStatus(codes.Error, err.Error())
			}
			s.End(at)
		}
	}
}
