package services

import (
	"context"
	"net/http"

	"connectrpc.com/connect"

	"github.com/securepay/securepay/services/telemetry"
)

// correlationInterceptor puts the correlation id the edge assigned (Config.CorrelationID)
// in the request's context, so that every log line of the request carries it
// (telemetry.NewLogHandler) and the request's server span records it. It runs inside the
// tracing interceptor, so the span exists when it runs.
type correlationInterceptor struct {
	correlation func(ctx context.Context, h http.Header) string
}

func (c correlationInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		return next(telemetry.Correlate(ctx, c.correlation(ctx, req.Header())), req)
	}
}

func (c correlationInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (c correlationInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return next(telemetry.Correlate(ctx, c.correlation(ctx, conn.RequestHeader())), conn)
	}
}
