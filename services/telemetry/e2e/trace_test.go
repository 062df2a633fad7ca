// Package e2e_test follows payments through every SecurePay stage that reports spans, each
// stage as its own process would run it (its own Telemetry, one shared in-memory span
// exporter): the gateway, the payments component behind it on SPIFFE mTLS, the ledger and
// its batch append, the projectors, the relay publishing to a real Kafka broker
// (infra/local/kafka.sh, SECUREPAY_TEST_KAFKA_ADDR; without one the test fails) and the
// notification dispatcher consuming it and posting webhooks.
package e2e_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/IBM/sarama"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/internal/kafkatest"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/projections/memory"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/dispatch"
	"github.com/securepay/securepay/services/edge"
	"github.com/securepay/securepay/services/gateway"
	"github.com/securepay/securepay/services/ledger"
	"github.com/securepay/securepay/services/mtls"
	"github.com/securepay/securepay/services/relay"
	"github.com/securepay/securepay/services/telemetry"
)

// The dispatcher's span names (services/dispatch).
const (
	spanDispatchConsume = "dispatch.consume"
	spanDispatchDeliver = "dispatch.deliver"
)

const (
	issuer   = "https://issuer.test/realms/securepay"
	audience = "securepay-api"
	kid      = "e2e-key"
)

// stack is the processes of one payment's path.
type stack struct {
	spans    *tracetest.InMemoryExporter
	store    *embedded.Store
	proc     *ledger.Processor
	gwURL    string
	gwClient *http.Client
	token    string
	compLog  *bytes.Buffer // the payments component's JSON log
	gwLog    *bytes.Buffer // the gateway's
	logMu    *sync.Mutex
	tel      map[string]*telemetry.Telemetry
}

// lockedWriter serialises the writes of one log.
type lockedWriter struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func newTelemetry(t *testing.T, name string, spans *tracetest.InMemoryExporter) *telemetry.Telemetry {
	t.Helper()
	tel, err := telemetry.New(context.Background(), telemetry.Config{ServiceName: name, Exporter: spans})
	if err != nil {
		t.Fatalf("telemetry of %s: %v", name, err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return tel
}

func newStack(t *testing.T) *stack {
	t.Helper()
	st := &stack{spans: tracetest.NewInMemoryExporter(), compLog: &bytes.Buffer{}, gwLog: &bytes.Buffer{}, logMu: &sync.Mutex{}, tel: map[string]*telemetry.Telemetry{}}
	for _, name := range []string{"securepay-gateway", "securepay-payments", "securepay-projector", "securepay-relay", "securepay-dispatcher"} {
		st.tel[name] = newTelemetry(t, name, st.spans)
	}
	store, err := embedded.Open(t.TempDir(), embedded.Options{})
	if err != nil {
		t.Fatalf("open the embedded store: %v", err)
	}
	t.Cleanup(func() { _ = store.Close() })
	obs, err := st.tel["securepay-payments"].LedgerObserver()
	if err != nil {
		t.Fatal(err)
	}
	proc, err := ledger.New(store, ledger.Config{Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proc.Close() })
	st.store, st.proc = store, proc

	// The payments component, as `serve payments` runs it with an SVID: mTLS, the
	// component policy, the edge headers and trace context believed from the gateway only.
	td := spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)
	ids := mtls.WellKnownIDs(td)
	ca, err := mtls.NewDevCA(td, time.Hour, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	paySrc, err := ca.Source(ids.Payments)
	if err != nil {
		t.Fatal(err)
	}
	gwSrc, err := ca.Source(ids.Gateway)
	if err != nil {
		t.Fatal(err)
	}
	policy, err := services.ComponentPolicy(td, []services.Component{services.ComponentPayments})
	if err != nil {
		t.Fatal(err)
	}
	payIcs, err := st.tel["securepay-payments"].RPCInterceptors(edge.TrustGateway(ids.Gateway))
	if err != nil {
		t.Fatal(err)
	}
	caller, correlation := edge.ForComponent(ids.Gateway)
	srv, err := services.NewServer(services.Config{
		Components:  []services.Component{services.ComponentPayments},
		Commands:    proc,
		Store:       store,
		Idempotency: failingClaims{services.NewMemoryIdempotencyStore(0, nil)},
		Caller:      caller, CorrelationID: correlation,
		TLS:          mtls.ServerTLS(paySrc),
		Authorize:    policy.Handler,
		Interceptors: payIcs,
		Logger:       slog.New(telemetry.NewLogHandler(lockedWriter{st.logMu, st.compLog}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-served })

	// The gateway, with the tracing `serve gateway` installs.
	key, jwks := signingKey(t)
	gwIcs, err := st.tel["securepay-gateway"].RPCTracing(nil)
	if err != nil {
		t.Fatal(err)
	}
	up := gateway.Upstream{URL: "https://" + ln.Addr().String(), Client: mtls.HTTPClient(gwSrc, ids.Payments)}
	gw, err := gateway.New(gateway.Config{
		Payments: up, Queries: up, Audit: up, // only Transfer is called
		Auth:         gateway.Auth{Issuer: issuer, Audience: audience, StaticJWKS: jwks},
		AllowH2C:     true,
		Interceptors: gwIcs,
		Logger:       slog.New(telemetry.NewLogHandler(lockedWriter{st.logMu, st.gwLog}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(gw.Handler())
	hs.EnableHTTP2 = true
	hs.StartTLS()
	t.Cleanup(hs.Close)
	st.gwURL, st.gwClient = hs.URL, hs.Client()
	st.token = sign(t, key, map[string]any{
		"iss": issuer, "aud": audience, "sub": "treasury", "roles": []string{"customer"}, "accounts": []string{"world"},
		"iat": time.Now().Unix(), "nbf": time.Now().Unix(), "exp": time.Now().Add(10 * time.Minute).Unix(),
	})

	usd := domain.Asset{Code: "USD", Scale: 2}
	for _, c := range []domain.Command{
		domain.OpenAccount{AccountID: "world", Asset: usd, Kind: domain.KindExternal},
		domain.OpenAccount{AccountID: "alice", Asset: usd, Kind: domain.KindCustomer},
		domain.OpenAccount{AccountID: "bob", Asset: usd, Kind: domain.KindCustomer},
	} {
		if _, err := proc.Execute(context.Background(), ledger.Request{Command: c}); err != nil {
			t.Fatalf("open account: %v", err)
		}
	}
	st.spans.Reset()
	return st
}

// failingClaims is an idempotency store that cannot be reached for the requests whose
// correlation id starts with "fail-": the component then logs the failure, in the
// request's context.
type failingClaims struct{ services.IdempotencyStore }

func (f failingClaims) Claim(ctx context.Context, key, owner, fingerprint string, ttl time.Duration) (services.IdempotencyRecord, bool, error) {
	if strings.HasPrefix(telemetry.CorrelationID(ctx), "fail-") {
		return services.IdempotencyRecord{}, false, errors.New("idempotency store unreachable (test)")
	}
	return f.IdempotencyStore.Claim(ctx, key, owner, fingerprint, ttl)
}

// signingKey is an RSA key and the JWKS that publishes it.
func signingKey(t *testing.T) (*rsa.PrivateKey, []byte) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	jwks, err := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
		"n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes()),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	return k, jwks
}

// sign is an RS256 JWT of claims.
func sign(t *testing.T, k *rsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	seg := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	input := seg(map[string]any{"alg": "RS256", "typ": "JWT", "kid": kid}) + "." + seg(claims)
	sum := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// transfer pays 1.00 from world to the destination through the gateway, with the
// client's correlation id and a traceparent of the client's own.
func (st *stack) transfer(ctx context.Context, paymentID, to, correlationID, clientTraceParent string) error {
	client := ledgerv1connect.NewPaymentServiceClient(st.gwClient, st.gwURL)
	req := connect.NewRequest(&ledgerv1.TransferRequest{
		PaymentId: paymentID, SourceAccountId: "world", DestinationAccountId: to,
		Amount: &ledgerv1.Money{Value: "1.00", Asset: "USD"},
	})
	req.Header().Set("Authorization", "Bearer "+st.token)
	req.Header().Set("X-Correlation-Id", correlationID)
	req.Header().Set("traceparent", clientTraceParent)
	res, err := client.Transfer(ctx, req)
	if err != nil {
		return fmt.Errorf("transfer %s: %w", paymentID, err)
	}
	if got := res.Header().Get(gateway.ResponseCorrelationHeader); got != correlationID {
		return fmt.Errorf("transfer %s: the gateway answered correlation id %q, want the client's %q", paymentID, got, correlationID)
	}
	return nil
}

// spanIndex finds exported spans.
type spanIndex struct {
	all  []tracetest.SpanStub
	byID map[trace.SpanID]tracetest.SpanStub
}

func index(spans []tracetest.SpanStub) spanIndex {
	ix := spanIndex{all: spans, byID: map[trace.SpanID]tracetest.SpanStub{}}
	for _, s := range spans {
		ix.byID[s.SpanContext.SpanID()] = s
	}
	return ix
}

func service(s tracetest.SpanStub) string {
	for _, kv := range s.Resource.Attributes() {
		if kv.Key == "service.name" {
			return kv.Value.AsString()
		}
	}
	return ""
}

func attr(s tracetest.SpanStub, key string) string {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value.String()
		}
	}
	return ""
}

func describe(s tracetest.SpanStub) string {
	return fmt.Sprintf("%s/%s(%s)", service(s), s.Name, s.SpanKind)
}

// children are the spans whose parent is s.
func (ix spanIndex) children(s tracetest.SpanStub) []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, c := range ix.all {
		if c.Parent.SpanID() == s.SpanContext.SpanID() && c.Parent.TraceID() == s.SpanContext.TraceID() {
			out = append(out, c)
		}
	}
	return out
}

// child is the one child of parent named name with service svc; it fails the test when
// there is not exactly one.
func (ix spanIndex) child(t *testing.T, parent tracetest.SpanStub, svc, name string) tracetest.SpanStub {
	t.Helper()
	var found []tracetest.SpanStub
	var seen []string
	for _, c := range ix.children(parent) {
		seen = append(seen, describe(c))
		if c.Name == name && service(c) == svc {
			found = append(found, c)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s has %d children %s/%s, want 1; its children: %v", describe(parent), len(found), svc, name, seen)
	}
	return found[0]
}

// linksTo reports whether s links to target.
func linksTo(s, target tracetest.SpanStub) bool {
	for _, l := range s.Links {
		if l.SpanContext.SpanID() == target.SpanContext.SpanID() && l.SpanContext.TraceID() == target.SpanContext.TraceID() {
			return true
		}
	}
	return false
}

// One transfer is one trace, from the edge to the Kafka message: the gateway's server
// span (a root: the client's traceparent is only linked), its forward over mTLS, the
// payments component's server span, the ledger command (linked both ways with the batch
// append that stored it), each projector's apply and the relay's publish, all under one
// trace id, each batch stage (append, apply, publish) also a span of its own that links to
// every command it served;
// the Kafka messages of the transfer carry the relay's publish span as their traceparent,
// the dispatcher's consume and deliver spans continue from it, and the webhook carries the
// deliver span; the correlation id goes from the client's X-Correlation-Id to the event
// and the message.
// A second transfer made at the same time, in the same batches, is a trace of its own.
func TestOneTransferOneTraceThroughKafka(t *testing.T) {
	brokers := []string{kafkatest.Addr(t)}
	st := newStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	type payment struct{ id, to, corr, clientTP string }
	payments := []payment{
		{"pay-a", "alice", "corr-a-1", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		{"pay-b", "bob", "corr-b-2", "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01"},
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(payments))
	for _, p := range payments {
		wg.Go(func() { errs <- st.transfer(ctx, p.id, p.to, p.corr, p.clientTP) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	// The projectors and the relay start after both transfers committed: each reads them
	// in one batch, the case where one batch serves several traces.
	views := memory.New(100)
	runner, err := projections.NewRunner(projections.RunnerConfig{Store: st.store, Projectors: views.Projectors(), Observe: st.tel["securepay-projector"].ProjectionObserver()})
	if err != nil {
		t.Fatal(err)
	}
	topics := relay.TopicNames{Payments: kafkatest.Name(t, "e2e.payments"), Notifications: kafkatest.Name(t, "e2e.notifications")}
	rel, err := relay.New(relay.Config{
		Store: st.store, Checkpoints: relay.FileCheckpoints{Path: filepath.Join(t.TempDir(), "relay.checkpoint")},
		Brokers: brokers, TopicNames: topics, Topics: &relay.TopicSettings{Partitions: 2, ReplicationFactor: 1},
		Tracer: st.tel["securepay-relay"].RelayTracer(),
	})
	if err != nil {
		t.Fatal(err)
	}
	// The dispatcher posts every notification to one webhook receiver.
	var hooksMu sync.Mutex
	var hooks []string // the traceparent of each webhook received
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hooksMu.Lock()
		hooks = append(hooks, r.Header.Get(dispatch.HeaderTraceParent))
		hooksMu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer receiver.Close()
	disp, err := dispatch.New(dispatch.Config{
		Brokers: brokers, Group: kafkatest.Name(t, "e2e-dispatcher"), Topic: topics.Notifications,
		DeadLetterTopic: kafkatest.Name(t, "e2e.dlq"), Topics: &relay.TopicSettings{Partitions: 2, ReplicationFactor: 1},
		Directory: dispatch.StaticDirectory{"*": {{ID: "e2e-receiver", URL: receiver.URL, Secret: []byte("e2e-webhook-secret")}}},
		Tracer:    st.tel["securepay-dispatcher"].Tracer("github.com/securepay/securepay/services/dispatch"),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopRunning := context.WithCancel(ctx)
	var bg sync.WaitGroup
	bg.Go(func() { _ = runner.Run(runCtx) })
	bg.Go(func() { _ = rel.Run(runCtx) })
	bg.Go(func() { _ = disp.Run(runCtx) })
	defer func() { stopRunning(); bg.Wait() }()

	head, err := st.store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range views.Projectors() {
		if err := runner.Wait(ctx, p.Name(), head); err != nil {
			t.Fatalf("projector %s did not reach position %d: %v", p.Name(), head, err)
		}
	}
	all, err := st.store.ReadAll(ctx, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	eventsOf := map[string][]eventstore.RecordedEvent{} // by correlation id
	for _, e := range all {
		eventsOf[e.Metadata.CorrelationID] = append(eventsOf[e.Metadata.CorrelationID], e)
	}
	msgs := kafkatest.Consume(t, brokers[0], []string{topics.Payments, topics.Notifications}, time.Minute, func(ms []*sarama.ConsumerMessage) bool {
		return len(ms) >= len(all)
	})
	// The relay's batch span ends at the broker's acknowledgement, which the consumer may
	// see first, and the dispatcher delivers in its own time: wait for the spans of a
	// delivery of each transfer's notification.
	notifications := 0
	for _, m := range msgs {
		if m.Topic == topics.Notifications {
			notifications++
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		batches, delivered := 0, 0
		for _, s := range st.spans.GetSpans() {
			switch s.Name {
			case telemetry.SpanRelayBatch:
				batches++
			case spanDispatchDeliver:
				delivered++
			}
		}
		if batches > 0 && delivered >= notifications {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 90 s: %d %s spans, %d %s spans of %d notifications", batches, telemetry.SpanRelayBatch, delivered, spanDispatchDeliver, notifications)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ix := index(st.spans.GetSpans())

	commands := map[string]tracetest.SpanStub{}
	traces := map[trace.TraceID]string{}
	for _, p := range payments {
		t.Run(p.id, func(t *testing.T) {
			// The edge: the gateway's server span, found by the correlation id it records.
			var edgeSpan tracetest.SpanStub
			for _, s := range ix.all {
				if service(s) == "securepay-gateway" && s.SpanKind == trace.SpanKindServer && attr(s, telemetry.AttrCorrelationID) == p.corr {
					edgeSpan = s
				}
			}
			if !edgeSpan.SpanContext.IsValid() {
				t.Fatalf("no gateway server span with %s=%s", telemetry.AttrCorrelationID, p.corr)
			}
			tid := edgeSpan.SpanContext.TraceID()
			if edgeSpan.Parent.IsValid() {
				t.Errorf("the gateway's server span has parent %s; want a root (a client does not choose our trace)", edgeSpan.Parent.SpanID())
			}
			if len(edgeSpan.Links) != 1 || edgeSpan.Links[0].SpanContext.TraceID().String() != p.clientTP[3:35] {
				t.Errorf("the gateway's server span links %v, want one link to the client's trace %s", edgeSpan.Links, p.clientTP[3:35])
			}
			if other, dup := traces[tid]; dup {
				t.Fatalf("transfers %s and %s share trace %s", other, p.id, tid)
			}
			traces[tid] = p.id

			// The forward over mTLS, the component, the ledger command, its append.
			forward := ix.child(t, edgeSpan, "securepay-gateway", strings.TrimPrefix(ledgerv1connect.PaymentServiceTransferProcedure, "/"))
			if forward.SpanKind != trace.SpanKindClient {
				t.Errorf("the gateway's forward is a %s span, want client", forward.SpanKind)
			}
			component := ix.child(t, forward, "securepay-payments", strings.TrimPrefix(ledgerv1connect.PaymentServiceTransferProcedure, "/"))
			if got := attr(component, telemetry.AttrCorrelationID); got != p.corr {
				t.Errorf("the payments component's span records correlation id %q, want %q", got, p.corr)
			}
			command := ix.child(t, component, "securepay-payments", "ledger.Transfer")
			commands[p.id] = command
			// The durable write: the command links to its batch's append span, which
			// links back to the command.
			var batchAppend tracetest.SpanStub
			for _, l := range command.Links {
				if s, ok := ix.byID[l.SpanContext.SpanID()]; ok && s.Name == telemetry.SpanBatchAppend {
					batchAppend = s
				}
			}
			if !batchAppend.SpanContext.IsValid() {
				t.Errorf("the command span links %v, none to an exported %s span", command.Links, telemetry.SpanBatchAppend)
			} else if !linksTo(batchAppend, command) {
				t.Errorf("the %s span does not link back to the command", telemetry.SpanBatchAppend)
			}

			// The events: the client's correlation id, the command span as traceparent.
			evs := eventsOf[p.corr]
			if len(evs) == 0 {
				t.Fatalf("no event with correlation id %s in the log", p.corr)
			}
			for _, e := range evs {
				if want := telemetry.FormatTraceParent(command.SpanContext); e.Metadata.TraceParent != want {
					t.Errorf("event %s (%s) has traceparent %q, want the command span's %q", e.ID, e.Type, e.Metadata.TraceParent, want)
				}
			}

			// The projectors: one apply span per projector in this trace, under the
			// command, each linking to a batch span that links to the command.
			applied := map[string]bool{}
			for _, c := range ix.children(command) {
				if c.Name != telemetry.SpanProjectionApply {
					continue
				}
				applied[attr(c, "securepay.projector")] = true
				if len(c.Links) != 1 || !linksTo(ix.byID[c.Links[0].SpanContext.SpanID()], command) {
					t.Errorf("projection span of %s does not link to a batch span that links to the command", attr(c, "securepay.projector"))
				}
			}
			for _, pr := range views.Projectors() {
				if !applied[pr.Name()] {
					t.Errorf("no %s span of projector %s under the command; found %v", telemetry.SpanProjectionApply, pr.Name(), applied)
				}
			}

			// The relay: one publish span under the command, and it is what every Kafka
			// message of the transfer carries.
			publish := ix.child(t, command, "securepay-relay", telemetry.SpanRelayPublish)
			if publish.SpanKind != trace.SpanKindProducer {
				t.Errorf("the relay's publish span is a %s span, want producer", publish.SpanKind)
			}
			if len(publish.Links) != 1 || ix.byID[publish.Links[0].SpanContext.SpanID()].Name != telemetry.SpanRelayBatch {
				t.Errorf("the publish span links %v, want its %s span", publish.Links, telemetry.SpanRelayBatch)
			}
			published := 0
			for _, m := range msgs {
				var env struct {
					ID            string `json:"id"`
					CorrelationID string `json:"correlation_id"`
				}
				if err := json.Unmarshal(m.Value, &env); err != nil {
					t.Fatalf("message %s/%d@%d: %v", m.Topic, m.Partition, m.Offset, err)
				}
				if env.CorrelationID != p.corr {
					continue
				}
				published++
				tp := kafkatest.Header(m, relay.HeaderTraceParent)
				sc, ok := telemetry.ParseTraceParent(tp)
				if !ok || sc.TraceID() != tid || sc.SpanID() != publish.SpanContext.SpanID() {
					t.Errorf("message of event %s carries traceparent %q, want the relay's publish span %s in trace %s", env.ID, tp, publish.SpanContext.SpanID(), tid)
				}
			}
			if published != len(evs) {
				t.Errorf("%d Kafka messages with correlation id %s, want one per event (%d)", published, p.corr, len(evs))
			}

			// The dispatcher: a consume span per notification message under the publish
			// span (the message's traceparent), a deliver span under it, and the webhook
			// carries the deliver span's context.
			consumed, delivered := 0, 0
			for _, c := range ix.children(publish) {
				if c.Name != spanDispatchConsume || service(c) != "securepay-dispatcher" {
					continue
				}
				consumed++
				for _, d := range ix.children(c) {
					if d.Name != spanDispatchDeliver {
						continue
					}
					delivered++
					want := telemetry.FormatTraceParent(d.SpanContext)
					hooksMu.Lock()
					got := slices.Contains(hooks, want)
					hooksMu.Unlock()
					if !got {
						t.Errorf("no webhook carried the traceparent of its %s span %s", spanDispatchDeliver, want)
					}
				}
			}
			if consumed == 0 || delivered == 0 {
				t.Errorf("under the relay's publish span: %d %s and %d %s spans, want at least one of each (the transfer's notifications)", consumed, spanDispatchConsume, delivered, spanDispatchDeliver)
			}

			// Every span of the trace is one of the stages above: nothing strays into it.
			for _, s := range ix.all {
				if s.SpanContext.TraceID() == tid && s.Parent.IsValid() {
					if _, ok := ix.byID[s.Parent.SpanID()]; !ok {
						t.Errorf("span %s in the transfer's trace has parent %s, which no stage exported", describe(s), s.Parent.SpanID())
					}
				}
			}
		})
	}
	if t.Failed() {
		return
	}
	// The batch stages served both transfers: the relay's and each projector's batch
	// span links to both commands (they read both in one batch).
	for _, name := range []string{telemetry.SpanRelayBatch, telemetry.SpanProjectionApply} {
		both := 0
		for _, s := range ix.all {
			if s.Name == name && !s.Parent.IsValid() && linksTo(s, commands["pay-a"]) && linksTo(s, commands["pay-b"]) {
				both++
			}
		}
		if both == 0 {
			t.Errorf("no %s batch span links to both transfers' commands", name)
		}
	}
}

// logLines decodes a JSON log, failing on any line that is not JSON.
func logLines(t *testing.T, log string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		out = append(out, rec)
	}
	return out
}

// The correlation id and trace id are on the request-scoped log lines of the edge and of
// the component behind it, the same trace id in both, and no token reaches the log.
func TestRequestLogsCarryCorrelationAndTrace(t *testing.T) {
	st := newStack(t)
	ctx := context.Background()
	client := ledgerv1connect.NewPaymentServiceClient(st.gwClient, st.gwURL)
	newReq := func(token, corr string) *connect.Request[ledgerv1.TransferRequest] {
		req := connect.NewRequest(&ledgerv1.TransferRequest{PaymentId: "p-" + corr, SourceAccountId: "world", DestinationAccountId: "alice", Amount: &ledgerv1.Money{Value: "1.00", Asset: "USD"}})
		req.Header().Set("Authorization", "Bearer "+token)
		req.Header().Set("X-Correlation-Id", corr)
		return req
	}
	// A broken token: the gateway logs the refusal.
	if _, err := client.Transfer(ctx, newReq(st.token+"x", "corr-badtoken")); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("transfer with a broken token: %v, want unauthenticated", err)
	}
	// The idempotency store down for this key: the component logs the failure.
	req := newReq(st.token, "fail-idem")
	req.Header().Set(services.IdempotencyKeyHeader, "key-1")
	if _, err := client.Transfer(ctx, req); err == nil {
		t.Fatal("transfer with the idempotency store down succeeded")
	}
	st.logMu.Lock()
	gwLog, compLog := st.gwLog.String(), st.compLog.String()
	st.logMu.Unlock()
	for _, l := range []struct {
		name, log, corr string
	}{{"gateway", gwLog, "corr-badtoken"}, {"payments", compLog, "fail-idem"}} {
		found := 0
		for _, rec := range logLines(t, l.log) {
			if rec[telemetry.LogCorrelationID] != l.corr {
				continue
			}
			found++
			id, _ := rec[telemetry.LogTraceID].(string)
			if len(id) != 32 {
				t.Errorf("%s log line with the correlation id has trace_id %q: %v", l.name, id, rec)
				continue
			}
			// The trace is the one the gateway started for this request.
			edgeTrace := ""
			for _, s := range st.spans.GetSpans() {
				if service(s) == "securepay-gateway" && s.SpanKind == trace.SpanKindServer && attr(s, telemetry.AttrCorrelationID) == l.corr {
					edgeTrace = s.SpanContext.TraceID().String()
				}
			}
			if id != edgeTrace {
				t.Errorf("%s log line has trace_id %s, want the trace the gateway started for %s (%s)", l.name, id, l.corr, edgeTrace)
			}
		}
		if found == 0 {
			t.Errorf("no %s log line carries correlation_id %s:\n%s", l.name, l.corr, l.log)
		}
		if strings.Contains(l.log, st.token) {
			t.Errorf("the %s log holds the bearer token", l.name)
		}
	}
}
