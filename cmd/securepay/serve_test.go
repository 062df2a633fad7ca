package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
)

// testCert writes a self-signed certificate for 127.0.0.1 and its key, as PEM files.
func testCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	return writeSelfSigned(t, t.TempDir(), "securepay test")
}

// writeSelfSigned writes into dir (as cert.pem and key.pem, the key private) a fresh
// self-signed certificate for 127.0.0.1 named commonName.
func writeSelfSigned(t *testing.T, dir, commonName string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// freshDatabase creates an empty database in the test cluster and returns its DSN.
func freshDatabase(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv("SECUREPAY_TEST_POSTGRES_DSN")
	if dsn == "" {
		t.Fatal("SECUREPAY_TEST_POSTGRES_DSN is not set: run the tests with infra/local/test.sh, which starts a throw-away PostgreSQL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to the test PostgreSQL (%v): run the tests with infra/local/test.sh", err)
	}
	defer conn.Close(ctx)
	name := fmt.Sprintf("securepay_cmd_%d", time.Now().UnixNano())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return
		}
		defer c.Close(ctx)
		_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("parse SECUREPAY_TEST_POSTGRES_DSN: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// testRedisAddr returns the test Redis address after flushing the database the serve test
// uses (its own, so other packages' tests on the same server are not disturbed).
func testRedisAddr(t *testing.T, db int) string {
	t.Helper()
	addr := os.Getenv("SECUREPAY_TEST_REDIS_ADDR")
	if addr == "" {
		t.Fatal("SECUREPAY_TEST_REDIS_ADDR is not set: run the tests with infra/local/test.sh (or infra/local/redis.sh start DIR PORT)")
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, DB: db})
	defer rdb.Close()
	if err := rdb.FlushDB(context.Background()).Err(); err != nil {
		t.Fatalf("redis at %s (%v): run the tests with infra/local/test.sh", addr, err)
	}
	return addr
}

// TestServeWithPostgresRedisTLS runs the production path: `securepay migrate`, then
// `securepay serve` over TLS on PostgreSQL and Redis, used by the CLI with --ca-file,
// then a graceful stop.
func TestServeWithPostgresRedisTLS(t *testing.T) {
	const redisDB = 12
	ownerDSN := freshDatabase(t)
	redisAddr := testRedisAddr(t, redisDB)
	certFile, keyFile := testCert(t)

	var migrated strings.Builder
	dsn := migrateForServing(t, ownerDSN, &migrated)
	if !strings.Contains(migrated.String(), "views schema securepay_views: up to date") {
		t.Fatalf("migrate: want both schemas reported, got:\n%s", migrated.String())
	}

	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--listen", "127.0.0.1:0", "--postgres-dsn", dsn, "--redis-addr", redisAddr,
			"--redis-db", fmt.Sprint(redisDB), "--tls-cert", certFile, "--tls-key", keyFile, "--pprof-listen", "127.0.0.1:0"}, io.Discard, pw, noEnv)
		pw.Close()
	}()
	addr := make(chan string, 1)
	pprofAddr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var rec struct {
				Msg       string `json:"msg"`
				Addr      string `json:"addr"`
				PprofAddr string `json:"pprof_addr"`
			}
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "securepay serving" {
				addr <- rec.Addr
			}
			if rec.Msg == "securepay profiles" {
				pprofAddr <- rec.PprofAddr
			}
		}
	}()
	var server string
	select {
	case a := <-addr:
		server = "https://" + a
	case err := <-done:
		cancel()
		t.Fatalf("securepay serve ended before listening: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("securepay serve did not start listening within 30s")
	}

	c := func(args ...string) string {
		t.Helper()
		return mustCLI(t, server, append(args, "--ca-file", certFile)...)
	}
	// --pprof-listen: the runtime's profiles on a loopback port of their own.
	select {
	case a := <-pprofAddr:
		resp, err := http.Get("http://" + a + "/debug/pprof/goroutine?debug=1")
		if err != nil {
			t.Fatalf("GET the goroutine profile from --pprof-listen %s: %v", a, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine profile:") {
			t.Fatalf("GET /debug/pprof/goroutine?debug=1 from --pprof-listen: want 200 and a goroutine profile, got %d:\n%.300s", resp.StatusCode, body)
		}
	default:
		t.Fatal("serve logged its API address but not its --pprof-listen address (\"securepay profiles\") before it")
	}
	c("account", "open", "world", "--kind", "external")
	c("account", "open", "alice")
	var res struct {
		Result struct {
			Position string `json:"position"`
		} `json:"result"`
	}
	out := c("transfer", "--from", "world", "--to", "alice", "--amount", "42.00", "--id", "serve-1", "--idempotency-key", "k-serve-1", "--json")
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("transfer --json: %v\n%s", err, out)
	}
	replay := c("transfer", "--from", "world", "--to", "alice", "--amount", "42.00", "--id", "serve-1", "--idempotency-key", "k-serve-1", "--json")
	if replay != out {
		t.Fatalf("replay with the same Idempotency-Key: want the stored response, got\n%s\nfirst\n%s", replay, out)
	}
	bal := c("balance", "alice", "--min-position", res.Result.Position)
	if !strings.Contains(bal, "42.00") {
		t.Fatalf("balance from the PostgreSQL view after the write: want 42.00, got:\n%s", bal)
	}
	if hist := c("history", "alice"); !strings.Contains(hist, "serve-1") {
		t.Fatalf("history from the PostgreSQL view: want the serve-1 credit, got:\n%s", hist)
	}
	if v := c("verify"); !strings.Contains(v, "hash chain verified") {
		t.Fatalf("verify: %s", v)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("securepay serve: want a clean stop, got %v", err)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("securepay serve did not stop within 40s of the signal")
	}

	// The operator's and the auditor's commands on the same database.
	op := func(args ...string) string {
		t.Helper()
		var out, errOut strings.Builder
		if err := run(context.Background(), append(args, "--postgres-dsn", dsn), &out, &errOut, noEnv); err != nil {
			t.Fatalf("securepay %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errOut.String())
		}
		return out.String()
	}
	if l := op("projections", "list"); !strings.Contains(l, "accounts.v1") || !strings.Contains(l, "payments.v1") {
		t.Fatalf("projections list: want both PostgreSQL projectors, got:\n%s", l)
	}
	if st := op("projections", "status"); !strings.Contains(st, "accounts.v1") {
		t.Fatalf("projections status: got:\n%s", st)
	}
	// A rebuild creates and swaps tables: the owner's work, like migrate.
	var rb strings.Builder
	if err := run(context.Background(), []string{"projections", "rebuild", "accounts.v1", "--plain", "--postgres-dsn", ownerDSN}, &rb, io.Discard, noEnv); err != nil || !strings.Contains(rb.String(), "rebuilt accounts.v1") {
		t.Fatalf("projections rebuild as the owner: %v, got:\n%s", err, rb.String())
	}
	if v := op("audit", "verify"); !strings.Contains(v, "hash chain intact") {
		t.Fatalf("audit verify: got:\n%s", v)
	}
	if b := op("audit", "balances"); !strings.Contains(b, "alice") {
		t.Fatalf("audit balances: want alice's recomputed balance, got:\n%s", b)
	}
	export := op("audit", "export")
	if lines := strings.Count(export, "\n"); lines < 5 || !strings.Contains(export, `"hash"`) {
		t.Fatalf("audit export: want one JSON line per event with its hash, got %d lines:\n%s", lines, export)
	}
	if r := op("audit", "replay", "account-alice"); !strings.Contains(r, "ledger.account.credited.v1") {
		t.Fatalf("audit replay: want alice's credit with the state after it, got:\n%s", r)
	}
	var errOut strings.Builder
	if err := run(context.Background(), []string{"projections", "rebuild", "no-such.v1", "--postgres-dsn", dsn}, io.Discard, &errOut, noEnv); err == nil {
		t.Fatal("projections rebuild of an unknown projector: want an error")
	}
}

// ownServer is a PostgreSQL or Redis of the test's own (infra/local/*.sh), so that the
// test can stop and restart it without disturbing the shared ones.
type ownServer struct {
	t      *testing.T
	script string // postgres.sh or redis.sh
	dir    string
	port   int
	addr   string // what start printed: a DSN or host:port
}

func startOwnServer(t *testing.T, script string) *ownServer {
	t.Helper()
	// Under the system temp directory and world-traversable: as root postgres.sh runs the
	// server as the postgres OS user, which must reach it (t.TempDir is private).
	dir, err := os.MkdirTemp("", "securepay-outage-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	s := &ownServer{t: t, script: script, dir: dir, port: port}
	t.Cleanup(func() {
		if _, err := s.run("stop", s.dir); err != nil {
			t.Errorf("stop %s: %v", script, err)
		}
		_ = os.RemoveAll(dir)
	})
	addr, err := s.run("start", dir, fmt.Sprint(port))
	if err != nil {
		// The scripts install the server when they may; a machine where they cannot has
		// no outage to test, which CI must never accept silently.
		if os.Getenv("CI") == "true" {
			t.Fatalf("start a server of the test's own: %v", err)
		}
		t.Skipf("cannot start a server of the test's own (set CI=true to make this fatal): %v", err)
	}
	s.addr = addr
	return s
}

func (s *ownServer) run(args ...string) (string, error) {
	cmd := exec.Command("bash", append([]string{filepath.Join("..", "..", "infra", "local", s.script)}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %v\n%s", s.script, strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

func (s *ownServer) stop() {
	s.t.Helper()
	if _, err := s.run("stop", s.dir); err != nil {
		s.t.Fatal(err)
	}
}

func (s *ownServer) start() {
	s.t.Helper()
	if _, err := s.run("start", s.dir, fmt.Sprint(s.port)); err != nil {
		s.t.Fatal(err)
	}
}

// logLines collects serve's JSON log, safe for concurrent use.
type logLines struct {
	mu    sync.Mutex
	lines []map[string]any
	raw   []string
}

func (l *logLines) add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.raw = append(l.raw, line)
	var rec map[string]any
	if json.Unmarshal([]byte(line), &rec) == nil {
		l.lines = append(l.lines, rec)
	}
}

func (l *logLines) count(msgPrefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.lines {
		if m, _ := r["msg"].(string); strings.HasPrefix(m, msgPrefix) {
			n++
		}
	}
	return n
}

func (l *logLines) notJSON() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, s := range l.raw {
		if !json.Valid([]byte(s)) {
			out = append(out, s)
		}
	}
	return out
}

// TestServeOutages stops serve's own PostgreSQL, then its own Redis, under a running
// `securepay serve`, and proves what clients and probes see: writes answer UNAVAILABLE
// (never INTERNAL) while PostgreSQL is down, health and /readyz say so, and everything
// recovers without a restart; without Redis balance reads still answer within a few
// milliseconds each, and the log says so once each way, as JSON.
func TestServeOutages(t *testing.T) {
	pgSrv := startOwnServer(t, "postgres.sh")
	redisSrv := startOwnServer(t, "redis.sh")
	certFile, keyFile := testCert(t)
	dsn := migrateForServing(t, pgSrv.addr, io.Discard)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--listen", "127.0.0.1:0", "--postgres-dsn", dsn, "--redis-addr", redisSrv.addr,
			"--tls-cert", certFile, "--tls-key", keyFile}, io.Discard, pw, noEnv)
		pw.Close()
	}()
	logs := &logLines{}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			logs.add(sc.Text())
			var rec struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "securepay serving" {
				addr <- rec.Addr
			}
		}
	}()
	var base string
	select {
	case a := <-addr:
		base = "https://" + a
	case err := <-done:
		t.Fatalf("securepay serve ended before listening: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("securepay serve did not start listening within 30s")
	}
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(40 * time.Second):
			t.Error("securepay serve did not stop within 40s")
		}
	}()

	caPEM, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}}
	accounts := ledgerv1connect.NewAccountServiceClient(hc, base)
	payments := ledgerv1connect.NewPaymentServiceClient(hc, base)
	balances := ledgerv1connect.NewBalanceServiceClient(hc, base)
	health := grpchealth.NewClient(hc, base)
	rctx := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 10*time.Second) }

	open := func(id string, kind ledgerv1.AccountKind) error {
		c, cancel := rctx()
		defer cancel()
		_, err := accounts.OpenAccount(c, connect.NewRequest(&ledgerv1.OpenAccountRequest{AccountId: id, Asset: "USD", Kind: kind}))
		return err
	}
	n := 0
	transfer := func() error {
		n++
		c, cancel := rctx()
		defer cancel()
		_, err := payments.Transfer(c, connect.NewRequest(&ledgerv1.TransferRequest{
			PaymentId: fmt.Sprintf("outage-%d", n), SourceAccountId: "world", DestinationAccountId: "alice",
			Amount: &ledgerv1.Money{Value: "1.00", Asset: "USD"}}))
		return err
	}
	status := func(service string) grpchealth.Status {
		c, cancel := rctx()
		defer cancel()
		res, err := health.Check(c, &grpchealth.CheckRequest{Service: service})
		if err != nil {
			t.Fatalf("health of %q: %v", service, err)
		}
		return res.Status
	}
	readyz := func() (int, string) {
		res, err := hc.Get(base + "/readyz")
		if err != nil {
			t.Fatalf("GET /readyz: %v", err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(body)
	}
	// eventually retries cond for a bounded time: health answers are cached for a second
	// and the pool redials on demand.
	eventually := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 30s", what)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	for _, a := range []struct {
		id   string
		kind ledgerv1.AccountKind
	}{{"world", ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL}, {"alice", ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER}} {
		if err := open(a.id, a.kind); err != nil {
			t.Fatalf("open %s: %v", a.id, err)
		}
	}
	if err := transfer(); err != nil {
		t.Fatalf("transfer before the outage: %v", err)
	}
	eventually("health SERVING before the outage", func() bool { return status("") == grpchealth.StatusServing })
	if code, body := readyz(); code != http.StatusOK {
		t.Fatalf("/readyz before the outage: want 200, got %d %s", code, body)
	}
	if res, err := hc.Get(base + "/healthz"); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("/healthz: want 200, got %v %v", res, err)
	} else {
		res.Body.Close()
	}

	// A watch stream follows the log; it must end UNAVAILABLE (reconnect), not INTERNAL.
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	defer wcancel()
	// The watch starts from the views, which apply alice's opening a moment after the
	// write answers: until they have, it ends NOT_FOUND (seen once under -race), so the
	// test waits for a watch that has sent its first balance.
	var watch *connect.ServerStreamForClient[ledgerv1.WatchAccountResponse]
	eventually("a watch of alice that sends her balance", func() bool {
		w, err := balances.WatchAccount(wctx, connect.NewRequest(&ledgerv1.WatchAccountRequest{AccountId: "alice"}))
		if err != nil {
			return false
		}
		if !w.Receive() {
			_ = w.Close()
			return false
		}
		watch = w
		return true
	})
	watchEnd := make(chan error, 1)
	go func() {
		for watch.Receive() {
		}
		watchEnd <- watch.Err()
	}()

	// PostgreSQL stops.
	pgSrv.stop()
	codes := map[connect.Code]int{}
	for range 20 {
		err := transfer()
		codes[connect.CodeOf(err)]++
		if err == nil || connect.CodeOf(err) != connect.CodeUnavailable || services.ReasonOf(err) != services.ReasonUnavailable {
			t.Errorf("transfer with PostgreSQL stopped: want UNAVAILABLE with reason UNAVAILABLE, got %v (reason %q)", err, services.ReasonOf(err))
			continue
		}
		if !strings.Contains(err.Error(), "unreachable") {
			t.Errorf("transfer with PostgreSQL stopped: want a message saying the store is unreachable, got %q", err)
		}
	}
	t.Logf("20 transfers with PostgreSQL stopped: codes %v", codes)
	eventually("health of PaymentService NOT_SERVING without PostgreSQL", func() bool {
		return status(ledgerv1connect.PaymentServiceName) == grpchealth.StatusNotServing
	})
	if s := status(""); s != grpchealth.StatusNotServing {
		t.Errorf("overall health without PostgreSQL: want NOT_SERVING, got %v", s)
	}
	code, body := readyz()
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"store"`) || !strings.Contains(body, "unreachable") {
		t.Errorf("/readyz without PostgreSQL: want 503 naming the store, got %d %s", code, body)
	}
	t.Logf("/readyz without PostgreSQL: %d %s", code, strings.TrimSpace(body))
	select {
	case err := <-watchEnd:
		if connect.CodeOf(err) != connect.CodeUnavailable {
			t.Errorf("watch stream with PostgreSQL stopped: want it ended UNAVAILABLE, got %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("watch stream with PostgreSQL stopped: still open after 30s")
	}

	// PostgreSQL is back: the same server recovers.
	pgSrv.start()
	eventually("a transfer after PostgreSQL restarted", func() bool { return transfer() == nil })
	eventually("overall health SERVING after PostgreSQL restarted", func() bool { return status("") == grpchealth.StatusServing })
	if code, body := readyz(); code != http.StatusOK {
		t.Errorf("/readyz after PostgreSQL restarted: want 200, got %d %s", code, body)
	}

	// Redis stops: balance reads fall back to PostgreSQL, quickly.
	redisSrv.stop()
	const reads = 50
	took := make([]time.Duration, 0, reads)
	for range reads {
		c, cancel := rctx()
		start := time.Now()
		_, err := balances.GetBalance(c, connect.NewRequest(&ledgerv1.GetBalanceRequest{AccountId: "alice"}))
		took = append(took, time.Since(start))
		cancel()
		if err != nil {
			t.Fatalf("balance with Redis stopped: %v", err)
		}
	}
	slices.Sort(took)
	p50, p99, worst := took[reads/2], took[reads*99/100], took[reads-1]
	t.Logf("%d balance reads with Redis stopped: p50 %s, p99 %s, max %s", reads, p50, p99, worst)
	if p99 > 500*time.Millisecond {
		t.Errorf("balance reads with Redis stopped: want p99 < 500ms, got %s (p50 %s)", p99, p50)
	}
	if s := status(ledgerv1connect.BalanceServiceName); s != grpchealth.StatusServing {
		t.Errorf("BalanceService health without Redis: want SERVING (it falls back), got %v", s)
	}
	eventually("/readyz names Redis as degraded", func() bool {
		code, body := readyz()
		return code == http.StatusOK && strings.Contains(body, `"degraded":["redis"]`)
	})

	redisSrv.start()
	eventually("the recovery log line after Redis restarted", func() bool {
		c, cancel := rctx()
		defer cancel()
		_, err := balances.GetBalance(c, connect.NewRequest(&ledgerv1.GetBalanceRequest{AccountId: "alice"}))
		return err == nil && logs.count("redis reachable again") == 1
	})
	if n := logs.count("redis unreachable"); n != 1 {
		t.Errorf("want one degradation log line for the Redis outage, got %d", n)
	}
	if bad := logs.notJSON(); len(bad) > 0 {
		t.Errorf("serve's log must be JSON only; got %d other lines, first %q", len(bad), bad[0])
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		t.Fatal("context ended early")
	}
}

// A wrong DSN says what is wrong: nothing listens there, the database does not exist, or
// the schema is not migrated — each once, never one for the other.
func TestServeSaysWhyItCannotUseThePostgresDSN(t *testing.T) {
	certFile, keyFile := testCert(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := ln.Addr().String()
	ln.Close()
	empty := freshDatabase(t)
	missing, err := url.Parse(empty)
	if err != nil {
		t.Fatal(err)
	}
	missing.Path = "/securepay_no_such_database"
	for _, tc := range []struct {
		name, dsn, want, notWant string
	}{
		{"nothing listens", "postgres://postgres@" + deadAddr + "/postgres?sslmode=disable", "cannot connect to PostgreSQL at " + deadAddr + " (connection refused)", "migrate"},
		{"missing database", missing.String(), `database "securepay_no_such_database" does not exist`, "not migrated"},
		{"empty database", empty, "schema is not migrated", "cannot connect"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := run(ctx, []string{"serve", "--listen", "127.0.0.1:0", "--postgres-dsn", tc.dsn, "--redis-addr", "127.0.0.1:1",
				"--tls-cert", certFile, "--tls-key", keyFile}, io.Discard, io.Discard, noEnv)
			if err == nil {
				t.Fatal("want an error")
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) || strings.Contains(msg, tc.notWant) || strings.Count(msg, "postgres event store:") > 1 {
				t.Fatalf("want %q (once, and not %q), got %q", tc.want, tc.notWant, msg)
			}
		})
	}
}
