package telemetry

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons the gateway refuses a call itself, before forwarding it: the values of the
// reason label of MetricGatewayRefusals, a closed set so a series never comes from input.
const (
	RefusalUnauthenticated = "unauthenticated"     // no token, not a bearer token, or a token refused
	RefusalForbidden       = "forbidden"           // the policy refused it (PERMISSION_DENIED, or NOT_FOUND for another's object)
	RefusalRateLimited     = "rate_limited"        // the principal's call rate is spent
	RefusalStreamQuota     = "stream_quota"        // the principal holds its most open streams
	RefusalLimiterDown     = "limiter_unavailable" // the rate limiter or stream quota (Redis) did not answer: failed closed
)

// RefusalReasons lists every reason label value.
func RefusalReasons() []string {
	return []string{RefusalUnauthenticated, RefusalForbidden, RefusalRateLimited, RefusalStreamQuota, RefusalLimiterDown}
}

// GatewayMetrics are the public gateway's own metrics: the calls it refuses at the edge,
// and how many calls travel together to payments.
// The RPC histogram (RPCInterceptors) counts them too, by code; this says why, which the
// code alone does not (RESOURCE_EXHAUSTED is both the rate limit and the stream quota,
// NOT_FOUND both a missing object and another principal's). A nil *GatewayMetrics counts
// nothing.
type GatewayMetrics struct {
	refusals     map[string]prometheus.Counter
	forwardCalls prometheus.Histogram
}

// GatewayMetrics registers the gateway's metrics. Call it once per registry.
func (t *Telemetry) GatewayMetrics() (*GatewayMetrics, error) {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricGatewayRefusals,
		Help: "Calls the gateway refused itself, before forwarding, by reason (unauthenticated, forbidden, rate_limited, stream_quota, limiter_unavailable)."},
		[]string{"reason"})
	if err := t.registry.Register(vec); err != nil {
		return nil, fmt.Errorf("telemetry: register gateway metrics: %w", err)
	}
	forwardCalls := prometheus.NewHistogram(prometheus.HistogramOpts{Name: MetricGatewayHopForwardCalls,
		Help:    "Calls per HopService.Forward the gateway sent the payments component (1 while the hop keeps up; at most 1,024).",
		Buckets: prometheus.ExponentialBuckets(1, 2, 11)})
	if err := t.registry.Register(forwardCalls); err != nil {
		return nil, fmt.Errorf("telemetry: register gateway metrics: %w", err)
	}
	m := &GatewayMetrics{refusals: map[string]prometheus.Counter{}, forwardCalls: forwardCalls}
	for _, r := range RefusalReasons() {
		// Every series exists from the start at 0, so rate() and ratios see the first refusal.
		m.refusals[r] = vec.WithLabelValues(r)
	}
	return m, nil
}

// Forwarded observes one Forward of calls calls to payments.
func (m *GatewayMetrics) Forwarded(calls int) {
	if m == nil {
		return
	}
	m.forwardCalls.Observe(float64(calls))
}

// Refused counts one call refused for reason (a Refusal constant; anything else is a bug
// and is counted as forbidden rather than minting a series).
func (m *GatewayMetrics) Refused(reason string) {
	if m == nil {
		return
	}
	c, ok := m.refusals[reason]
	if !ok {
		c = m.refusals[RefusalForbidden]
	}
	c.Inc()
}
