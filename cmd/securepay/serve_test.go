package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// testCert writes a self-signed certificate for 127.0.0.1 and its key, as PEM files.
func testCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "securepay test"},
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
	dir := t.TempDir()
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
	dsn := freshDatabase(t)
	redisAddr := testRedisAddr(t, redisDB)
	certFile, keyFile := testCert(t)

	var migrated strings.Builder
	if err := run(context.Background(), []string{"migrate", "--postgres-dsn", dsn}, &migrated, io.Discard, noEnv); err != nil {
		t.Fatalf("securepay migrate: %v", err)
	}
	if !strings.Contains(migrated.String(), "views schema securepay_views: up to date") {
		t.Fatalf("migrate: want both schemas reported, got:\n%s", migrated.String())
	}

	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--listen", "127.0.0.1:0", "--postgres-dsn", dsn, "--redis-addr", redisAddr,
			"--redis-db", fmt.Sprint(redisDB), "--tls-cert", certFile, "--tls-key", keyFile}, io.Discard, pw, noEnv)
		pw.Close()
	}()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var rec struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "securepay serving" {
				addr <- rec.Addr
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
	if rb := op("projections", "rebuild", "accounts.v1", "--plain"); !strings.Contains(rb, "rebuilt accounts.v1") {
		t.Fatalf("projections rebuild: got:\n%s", rb)
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
