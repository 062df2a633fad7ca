package telemetry

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// RelayMetrics are the outbox relay's metrics (names in names.go). The relay calls them;
// the dashboard and the "relay stalled" alert read them.
type RelayMetrics struct {
	published     *prometheus.CounterVec
	publishErrors *prometheus.CounterVec
	checkpoint    prometheus.Gauge
	lagEvents     prometheus.Gauge
	lagSeconds    prometheus.Gauge
	inFlight      prometheus.Gauge
	latency       prometheus.Histogram
}

// RelayMetrics registers the relay's metrics. Call it once per registry.
func (t *Telemetry) RelayMetrics() (*RelayMetrics, error) {
	m := &RelayMetrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricRelayPublished,
			Help: "Messages the broker acknowledged, by topic."}, []string{"topic"}),
		publishErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricRelayPublishErrors,
			Help: "Publishes the broker refused or that timed out, by topic."}, []string{"topic"}),
		checkpoint: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricRelayCheckpoint,
			Help: "Log position up to which every event was acknowledged by the broker."}),
		lagEvents: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricRelayLagEvents,
			Help: "Events in the log the relay has not had acknowledged yet."}),
		lagSeconds: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricRelayLagSeconds,
			Help: "Age of the oldest event not yet acknowledged (0 when caught up)."}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricRelayInFlight,
			Help: "Messages sent to the broker and not yet acknowledged."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: MetricRelayLatency,
			Help:    "Time from an event's commit (recorded time) to the broker's acknowledgement.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}),
	}
	for _, c := range []prometheus.Collector{m.published, m.publishErrors, m.checkpoint, m.lagEvents, m.lagSeconds, m.inFlight, m.latency} {
		if err := t.registry.Register(c); err != nil {
			return nil, fmt.Errorf("telemetry: register relay metrics: %w", err)
		}
	}
	return m, nil
}

// Acked records one message the broker acknowledged, recorded (committed) at recordedAt.
func (m *RelayMetrics) Acked(topic string, recordedAt time.Time) {
	m.published.WithLabelValues(topic).Inc()
	m.latency.Observe(time.Since(recordedAt).Seconds())
}

// PublishFailed records one publish the broker refused or that timed out.
func (m *RelayMetrics) PublishFailed(topic string) { m.publishErrors.WithLabelValues(topic).Inc() }

// Progress records where the relay is: its acknowledged checkpoint, the log's head, the age
// of the oldest unacknowledged event (0 when caught up) and the messages in flight.
func (m *RelayMetrics) Progress(checkpoint, head uint64, oldestUnacked time.Duration, inFlight int) {
	m.checkpoint.Set(float64(checkpoint))
	m.lagEvents.Set(float64(head - min(head, checkpoint)))
	m.lagSeconds.Set(oldestUnacked.Seconds())
	m.inFlight.Set(float64(inFlight))
}

// WebhookMetrics are the notification dispatcher's metrics.
type WebhookMetrics struct {
	attempts     [3]prometheus.Counter // delivered, failed, rejected
	deadLetters  *prometheus.CounterVec
	duration     prometheus.Histogram
	circuitsOpen prometheus.Gauge
}

// WebhookMetrics registers the dispatcher's metrics. Call it once per registry.
// deadLetterReasons are the reason label's values (services/dispatch Reasons()): each
// series exists from the start at 0, so that increase() sees a reason's first dead letter.
func (t *Telemetry) WebhookMetrics(deadLetterReasons ...string) (*WebhookMetrics, error) {
	attempts := prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricWebhookAttempts,
		Help: "Webhook delivery attempts, by outcome (delivered, failed: retried, rejected: 4xx)."}, []string{"outcome"})
	m := &WebhookMetrics{
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricWebhookDeadLetters,
			Help: "Notifications sent to the dead-letter topic, by reason (the securepay-dlq-reason header: attempts-exhausted, rejected, malformed, ...)."},
			[]string{"reason"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: MetricWebhookDuration,
			Help: "Time of one webhook HTTP attempt.", Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}),
		circuitsOpen: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricWebhookCircuitsOpen,
			Help: "Endpoints whose circuit breaker is open."}),
	}
	for _, c := range []prometheus.Collector{attempts, m.deadLetters, m.duration, m.circuitsOpen} {
		if err := t.registry.Register(c); err != nil {
			return nil, fmt.Errorf("telemetry: register webhook metrics: %w", err)
		}
	}
	for i, o := range []string{WebhookDelivered, WebhookFailed, WebhookRejected} {
		m.attempts[i] = attempts.WithLabelValues(o)
	}
	for _, r := range deadLetterReasons {
		m.deadLetters.WithLabelValues(r)
	}
	return m, nil
}

// Attempt records one delivery attempt and its outcome (WebhookDelivered, WebhookFailed or
// WebhookRejected; anything else counts as failed).
func (m *WebhookMetrics) Attempt(outcome string, took time.Duration) {
	i := 1
	switch outcome {
	case WebhookDelivered:
		i = 0
	case WebhookRejected:
		i = 2
	}
	m.attempts[i].Inc()
	m.duration.Observe(took.Seconds())
}

// DeadLettered records a notification given up on, for reason (one of the dispatcher's
// Reason constants: a closed set in code, never input).
func (m *WebhookMetrics) DeadLettered(reason string) { m.deadLetters.WithLabelValues(reason).Inc() }

// CircuitsOpen records how many endpoints' breakers are open.
func (m *WebhookMetrics) CircuitsOpen(n int) { m.circuitsOpen.Set(float64(n)) }
