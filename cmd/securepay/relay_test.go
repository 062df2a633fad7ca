package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/postgres"
	"github.com/securepay/securepay/internal/kafkatest"
	"github.com/securepay/securepay/services/ledger"
	"github.com/securepay/securepay/services/relay"
)

// An unsafe or unusable Kafka setting is refused before anything is contacted: the DSN and
// the broker point at nothing, so a relay that started would fail differently.
func TestServeRelayRefusesUnsafeSettings(t *testing.T) {
	base := []string{"serve", "relay", "--postgres-dsn", "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"acks=1", []string{"--kafka-brokers", "127.0.0.1:1", "--kafka-acks", "1"}, "RequiredAcks must be WaitForAll"},
		{"acks=0", []string{"--kafka-brokers", "127.0.0.1:1", "--kafka-acks", "0"}, "RequiredAcks must be WaitForAll"},
		{"acks nonsense", []string{"--kafka-brokers", "127.0.0.1:1", "--kafka-acks", "most"}, `--kafka-acks "most": say all`},
		{"protocol too old for Kafka 4", []string{"--kafka-brokers", "127.0.0.1:1", "--kafka-version", "2.0.0"}, "protocol version 2.0.0 is older than 2.1.0"},
		{"protocol not a version", []string{"--kafka-brokers", "127.0.0.1:1", "--kafka-version", "four"}, `--kafka-version "four"`},
		{"no broker", nil, "no Kafka broker"},
		{"broker without port", []string{"--kafka-brokers", "kafka.internal"}, `"kafka.internal" is not host:port`},
		{"no window", []string{"--kafka-brokers", "127.0.0.1:1", "--window", "0"}, "--window must be 1..1000000"},
		{"replication 0", []string{"--kafka-brokers", "127.0.0.1:1", "--topic-replication-factor", "0"}, "--topic-replication-factor"},
		{"metrics address", []string{"--kafka-brokers", "127.0.0.1:1", "--metrics-listen", "9464"}, `--metrics-listen "9464" is not host:port`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := run(ctx, append(append([]string{}, base...), tc.args...), io.Discard, io.Discard, noEnv)
			var u usageError
			if !errors.As(err, &u) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("serve relay %v: %v, want a usage error (exit 2) saying %q", tc.args, err, tc.want)
			}
		})
	}
	// The DSN too: without it the relay has no log to read.
	err := run(context.Background(), []string{"serve", "relay", "--kafka-brokers", "127.0.0.1:1"}, io.Discard, io.Discard, noEnv)
	if err == nil || !strings.Contains(err.Error(), "PostgreSQL DSN of the event store is missing") {
		t.Fatalf("serve relay without a DSN: %v", err)
	}
}

// TestServeRelayPublishes runs `securepay serve relay` against a migrated database and the
// test broker: the events committed before and while it runs reach their topics.
func TestServeRelayPublishes(t *testing.T) {
	addr := kafkatest.Addr(t)
	dsn := freshDatabase(t)
	relayRole, relayDSN := servingRole(t, dsn)
	if err := run(context.Background(), []string{"migrate", "--postgres-dsn", dsn, "--relay-role", relayRole, "--relay-checkpoint-schema", "relay_cmd_test"}, io.Discard, io.Discard, noEnv); err != nil {
		t.Fatalf("migrate --relay-role %s: %v", relayRole, err)
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
	exec := func(c domain.Command) {
		t.Helper()
		if _, err := proc.Execute(ctx, ledger.Request{Command: c, Meta: eventstore.Metadata{TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}); err != nil {
			t.Fatal(err)
		}
	}
	exec(domain.OpenAccount{AccountID: "world", Asset: usd, Kind: domain.KindExternal})
	exec(domain.OpenAccount{AccountID: "alice", Asset: usd, Kind: domain.KindCustomer})
	one, _ := domain.NewMoney(100, usd)
	transfer := func(i int) {
		exec(domain.Transfer{PaymentID: domain.PaymentID(fmt.Sprintf("p-%d", i)), Source: "world", Destination: "alice", Amount: one})
	}
	for i := range 10 {
		transfer(i)
	}

	payments, notifications := kafkatest.Name(t, relay.TopicPayments), kafkatest.Name(t, relay.TopicNotifications)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := ln.Addr().String()
	ln.Close()
	relayCtx, stopRelay := context.WithCancel(ctx)
	done := make(chan error, 1)
	var stderr strings.Builder
	go func() {
		done <- run(relayCtx, []string{"serve", "relay", "--postgres-dsn", relayDSN, "--kafka-brokers", addr, "--topic-partitions", "2",
			"--payments-topic", payments, "--notifications-topic", notifications, "--checkpoint-schema", "relay_cmd_test", "--metrics-listen", metricsAddr}, io.Discard, &stderr, noEnv)
	}()
	for i := 10; i < 20; i++ {
		transfer(i) // while it runs
	}
	head, _ := store.Head(ctx)
	msgs := kafkatest.Consume(t, addr, []string{payments, notifications}, 2*time.Minute, func(ms []*sarama.ConsumerMessage) bool {
		return uint64(len(ms)) >= head
	})
	// Its metrics say what it published, per topic.
	want := fmt.Sprintf(`securepay_relay_published_total{topic=%q} 20`, payments)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		body := ""
		if resp, err := http.Get("http://" + metricsAddr + "/metrics"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
		}
		if strings.Contains(body, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /metrics does not say %q:\n%s", want, body)
		}
	}
	stopRelay()
	if err := <-done; err != nil {
		t.Fatalf("serve relay stopped with %v\n%s", err, stderr.String())
	}
	count := map[string]int{}
	for _, m := range msgs {
		count[m.Topic]++
		if kafkatest.Header(m, relay.HeaderTraceParent) == "" {
			t.Fatalf("message %s/%d@%d has no traceparent header", m.Topic, m.Partition, m.Offset)
		}
	}
	// 20 transfers: 20 payment events; 2 openings and 40 postings on the accounts.
	if count[payments] != 20 || count[notifications] != 42 || uint64(len(msgs)) != head {
		t.Fatalf("read %v (%d messages), want 20 payment and 42 account events (log head %d)\n%s", count, len(msgs), head, stderr.String())
	}
}

// TestServeRelayRefusesUnsafeRoles: like serve, serve relay stops before it contacts the
// broker when its PostgreSQL login role could change the log — the owner, or the serving
// role, which may append — or cannot read it, and says which migrate command fixes that.
func TestServeRelayRefusesUnsafeRoles(t *testing.T) {
	dsn := freshDatabase(t)
	serveRole, serveDSN := servingRole(t, dsn)
	relayRole, _ := servingRole(t, dsn)
	_, bareDSN := servingRole(t, dsn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := run(ctx, []string{"migrate", "--postgres-dsn", dsn, "--serve-role", serveRole, "--relay-role", serveRole}, io.Discard, io.Discard, noEnv)
	if err == nil || !strings.Contains(err.Error(), "is also --serve-role") {
		t.Fatalf("migrate with one role for serve and the relay: want it refused, got %v", err)
	}
	var out strings.Builder
	if err := run(ctx, []string{"migrate", "--postgres-dsn", dsn, "--serve-role", serveRole, "--relay-role", relayRole}, &out, io.Discard, noEnv); err != nil {
		t.Fatalf("migrate --serve-role --relay-role: %v", err)
	}
	if !strings.Contains(out.String(), "relay role "+relayRole+": SELECT on the log") {
		t.Fatalf("migrate --relay-role: want the grant reported, got:\n%s", out.String())
	}
	for _, tc := range []struct {
		name, dsn string
		want      []string
	}{
		{"the owner (a superuser)", dsn, []string{"could rewrite the event log", "is a superuser", "serve relay must log in", "--relay-role"}},
		{"the serving role", serveDSN, []string{"it may INSERT on securepay.events through its member role securepay_app", "REVOKE securepay_app FROM " + serveRole}},
		{"a role granted nothing", bareDSN, []string{"permission denied", "cannot read the event log", "securepay migrate --relay-role"}},
	} {
		// The broker address is never dialled: the refusal comes first.
		err := run(ctx, []string{"serve", "relay", "--postgres-dsn", tc.dsn, "--kafka-brokers", "127.0.0.1:1"}, io.Discard, io.Discard, noEnv)
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("serve relay as %s: want a refusal saying %q, got %v", tc.name, w, err)
			}
		}
	}
}

// `securepay dev --kafka ADDR` publishes what the API commits.
func TestDevWithKafkaPublishes(t *testing.T) {
	addr := kafkatest.Addr(t)
	url := startDev(t, "--kafka", addr)
	payment := kafkatest.Name(t, "dev-pay") // dev writes the standard topics, which other runs share
	for _, args := range [][]string{
		{"account", "open", "world", "--asset", "USD", "--kind", "external"},
		{"account", "open", "alice", "--asset", "USD"},
		{"transfer", "--from", "world", "--to", "alice", "--amount", "1.00", "--asset", "USD", "--id", payment},
	} {
		if out, err := cli(t, url, args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	kafkatest.Consume(t, addr, []string{relay.TopicPayments}, 2*time.Minute, func(ms []*sarama.ConsumerMessage) bool {
		for _, m := range ms {
			if string(m.Key) == payment && kafkatest.Header(m, relay.HeaderEventType) == "ledger.payment.transferred.v1" {
				return true
			}
		}
		return false
	})
}

func TestDevRefusesABadKafkaAddress(t *testing.T) {
	err := run(context.Background(), []string{"dev", "--listen", "127.0.0.1:0", "--kafka", "no-port"}, io.Discard, io.Discard, noEnv)
	var u usageError
	if !errors.As(err, &u) || !strings.Contains(err.Error(), `"no-port" is not host:port`) {
		t.Fatalf("dev --kafka no-port: %v, want a usage error naming the address", err)
	}
}
