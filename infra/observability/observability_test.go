// Package observability holds the Grafana dashboard and the Prometheus alert rules; its
// test keeps them true to the code.
package observability

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.yaml.in/yaml/v3"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/services/ledger"
	"github.com/securepay/securepay/services/telemetry"
)

// exported returns every metric name a SecurePay process can expose: a registry with every
// metric set registered and each labelled family given a series, then gathered. A
// histogram family exports name_bucket, name_sum and name_count; a summary name_sum and
// name_count.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	ctx := context.Background()
	tel, err := telemetry.New(ctx, telemetry.Config{ServiceName: "all"})
	if err != nil {
		t.Fatal(err)
	}
	obs, err := tel.LedgerObserver()
	if err != nil {
		t.Fatal(err)
	}
	_, _, done := obs.Command(ctx, domain.Transfer{})
	done(ledger.Result{}, nil)
	_, appended := obs.Append(ctx, nil, 3)
	appended(eventstore.AppendResult{}, nil)
	ics, err := tel.RPCInterceptors(nil)
	if err != nil {
		t.Fatal(err)
	}
	unary := connect.UnaryFunc(func(context.Context, connect.AnyRequest) (connect.AnyResponse, error) { return nil, nil })
	for _, ic := range ics {
		unary = ic.WrapUnary(unary)
	}
	if _, err := unary(ctx, connect.NewRequest(&struct{}{})); err != nil {
		t.Fatal(err)
	}
	if err := tel.ObserveProjections(func(context.Context) ([]projections.Status, error) {
		return []projections.Status{{Name: "p", State: projections.StateRunning}}, nil
	}, time.Second); err != nil {
		t.Fatal(err)
	}
	relay, err := tel.RelayMetrics()
	if err != nil {
		t.Fatal(err)
	}
	relay.Acked("t", time.Now())
	relay.PublishFailed("t")
	if _, err := tel.WebhookMetrics("attempts-exhausted"); err != nil { // a labelled family exports once it has a series
		t.Fatal(err)
	}
	if _, err := tel.GatewayMetrics(); err != nil {
		t.Fatal(err)
	}
	families, err := tel.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range families {
		n := f.GetName()
		names[n] = true
		switch f.GetType().String() {
		case "HISTOGRAM":
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		case "SUMMARY":
			names[n+"_sum"], names[n+"_count"] = true, true
		}
	}
	return names
}

// metricRef finds metric names in PromQL: ours, the Go runtime's and the process's all
// start with one of these prefixes, and no label or function we use does.
var metricRef = regexp.MustCompile(`\b(?:securepay|go|process)_[a-z0-9_]+\b`)

func dashboardExprs(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	return exprs
}

func ruleExprs(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile("alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &f); err != nil {
		t.Fatalf("alerts.yml: %v", err)
	}
	out := map[string]string{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			out[r.Alert] = r.Expr
		}
	}
	return out
}

// Every metric the dashboard and the alert rules query is one the code exports, and every
// panel and rule queries at least one: a renamed metric fails here, not on a dashboard in
// production.
func TestQueriedMetricsAreExported(t *testing.T) {
	names := exported(t)
	check := func(where, expr string) {
		refs := metricRef.FindAllString(expr, -1)
		if len(refs) == 0 {
			t.Errorf("%s queries no SecurePay, Go or process metric: %q", where, expr)
		}
		for _, m := range refs {
			if !names[m] {
				t.Errorf("%s queries %s, which no SecurePay process exports", where, m)
			}
		}
	}
	exprs := dashboardExprs(t)
	if len(exprs) < 20 {
		t.Fatalf("dashboard.json has %d queries; the parser must have missed its panels", len(exprs))
	}
	for i, e := range exprs {
		check(fmt.Sprintf("dashboard query %d", i+1), e)
	}
	rules := ruleExprs(t)
	for _, want := range []string{"SecurePayProjectionLag", "SecurePayRPCErrorRatio", "SecurePayRPCLatencyP99", "SecurePayRelayStalled", "SecurePayWebhookDeadLetters"} {
		if _, ok := rules[want]; !ok {
			t.Errorf("alerts.yml has no %s rule", want)
		}
	}
	for alert, e := range rules {
		check("alert "+alert, e)
	}
	// The other direction, for the families the issue names: each is on the dashboard.
	all := strings.Join(exprs, "\n")
	for _, m := range []string{telemetry.MetricRPCDuration, telemetry.MetricAppendDuration, telemetry.MetricAppendBatchEvents,
		telemetry.MetricAppendConflicts, telemetry.MetricLedgerRetries, telemetry.MetricProjectionLagEvents, telemetry.MetricProjectionLagSecs,
		telemetry.MetricRelayLagEvents, telemetry.MetricRelayLagSeconds, telemetry.MetricRelayPublishErrors,
		telemetry.MetricWebhookAttempts, telemetry.MetricWebhookDeadLetters} {
		if !strings.Contains(all, m) {
			t.Errorf("the dashboard does not show %s", m)
		}
	}
}

// The metric reference parser itself: it must see names inside selectors and functions,
// and must not take label names or functions for metrics.
func TestMetricRef(t *testing.T) {
	got := metricRef.FindAllString(`histogram_quantile(0.99, sum by (le, procedure) (rate(securepay_rpc_duration_seconds_bucket{procedure!~"x"}[5m]))) / go_goroutines`, -1)
	if want := []string{"securepay_rpc_duration_seconds_bucket", "go_goroutines"}; !slices.Equal(got, want) {
		t.Errorf("refs = %v, want %v", got, want)
	}
}

// promtool (Debian package prometheus; infra/local/test.sh installs it when absent) checks
// the rules' syntax and runs their unit tests (alerts_test.yml).
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found (%v): install the Debian package prometheus (apt-get install prometheus), or run infra/local/test.sh, which does", err)
	}
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
