package telemetry

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
)

// StatusFunc reports projectors' status: (*projections.Runner).Status, or an Admin's.
type StatusFunc func(ctx context.Context) ([]projections.Status, error)

// ObserveProjections exports the projectors' lag, read when Prometheus scrapes: the
// projectors' own path pays nothing for it. statusTimeout bounds one read (default 2s);
// a read that fails exports no lag (an alert on absent data says so) and counts a failure.
func (t *Telemetry) ObserveProjections(status StatusFunc, statusTimeout time.Duration) error {
	if status == nil {
		return fmt.Errorf("telemetry: ObserveProjections needs a status function")
	}
	if statusTimeout <= 0 {
		statusTimeout = 2 * time.Second
	}
	c := &projectionCollector{
		status:  status,
		timeout: statusTimeout,
		lagEvents: prometheus.NewDesc(MetricProjectionLagEvents,
			"Events in the log the projector has not applied yet.", []string{"projector"}, nil),
		lagSeconds: prometheus.NewDesc(MetricProjectionLagSecs,
			"Age of the oldest event the projector has not applied (0 when caught up).", []string{"projector"}, nil),
		checkpoint: prometheus.NewDesc(MetricProjectionCheckpt,
			"Log position the projector has applied up to.", []string{"projector"}, nil),
		running: prometheus.NewDesc(MetricProjectionUp,
			"1 when the projector is running (not retrying, stopped on an error, or stalled).", []string{"projector", "state"}, nil),
		head: prometheus.NewDesc(MetricLogHead, "Position of the last event in the global log.", nil, nil),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricProjectionStatusErr,
			Help: "Scrapes that could not read the projectors' status (the store did not answer)."}),
	}
	if err := t.registry.Register(c); err != nil {
		return fmt.Errorf("telemetry: register projection metrics: %w", err)
	}
	return nil
}

type projectionCollector struct {
	status                                           StatusFunc
	timeout                                          time.Duration
	lagEvents, lagSeconds, checkpoint, running, head *prometheus.Desc
	failures                                         prometheus.Counter
}

func (c *projectionCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.lagEvents, c.lagSeconds, c.checkpoint, c.running, c.head} {
		ch <- d
	}
	c.failures.Describe(ch)
}

func (c *projectionCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	sts, err := c.status(ctx)
	if err != nil {
		c.failures.Inc()
	}
	var head uint64
	for _, st := range sts {
		head = max(head, st.Head)
		ch <- prometheus.MustNewConstMetric(c.lagEvents, prometheus.GaugeValue, float64(st.LagEvents), st.Name)
		ch <- prometheus.MustNewConstMetric(c.lagSeconds, prometheus.GaugeValue, st.LagSeconds, st.Name)
		ch <- prometheus.MustNewConstMetric(c.checkpoint, prometheus.GaugeValue, float64(st.Checkpoint), st.Name)
		up := 0.0
		if st.State == projections.StateRunning {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.running, prometheus.GaugeValue, up, st.Name, string(st.State))
	}
	if err == nil {
		ch <- prometheus.MustNewConstMetric(c.head, prometheus.GaugeValue, float64(head))
	}
	c.failures.Collect(ch)
}

// projectionTracer is the instrumentation scope of the projectors' spans.
const projectionTracer = "github.com/securepay/securepay/projections"

// SpanProjectionApply is the span of one projector's batch.
const SpanProjectionApply = "projection.apply"

// ProjectionObserver is projections.RunnerConfig.Observe: each applied batch is one span
// that links to the trace of every command whose events it holds (the events' traceparent),
// so a transfer's trace leads to the views it reached, as the batch append's span leads
// from it. Nil when tracing is off: the runner then observes nothing.
func (t *Telemetry) ProjectionObserver() func(ctx context.Context, projector string, batch []eventstore.RecordedEvent) (context.Context, func(error)) {
	if !t.Tracing() {
		return nil
	}
	tracer := t.Tracer(projectionTracer)
	return func(ctx context.Context, projector string, batch []eventstore.RecordedEvent) (context.Context, func(error)) {
		links := make([]trace.Link, 0, min(len(batch), MaxLinks))
		last := ""
		for _, e := range batch {
			// A command's events are consecutive and share one traceparent: link it once.
			if tp := e.Metadata.TraceParent; tp != "" && tp != last && len(links) < MaxLinks {
				if sc, ok := ParseTraceParent(tp); ok {
					links = append(links, trace.Link{SpanContext: sc})
				}
				last = tp
			}
		}
		ctx, span := tracer.Start(ctx, SpanProjectionApply, trace.WithNewRoot(), trace.WithLinks(links...),
			trace.WithAttributes(attribute.String("securepay.projector", projector), attribute.Int("securepay.batch.events", len(batch)),
				attribute.Int64("securepay.log_position.first", int64(batch[0].Position)),
				attribute.Int64("securepay.log_position.last", int64(batch[len(batch)-1].Position))))
		return ctx, func(err error) {
			if err != nil {
				span.SetStatus(codes.Error, err.Error())
			}
			span.End()
		}
	}
}
