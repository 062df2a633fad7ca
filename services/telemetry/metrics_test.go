package telemetry_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/services/telemetry"
)

func scrape(t *testing.T, tel *telemetry.Telemetry) string {
	t.Helper()
	srv := httptest.NewServer(tel.MetricsHandler())
	defer srv.Close()
	res, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s\n%s", res.Status, body)
	}
	return string(body)
}

// The RPC histogram counts each call under its procedure and code; the write path's
// metrics count the batches; the Go runtime is there too.
func TestMetricsOnMetricsEndpoint(t *testing.T) {
	pp := newPaymentPath(t)
	for i := range 3 {
		if _, err := pp.client.CallUnary(context.Background(), connect.NewRequest(wrapperspb.String(fmt.Sprintf("m-%d", i)))); err != nil {
			t.Fatalf("transfer: %v", err)
		}
	}
	// The same payment id again is a replay; an overdraft is a refusal.
	if _, err := pp.client.CallUnary(context.Background(), connect.NewRequest(wrapperspb.String("m-0"))); err != nil {
		t.Fatalf("replayed transfer: %v", err)
	}
	_, err := pp.client.CallUnary(context.Background(), connect.NewRequest(wrapperspb.String("overdraw-1")))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("overdraft: %v, want failed_precondition", err)
	}

	pay := scrape(t, pp.payT)
	edge := scrape(t, pp.edgeT)
	for _, want := range []string{
		`securepay_rpc_duration_seconds_count{code="ok",procedure="/securepay.test.v1.Payments/Transfer"} 4`,
		`securepay_rpc_duration_seconds_count{code="failed_precondition",procedure="/securepay.test.v1.Payments/Transfer"} 1`,
		`securepay_ledger_command_duration_seconds_count{command="Transfer",outcome="ok"} 3`,
		`securepay_ledger_command_duration_seconds_count{command="Transfer",outcome="replayed"} 1`,
		`securepay_ledger_command_duration_seconds_count{command="Transfer",outcome="refused"} 1`,
		`securepay_ledger_append_duration_seconds_count{outcome="ok"}`,
		`securepay_ledger_append_batch_events_sum`,
		`securepay_ledger_append_conflicts_total 0`,
		`securepay_ledger_retries_total{reason="conflict"} 0`,
		`go_goroutines `,
		`process_resident_memory_bytes `,
	} {
		if !strings.Contains(pay, want) {
			t.Errorf("payment component's /metrics lacks %q:\n%s", want, grepLines(pay, "securepay_"))
		}
	}
	if want := `securepay_rpc_duration_seconds_count{code="ok",procedure="/securepay.test.v1.Edge/Transfer"} 4`; !strings.Contains(edge, want) {
		t.Errorf("edge /metrics lacks %q", want)
	}
	// Each process has its own registry: the edge never saw the ledger.
	if strings.Contains(edge, "securepay_ledger_") {
		t.Error("the edge's /metrics shows the payment component's ledger metrics: registries are shared")
	}
	if strings.Contains(pay, `procedure="/securepay.test.v1.Edge/Transfer"`) {
		t.Error("the payment component's /metrics counts the edge's procedure")
	}
}

// Registering the write path's metrics twice in one registry is refused, not silently
// merged into one set of counters that two processors would both move.
func TestLedgerObserverOncePerRegistry(t *testing.T) {
	tel := newTelemetry(t, "securepay-payments", telemetry.Config{})
	if _, err := tel.LedgerObserver(); err != nil {
		t.Fatalf("first LedgerObserver: %v", err)
	}
	if _, err := tel.LedgerObserver(); err == nil {
		t.Fatal("second LedgerObserver on the same registry succeeded")
	}
}

// Projection lag is read at scrape time from the projectors' status.
func TestProjectionLagMetrics(t *testing.T) {
	tel := newTelemetry(t, "securepay-projector", telemetry.Config{})
	fail := false
	status := func(ctx context.Context) ([]projections.Status, error) {
		if fail {
			return nil, errors.New("store down")
		}
		return []projections.Status{
			{Name: "balances.v1", State: projections.StateRunning, Checkpoint: 90, Head: 100, LagEvents: 10, LagSeconds: 1.5},
			{Name: "history.v1", State: projections.StateStopped, Checkpoint: 40, Head: 100, LagEvents: 60, LagSeconds: 30},
		}, nil
	}
	if err := tel.ObserveProjections(status, time.Second); err != nil {
		t.Fatal(err)
	}
	out := scrape(t, tel)
	for _, want := range []string{
		`securepay_projection_lag_events{projector="balances.v1"} 10`,
		`securepay_projection_lag_seconds{projector="history.v1"} 30`,
		`securepay_projection_checkpoint{projector="balances.v1"} 90`,
		`securepay_projection_running{projector="balances.v1",state="running"} 1`,
		`securepay_projection_running{projector="history.v1",state="stopped-on-error"} 0`,
		`securepay_log_head_position 100`,
		`securepay_projection_status_failures_total 0`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	fail = true
	out = scrape(t, tel)
	if !strings.Contains(out, `securepay_projection_status_failures_total 1`) || strings.Contains(out, "securepay_projection_lag_events{") {
		t.Errorf("after a failed status read, want a failure counted and no lag exported:\n%s", out)
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		cfg  telemetry.Config
		want string // "" for valid
	}{
		{"minimal", telemetry.Config{ServiceName: "x"}, ""},
		{"otlp host:port", telemetry.Config{ServiceName: "x", OTLPEndpoint: "127.0.0.1:4318"}, ""},
		{"otlp http url", telemetry.Config{ServiceName: "x", OTLPEndpoint: "http://127.0.0.1:4318"}, ""},
		{"no name", telemetry.Config{}, "ServiceName is required"},
		{"ratio above 1", telemetry.Config{ServiceName: "x", SampleRatio: 1.5}, "SampleRatio is 1.5"},
		{"negative ratio", telemetry.Config{ServiceName: "x", SampleRatio: -0.1}, "SampleRatio"},
		{"otlp with path", telemetry.Config{ServiceName: "x", OTLPEndpoint: "http://127.0.0.1:4318/v1/traces"}, "has a path"},
		{"otlp with credentials", telemetry.Config{ServiceName: "x", OTLPEndpoint: "https://u:hunter2@collector:4318"}, "without credentials"},
		{"otlp ftp", telemetry.Config{ServiceName: "x", OTLPEndpoint: "ftp://collector:21"}, "http(s) URL"},
		{"queue too big", telemetry.Config{ServiceName: "x", MaxQueuedSpans: 1 << 30}, "MaxQueuedSpans"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.cfg.Validate()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("Validate: %v, want nil", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("Validate: %v, want an error containing %q", err, c.want)
			case err != nil && strings.Contains(err.Error(), "hunter2"):
				t.Fatalf("Validate's error shows the password: %v", err)
			}
		})
	}
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) && !strings.Contains(l, "_bucket") && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Dead letters are counted by reason, every given reason from 0; and the gateway's
// refusals by reason, every reason from 0, an unknown one counted as forbidden.
func TestDeadLettersAndRefusalsByReason(t *testing.T) {
	tel := newTelemetry(t, "securepay-dispatcher", telemetry.Config{})
	wh, err := tel.WebhookMetrics("attempts-exhausted", "rejected", "circuit-open")
	if err != nil {
		t.Fatal(err)
	}
	wh.DeadLettered("rejected")
	wh.DeadLettered("rejected")
	wh.DeadLettered("circuit-open")
	gw, err := tel.GatewayMetrics()
	if err != nil {
		t.Fatal(err)
	}
	gw.Refused(telemetry.RefusalRateLimited)
	gw.Refused("not-a-reason")
	var none *telemetry.GatewayMetrics
	none.Refused(telemetry.RefusalForbidden) // a gateway without metrics: no panic
	body := scrape(t, tel)
	for _, want := range []string{
		`securepay_webhook_dead_letters_total{reason="attempts-exhausted"} 0`,
		`securepay_webhook_dead_letters_total{reason="rejected"} 2`,
		`securepay_webhook_dead_letters_total{reason="circuit-open"} 1`,
		`securepay_gateway_refusals_total{reason="rate_limited"} 1`,
		`securepay_gateway_refusals_total{reason="forbidden"} 1`,
		`securepay_gateway_refusals_total{reason="unauthenticated"} 0`,
		`securepay_gateway_refusals_total{reason="stream_quota"} 0`,
		`securepay_gateway_refusals_total{reason="limiter_unavailable"} 0`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics: want the line %q, got:\n%s", want, body)
		}
	}
	if strings.Contains(body, "not-a-reason") {
		t.Errorf("an unknown refusal reason became a series:\n%s", body)
	}
}
