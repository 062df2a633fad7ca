package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore/postgres"
	"github.com/securepay/securepay/internal/kafkatest"
	"github.com/securepay/securepay/services/dispatch"
	"github.com/securepay/securepay/services/ledger"
	"github.com/securepay/securepay/services/relay"
	"github.com/securepay/securepay/services/webhook"
)

// Unusable settings are refused with a usage error (exit 2) before anything is contacted:
// the broker points at nothing, so a dispatcher that started would fail differently.
func TestServeDispatcherRefusesBadSettings(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "endpoints.json")
	secret := strings.Repeat("k", 32)
	if err := os.WriteFile(good, []byte(`{"endpoints":[{"id":"e","url":"https://x/","secret":"`+secret+`","accounts":["*"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	readable := filepath.Join(dir, "readable.json")
	if err := os.WriteFile(readable, []byte(`{"endpoints":[]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	badFile := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(badFile, []byte(`{"endpoints":[{"id":"e","url":"/x","secret":"`+secret+`","accounts":["*"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"serve", "dispatcher", "--kafka-brokers", "127.0.0.1:1"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no broker", []string{"--kafka-brokers", "", "--endpoints-file", good}, "no Kafka broker"},
		{"protocol too old for Kafka 4", []string{"--kafka-version", "2.0.0", "--endpoints-file", good}, "older than 2.1.0"},
		{"no endpoints", nil, "no endpoints: set --postgres-dsn-file and --webhook-key-file"},
		{"registry key without a database", []string{"--webhook-key-file", good}, "needs the registry's database"},
		{"endpoints readable by others", []string{"--endpoints-file", readable}, "can be read by other users"},
		{"endpoints file invalid", []string{"--endpoints-file", badFile}, "not an absolute http(s) URL"},
		{"zero attempts", []string{"--max-attempts", "0", "--endpoints-file", good}, "--max-attempts"},
		{"too many attempts", []string{"--max-attempts", "1000", "--endpoints-file", good}, "max attempts 1000 out of 1..100"},
		{"backoff max below base", []string{"--backoff-base", "2s", "--backoff-max", "1s", "--endpoints-file", good}, "backoff base 2s must be positive and at most its max 1s"},
		{"zero window", []string{"--window", "0", "--endpoints-file", good}, "--window"},
		{"zero circuit-open grace", []string{"--circuit-open-grace", "0s", "--endpoints-file", good}, "--circuit-open-grace"},
		{"same topics", []string{"--dead-letter-topic", relay.TopicNotifications, "--endpoints-file", good}, "both"},
		{"metrics address", []string{"--metrics-listen", "9465", "--endpoints-file", good}, `--metrics-listen "9465" is not host:port`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := run(ctx, append(append([]string{}, base...), tc.args...), io.Discard, io.Discard, noEnv)
			var u usageError
			if !errors.As(err, &u) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("serve dispatcher %v: %v, want a usage error (exit 2) saying %q", tc.args, err, tc.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("the error repeats an endpoint's secret: %v", err)
			}
		})
	}
}

// TestServeDispatcherDelivers runs `securepay serve relay` and `securepay serve
// dispatcher` on a real ledger and broker, each as its own PostgreSQL role: alice's
// credits reach the endpoint registered for her in the webhook registry, signed with its
// secret so that dispatch.Verify accepts them, and the dispatcher's metrics count them.
func TestServeDispatcherDelivers(t *testing.T) {
	addr := kafkatest.Addr(t)
	dsn := freshDatabase(t)
	// serve relay logs in as a role that can only read the log (docs/KAFKA.md).
	relayRole, relayDSN := servingRole(t, dsn)
	dispatcherRole, dispatcherDSN := servingRole(t, dsn)
	if err := run(context.Background(), []string{"migrate", "--postgres-dsn", dsn, "--relay-role", relayRole, "--relay-checkpoint-schema", "dispatch_cmd_test",
		"--dispatcher-role", dispatcherRole}, io.Discard, io.Discard, noEnv); err != nil {
		t.Fatalf("migrate --relay-role %s --dispatcher-role %s: %v", relayRole, dispatcherRole, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	store, err := postgres.Open(ctx, postgres.Config{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	proc, err := ledger.New(store, ledger.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer proc.Close()
	usd, _ := domain.LookupAsset("USD")
	one, _ := domain.NewMoney(100, usd)
	for _, c := range []domain.Command{
		domain.OpenAccount{AccountID: "world", Asset: usd, Kind: domain.KindExternal},
		domain.OpenAccount{AccountID: "alice", Asset: usd, Kind: domain.KindCustomer},
		domain.Transfer{PaymentID: "p-1", Source: "world", Destination: "alice", Amount: one},
		domain.Transfer{PaymentID: "p-2", Source: "world", Destination: "alice", Amount: one},
		domain.Transfer{PaymentID: "p-3", Source: "world", Destination: "alice", Amount: one},
	} {
		if _, err := proc.Execute(ctx, ledger.Request{Command: c}); err != nil {
			t.Fatal(err)
		}
	}

	var (
		secret   []byte // set before the dispatcher starts
		mu       sync.Mutex
		received []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := dispatch.Verify(secret, r.Header.Get(dispatch.HeaderSignature), body, time.Now(), 5*time.Minute); err != nil {
			t.Errorf("a webhook does not verify: %v", err)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mu.Lock()
		received = append(received, r.Header.Get(dispatch.HeaderEventType))
		mu.Unlock()
	}))
	defer srv.Close()
	// Registered as serve payments' WebhookService would, with the same key.
	keyFile := filepath.Join(t.TempDir(), "webhook.key")
	if err := os.WriteFile(keyFile, []byte("dispatcher-test-webhook-key-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := loadWebhookKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	reg, err := openWebhookRegistry(ctx, pool, webhook.DefaultSchema, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, secretText, err := reg.Register(ctx, "alice", srv.URL, []string{"ledger.account.credited.v1"}, "test")
	if err != nil {
		t.Fatalf("register alice's endpoint: %v", err)
	}
	if secret, err = webhook.ParseSecret(secretText); err != nil {
		t.Fatal(err)
	}

	payments, notifications := kafkatest.Name(t, relay.TopicPayments), kafkatest.Name(t, relay.TopicNotifications)
	dlq := kafkatest.Name(t, dispatch.TopicDeadLetters)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := ln.Addr().String()
	ln.Close()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 2)
	var relayErr, dispErr syncBuffer
	go func() {
		done <- run(runCtx, []string{"serve", "relay", "--postgres-dsn", relayDSN, "--kafka-brokers", addr, "--topic-partitions", "2",
			"--payments-topic", payments, "--notifications-topic", notifications, "--checkpoint-schema", "dispatch_cmd_test"}, io.Discard, &relayErr, noEnv)
	}()
	go func() {
		done <- run(runCtx, []string{"serve", "dispatcher", "--kafka-brokers", addr, "--topic-partitions", "2", "--group", kafkatest.Name(t, "dispatch-cmd"),
			"--notifications-topic", notifications, "--dead-letter-topic", dlq, "--postgres-dsn", dispatcherDSN, "--webhook-key-file", keyFile, "--metrics-listen", metricsAddr}, io.Discard, &dispErr, noEnv)
	}()
	want := `securepay_webhook_attempts_total{outcome="delivered"} 3`
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		body := ""
		if resp, err := http.Get("http://" + metricsAddr + "/metrics"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
		}
		if strings.Contains(body, want) {
			break
		}
		select {
		case err := <-done: // neither stops by itself
			t.Fatalf("a server stopped early: %v\nrelay:\n%s\ndispatcher:\n%s", err, relayErr.String(), dispErr.String())
		default:
		}
		if time.Now().After(deadline) {
			mu.Lock()
			t.Fatalf("GET /metrics does not say %q after 2 minutes (received %v):\n%s\nrelay:\n%s\ndispatcher:\n%s", want, received, body, relayErr.String(), dispErr.String())
		}
	}
	stop()
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("serve stopped with %v\nrelay:\n%s\ndispatcher:\n%s", err, relayErr.String(), dispErr.String())
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(received) != 3 || strings.Count(strings.Join(received, ","), "ledger.account.credited.v1") != 3 {
		t.Errorf("alice's endpoint received %v, want her 3 credits and nothing else", received)
	}
}

// `securepay dev --kafka ADDR --webhook-endpoints-file FILE` delivers what the API commits
// as webhooks to the endpoints of the file.
func TestDevWithKafkaDeliversWebhooks(t *testing.T) {
	addr := kafkatest.Addr(t)
	account := strings.ReplaceAll(kafkatest.Name(t, "hook"), ".", "-") // dev writes the standard topics, which other runs share
	secret := strings.Repeat("d", 32)
	got := make(chan string, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := dispatch.Verify([]byte(secret), r.Header.Get(dispatch.HeaderSignature), body, time.Now(), 5*time.Minute); err != nil {
			t.Errorf("a webhook does not verify: %v", err)
		}
		got <- r.Header.Get(dispatch.HeaderEventType)
	}))
	defer srv.Close()
	endpoints := filepath.Join(t.TempDir(), "endpoints.json")
	if err := os.WriteFile(endpoints, fmt.Appendf(nil, `{"endpoints":[{"id":"dev-hook","url":%q,"secret":%q,"accounts":[%q],"event_types":["ledger.account.credited.v1"]}]}`, srv.URL, secret, account), 0o600); err != nil {
		t.Fatal(err)
	}
	url := startDev(t, "--kafka", addr, "--webhook-endpoints-file", endpoints)
	for _, args := range [][]string{
		{"account", "open", "world", "--asset", "USD", "--kind", "external"},
		{"account", "open", account, "--asset", "USD"},
		{"transfer", "--from", "world", "--to", account, "--amount", "1.00", "--asset", "USD"},
	} {
		if out, err := cli(t, url, args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	select {
	case typ := <-got:
		if typ != "ledger.account.credited.v1" {
			t.Fatalf("the endpoint got %s, want ledger.account.credited.v1 (it subscribed to credits only)", typ)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("no webhook within 2 minutes of the transfer")
	}
}

func TestDevWebhooksNeedKafka(t *testing.T) {
	err := run(context.Background(), []string{"dev", "--listen", "127.0.0.1:0", "--webhook-endpoints-file", "/nonexistent"}, io.Discard, io.Discard, noEnv)
	var u usageError
	if !errors.As(err, &u) || !strings.Contains(err.Error(), "needs --kafka") {
		t.Fatalf("dev --webhook-endpoints-file without --kafka: %v, want a usage error saying it needs --kafka", err)
	}
}

// `securepay dev --kafka ADDR` delivers to an endpoint registered through WebhookService:
// the whsec_ secret shown once, decoded as a receiver does, verifies the delivery.
func TestDevWithKafkaDeliversToRegisteredEndpoints(t *testing.T) {
	addr := kafkatest.Addr(t)
	account := strings.ReplaceAll(kafkatest.Name(t, "reg"), ".", "-")
	var key atomic.Pointer[[]byte]
	got := make(chan string, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		k := key.Load()
		if k == nil {
			t.Error("a webhook arrived before the endpoint was registered")
			return
		}
		if err := dispatch.Verify(*k, r.Header.Get(dispatch.HeaderSignature), body, time.Now(), 5*time.Minute); err != nil {
			t.Errorf("a webhook does not verify with the registered secret: %v", err)
		}
		got <- r.Header.Get(dispatch.HeaderEventType)
	}))
	defer srv.Close()
	url := startDev(t, "--kafka", addr)
	hooks := ledgerv1connect.NewWebhookServiceClient(http.DefaultClient, url, bearer(devTokenFor(url)))
	reg, err := hooks.RegisterEndpoint(context.Background(), connect.NewRequest(&ledgerv1.RegisterEndpointRequest{
		AccountId: account, Url: srv.URL, EventTypes: []string{"ledger.account.credited.v1"},
	}))
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	raw, err := webhook.ParseSecret(reg.Msg.GetSecret())
	if err != nil {
		t.Fatal(err)
	}
	key.Store(&raw)
	for _, args := range [][]string{
		{"account", "open", "world", "--asset", "USD", "--kind", "external"},
		{"account", "open", account, "--asset", "USD"},
		{"transfer", "--from", "world", "--to", account, "--amount", "1.00", "--asset", "USD"},
	} {
		if out, err := cli(t, url, args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	select {
	case typ := <-got:
		if typ != "ledger.account.credited.v1" {
			t.Fatalf("the endpoint got %s, want ledger.account.credited.v1 (it subscribed to credits only)", typ)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("no webhook within 2 minutes of the transfer")
	}
}
