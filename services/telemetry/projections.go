package telemetry

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
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

// ProjectionObserver is projections.RunnerConfig.Observe: each applied batch is a span
// that links to the command span of every transfer whose events it holds (the events'
// traceparent), and each of those commands gets a child span of the same name and timing
// in its own trace (batchTrace), so a transfer's trace shows the views it reached. Nil when
// tracing is off: the runner then observes nothing.
func (t *Telemetry) ProjectionObserver() func(ctx context.Context, projector string, batch []eventstore.RecordedEvent) (context.Context, func(error)) {
	if !t.Tracing() {
		return nil
	}
	bt := batchTrace{tracer: t.Tracer(projectionTracer), batchName: SpanProjectionApply, name: SpanProjectionApply, kind: trace.SpanKindConsumer}
	return func(ctx context.Context, projector string, batch []eventstore.RecordedEvent) (context.Context, func(error)) {
		ctx, _, end := bt.start(ctx, batch, attribute.String("securepay.projector", projector))
		return ctx, end
	}
}
