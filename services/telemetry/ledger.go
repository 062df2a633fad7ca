package telemetry

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/services/ledger"
)

// ledgerTracer is the instrumentation scope of the write path's spans.
const ledgerTracer = "github.com/securepay/securepay/services/ledger"

// SpanBatchAppend is the span of one batch's atomic append: a root of its own that links to
// the span of every sampled command in the batch.
const SpanBatchAppend = "ledger.append_batch"

// LedgerObserver is the ledger.Observer of a process: metrics always, spans when tracing.
//
// Tracing: each command of a sampled request gets a span ("ledger.Transfer", ...) under the
// request's span, and its events carry that span as their traceparent. A batch is appended
// under one span of its own, a new root that links to the span of every sampled command in
// it (one batch, hundreds of traces: a parent would pick one), and each of those command
// spans links back to the batch span, so that a transfer's own trace leads to its durable
// write (and the batch's PostgreSQL statements) without a span per command for it.
//
// What an unsampled command costs is one context lookup: the process's sampler is parent
// based, so a child of an unsampled request span could never be recorded, and the
// observer does not start it (no span id, no traceparent built: the events keep the
// request's own traceparent, as docs/EVENTS.md specifies). A batch with no sampled command
// starts no span either; one with any is always recorded (see linkedSampler), so that
// every link a sampled command holds leads to a span that was exported.
type LedgerObserver struct {
	tracer trace.Tracer // nil when tracing is off: no span is started at all

	appendDur     [3]prometheus.Observer // by outcome: ok, conflict, error
	batchCommands prometheus.Observer
	batchEvents   prometheus.Observer
	conflicts     prometheus.Counter
	retries       map[string]prometheus.Counter
	commandDur    *prometheus.HistogramVec

	// links holds *[]trace.Link buffers for batch spans: the SDK copies a span's links
	// when it starts, so one buffer serves batch after batch.
	links sync.Pool
}

var _ ledger.Observer = (*LedgerObserver)(nil)

// LedgerObserver registers the write path's metrics and returns the observer to put in
// ledger.Config.Observer. Call it once per registry (a second call reports the duplicate).
func (t *Telemetry) LedgerObserver() (*LedgerObserver, error) {
	o := &LedgerObserver{retries: map[string]prometheus.Counter{}}
	if t.Tracing() {
		o.tracer = t.Tracer(ledgerTracer)
	}
	appendDur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: MetricAppendDuration, Help: "Time of one batch's atomic append to the event store, by outcome.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"outcome"})
	sizes := []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096}
	batchCommands := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: MetricAppendBatchCommands, Help: "Commands decided together and appended in one batch.", Buckets: sizes})
	batchEvents := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: MetricAppendBatchEvents, Help: "Events appended by one batch.", Buckets: append(sizes, 10_000)})
	conflicts := prometheus.NewCounter(prometheus.CounterOpts{
		Name: MetricAppendConflicts, Help: "Batch appends the store refused because a stream was not at the expected version."})
	retries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricLedgerRetries, Help: "Commands decided again, by reason."}, []string{"reason"})
	o.commandDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: MetricCommandDuration, Help: "Time from a command's arrival at the ledger to its answer, by command and outcome.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"command", "outcome"})
	for _, c := range []prometheus.Collector{appendDur, batchCommands, batchEvents, conflicts, retries, o.commandDur} {
		if err := t.registry.Register(c); err != nil {
			return nil, err
		}
	}
	for i, outcome := range []string{OutcomeOK, OutcomeConflict, OutcomeError} {
		o.appendDur[i] = appendDur.WithLabelValues(outcome)
	}
	o.batchCommands, o.batchEvents, o.conflicts = batchCommands, batchEvents, conflicts
	// Every reason is a series from the start, so rate() sees the first retry.
	for _, r := range ledger.RetryReasons() {
		o.retries[r] = retries.WithLabelValues(r)
	}
	return o, nil
}

// Command implements ledger.Observer.
func (o *LedgerObserver) Command(ctx context.Context, cmd domain.Command) (context.Context, string, func(ledger.Result, error)) {
	start := time.Now()
	spanName := commandSpanName(cmd)
	name := spanName[len("ledger."):]
	var span trace.Span
	traceParent := ""
	if o.tracer != nil && recordable(trace.SpanContextFromContext(ctx)) {
		ctx, span = o.tracer.Start(ctx, spanName)
		if sc := span.SpanContext(); sc.IsSampled() {
			traceParent = FormatTraceParent(sc)
		}
	}
	return ctx, traceParent, func(res ledger.Result, err error) {
		outcome := outcomeOf(res, err)
		o.commandDur.WithLabelValues(name, outcome).Observe(time.Since(start).Seconds())
		if span == nil {
			return
		}
		if span.IsRecording() {
			span.SetAttributes(attribute.String("securepay.command", name), attribute.String("securepay.outcome", outcome),
				attribute.Int64("securepay.log_position", int64(res.Position)))
			if outcome == OutcomeRefused {
				span.SetAttributes(attribute.String("securepay.refusal", string(domain.ReasonOf(err))))
			} else if outcome == OutcomeError {
				span.SetStatus(codes.Error, err.Error())
			}
		}
		span.End()
	}
}

// recordable reports whether a child of parent may be recorded: it has no parent (a new
// trace, the sampler decides) or a sampled one. The process's sampler is parent based
// (telemetry.go), so a child of an unsampled parent never is.
func recordable(parent trace.SpanContext) bool {
	return !parent.IsValid() || parent.IsSampled()
}

func outcomeOf(res ledger.Result, err error) string {
	switch {
	case err == nil && res.Replayed:
		return OutcomeReplayed
	case err == nil:
		return OutcomeOK
	case domain.IsDomainError(err):
		return OutcomeRefused
	case errors.Is(err, eventstore.ErrConflict):
		return OutcomeConflict
	default:
		return OutcomeError
	}
}

// Append implements ledger.Observer.
func (o *LedgerObserver) Append(ctx context.Context, commands []context.Context, events int) (context.Context, func(eventstore.AppendResult, error)) {
	start := time.Now()
	var batch trace.Span
	if o.tracer != nil {
		ctx, batch = o.startBatch(ctx, commands, events, start)
	}
	return ctx, func(res eventstore.AppendResult, err error) {
		end := time.Now()
		o.batchCommands.Observe(float64(len(commands)))
		o.batchEvents.Observe(float64(events))
		switch {
		case err == nil:
			o.appendDur[0].Observe(end.Sub(start).Seconds())
		case errors.Is(err, eventstore.ErrConflict):
			o.appendDur[1].Observe(end.Sub(start).Seconds())
			o.conflicts.Inc()
		default:
			o.appendDur[2].Observe(end.Sub(start).Seconds())
		}
		if batch == nil {
			return
		}
		if err != nil {
			batch.SetStatus(codes.Error, err.Error())
		} else {
			batch.SetAttributes(attribute.Int64("securepay.log_position.first", int64(res.FirstPosition)),
				attribute.Int64("securepay.log_position.last", int64(res.LastPosition)))
		}
		batch.End(trace.WithTimestamp(end))
	}
}

// startBatch starts the span of a batch's append when a command in it is sampled, links it
// to every sampled command span and each of those back to it; nil when none is sampled.
// At most MaxLinks commands are linked (the span's limit); the batch's size is an
// attribute whatever it is.
func (o *LedgerObserver) startBatch(ctx context.Context, commands []context.Context, events int, start time.Time) (context.Context, trace.Span) {
	buf, _ := o.links.Get().(*[]trace.Link)
	if buf == nil {
		buf = new([]trace.Link)
	}
	links := (*buf)[:0]
	for _, c := range commands {
		if sc := trace.SpanContextFromContext(c); sc.IsSampled() && len(links) < MaxLinks {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	var batch trace.Span
	if len(links) > 0 {
		ctx, batch = o.tracer.Start(ctx, SpanBatchAppend, trace.WithNewRoot(), trace.WithLinks(links...), trace.WithTimestamp(start),
			trace.WithAttributes(attribute.Int("securepay.batch.commands", len(commands)), attribute.Int("securepay.batch.events", events)))
		back := trace.Link{SpanContext: batch.SpanContext()}
		for _, c := range commands {
			if s := trace.SpanFromContext(c); s.SpanContext().IsSampled() {
				// A command decided again (a conflict, a failed speculation) joins a
				// later batch too and links to each: every attempt is in its trace.
				s.AddLink(back)
			}
		}
	}
	clear(links) // the buffer must not keep span contexts (their trace state) alive
	*buf = links[:0]
	o.links.Put(buf)
	return ctx, batch
}

// Retried implements ledger.Observer.
func (o *LedgerObserver) Retried(reason string) {
	if c, ok := o.retries[reason]; ok {
		c.Inc()
	}
}

// CommandName is the metric label of a command: a closed set.
func CommandName(cmd domain.Command) string { return commandSpanName(cmd)[len("ledger."):] }

// commandSpanName is the span name of a command, "ledger." and its label: one constant,
// so naming a span allocates nothing.
func commandSpanName(cmd domain.Command) string {
	switch cmd.(type) {
	case domain.OpenAccount, *domain.OpenAccount:
		return "ledger.OpenAccount"
	case domain.FreezeAccount, *domain.FreezeAccount:
		return "ledger.FreezeAccount"
	case domain.UnfreezeAccount, *domain.UnfreezeAccount:
		return "ledger.UnfreezeAccount"
	case domain.CloseAccount, *domain.CloseAccount:
		return "ledger.CloseAccount"
	case domain.Transfer, *domain.Transfer:
		return "ledger.Transfer"
	case domain.BatchTransfer, *domain.BatchTransfer:
		return "ledger.BatchTransfer"
	case domain.Authorise, *domain.Authorise:
		return "ledger.Authorise"
	case domain.Capture, *domain.Capture:
		return "ledger.Capture"
	case domain.Void, *domain.Void:
		return "ledger.Void"
	case domain.Expire, *domain.Expire:
		return "ledger.Expire"
	case domain.Refund, *domain.Refund:
		return "ledger.Refund"
	default:
		return "ledger.other"
	}
}

// FormatTraceParent is the W3C traceparent of sc ("" when sc is not valid).
func FormatTraceParent(sc trace.SpanContext) string {
	if !sc.IsValid() {
		return ""
	}
	const hexdigits = "0123456789abcdef"
	var b [55]byte
	b[0], b[1], b[2] = '0', '0', '-'
	tid, sid := sc.TraceID(), sc.SpanID()
	for i, v := range tid {
		b[3+2*i], b[4+2*i] = hexdigits[v>>4], hexdigits[v&0xf]
	}
	b[35] = '-'
	for i, v := range sid {
		b[36+2*i], b[37+2*i] = hexdigits[v>>4], hexdigits[v&0xf]
	}
	b[52] = '-'
	f := sc.TraceFlags()
	b[53], b[54] = hexdigits[f>>4], hexdigits[f&0xf]
	return string(b[:])
}

// ParseTraceParent is the span context a W3C traceparent names, marked remote: what a
// projector or the relay continues from an event's metadata. ok is false for anything
// that is not a valid traceparent.
func ParseTraceParent(tp string) (sc trace.SpanContext, ok bool) {
	if len(tp) < 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-' || (len(tp) > 55 && tp[55] != '-') || tp[:2] == "ff" {
		return trace.SpanContext{}, false
	}
	tid, err := trace.TraceIDFromHex(tp[3:35])
	if err != nil {
		return trace.SpanContext{}, false
	}
	sid, err := trace.SpanIDFromHex(tp[36:52])
	if err != nil {
		return trace.SpanContext{}, false
	}
	var flags byte
	for _, c := range []byte(tp[53:55]) {
		switch {
		case c >= '0' && c <= '9':
			flags = flags<<4 | (c - '0')
		case c >= 'a' && c <= 'f':
			flags = flags<<4 | (c - 'a' + 10)
		default:
			return trace.SpanContext{}, false
		}
	}
	sc = trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.TraceFlags(flags) & trace.FlagsSampled, Remote: true})
	return sc, sc.IsValid()
}
