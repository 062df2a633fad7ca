package main

// The production topology as separate OS processes on real SPIRE: the securepay binary,
// built once and copied to one path per component (the SPIRE agent tells workloads of one
// user apart by executable path), runs `serve gateway`, `serve payments`, `serve queries`,
// `serve projector` and `serve audit`, each with its SVID from the agent that
// infra/local/spire.sh started (SECUREPAY_TEST_SPIRE_DIR). Clients reach the ledger only
// through the gateway, with a JWT of a test issuer.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services/gateway/gatewaytest"
	"github.com/securepay/securepay/services/mtls"
	"github.com/securepay/securepay/services/mtls/spiretest"
)

// buildSecurepay builds this command once into dir and returns the binary's path.
func buildSecurepay(t *testing.T, dir string) string {
	t.Helper()
	exe := filepath.Join(dir, "securepay")
	start := time.Now()
	out, err := exec.Command("go", "build", "-o", exe, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build securepay: %v\n%s", err, out)
	}
	t.Logf("built securepay in %s", time.Since(start).Round(100*time.Millisecond))
	return exe
}

// process is one running securepay, its JSON log collected line by line.
type process struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []map[string]any
	raw  []string
	seen chan struct{} // a new line arrived
	done chan struct{} // the process ended
}

func startProcess(t *testing.T, name string, exe string, env []string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, seen: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var rec map[string]any
			_ = json.Unmarshal(sc.Bytes(), &rec)
			p.mu.Lock()
			p.raw = append(p.raw, sc.Text())
			if rec != nil {
				p.logs = append(p.logs, rec)
			}
			p.mu.Unlock()
			select {
			case p.seen <- struct{}{}:
			default:
			}
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
			t.Errorf("%s did not stop within 30s of SIGTERM", name)
		}
		if t.Failed() {
			t.Logf("%s's log:\n%s", name, p.log())
		}
	})
	return p
}

func (p *process) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.raw, "\n")
}

// find returns the first log record whose msg is msg.
func (p *process) find(msg string) map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.logs {
		if r["msg"] == msg {
			return r
		}
	}
	return nil
}

// await waits for a log record with msg, failing if the process ends first.
func (p *process) await(t *testing.T, msg string, within time.Duration) map[string]any {
	t.Helper()
	deadline := time.After(within)
	for {
		if r := p.find(msg); r != nil {
			return r
		}
		select {
		case <-p.seen:
		case <-p.done:
			if r := p.find(msg); r != nil {
				return r
			}
			t.Fatalf("%s ended before it logged %q:\n%s", p.name, msg, p.log())
		case <-deadline:
			t.Fatalf("%s did not log %q within %s:\n%s", p.name, msg, within, p.log())
		}
	}
}

const e2eAudience = "securepay-e2e"

// bearer adds the token to unary calls.
func bearer(token string) connect.ClientOption {
	return connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+token)
			return next(ctx, req)
		}
	}))
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// readyz is a component's probe: the status and the dependencies it names not ready.
func readyz(t *testing.T, healthAddr string) (int, []string) {
	t.Helper()
	res, err := http.Get("http://" + healthAddr + "/readyz")
	if err != nil {
		t.Fatalf("/readyz at %s: %v", healthAddr, err)
	}
	defer res.Body.Close()
	var r struct {
		NotReady []string `json:"not_ready"`
	}
	body, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("/readyz at %s: %v: %s", healthAddr, err, body)
	}
	return res.StatusCode, r.NotReady
}

// TestServeComponentsOnSPIRE runs the five components as separate processes on real SPIRE
// and shows: a transfer made through the gateway with a JWT reaches payments, is
// projected by the projector, read back from queries and from the audit component's
// log; audit and the gateway, started while their Workload API is not there, say not
// ready, open no API port, and serve once the Workload API appears (the gateway then
// reaches the components with the SVID it got late); and a process with another
// component's SVID (queries) is refused by payments.
func TestServeComponentsOnSPIRE(t *testing.T) {
	sp := spiretest.FromEnv(t)
	began := time.Now()
	defer func() {
		t.Logf("the five processes on SPIRE, end to end: %s", time.Since(began).Round(100*time.Millisecond))
	}()
	const redisDB = 9
	dsn := migrateForServing(t, freshDatabase(t), io.Discard)
	redisAddr := testRedisAddr(t, redisDB)
	work := sp.WorkDir(t) // short paths for unix sockets, readable by the agent
	exe := buildSecurepay(t, work)
	td := spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)
	ids := mtls.WellKnownIDs(td)
	exes := map[string]string{}
	for name, id := range map[string]spiffeid.ID{
		"gateway": ids.Gateway, "payments": ids.Payments, "queries": ids.Queries, "projector": ids.Projector, "audit": ids.Audit,
	} {
		exes[name] = sp.CopyAs(t, exe, work, name, id)
	}

	// audit first, on a Workload API address where nothing answers yet.
	lateSocket := filepath.Join(work, "late.sock")
	auditAddr := freeAddr(t)
	audit := startProcess(t, "audit", exes["audit"], nil, "serve", "audit", "--listen", auditAddr, "--health-listen", "127.0.0.1:0",
		"--postgres-dsn", dsn, "--spiffe-socket", "unix://"+lateSocket)
	waiting := audit.await(t, "securepay waiting for its SVID", 60*time.Second)
	auditHealth, _ := waiting["health_addr"].(string)

	component := func(name string) string {
		p := startProcess(t, name, exes[name], nil, "serve", name, "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0",
			"--postgres-dsn", dsn, "--redis-addr", redisAddr, "--redis-db", fmt.Sprint(redisDB), "--spiffe-socket", sp.Addr)
		rec := p.await(t, "securepay serving", 90*time.Second)
		return "https://" + rec["addr"].(string)
	}
	paymentsURL := component("payments")
	queriesURL := component("queries")
	component("projector")

	// Meanwhile audit has had no SVID for a while: not ready, naming the SVID, and
	// nothing listens on its API address (no plaintext or unauthenticated fallback).
	if code, notReady := readyz(t, auditHealth); code != http.StatusServiceUnavailable || !containsString(notReady, "svid") {
		t.Fatalf("audit without a Workload API: want /readyz 503 naming svid, got %d %v", code, notReady)
	}
	if c, err := net.DialTimeout("tcp", auditAddr, 2*time.Second); err == nil {
		c.Close()
		t.Fatalf("audit without an SVID accepts connections on its API address %s", auditAddr)
	}
	if audit.find("securepay serving") != nil {
		t.Fatal("audit says it serves without an SVID")
	}

	// The gateway too starts on a Workload API address where nothing answers: it stays
	// up, says not ready on its probe port, and opens no public port.
	is := gatewaytest.NewIssuer(t, work, e2eAudience)
	certFile, keyFile := writeSelfSigned(t, work, "securepay e2e gateway")
	gwLateSocket := filepath.Join(work, "gwlate.sock")
	gwAddr := freeAddr(t)
	gw := startProcess(t, "gateway", exes["gateway"], []string{"SSL_CERT_FILE=" + is.CAFile()}, append([]string{"serve", "gateway",
		"--listen", gwAddr, "--health-listen", "127.0.0.1:0", "--tls-cert", certFile, "--tls-key", keyFile, "--spiffe-socket", "unix://" + gwLateSocket,
		"--payments-url", paymentsURL, "--queries-url", queriesURL, "--audit-url", "https://" + auditAddr,
		"--redis-addr", redisAddr, "--redis-db", fmt.Sprint(redisDB)}, is.GatewayFlags()...)...)
	gwWaiting := gw.await(t, "gateway waiting for its SVID", 60*time.Second)
	if gwWaiting["spiffe_socket"] != "unix://"+gwLateSocket || gwWaiting["spiffe_id"] != ids.Gateway.String() {
		t.Errorf("the gateway's waiting log should name its Workload API and SPIFFE ID, got %v", gwWaiting)
	}
	gwHealth, _ := gwWaiting["health_addr"].(string)
	if code, notReady := readyz(t, gwHealth); code != http.StatusServiceUnavailable || !containsString(notReady, "svid") {
		t.Fatalf("the gateway without a Workload API: want /readyz 503 naming svid, got %d %v", code, notReady)
	}
	if c, err := net.DialTimeout("tcp", gwAddr, 2*time.Second); err == nil {
		c.Close()
		t.Fatalf("the gateway without an SVID accepts connections on its public address %s", gwAddr)
	}
	if gw.find("gateway serving") != nil {
		t.Fatal("the gateway says it serves without an SVID")
	}

	// The Workload API appears at audit's and the gateway's addresses (as when the agent
	// starts after the components): links to the agent's socket, so the agent still sees
	// each one's own process and executable.
	for _, late := range []string{lateSocket, gwLateSocket} {
		if err := os.Symlink(strings.TrimPrefix(sp.Addr, "unix://"), late); err != nil {
			t.Fatal(err)
		}
	}
	appeared := time.Now()
	rec := audit.await(t, "securepay serving", 90*time.Second)
	t.Logf("audit served %s after its Workload API appeared", time.Since(appeared).Round(100*time.Millisecond))
	if got := rec["addr"].(string); got != auditAddr {
		t.Fatalf("audit serves on %s, want %s", got, auditAddr)
	}
	if code, notReady := readyz(t, auditHealth); code != http.StatusOK {
		t.Fatalf("audit with its SVID: want /readyz 200, got %d %v", code, notReady)
	}
	gwURL := "https://" + gw.await(t, "gateway serving", 90*time.Second)["listen"].(string)
	t.Logf("the gateway served %s after its Workload API appeared", time.Since(appeared).Round(100*time.Millisecond))
	awaitReady(t, "the gateway with its SVID", gwHealth)

	client := publicClient(t, certFile)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	op := is.MustToken(t, "ops-1", []string{"operator"})
	for _, a := range []*ledgerv1.OpenAccountRequest{
		{AccountId: "world", Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL},
		{AccountId: "alice", Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER},
		{AccountId: "bob", Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER},
	} {
		if _, err := ledgerv1connect.NewAccountServiceClient(client, gwURL, bearer(op)).OpenAccount(ctx, connect.NewRequest(a)); err != nil {
			t.Fatalf("the operator opens %s through the gateway: %v", a.AccountId, err)
		}
	}
	transfer := func(tok, id, from, to, amount string) *ledgerv1.TransferResponse {
		t.Helper()
		res, err := ledgerv1connect.NewPaymentServiceClient(client, gwURL, bearer(tok)).Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{
			PaymentId: id, SourceAccountId: from, DestinationAccountId: to, Amount: &ledgerv1.Money{Value: amount, Asset: "USD"},
		}))
		if err != nil {
			t.Fatalf("transfer %s (%s → %s, %s) through the gateway: %v", id, from, to, amount, err)
		}
		return res.Msg
	}
	transfer(is.MustToken(t, "treasury", []string{"customer"}, "world"), "fund-alice", "world", "alice", "100.00")
	aliceTok := is.MustToken(t, "alice", []string{"customer"}, "alice")
	last := transfer(aliceTok, "alice-to-bob", "alice", "bob", "30.00")
	for _, c := range []struct{ tok, account, want string }{
		{aliceTok, "alice", "70.00"},
		{is.MustToken(t, "bob", []string{"customer"}, "bob"), "bob", "30.00"},
	} {
		bal, err := ledgerv1connect.NewBalanceServiceClient(client, gwURL, bearer(c.tok)).GetBalance(ctx, connect.NewRequest(&ledgerv1.GetBalanceRequest{
			AccountId: c.account, MinPosition: last.GetResult().GetPosition(),
		}))
		if err != nil || bal.Msg.GetBalance().GetAvailable() != c.want {
			t.Fatalf("%s's balance through the gateway (queries, after the projector): want %s, got %v %v", c.account, c.want, bal, err)
		}
	}
	events, err := ledgerv1connect.NewAuditServiceClient(client, gwURL, bearer(is.MustToken(t, "auditor-1", []string{"auditor"}))).
		ReadStream(ctx, connect.NewRequest(&ledgerv1.ReadStreamRequest{Stream: "payment-alice-to-bob"}))
	if err != nil || len(events.Msg.GetEvents()) == 0 {
		t.Fatalf("the transfer's events through the gateway (audit): %v %v", events, err)
	}
	// Alice's token cannot move bob's money: the gateway refuses before payments.
	_, err = ledgerv1connect.NewPaymentServiceClient(client, gwURL, bearer(aliceTok)).Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{
		PaymentId: "steal", SourceAccountId: "bob", DestinationAccountId: "alice", Amount: &ledgerv1.Money{Value: "1.00", Asset: "USD"},
	}))
	if code := connect.CodeOf(err); code != connect.CodePermissionDenied && code != connect.CodeNotFound {
		t.Fatalf("alice moving bob's money through the gateway: want permission_denied or not_found, got %v", err)
	}

	// This test process, registered as the queries component, calls payments directly:
	// a real SVID of our trust domain, but not the gateway's.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sp.Register(t, ids.Queries, self)
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	src, err := mtls.WorkloadSource(sctx, sp.Addr, mtls.WithID(ids.Queries))
	scancel()
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	_, err = ledgerv1connect.NewPaymentServiceClient(mtls.HTTPClient(src, ids.Payments), paymentsURL).Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{
		PaymentId: "forged", SourceAccountId: "bob", DestinationAccountId: "alice", Amount: &ledgerv1.Money{Value: "1.00", Asset: "USD"},
	}))
	var cerr *connect.Error
	if !errors.As(err, &cerr) || cerr.Code() != connect.CodePermissionDenied || !strings.Contains(cerr.Message(), "mtls: "+ids.Queries.String()+" may not call") {
		t.Fatalf("a process with the queries SVID calling payments' Transfer: want permission_denied from the mTLS policy, got %v", err)
	}
	bal, err := ledgerv1connect.NewBalanceServiceClient(client, gwURL, bearer(aliceTok)).GetBalance(ctx, connect.NewRequest(&ledgerv1.GetBalanceRequest{AccountId: "alice"}))
	if err != nil || bal.Msg.GetBalance().GetAvailable() != "70.00" {
		t.Fatalf("alice's balance after the forged call: want 70.00 (nothing moved), got %v %v", bal, err)
	}
}

// awaitReady waits for /readyz 200 at healthAddr. Health answers are cached for a
// second, so the not-ready answer given just before may be repeated once.
func awaitReady(t *testing.T, what, healthAddr string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		code, notReady := readyz(t, healthAddr)
		if code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: want /readyz 200 within 10s, got %d %v", what, code, notReady)
		}
	}
}

// publicClient is a client of the gateway's public port: it trusts the gateway's
// certificate in certFile, and nothing else.
func publicClient(t *testing.T, certFile string) *http.Client {
	t.Helper()
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true}}
	t.Cleanup(client.CloseIdleConnections)
	return client
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
