package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/securepay/securepay/services/edge"
	"github.com/securepay/securepay/services/mtls"
	"github.com/securepay/securepay/services/telemetry"
)

// telemetrySettings are where serve's and dev's traces go; metrics are always on
// (/metrics) and logs always go to stderr.
type telemetrySettings struct {
	OTLPEndpoint string // OTLP/HTTP collector, host:port or http(s)://host:port
	SampleRatio  string // share of new traces recorded, (0, 1]; "" means 1
	TraceFile    string // dev: spans as JSON lines appended to this file
}

// telemetryFlags registers the tracing flags. dev adds --trace-file, the readable sink.
func telemetryFlags(ef envFlags, s *telemetrySettings, prefix string, dev bool) {
	ef.String(&s.OTLPEndpoint, "otlp-endpoint", prefix+"OTLP_ENDPOINT", "", "send traces by OTLP/HTTP to this collector `address` (host:port for https, or http://host:port)")
	ef.String(&s.SampleRatio, "trace-sample-ratio", prefix+"TRACE_SAMPLE_RATIO", "1", "share of new traces recorded, a `ratio` in (0, 1] (a sampled caller's trace is always recorded)")
	if dev {
		ef.String(&s.TraceFile, "trace-file", prefix+"TRACE_FILE", "", "append every span as one JSON line to this `file` (jq 'select(.trace_id==\"...\")' follows one payment)")
	}
}

// config checks the settings and returns the telemetry configuration of service.
func (s *telemetrySettings) config(service string) (telemetry.Config, error) {
	cfg := telemetry.Config{ServiceName: service, OTLPEndpoint: s.OTLPEndpoint}
	if s.SampleRatio != "" {
		r, err := strconv.ParseFloat(s.SampleRatio, 64)
		if err != nil || r <= 0 || r > 1 {
			return cfg, fmt.Errorf("--trace-sample-ratio %q: want a number in (0, 1], e.g. 0.1 to record one trace in ten", s.SampleRatio)
		}
		cfg.SampleRatio = r
	}
	return cfg, cfg.Validate()
}

// openTelemetry builds the process's telemetry; closeTelemetry flushes the spans still queued
// (bounded: a collector that is down cannot hold the exit up for long).
func openTelemetry(ctx context.Context, s telemetrySettings, service string) (_ *telemetry.Telemetry, closeTelemetry func(), _ error) {
	cfg, err := s.config(service)
	if err != nil {
		return nil, nil, err
	}
	var file io.WriteCloser
	if s.TraceFile != "" {
		f, err := os.OpenFile(s.TraceFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, nil, fmt.Errorf("trace file: %w", err)
		}
		file, cfg.SpanWriter = f, f
	}
	tel, err := telemetry.New(ctx, cfg)
	if err != nil {
		if file != nil {
			file.Close()
		}
		return nil, nil, err
	}
	return tel, func() {
		flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(flushCtx)
		if file != nil {
			file.Close()
		}
	}, nil
}

// serverTelemetry is what a server's components take from the process's telemetry: the
// ledger's observer and the RPC interceptors, which continue a caller's trace only when
// trust says the caller is ours (services/telemetry RPCInterceptors).
func serverTelemetry(tel *telemetry.Telemetry, trust func(context.Context) bool) (*telemetry.LedgerObserver, []connect.Interceptor, error) {
	obs, err := tel.LedgerObserver()
	if err != nil {
		return nil, nil, err
	}
	ics, err := tel.RPCInterceptors(trust)
	if err != nil {
		return nil, nil, err
	}
	return obs, ics, nil
}

// serveMetrics serves /metrics on ln until ctx ends.
func serveMetrics(ctx context.Context, ln net.Listener, tel *telemetry.Telemetry) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", tel.MetricsHandler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}

// devGatewayTrust trusts the trace context of calls from dev's gateway, the only caller
// its components' mTLS policy lets in.
func devGatewayTrust() func(context.Context) bool {
	return edge.TrustGateway(mtls.WellKnownIDs(spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)).Gateway)
}
