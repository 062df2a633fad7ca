package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services/mtls"
)

// TestServeGatewayRefusesAnUnsafeConfiguration: every missing or unsafe setting is named
// at once, with the flag that fixes it, before anything is started.
func TestServeGatewayRefusesAnUnsafeConfiguration(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"nothing", nil, []string{"--oidc-issuer", "--oidc-audience", "--oidc-jwks-url", "--spiffe-socket", "--payments-url", "--queries-url", "--audit-url", "--redis-addr", "--tls-cert"}},
		{"plaintext components", []string{"--payments-url", "http://payments:8443", "--oidc-jwks-url", "http://issuer/certs"},
			[]string{`--payments-url "http://payments:8443" must be an https:// URL`, `--oidc-jwks-url "http://issuer/certs" must be an https:// URL`}},
		{"no rate", []string{"--rate-limit", "0"}, []string{"--rate-limit"}},
		{"bad trust domain", []string{"--trust-domain", "Not A Domain"}, []string{"--trust-domain"}},
		{"no probe port", []string{"--health-listen", ""}, []string{"the probe port is missing: set --health-listen or SECUREPAY_HEALTH_LISTEN"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(context.Background(), append([]string{"serve", "gateway"}, tc.args...), &out, &errOut, noEnv)
			if err == nil {
				t.Fatal("serve gateway started with an unusable configuration")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the refusal does not name %q:\n%v", w, err)
				}
			}
		})
	}
}

// gatewayLog is the JSON log of a serve gateway run in-process, record by record.
type gatewayLog struct {
	mu   sync.Mutex
	recs []map[string]any
	seen chan struct{}
}

func (l *gatewayLog) find(msg string) map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.recs {
		if r["msg"] == msg {
			return r
		}
	}
	return nil
}

func (l *gatewayLog) await(t *testing.T, msg string, done <-chan error) map[string]any {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		if r := l.find(msg); r != nil {
			return r
		}
		select {
		case <-l.seen:
		case err := <-done:
			t.Fatalf("serve gateway ended before it logged %q: %v", msg, err)
		case <-deadline:
			t.Fatalf("serve gateway did not log %q within 30s", msg)
		}
	}
}

// TestServeGatewayWaitsForItsSVID: a gateway whose Workload API does not answer stays up,
// says on its probe port that it is not ready because of its SVID, logs what it waits
// for, and accepts no connection on its public port; when the SVID comes (here from a
// development CA, after a few refusals) it opens the public port and reports ready.
func TestServeGatewayWaitsForItsSVID(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := writeSelfSigned(t, dir, "securepay test gateway")
	td := spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)
	ca, err := mtls.NewDevCA(td, time.Hour, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	arrived := make(chan struct{})
	var calls atomic.Int32
	source := func(context.Context) (mtls.Source, func(), error) {
		calls.Add(1)
		select {
		case <-arrived:
			src, err := ca.Source(mtls.WellKnownIDs(td).Gateway)
			return src, func() {}, err
		default:
			return nil, nil, errors.New("no SPIRE agent at unix:///nowhere.sock")
		}
	}

	pr, pw := io.Pipe()
	e := env{stdout: io.Discard, stderr: pw, getenv: noEnv}
	cmd, c := newGatewayServeCommand(e)
	c.newSource = source
	listen := freeAddr(t)
	// Redis is never called: nothing reaches the rate limiter before the SVID, and after
	// it only an unauthenticated call, refused before the limiter.
	args := []string{"--listen", listen, "--health-listen", "127.0.0.1:0", "--tls-cert", certFile, "--tls-key", keyFile,
		"--spiffe-socket", "unix:///nowhere.sock", "--redis-addr", "127.0.0.1:1",
		"--payments-url", "https://127.0.0.1:1", "--queries-url", "https://127.0.0.1:1", "--audit-url", "https://127.0.0.1:1",
		"--oidc-issuer", "https://issuer.test", "--oidc-audience", "securepay", "--oidc-jwks-url", "https://issuer.test/certs"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- cmd.execute(ctx, e, args)
		pw.Close()
	}()
	logs := &gatewayLog{seen: make(chan struct{}, 1)}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) != nil {
				continue
			}
			logs.mu.Lock()
			logs.recs = append(logs.recs, rec)
			logs.mu.Unlock()
			select {
			case logs.seen <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve gateway: want a clean stop, got %v", err)
			}
		case <-time.After(40 * time.Second):
			t.Error("serve gateway did not stop within 40s")
		}
	})

	waiting := logs.await(t, "gateway waiting for its SVID", done)
	if waiting["spiffe_id"] != "spiffe://securepay.dev/gateway" || waiting["spiffe_socket"] != "unix:///nowhere.sock" {
		t.Errorf("the waiting log should name the SPIFFE ID and the Workload API it waits for, got %v", waiting)
	}
	retry := logs.await(t, "no SVID: not ready, serving nothing", done)
	if msg, _ := retry["error"].(string); !strings.Contains(msg, "nowhere.sock") {
		t.Errorf("the retry log should carry the Workload API's error, got %v", retry)
	}

	healthAddr := waiting["health_addr"].(string)
	if code, notReady := readyz(t, healthAddr); code != http.StatusServiceUnavailable || !containsString(notReady, "svid") {
		t.Fatalf("/readyz without an SVID: want 503 naming svid, got %d %v", code, notReady)
	}
	health := grpchealth.NewClient(http.DefaultClient, "http://"+healthAddr, connect.WithGRPCWeb())
	for _, service := range []string{"", ledgerv1connect.PaymentServiceName, ledgerv1connect.AuditServiceName} {
		res, err := health.Check(context.Background(), &grpchealth.CheckRequest{Service: service})
		if err != nil || res.Status != grpchealth.StatusNotServing {
			t.Fatalf("grpc health of %q without an SVID: want NOT_SERVING, got %v %v", service, res, err)
		}
	}
	if conn, err := net.DialTimeout("tcp", listen, 2*time.Second); err == nil {
		conn.Close()
		t.Fatalf("the gateway without an SVID accepts connections on its public port %s", listen)
	}
	if logs.find("gateway serving") != nil {
		t.Fatal("the gateway says it serves without an SVID")
	}

	close(arrived)
	serving := logs.await(t, "gateway serving", done)
	if serving["listen"] != listen {
		t.Errorf("the gateway serves on %v, want %s", serving["listen"], listen)
	}
	if n := calls.Load(); n < 2 {
		t.Errorf("the gateway asked the Workload API %d times: want at least one refusal, then the SVID", n)
	}
	awaitReady(t, "the gateway with its SVID", healthAddr)
	// The public port now answers over TLS, and a call without a token is refused there.
	client := publicClient(t, certFile)
	_, err = ledgerv1connect.NewPaymentServiceClient(client, "https://"+listen).Transfer(context.Background(), connect.NewRequest(&ledgerv1.TransferRequest{
		PaymentId: "p-1", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: &ledgerv1.Money{Value: "1.00", Asset: "USD"},
	}))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("a transfer without a token on the ready gateway: want unauthenticated, got %v", err)
	}
	// The refusal happened at the edge, before any forward: /metrics on the loopback
	// metrics port counts it by procedure and code, and by reason.
	metricsAddr, _ := serving["metrics_addr"].(string)
	if host, _, err := net.SplitHostPort(metricsAddr); err != nil || host != "127.0.0.1" {
		t.Fatalf("the gateway's metrics address %q: want a loopback host:port by default", metricsAddr)
	}
	res, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics of serve gateway: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, want := range []string{
		`securepay_gateway_refusals_total{reason="unauthenticated"} 1`,
		`securepay_gateway_refusals_total{reason="rate_limited"} 0`,
		`securepay_rpc_duration_seconds_count{code="unauthenticated",procedure="/securepay.ledger.v1.PaymentService/Transfer"} 1`,
		`go_goroutines `,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("serve gateway's /metrics after one call without a token: want a line %q, got:\n%s", want, body)
		}
	}
}
