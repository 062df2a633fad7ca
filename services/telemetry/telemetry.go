// Package telemetry gives a SecurePay process its traces, metrics and logs.
//
// One *Telemetry per process, built in main from a Config and handed to the components
// that report: it owns the process's OpenTelemetry tracer provider (W3C trace-context
// propagation; OTLP/HTTP export, a JSON-lines file for `securepay dev`, or nothing) and its
// Prometheus registry (served on /metrics). Nothing here is global: no default registry, no
// global tracer provider, no init(). A component that is given no *Telemetry reports
// nothing and pays for nothing but a nil check.
//
// The metric names every component exports are listed in names.go; the dashboard and the
// alert rules under infra/observability may query only those (a test checks it).
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Config says where a process's telemetry goes. The zero value (plus a ServiceName) is
// metrics only: spans are not even created.
type Config struct {
	// ServiceName names the process in traces (service.name), e.g. "securepay-payments".
	ServiceName string
	// ServiceVersion is recorded as service.version when set.
	ServiceVersion string

	// OTLPEndpoint, when set, exports spans over OTLP/HTTP to this collector: host:port
	// (https), or a URL whose scheme says http or https.
	OTLPEndpoint string
	// SpanWriter, when set, receives every finished span as one JSON line (the readable
	// local sink of `securepay dev`; see jsonspans.go).
	SpanWriter io.Writer
	// Exporter, when set, receives every span synchronously as it ends (tests pass a
	// tracetest.InMemoryExporter).
	Exporter sdktrace.SpanExporter

	// SampleRatio is the share of new traces recorded, in (0, 1]; 0 means 1 (every trace).
	// A request that arrives with a sampled parent is recorded whatever the ratio.
	SampleRatio float64
	// MaxQueuedSpans bounds the spans waiting for the exporter; beyond it spans are
	// dropped rather than held (default 8192: about 2 s of a busy payment component).
	MaxQueuedSpans int
}

// Validate reports every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	if strings.TrimSpace(c.ServiceName) == "" {
		errs = append(errs, errors.New("telemetry config: ServiceName is required (e.g. securepay-payments)"))
	}
	if c.SampleRatio < 0 || c.SampleRatio > 1 {
		errs = append(errs, fmt.Errorf("telemetry config: SampleRatio is %g, want 0 (every trace) to 1", c.SampleRatio))
	}
	if c.MaxQueuedSpans < 0 || c.MaxQueuedSpans > 1<<20 {
		errs = append(errs, fmt.Errorf("telemetry config: MaxQueuedSpans is %d, want 0 (the default) to %d", c.MaxQueuedSpans, 1<<20))
	}
	if c.OTLPEndpoint != "" {
		if _, _, err := otlpEndpoint(c.OTLPEndpoint); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Tracing reports whether c records spans at all.
func (c Config) Tracing() bool {
	return c.OTLPEndpoint != "" || c.SpanWriter != nil || c.Exporter != nil
}

// otlpEndpoint splits an endpoint into host:port and whether it is plain HTTP.
func otlpEndpoint(s string) (hostport string, insecure bool, err error) {
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || u.User != nil {
		return "", false, fmt.Errorf("telemetry config: OTLP endpoint %q is not host:port or an http(s) URL without credentials", RedactString(s))
	}
	if u.Path != "" && u.Path != "/" {
		return "", false, fmt.Errorf("telemetry config: OTLP endpoint %q has a path; give host:port (spans go to /v1/traces)", RedactString(s))
	}
	return u.Host, u.Scheme == "http", nil
}

// MaxLinks bounds the links of one span (a batch span links to each of its commands).
const MaxLinks = 4096

// Telemetry is one process's tracer provider, propagator and metric registry.
type Telemetry struct {
	tp         trace.TracerProvider
	sdk        *sdktrace.TracerProvider // nil when tracing is off
	propagator propagation.TextMapPropagator
	registry   *prometheus.Registry
	ratio      float64 // share of new traces recorded, in (0, 1]

	rpcOnce sync.Once
	rpc     *rpcMetrics
	rpcErr  error
}

// New builds a process's telemetry. Shutdown flushes and stops it.
func New(ctx context.Context, cfg Config) (*Telemetry, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("telemetry: register Go runtime metrics: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("telemetry: register process metrics: %w", err)
	}
	t := &Telemetry{
		tp:         noop.NewTracerProvider(),
		propagator: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		registry:   reg,
	}
	if !cfg.Tracing() {
		return t, nil
	}
	ratio := cfg.SampleRatio
	if ratio == 0 {
		ratio = 1
	}
	queued := cfg.MaxQueuedSpans
	if queued == 0 {
		queued = 8192
	}
	attrs := []attribute.KeyValue{attribute.String("service.name", cfg.ServiceName)}
	if cfg.ServiceVersion != "" {
		attrs = append(attrs, attribute.String("service.version", cfg.ServiceVersion))
	}
	// A batch span links to every command in it: up to the ledger's largest batch, not
	// the SDK's default of 128 links.
	limits := sdktrace.NewSpanLimits()
	limits.LinkCountLimit = MaxLinks
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(resource.NewSchemaless(attrs...)),
		sdktrace.WithRawSpanLimits(limits),
		sdktrace.WithSampler(sdktrace.ParentBased(linkedSampler{ratio: sdktrace.TraceIDRatioBased(ratio)})),
	}
	batch := func(e sdktrace.SpanExporter) sdktrace.TracerProviderOption {
		return sdktrace.WithBatcher(e, sdktrace.WithMaxQueueSize(queued), sdktrace.WithBatchTimeout(time.Second))
	}
	if cfg.OTLPEndpoint != "" {
		host, insecure, _ := otlpEndpoint(cfg.OTLPEndpoint)
		o := []otlptracehttp.Option{otlptracehttp.WithEndpoint(host), otlptracehttp.WithTimeout(10 * time.Second)}
		if insecure {
			o = append(o, otlptracehttp.WithInsecure())
		}
		exp, err := otlptracehttp.New(ctx, o...)
		if err != nil {
			return nil, fmt.Errorf("telemetry: OTLP exporter for %s: %w", host, err)
		}
		opts = append(opts, batch(exp))
	}
	if cfg.SpanWriter != nil {
		opts = append(opts, batch(NewJSONSpanExporter(cfg.SpanWriter)))
	}
	if cfg.Exporter != nil {
		opts = append(opts, sdktrace.WithSyncer(cfg.Exporter))
	}
	t.ratio = ratio
	t.sdk = sdktrace.NewTracerProvider(opts...)
	t.tp = t.sdk
	return t, nil
}

// linkedSampler decides for new roots. A root the RPC interceptors already drew for
// recording (sampledRoot) is recorded. A root that carries on sampled work of ours — an
// internal span linking to a sampled span, as the ledger's batch append links to the
// commands it commits and a projector's batch to the commands whose events it applies — is
// recorded, so that a sampled transfer's trace never leads to a span that was dropped;
// every other root is sampled at the configured ratio. Server spans are left to the ratio:
// a stranger's traceparent, which the public edge only links to, must not choose what we
// record.
type linkedSampler struct {
	ratio sdktrace.Sampler
}

func (s linkedSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if p.ParentContext != nil && p.ParentContext.Value(sampledRoot{}) != nil {
		return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample}
	}
	// A span started without a kind is internal (the SDK records it so, but the sampler
	// sees the option as given).
	if p.Kind == trace.SpanKindInternal || p.Kind == trace.SpanKindUnspecified {
		for _, l := range p.Links {
			if l.SpanContext.IsSampled() {
				return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample,
					Tracestate: trace.SpanContextFromContext(p.ParentContext).TraceState()}
			}
		}
	}
	return s.ratio.ShouldSample(p)
}

func (s linkedSampler) Description() string {
	return "LinkedOr{" + s.ratio.Description() + "}"
}

// sampledRoot marks a request context whose new trace was already drawn for recording
// (rpc.go decides before starting the server span, so that a request not recorded costs
// no span): the root sampler records it rather than drawing a second time.
type sampledRoot struct{}

// TracerProvider is the process's tracer provider (a no-op one when tracing is off).
func (t *Telemetry) TracerProvider() trace.TracerProvider { return t.tp }

// Tracer is the tracer of one instrumented package, named by its import path.
func (t *Telemetry) Tracer(name string) trace.Tracer { return t.tp.Tracer(name) }

// Tracing reports whether spans are recorded (and so worth creating).
func (t *Telemetry) Tracing() bool { return t.sdk != nil }

// Propagator carries trace context (W3C traceparent/tracestate) and baggage across
// process boundaries: HTTP headers, Kafka message headers.
func (t *Telemetry) Propagator() propagation.TextMapPropagator { return t.propagator }

// Registry is the process's Prometheus registry: components register their metrics here.
func (t *Telemetry) Registry() *prometheus.Registry { return t.registry }

// MetricsHandler serves the registry in the Prometheus text (or OpenMetrics) format.
// Scrapes are bounded: at most 4 at once, each at most 10 s, so a stuck collector or a
// scrape storm cannot pile up goroutines.
func (t *Telemetry) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
		EnableOpenMetrics:   true,
	})
}

// Shutdown flushes spans still queued and stops the exporters. Calls after the first
// return nil.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if t.sdk == nil {
		return nil
	}
	if err := t.sdk.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("telemetry: flush spans: %w", err)
	}
	return nil
}
