package telemetry

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/otelconnect"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/securepay/securepay/api/gen/securepay/hop/v1/hopv1connect"
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
	tracing, err := t.RPCTracing(trust)
	if err != nil {
		return nil, err
	}
	return append(tracing, m), nil
}

// RPCTracing is RPCInterceptors without the metrics: the tracing interceptor alone (none
// when tracing is off). The gateway of `securepay dev` takes it, so that a call its
// components count is not counted twice by the one process's registry.
func (t *Telemetry) RPCTracing(trust func(ctx context.Context) bool) ([]connect.Interceptor, error) {
	if !t.Tracing() {
		return nil, nil
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
	return []connect.Interceptor{trustSwitch{trusted: trusted, untrusted: untrusted, trust: trust,
		propagator: t.propagator, ratio: t.ratio, draw: rand.Uint64}}, nil
}

// TrustAll trusts every caller's trace context.
func TrustAll(context.Context) bool { return true }

// trustSwitch picks, per request, the tracing interceptor that trusts the caller's trace
// context or the one that only links to it.
//
// A unary request that will not be recorded skips otelconnect altogether: its work for a
// span that is never recorded (header extraction, attributes, a non-recording span, the
// duration it records into a no-op meter) was most of what an unsampled request cost. The
// request's context then holds an unsampled span context instead (the caller's, when
// trusted; else a new trace id), so that everything under it is not recorded either.
type trustSwitch struct {
	trusted, untrusted connect.Interceptor
	trust              func(context.Context) bool
	propagator         propagation.TextMapPropagator
	ratio              float64       // share of new traces recorded
	draw               func() uint64 // random bits: decides a new trace, and its ids when not recorded
}

func (s trustSwitch) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	t, u := s.trusted.WrapUnary(next), s.untrusted.WrapUnary(next)
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().Procedure == hopv1connect.HopServiceForwardProcedure {
			// A Forward carries calls of many traces, each traced on its own: a client span
			// per call at the gateway, whose server span at payments is its child
			// (services/hop.go). A span of the Forward itself would be the root of a trace
			// holding nothing else.
			return next(ctx, req)
		}
		if req.Spec().IsClient {
			return t(ctx, req) // a client span always continues our own trace
		}
		trusted := s.trust(ctx)
		if trusted && !trace.SpanContextFromContext(ctx).IsValid() {
			if caller := trace.SpanContextFromContext(s.propagator.Extract(ctx, propagation.HeaderCarrier(req.Header()))); caller.IsValid() {
				if !caller.IsSampled() {
					// Our caller did not record it: neither do we (the sampler is parent based).
					return next(trace.ContextWithRemoteSpanContext(ctx, caller), req)
				}
				return t(ctx, req)
			}
		}
		if trace.SpanContextFromContext(ctx).IsValid() { // an outer interceptor's span: otelconnect continues it
			return t(ctx, req)
		}
		// A new trace. Draw it here, as the SDK's ratio sampler would from its trace id.
		if s.ratio < 1 {
			if r := s.draw(); r>>1 >= uint64(s.ratio*(1<<63)) {
				return next(trace.ContextWithSpanContext(ctx, s.unrecorded()), req)
			}
			ctx = context.WithValue(ctx, sampledRoot{}, true)
		}
		if trusted {
			return t(ctx, req)
		}
		return u(ctx, req)
	}
}

// unrecorded is the span context of a new trace that is not recorded: valid, so that
// spans under it follow its decision, with random ids, so that logs still tell requests
// apart.
func (s trustSwitch) unrecorded() trace.SpanContext {
	var tid trace.TraceID
	var sid trace.SpanID
	binary.LittleEndian.PutUint64(tid[:8], s.draw())
	binary.LittleEndian.PutUint64(tid[8:], s.draw())
	binary.LittleEndian.PutUint64(sid[:], s.draw()|1) // never the invalid all-zero id
	tid[0] |= 1
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid})
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
