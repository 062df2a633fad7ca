package telemetry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/otelconnect"
	"github.com/prometheus/client_golang/prometheus"
)

// RPCInterceptors returns the interceptors a Connect server or client of this process
// installs, outermost first: tracing (otelconnect; only when tracing is on) and the RPC
// metrics (servers only; clients pass through it).
//
// trust says, per request, whether a traceparent that arrives with it is our own (a call
// from another SecurePay component, e.g. edge.TrustGateway on the mTLS peer: the server
// span becomes its child) or a stranger's (the public edge: the server span starts a new
// trace and links to the caller's, so a client cannot choose our trace ids or sampling).
// Nil trusts no one; TrustAll everyone (tests, a component reachable only by ours).
func (t *Telemetry) RPCInterceptors(trust func(ctx context.Context) bool) ([]connect.Interceptor, error) {
	m, err := t.rpcMetrics()
	if err != nil {
		return nil, err
	}
	if !t.Tracing() {
		return []connect.Interceptor{m}, nil
	}
	opts := []otelconnect.Option{
		otelconnect.WithTracerProvider(t.tp),
		otelconnect.WithPropagator(t.propagator),
		otelconnect.WithoutMetrics(), // ours are Prometheus, registered per process
	}
	untrusted, err := otelconnect.NewInterceptor(opts...)
	if err != nil {
		return nil, fmt.Errorf("telemetry: connect tracing: %w", err)
	}
	trusted, err := otelconnect.NewInterceptor(append(opts, otelconnect.WithTrustRemote())...)
	if err != nil {
		return nil, fmt.Errorf("telemetry: connect tracing: %w", err)
	}
	if trust == nil {
		trust = func(context.Context) bool { return false }
	}
	return []connect.Interceptor{trustSwitch{trusted: trusted, untrusted: untrusted, trust: trust}, m}, nil
}

// TrustAll trusts every caller's trace context.
func TrustAll(context.Context) bool { return true }

// trustSwitch picks, per request, the tracing interceptor that trusts the caller's trace
// context or the one that only links to it.
type trustSwitch struct {
	trusted, untrusted connect.Interceptor
	trust              func(context.Context) bool
}

func (s trustSwitch) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	t, u := s.trusted.WrapUnary(next), s.untrusted.WrapUnary(next)
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient || s.trust(ctx) {
			return t(ctx, req) // a client span always continues our own trace
		}
		return u(ctx, req)
	}
}

func (s trustSwitch) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return s.trusted.WrapStreamingClient(next)
}

func (s trustSwitch) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	t, u := s.trusted.WrapStreamingHandler(next), s.untrusted.WrapStreamingHandler(next)
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if s.trust(ctx) {
			return t(ctx, conn)
		}
		return u(ctx, conn)
	}
}

// rpcMetrics registers the RPC histogram once per Telemetry: a process may build several
// handlers (and clients) from the same interceptors.
func (t *Telemetry) rpcMetrics() (*rpcMetrics, error) {
	t.rpcOnce.Do(func() {
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    MetricRPCDuration,
			Help:    "Connect RPCs served, by procedure and code (ok or the Connect error code); _count is the request rate.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"procedure", "code"})
		if err := t.registry.Register(h); err != nil {
			t.rpcErr = fmt.Errorf("telemetry: register RPC metrics: %w", err)
			return
		}
		t.rpc = &rpcMetrics{duration: h}
	})
	return t.rpc, t.rpcErr
}

// rpcMetrics is a connect.Interceptor that observes every RPC a server handles.
//
// Labels are bounded: the procedure is one the server registered (Connect answers unknown
// procedures before any interceptor), the code one of Connect's sixteen or "ok".
type rpcMetrics struct {
	duration *prometheus.HistogramVec
}

// CodeLabel is the code label of an RPC's outcome: "ok", or the Connect code in
// snake_case ("invalid_argument"), the names gRPC and Connect use on the wire.
func CodeLabel(err error) string {
	if err == nil {
		return "ok"
	}
	return connect.CodeOf(err).String()
}

func (m *rpcMetrics) observe(procedure string, start time.Time, err error) {
	// A client that went away is not our error, but it is not "ok" either: Connect reports
	// canceled, and so do we.
	if errors.Is(err, context.Canceled) && connect.CodeOf(err) == connect.CodeUnknown {
		err = connect.NewError(connect.CodeCanceled, err)
	}
	m.duration.WithLabelValues(procedure, CodeLabel(err)).Observe(time.Since(start).Seconds())
}

func (m *rpcMetrics) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		start := time.Now()
		res, err := next(ctx, req)
		m.observe(req.Spec().Procedure, start, err)
		return res, err
	}
}

func (m *rpcMetrics) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (m *rpcMetrics) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		err := next(ctx, conn)
		m.observe(conn.Spec().Procedure, start, err)
		return err
	}
}
