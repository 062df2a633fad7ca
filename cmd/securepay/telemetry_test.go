package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/securepay/securepay/services/telemetry"
)

// securepay dev serves /metrics (on a loopback port of its own) and, with --trace-file, writes one JSON line per span: a
// transfer made with the CLI shows up in both, its ledger span in the trace of its RPC.
func TestDevMetricsAndTraceFile(t *testing.T) {
	spans := filepath.Join(t.TempDir(), "spans.jsonl")
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := free.Addr().String()
	free.Close()
	url := startDev(t, "--trace-file", spans, "--metrics-listen", metricsAddr)
	mustCLI(t, url, "account", "open", "world", "--asset", "USD", "--kind", "external")
	mustCLI(t, url, "account", "open", "alice", "--asset", "USD")
	mustCLI(t, url, "transfer", "--from", "world", "--to", "alice", "--amount", "1.00", "--asset", "USD")

	// A call without a token, refused by dev's gateway itself: counted by reason. The
	// RPC histogram is the components' (each forwarded call once), so the refusal, which
	// no component saw, is not in it.
	refused, err := http.Post(url+"/securepay.ledger.v1.PaymentService/Transfer", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatalf("a Connect call without a token: %v", err)
	}
	refused.Body.Close()
	if refused.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a Connect call without a token: HTTP %d, want 401 (unauthenticated)", refused.StatusCode)
	}

	res, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, want := range []string{
		`securepay_rpc_duration_seconds_count{code="ok",procedure="/securepay.ledger.v1.PaymentService/Transfer"} 1`,
		`securepay_ledger_command_duration_seconds_count{command="Transfer",outcome="ok"} 1`,
		`securepay_projection_lag_events{projector=`,
		`go_goroutines `,
		`securepay_gateway_refusals_total{reason="unauthenticated"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(string(body), `code="unauthenticated"`) {
		t.Errorf("dev's /metrics counts the gateway's refusal as an RPC, which only serve gateway does:\n%s", body)
	}

	// Spans are exported in batches, at least once a second: wait for the transfer's, and
	// for the batch span its ledger span links to (the append, in a trace of its own).
	deadline := time.Now().Add(15 * time.Second)
	for {
		byTrace := map[string][]string{}
		spanNames := map[string]string{} // span id → name
		var transfer telemetry.JSONSpan
		if f, err := os.Open(spans); err == nil {
			sc := bufio.NewScanner(f)
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				var s telemetry.JSONSpan
				if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
					t.Fatalf("%s holds a line that is not a span: %v: %s", spans, err, sc.Text())
				}
				byTrace[s.TraceID] = append(byTrace[s.TraceID], s.Name)
				spanNames[s.SpanID] = s.Name
				if s.Name == "ledger.Transfer" {
					transfer = s
				}
			}
			f.Close()
		}
		names := strings.Join(byTrace[transfer.TraceID], ",")
		var linked []string
		for _, l := range transfer.Links {
			linked = append(linked, spanNames[l.SpanID])
		}
		if transfer.TraceID != "" && strings.Contains(names, "securepay.ledger.v1.PaymentService/Transfer") && slices.Contains(linked, telemetry.SpanBatchAppend) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 15s, the transfer's trace holds spans %q and its ledger.Transfer span links to %q; want the RPC and ledger.Transfer, linking to a %s span",
				names, linked, telemetry.SpanBatchAppend)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
