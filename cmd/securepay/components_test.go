package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/mtls"
	"github.com/securepay/securepay/services/mtls/mtlstest"
)

// TestSafeListenDefaults: serve refuses an address others can reach while no caller is
// authenticated, dev refuses anything but loopback, each naming the setting and the fix.
func TestSafeListenDefaults(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		env   map[string]string
		want  string // "" means the listen address is accepted
		check func(string) error
	}{
		{name: "serve default", check: func(a string) error { return checkServeListen(a, false) }, args: []string{"127.0.0.1:8443"}},
		{name: "serve on localhost", check: func(a string) error { return checkServeListen(a, false) }, args: []string{"localhost:8443"}},
		{name: "serve on ::1", check: func(a string) error { return checkServeListen(a, false) }, args: []string{"[::1]:8443"}},
		{name: "serve on every interface", check: func(a string) error { return checkServeListen(a, false) }, args: []string{":8443"},
			want: "--listen :8443 (SECUREPAY_LISTEN) would serve on every interface, and no caller is authenticated: anyone who reaches the port could move money; listen on loopback (--listen 127.0.0.1:8443)"},
		{name: "serve on 0.0.0.0", check: func(a string) error { return checkServeListen(a, false) }, args: []string{"0.0.0.0:8443"}, want: "would serve on every interface"},
		{name: "serve on [::]", check: func(a string) error { return checkServeListen(a, false) }, args: []string{"[::]:8443"}, want: "would serve on every interface"},
		{name: "serve on a LAN address", check: func(a string) error { return checkServeListen(a, false) }, args: []string{"10.0.0.5:8443"},
			want: "would serve on 10.0.0.5, which is not a loopback address, and no caller is authenticated"},
		{name: "serve on a host name", check: func(a string) error { return checkServeListen(a, false) }, args: []string{"db.internal:8443"}, want: "db.internal, which is not a loopback address"},
		{name: "serve authenticated", check: func(a string) error { return checkServeListen(a, true) }, args: []string{":8443"}},
		{name: "serve no port", check: func(a string) error { return checkServeListen(a, false) }, args: []string{"127.0.0.1"}, want: `the listen address "127.0.0.1" is not host:port`},
		{name: "dev loopback", check: checkDevListen, args: []string{"127.0.0.1:0"}},
		{name: "dev localhost", check: checkDevListen, args: []string{"localhost:8080"}},
		{name: "dev every interface", check: checkDevListen, args: []string{":8080"},
			want: "dev: --listen :8080 (SECUREPAY_DEV_LISTEN) is not a loopback address: securepay dev speaks cleartext and trusts tokens of its own development key, so it listens on 127.0.0.1, [::1] or localhost only"},
		{name: "dev LAN", check: checkDevListen, args: []string{"192.168.1.2:8080"}, want: "is not a loopback address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.check(tc.args[0])
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("%s: want it accepted, got %v", tc.args[0], err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("%s: want a refusal saying %q, got %v", tc.args[0], tc.want, err)
			}
		})
	}
}

// TestSafeDefaultsThroughTheCommands: the refusals reach the user from the commands, with
// the variables they read: dev's own SECUREPAY_DEV_LISTEN, and serve's SECUREPAY_LISTEN no
// longer moves dev.
func TestSafeDefaultsThroughTheCommands(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"dev on every interface", []string{"dev", "--listen", "0.0.0.0:0"}, nil, "is not a loopback address"},
		{"dev from its variable", []string{"dev"}, map[string]string{"SECUREPAY_DEV_LISTEN": ":0"}, "--listen :0 (SECUREPAY_DEV_LISTEN) is not a loopback address"},
		{"serve on every interface", []string{"serve", "--listen", ":8443"}, nil, "would serve on every interface"},
		{"a component on every interface", []string{"serve", "queries", "--listen", ":8443", "--spiffe-socket", "unix:///tmp/agent.sock"}, nil, "the PostgreSQL DSN is missing"},
		{"a TLS component on every interface", []string{"serve", "queries", "--listen", ":8443", "--tls-cert", "c.pem", "--tls-key", "k.pem"}, nil, "would serve on every interface, and no caller is authenticated"},
		{"serve from its variable", []string{"serve"}, map[string]string{"SECUREPAY_LISTEN": "0.0.0.0:8443"}, "would serve on every interface"},
		{"serve an unknown component", []string{"serve", "gateway-ish"}, nil, `unknown component "gateway-ish": say one of payments, queries, audit, projector (or all, every component in one process)`},
		{"audit needs no Redis", []string{"serve", "audit"}, nil, "serve audit needs an identity: --spiffe-socket or SECUREPAY_SPIFFE_SOCKET (the SPIFFE Workload API, e.g. unix:///run/spire/agent/public/api.sock) for mTLS, or --tls-cert and --tls-key for TLS on loopback without authentication"},
		{"a component takes no TLS pair", []string{"serve", "payments", "--spiffe-socket", "unix:///tmp/agent.sock", "--tls-cert", "c.pem", "--tls-key", "k.pem"}, nil,
			"serve payments takes no --tls-cert or --tls-key: its certificate is its X.509-SVID"},
		{"all has no internal calls", []string{"serve", "--spiffe-socket", "unix:///tmp/agent.sock"}, nil, "--spiffe-socket is for one component alone"},
		{"a bad trust domain", []string{"serve", "audit", "--spiffe-socket", "unix:///tmp/agent.sock", "--trust-domain", "Not A Domain"}, nil, `--trust-domain "Not A Domain"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string { return tc.env[k] }
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // a dev that starts ends at once
			err := run(ctx, tc.args, io.Discard, io.Discard, getenv)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("securepay %s: want a refusal saying %q, got %v", strings.Join(tc.args, " "), tc.want, err)
			}
			if tc.name == "audit needs no Redis" && strings.Contains(err.Error(), "Redis address is missing") {
				t.Fatalf("serve audit: the audit component reads the log only, yet Redis was asked for:\n%v", err)
			}
			if strings.HasPrefix(tc.name, "a component") && strings.Contains(err.Error(), "--listen") {
				t.Fatalf("a component on mTLS authenticates every caller: its listen address is not refused, got:\n%v", err)
			}
		})
	}
	// SECUREPAY_LISTEN is serve's: an address meant for a server does not move dev.
	url := startDevEnv(t, map[string]string{"SECUREPAY_LISTEN": "0.0.0.0:8443", "SECUREPAY_DEV_LISTEN": "127.0.0.1:0"})
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("dev with SECUREPAY_LISTEN set: want it on 127.0.0.1, it listens on %s", url)
	}
}

// TestDevBrowserDefaults: dev answers browsers on this machine only (CORS) and requests
// addressed to loopback names only (DNS rebinding), and serves reflection.
func TestDevBrowserDefaults(t *testing.T) {
	url := startDev(t)
	preflight := func(origin string) string {
		req, _ := http.NewRequest(http.MethodOptions, url+"/securepay.ledger.v1.PaymentService/Transfer", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.Header.Get("Access-Control-Allow-Origin")
	}
	if got := preflight("http://localhost:5173"); got != "http://localhost:5173" {
		t.Errorf("a page on this machine: want it allowed, got Access-Control-Allow-Origin %q", got)
	}
	if got := preflight("https://evil.example"); got != "" {
		t.Errorf("a page from elsewhere: want it refused, got Access-Control-Allow-Origin %q", got)
	}
	req, _ := http.NewRequest(http.MethodPost, url+"/securepay.ledger.v1.BalanceService/GetBalance", strings.NewReader(`{"accountId":"alice"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Host = "rebound.evil.example"
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "DNS rebinding") {
		t.Errorf("a request addressed to another name: want 403 naming DNS rebinding, got %d %s", res.StatusCode, body)
	}
}

// served is what a serve started by a test logged about where it listens.
type served struct {
	url, healthURL string
}

// startServe runs `securepay serve ARGS...` in-process, a component's SVIDs from src
// when it is set, and returns where it serves once it logs "securepay serving" (or,
// with wantServing false, "securepay waiting for its SVID"); the test's cleanup stops it
// and wants a clean stop.
func startServe(t *testing.T, src func(ctx context.Context) (mtls.Source, func(), error), wantServing bool, args ...string) served {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	e := env{stdout: io.Discard, stderr: pw, getenv: noEnv}
	cmd, c := newServeCommand(e)
	c.cfg.newSource = src
	go func() {
		done <- cmd.execute(ctx, e, args)
		pw.Close()
	}()
	want := "securepay serving"
	if !wantServing {
		want = "securepay waiting for its SVID"
	}
	at := make(chan served, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var rec struct {
				Msg        string `json:"msg"`
				Addr       string `json:"addr"`
				HealthAddr string `json:"health_addr"`
			}
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == want {
				s := served{url: "https://" + rec.Addr}
				if rec.HealthAddr != "" {
					s.healthURL = "http://" + rec.HealthAddr
				}
				at <- s
			}
			if strings.Contains(sc.Text(), "securepay serving") && !wantServing {
				t.Errorf("securepay serve %s: it serves, without an SVID: %s", args[0], sc.Text())
			}
		}
	}()
	stopped := false
	t.Cleanup(func() {
		cancel()
		if stopped {
			return
		}
		select {
		case err := <-done:
			if err != nil && wantServing {
				t.Errorf("securepay serve %s: want a clean stop, got %v", args[0], err)
			}
		case <-time.After(40 * time.Second):
			t.Errorf("securepay serve %s did not stop within 40s", args[0])
		}
	})
	select {
	case s := <-at:
		return s
	case err := <-done:
		stopped = true
		t.Fatalf("securepay serve %s ended before it said %q: %v", args[0], want, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("securepay serve %s did not say %q within 30s", args[0], want)
	}
	return served{}
}

// devSource is a component's SVIDs from the test's development CA.
func devSource(ca *mtls.DevCA, id spiffeid.ID) func(ctx context.Context) (mtls.Source, func(), error) {
	return func(context.Context) (mtls.Source, func(), error) {
		src, err := ca.Source(id)
		return src, func() {}, err
	}
}

// TestServeComponentsOverMTLS runs payments, queries, projector and audit as four
// servers on one PostgreSQL and Redis, each on mTLS with an SVID of the development CA:
// the gateway's SVID writes on payments and reads on queries once the projector has
// applied the write, a call sent to the wrong component is told where to go, and each
// component's authorisation matrix (every well-known caller, every protocol, the hostile
// callers) agrees with its declared policy.
func TestServeComponentsOverMTLS(t *testing.T) {
	const redisDB = 13
	dsn := migrateForServing(t, freshDatabase(t), io.Discard)
	redisAddr := testRedisAddr(t, redisDB)
	td := spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)
	ids := mtls.WellKnownIDs(td)
	ca, err := mtls.NewDevCA(td, time.Hour, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	common := []string{"--listen", "127.0.0.1:0", "--postgres-dsn", dsn}
	withRedis := append([]string{"--redis-addr", redisAddr, "--redis-db", fmt.Sprint(redisDB)}, common...)
	comps := map[services.Component]served{
		services.ComponentPayments:  startServe(t, devSource(ca, ids.Payments), true, append([]string{"payments"}, withRedis...)...),
		services.ComponentQueries:   startServe(t, devSource(ca, ids.Queries), true, append([]string{"queries"}, withRedis...)...),
		services.ComponentProjector: startServe(t, devSource(ca, ids.Projector), true, append([]string{"projector"}, withRedis...)...),
		services.ComponentAudit:     startServe(t, devSource(ca, ids.Audit), true, append([]string{"audit"}, common...)...), // no Redis
	}
	serverID := map[services.Component]spiffeid.ID{
		services.ComponentPayments: ids.Payments, services.ComponentQueries: ids.Queries,
		services.ComponentProjector: ids.Projector, services.ComponentAudit: ids.Audit,
	}
	gw, err := ca.Source(ids.Gateway)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	payments := mtls.HTTPClient(gw, ids.Payments)
	queries := mtls.HTTPClient(gw, ids.Queries)
	accounts := ledgerv1connect.NewAccountServiceClient(payments, comps[services.ComponentPayments].url)
	for _, a := range []*ledgerv1.OpenAccountRequest{
		{AccountId: "world", Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL},
		{AccountId: "bob", Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER},
	} {
		if _, err := accounts.OpenAccount(ctx, connect.NewRequest(a)); err != nil {
			t.Fatalf("open %s on payments as the gateway: %v", a.AccountId, err)
		}
	}
	res, err := ledgerv1connect.NewPaymentServiceClient(payments, comps[services.ComponentPayments].url).Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{
		PaymentId: "mtls-1", SourceAccountId: "world", DestinationAccountId: "bob", Amount: &ledgerv1.Money{Value: "7.00", Asset: "USD"},
	}))
	if err != nil {
		t.Fatalf("transfer on payments as the gateway: %v", err)
	}
	// The projector (another server) applies the write; queries polls the view.
	bal, err := ledgerv1connect.NewBalanceServiceClient(queries, comps[services.ComponentQueries].url).GetBalance(ctx, connect.NewRequest(&ledgerv1.GetBalanceRequest{
		AccountId: "bob", MinPosition: res.Msg.GetResult().GetPosition(),
	}))
	if err != nil || bal.Msg.GetBalance().GetAvailable() != "7.00" {
		t.Fatalf("balance on queries at the write's position: want 7.00, got %v %v", bal, err)
	}
	_, err = ledgerv1connect.NewBalanceServiceClient(payments, comps[services.ComponentPayments].url).GetBalance(ctx, connect.NewRequest(&ledgerv1.GetBalanceRequest{AccountId: "bob"}))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("GetBalance sent to payments: want permission_denied (the policy lists only payments' procedures), got %v", err)
	}
	// Queries' own SVID may not write: only the gateway may call payments.
	qsrc, err := ca.Source(ids.Queries)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ledgerv1connect.NewAccountServiceClient(mtls.HTTPClient(qsrc, ids.Payments), comps[services.ComponentPayments].url).OpenAccount(ctx,
		connect.NewRequest(&ledgerv1.OpenAccountRequest{AccountId: "mallory", Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER}))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("OpenAccount as the queries component: want permission_denied, got %v", err)
	}

	for comp, s := range comps {
		t.Run("matrix/"+string(comp), func(t *testing.T) {
			policy, err := services.ComponentPolicy(td, []services.Component{comp})
			if err != nil {
				t.Fatal(err)
			}
			var all []string
			for _, c := range services.Components() {
				all = append(all, services.Procedures(c)...)
			}
			mismatches, err := mtlstest.Matrix{URL: s.url, Server: serverID[comp], CA: ca, Policy: policy, Served: all, CallTimeout: 2 * time.Second}.Check(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// Streams (WatchAccount, StreamLog, health's Watch) are called as streams in
			// every protocol, Connect included.
			for _, mm := range mismatches {
				t.Error(mm)
			}
			// The probe port answers without an SVID, and only health.
			res, err := http.Get(s.healthURL + "/readyz")
			if err != nil || res.StatusCode != http.StatusOK {
				t.Fatalf("%s /readyz on the probe port: want 200, got %v %v", comp, res, err)
			}
			res.Body.Close()
		})
	}
}

// TestComponentWithoutSVIDIsNotReady: a component whose Workload API does not answer
// opens no API port, and its probe port says it is not ready because of its SVID.
func TestComponentWithoutSVIDIsNotReady(t *testing.T) {
	dsn := migrateForServing(t, freshDatabase(t), io.Discard)
	noAgent := func(context.Context) (mtls.Source, func(), error) {
		return nil, nil, errors.New("no SPIRE agent at unix:///nowhere.sock")
	}
	s := startServe(t, noAgent, false, "audit", "--listen", "127.0.0.1:0", "--postgres-dsn", dsn)
	res, err := http.Get(s.healthURL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	var r struct {
		Ready    bool     `json:"ready"`
		NotReady []string `json:"not_ready"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("/readyz: %v: %s", err, body)
	}
	if res.StatusCode != http.StatusServiceUnavailable || r.Ready || !slices.Contains(r.NotReady, "svid") {
		t.Fatalf("/readyz without an SVID: want 503 naming svid, got %d %s", res.StatusCode, body)
	}
	health := grpchealth.NewClient(http.DefaultClient, s.healthURL, connect.WithGRPCWeb())
	hres, err := health.Check(context.Background(), &grpchealth.CheckRequest{Service: ledgerv1connect.AuditServiceName})
	if err != nil || hres.Status != grpchealth.StatusNotServing {
		t.Fatalf("grpc health of AuditService without an SVID: want NOT_SERVING, got %v %v", hres, err)
	}
}
