package telemetry

import (
	"context"
	"errors"
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

// Span names of the write path.
const (
	SpanBatchAppend   = "ledger.append_batch" // one batch's atomic append; links to every command's span
	SpanCommandAppend = "eventstore.append"   // in a command's own trace: the append its batch made
)

// LedgerObserver is the ledger.Observer of a process: metrics always, spans when tracing.
//
// Tracing: each command gets a span ("ledger.Transfer", ...) under the request's span, and
// its events carry that span as their traceparent. A batch is appended under one span of
// its own, a new root that links to the span of every command in it (one batch, hundreds
// of traces: a parent would pick one). So that a transfer's own trace still shows its
// durable write, each command's span also gets a child "eventstore.append" with the
// batch's start and end, linking back to the batch span.
type LedgerObserver struct {
	tracer trace.Tracer // nil when tracing is off: no span is started at all

	appendDur     [3]prometheus.Observer // by outcome: ok, conflict, error
	batchCommands prometheus.Observer
	batchEvents   prometheus.Observer
	conflicts     prometheus.Counter
	retries       map[string]prometheus.Counter
	commandDur    *prometheus.HistogramVec
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
	if o.tracer != nil {
		ctx, span = o.tracer.Start(ctx, spanName)
		traceParent = FormatTraceParent(span.SpanContext())
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
		links := make([]trace.Link, 0, len(commands))
		for _, c := range commands {
			if sc := trace.SpanContextFromContext(c); sc.IsSampled() {
				links = append(links, trace.Link{SpanContext: sc})
			}
		}
		ctx, batch = o.tracer.Start(ctx, SpanBatchAppend, trace.WithNewRoot(), trace.WithLinks(links...), trace.WithTimestamp(start),
			trace.WithAttributes(attribute.Int("securepay.batch.commands", len(commands)), attribute.Int("securepay.batch.events", events)))
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
		if !batch.SpanContext().IsSampled() {
			return
		}
		back := trace.WithLinks(trace.Link{SpanContext: batch.SpanContext()})
		for _, c := range commands {
			if !trace.SpanContextFromContext(c).IsSampled() {
				continue
			}
			_, s := o.tracer.Start(c, SpanCommandAppend, trace.WithTimestamp(start), back)
			if err != nil {
				s.SetStatus(codes.Error, err.Error())
			}
			s.End(trace.WithTimestamp(end))
		}
	}
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
