package telemetry

import (
	"fmt"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
)

// PGXTracer is the query tracer to set as pgx's ConnConfig.Tracer (of a pgxpool.Config
// before the pool is built), so every statement is a span under the caller's span: the
// event store's append under the batch span, a view's transaction under the projector's.
// Nil when tracing is off: pgx then skips tracing entirely.
//
// Statements are recorded as written (placeholders, never arguments: arguments are
// account data); connection details too (host, database, never the password).
func (t *Telemetry) PGXTracer() pgx.QueryTracer {
	if !t.Tracing() {
		return nil
	}
	return otelpgx.NewTracer(
		otelpgx.WithTracerProvider(t.tp),
		// Pool and query metrics of otelpgx would go to OpenTelemetry's meter; ours are
		// Prometheus, so its meter is a no-op rather than the global one.
		otelpgx.WithMeterProvider(metricnoop.NewMeterProvider()),
	)
}

// InstrumentRedis makes every command of rdb a span under the caller's span. Command
// arguments are not recorded: they hold balances and stored responses. Nothing happens
// when tracing is off.
func (t *Telemetry) InstrumentRedis(rdb redis.UniversalClient) error {
	if !t.Tracing() {
		return nil
	}
	if err := redisotel.InstrumentTracing(rdb, redisotel.WithTracerProvider(t.tp), redisotel.WithDBStatement(false)); err != nil {
		return fmt.Errorf("telemetry: trace Redis: %w", err)
	}
	return nil
}
