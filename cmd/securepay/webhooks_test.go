package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
)

// TestServeWebhookRegistry runs the production path of the webhook registry: `securepay
// migrate` creates the endpoints table and grants it to the serving role, `securepay
// serve --webhook-key-file` registers, lists, rotates and deletes over TLS as that role,
// and no secret reaches the server's log. Started again with another key, serve refuses
// to start and names the flag; without a key, WebhookService says how to turn it on.
func TestServeWebhookRegistry(t *testing.T) {
	const redisDB = 13
	ownerDSN := freshDatabase(t)
	redisAddr := testRedisAddr(t, redisDB)
	certFile, keyFile := testCert(t)
	var migrated strings.Builder
	dsn := migrateForServing(t, ownerDSN, &migrated)
	dispatcher, _ := servingRole(t, ownerDSN)
	if err := run(context.Background(), []string{"migrate", "--postgres-dsn", ownerDSN, "--dispatcher-role", dispatcher}, &migrated, io.Discard, noEnv); err != nil {
		t.Fatalf("securepay migrate --dispatcher-role: %v", err)
	}
	if !strings.Contains(migrated.String(), "dispatcher role "+dispatcher+": SELECT on securepay_webhooks.endpoints") {
		t.Fatalf("migrate --dispatcher-role: want the grant reported, got:\n%s", migrated.String())
	}
	if !strings.Contains(migrated.String(), "webhook schema securepay_webhooks: up to date") || !strings.Contains(migrated.String(), "DELETE on the webhook endpoints") {
		t.Fatalf("migrate: want the webhook schema and its grants reported, got:\n%s", migrated.String())
	}
	dir := t.TempDir()
	writeKey := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyA := writeKey("a.key", "c2VjdXJlcGF5LXRlc3Qtd2ViaG9vay1rZXktQQ==0123456789\n")
	keyB := writeKey("b.key", "another-webhook-key-for-the-mismatch-test-0123456789\n")
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(pem)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}

	// serve starts securepay serve with extra flags and returns its URL, its log so far and
	// a stop function; or, when it ends before listening, the error it ended with.
	serve := func(extra ...string) (url string, log func() string, stop func(), startErr error) {
		ctx, cancel := context.WithCancel(context.Background())
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		args := append([]string{"serve", "--listen", "127.0.0.1:0", "--postgres-dsn", dsn, "--redis-addr", redisAddr,
			"--redis-db", fmt.Sprint(redisDB), "--tls-cert", certFile, "--tls-key", keyFile}, extra...)
		go func() {
			done <- run(ctx, args, io.Discard, pw, noEnv)
			pw.Close()
		}()
		var mu sync.Mutex
		var lines strings.Builder
		addr := make(chan string, 1)
		go func() {
			sc := bufio.NewScanner(pr)
			for sc.Scan() {
				mu.Lock()
				lines.Write(sc.Bytes())
				lines.WriteByte('\n')
				mu.Unlock()
				var rec struct {
					Msg  string `json:"msg"`
					Addr string `json:"addr"`
				}
				if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "securepay serving" {
					addr <- rec.Addr
				}
			}
		}()
		log = func() string { mu.Lock(); defer mu.Unlock(); return lines.String() }
		select {
		case a := <-addr:
			return "https://" + a, log, func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("securepay serve: want a clean stop, got %v", err)
				}
			}, nil
		case err := <-done:
			cancel()
			return "", log, nil, err
		case <-time.After(30 * time.Second):
			cancel()
			t.Fatal("securepay serve did not start listening within 30s")
		}
		return "", nil, nil, nil
	}

	url, log, stop, err := serve("--webhook-key-file", keyA)
	if err != nil {
		t.Fatalf("serve --webhook-key-file: %v", err)
	}
	ctx := context.Background()
	client := ledgerv1connect.NewWebhookServiceClient(hc, url)
	reg, err := client.RegisterEndpoint(ctx, connect.NewRequest(&ledgerv1.RegisterEndpointRequest{AccountId: "alice", Url: "https://hooks.example/alice"}))
	if err != nil {
		t.Fatalf("register as the serving role: %v", err)
	}
	id := reg.Msg.GetEndpoint().GetEndpointId()
	list, err := client.ListEndpoints(ctx, connect.NewRequest(&ledgerv1.ListEndpointsRequest{AccountId: "alice"}))
	if err != nil || len(list.Msg.GetEndpoints()) != 1 || list.Msg.GetEndpoints()[0].GetEndpointId() != id {
		t.Fatalf("list: %v, %v", list, err)
	}
	rot, err := client.RotateSecret(ctx, connect.NewRequest(&ledgerv1.RotateSecretRequest{EndpointId: id}))
	if err != nil {
		t.Fatalf("rotate: %v", err)
	}
	// A second endpoint, kept for the restart with another key.
	if _, err := client.RegisterEndpoint(ctx, connect.NewRequest(&ledgerv1.RegisterEndpointRequest{AccountId: "alice", Url: "https://hooks.example/kept"})); err != nil {
		t.Fatal(err)
	}
	if _, err := client.DeleteEndpoint(ctx, connect.NewRequest(&ledgerv1.DeleteEndpointRequest{EndpointId: id})); err != nil {
		t.Fatalf("delete as the serving role: %v", err)
	}
	stop()
	for _, s := range []string{reg.Msg.GetSecret(), rot.Msg.GetSecret()} {
		if strings.Contains(log(), strings.TrimPrefix(s, "whsec_")) {
			t.Fatalf("the server's log holds a secret:\n%s", log())
		}
	}

	// The dispatcher, as its own read-only role, refuses a key its rows were not sealed
	// with before it consumes anything.
	dispatcherDSN := strings.Replace(dsn, strings.Split(strings.TrimPrefix(dsn, "postgres://"), "@")[0]+"@", dispatcher+"@", 1)
	derr := run(ctx, []string{"serve", "dispatcher", "--kafka-brokers", "127.0.0.1:1", "--postgres-dsn", dispatcherDSN, "--webhook-key-file", keyB}, io.Discard, io.Discard, noEnv)
	if derr == nil || !strings.Contains(derr.Error(), "sealed under another key") {
		t.Fatalf("serve dispatcher with another webhook key: %v, want a refusal naming the key", derr)
	}

	_, _, _, err = serve("--webhook-key-file", keyB)
	if err == nil || !strings.Contains(err.Error(), "sealed under another key") || !strings.Contains(err.Error(), "--webhook-key-file") {
		t.Fatalf("serve with another webhook key: %v, want a refusal naming --webhook-key-file", err)
	}

	url, log, stop, err = serve()
	if err != nil {
		t.Fatalf("serve without a webhook key: %v", err)
	}
	_, err = ledgerv1connect.NewWebhookServiceClient(hc, url).ListEndpoints(ctx, connect.NewRequest(&ledgerv1.ListEndpointsRequest{AccountId: "alice"}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || services.ReasonOf(err) != services.ReasonWebhooksDisabled || !strings.Contains(err.Error(), "--webhook-key-file") {
		t.Fatalf("WebhookService without a key: %v, want FAILED_PRECONDITION WEBHOOKS_DISABLED naming --webhook-key-file", err)
	}
	stop()
	if !strings.Contains(log(), "no --webhook-key-file") {
		t.Fatalf("serve without a webhook key: want a warning in the log, got:\n%s", log())
	}
}

// TestDevWebhookKey: dev makes its key once, private, and reads the same one back.
func TestDevWebhookKey(t *testing.T) {
	dir := t.TempDir()
	k1, name, err := devWebhookKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(name)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v, mode %v; want a private file", name, err, fi.Mode())
	}
	k2, _, err := devWebhookKey(dir)
	if err != nil || k2.ID() != k1.ID() {
		t.Fatalf("second start: key %v (%v), want the same key as the first", k2, err)
	}
	if err := os.Chmod(name, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadWebhookKey(name); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a key others can read: %v, want a refusal saying chmod 600", err)
	}
	short := filepath.Join(dir, "short.key")
	if err := os.WriteFile(short, []byte("abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadWebhookKey(short); err == nil || !strings.Contains(err.Error(), "/dev/urandom") {
		t.Fatalf("a 3-byte key: %v, want a refusal saying how to make one", err)
	}
}

// TestDevServesWebhookEndpoints: securepay dev registers through its gateway, the
// endpoint's owner is the token's subject, and the listing never shows the secret.
func TestDevServesWebhookEndpoints(t *testing.T) {
	url := startDev(t)
	client := ledgerv1connect.NewWebhookServiceClient(http.DefaultClient, url, bearer(devTokenFor(url)))
	ctx := context.Background()
	reg, err := client.RegisterEndpoint(ctx, connect.NewRequest(&ledgerv1.RegisterEndpointRequest{AccountId: "alice", Url: "http://127.0.0.1:9/hooks"}))
	if err != nil {
		t.Fatalf("register on dev: %v", err)
	}
	if reg.Msg.GetEndpoint().GetOwner() != "dev-test" || !strings.HasPrefix(reg.Msg.GetSecret(), "whsec_") {
		t.Fatalf("registered %v; want the token's subject dev-test as owner and a whsec_ secret", reg.Msg.GetEndpoint())
	}
	list, err := client.ListEndpoints(ctx, connect.NewRequest(&ledgerv1.ListEndpointsRequest{AccountId: "alice"}))
	if err != nil || len(list.Msg.GetEndpoints()) != 1 {
		t.Fatalf("list on dev: %v, %v", list, err)
	}
	if strings.Contains(list.Msg.String(), strings.TrimPrefix(reg.Msg.GetSecret(), "whsec_")) {
		t.Fatal("the listing shows the secret")
	}
}
