package gateway_test

import (
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/redis/go-redis/v9"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/securepay/securepay/api/gen/securepay/hop/v1/hopv1connect"
	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/projections/memory"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/edge"
	"github.com/securepay/securepay/services/gateway"
	"github.com/securepay/securepay/services/ledger"
	"github.com/securepay/securepay/services/mtls"
	"github.com/securepay/securepay/services/telemetry"
	"github.com/securepay/securepay/services/webhook"
)

const (
	testIssuer   = "https://issuer.test/realms/securepay"
	testAudience = "securepay-api"
)

// issuer is an OIDC issuer's JWKS endpoint and signing keys, over a real loopback TLS
// server, that a test can take down and rotate.
type issuer struct {
	srv     *httptest.Server
	mu      sync.Mutex
	keys    map[string]*rsa.PrivateKey // kid -> key, all published
	current string                     // kid that signs
	down    atomic.Bool
	fetches atomic.Int64
}

func newIssuer(t testing.TB) *issuer {
	t.Helper()
	is := &issuer{keys: map[string]*rsa.PrivateKey{}}
	is.rotate(t)
	is.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		is.fetches.Add(1)
		if is.down.Load() {
			http.Error(w, "issuer down", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write(is.jwks(t))
	}))
	t.Cleanup(is.srv.Close)
	return is
}

// rotate adds a new signing key and publishes it beside the old ones.
func (is *issuer) rotate(t testing.TB) string {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	kid := "kid-" + base64.RawURLEncoding.EncodeToString(k.N.Bytes()[:6])
	is.keys[kid], is.current = k, kid
	return kid
}

func (is *issuer) jwks(t testing.TB) []byte {
	is.mu.Lock()
	defer is.mu.Unlock()
	set := jwk.NewSet()
	for kid, k := range is.keys {
		pub, err := jwk.Import(k.Public())
		if err != nil {
			t.Error(err)
			return nil
		}
		_ = pub.Set(jwk.KeyIDKey, kid)
		_ = pub.Set(jwk.AlgorithmKey, "RS256")
		_ = set.AddKey(pub)
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Error(err)
	}
	return b
}

func (is *issuer) signer() (string, *rsa.PrivateKey) {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.current, is.keys[is.current]
}

// claims of a valid token for subject with roles and accounts, valid for 10 minutes.
func claims(subject string, roles []string, accounts ...string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": testIssuer, "aud": testAudience, "sub": subject,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
		"roles": roles, "accounts": accounts,
	}
}

// sign builds an RS256 token with the current key and any header fields given.
func (is *issuer) sign(t testing.TB, c map[string]any, extraHeader map[string]any) string {
	t.Helper()
	kid, key := is.signer()
	h := map[string]any{"alg": "RS256", "typ": "JWT", "kid": kid}
	for k, v := range extraHeader {
		if v == nil {
			delete(h, k)
		} else {
			h[k] = v
		}
	}
	input := segment(t, h) + "." + segment(t, c)
	sum := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// token is a valid token for a principal.
func (is *issuer) token(t testing.TB, subject string, roles []string, accounts ...string) string {
	return is.sign(t, claims(subject, roles, accounts...), nil)
}

// hs256WithPublicKey is the algorithm-confusion attack: an HMAC token whose secret is
// the issuer's public key in PEM, which a verifier that lets the token choose the
// algorithm would accept.
func (is *issuer) hs256WithPublicKey(t testing.TB, c map[string]any) string {
	kid, key := is.signer()
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	secret := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	input := segment(t, map[string]any{"alg": "HS256", "typ": "JWT", "kid": kid}) + "." + segment(t, c)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(input))
	return input + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func segment(t testing.TB, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// ledgerNode is the components behind the gateway, as production runs them: payments,
// queries and audit, each a services.Server of its own component over its own HTTP/2
// mTLS listener (SVIDs from the development CA), behind a policy that lets the gateway's
// SPIFFE ID call it, trusting the edge headers from that ID only. They share one store
// and one set of views, as one process would.
type ledgerNode struct {
	ca       *mtls.DevCA
	ids      mtls.IDs
	url      map[services.Component]string
	gwClient map[services.Component]*http.Client // the gateway's mTLS client of each
	store    *embedded.Store
	webhooks *webhook.Registry // in memory, served by payments

	mu      sync.Mutex
	servers map[services.Component]*http.Server // nil while stopped
	addr    map[services.Component]string
	serve   map[services.Component]func(net.Listener) *http.Server
}

// stop takes comp down as a crashed process would go: its listener and every connection
// closed at once, calls in flight cut off (their handlers may still commit).
func (l *ledgerNode) stop(t testing.TB, comp services.Component) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if hs := l.servers[comp]; hs != nil {
		_ = hs.Close()
		l.servers[comp] = nil
	}
}

// start serves comp again at its address, with the same store and idempotency keys, as
// a restarted process would.
func (l *ledgerNode) start(t testing.TB, comp services.Component) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.servers[comp] != nil {
		return
	}
	ln, err := net.Listen("tcp", l.addr[comp])
	if err != nil {
		t.Fatalf("restart %s on %s: %v", comp, l.addr[comp], err)
	}
	l.servers[comp] = l.serve[comp](ln)
}

func startLedger(t testing.TB) *ledgerNode {
	t.Helper()
	store, err := embedded.Open(t.TempDir(), embedded.Options{Logger: quietPebble{}})
	if err != nil {
		t.Fatal(err)
	}
	proc, err := ledger.New(store, ledger.Config{})
	if err != nil {
		t.Fatal(err)
	}
	views := memory.New(0)
	runner, err := projections.NewRunner(projections.RunnerConfig{Store: store, Projectors: views.Projectors()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = runner.Run(ctx) }()
	td := spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)
	ca, err := mtls.NewDevCA(td, time.Hour, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	ids := mtls.WellKnownIDs(td)
	gwSrc, err := ca.Source(ids.Gateway)
	if err != nil {
		t.Fatal(err)
	}
	idem := services.NewMemoryIdempotencyStore(0, nil)
	whKey, err := webhook.NewKey([]byte("gateway-test-webhook-key-0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	hooks, err := webhook.NewRegistry(webhook.Config{Store: webhook.NewMemoryStore(), Key: whKey})
	if err != nil {
		t.Fatal(err)
	}
	led := &ledgerNode{ca: ca, ids: ids, url: map[services.Component]string{}, gwClient: map[services.Component]*http.Client{}, store: store, webhooks: hooks,
		servers: map[services.Component]*http.Server{}, addr: map[services.Component]string{}, serve: map[services.Component]func(net.Listener) *http.Server{}}
	for comp, id := range map[services.Component]spiffeid.ID{
		services.ComponentPayments: ids.Payments, services.ComponentQueries: ids.Queries, services.ComponentAudit: ids.Audit,
	} {
		src, err := ca.Source(id)
		if err != nil {
			t.Fatal(err)
		}
		rules := map[string][]spiffeid.ID{}
		for _, proc := range services.Procedures(comp) {
			// The gateway calls everything; the projector is allowed here only so that
			// TestEdgeHeadersTrustedOnlyFromTheGateway can try to forge them.
			rules[proc] = []spiffeid.ID{ids.Gateway, ids.Projector}
		}
		if comp == services.ComponentPayments {
			// The gateway's hop (Config.Hop, batched by default), as ComponentPolicy has it.
			rules[hopv1connect.HopServiceForwardProcedure] = []spiffeid.ID{ids.Gateway}
		}
		policy, err := mtls.NewPolicy(td, rules)
		if err != nil {
			t.Fatal(err)
		}
		caller, correlation := edge.ForComponent(ids.Gateway)
		hookService, err := webhook.NewService(hooks, caller)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := services.NewServer(services.Config{
			Webhooks:   hookService,
			Components: []services.Component{comp},
			Commands:   proc, Reader: views.Reader(), Store: store, Idempotency: idem,
			Caller:        caller,
			CorrelationID: correlation,
			TLS:           mtls.ServerTLS(src),
			Authorize:     policy.Handler,
			ReadWait:      2 * time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		led.serve[comp] = func(ln net.Listener) *http.Server {
			var p http.Protocols
			p.SetHTTP2(true)
			hs := &http.Server{Handler: srv.Handler(), TLSConfig: mtls.ServerTLS(src), Protocols: &p}
			go func() { _ = hs.ServeTLS(ln, "", "") }()
			return hs
		}
		led.servers[comp] = led.serve[comp](ln)
		led.addr[comp] = ln.Addr().String()
		led.url[comp] = "https://" + ln.Addr().String()
		led.gwClient[comp] = mtls.HTTPClient(gwSrc, id)
	}
	t.Cleanup(func() {
		for comp := range led.addr {
			led.stop(t, comp)
		}
		cancel()
		<-done
		_ = proc.Close()
		_ = store.Close()
	})
	return led
}

// upstream is the gateway's Upstream of comp.
func (l *ledgerNode) upstream(comp services.Component) gateway.Upstream {
	return gateway.Upstream{URL: l.url[comp], Client: l.gwClient[comp]}
}

type fixture struct {
	issuer *issuer
	ledger *ledgerNode
	gw     *gateway.Gateway
	url    string
	http   *http.Client
}

type fixtureOptions struct {
	limiter         gateway.Limiter
	streams         int
	streamQuota     gateway.StreamQuota // overrides streams
	jwksMinInterval time.Duration
	jwksRefresh     time.Duration
	// telemetry, when set, gets the gateway's RPC metrics and refusal counter, as serve
	// gateway wires them.
	telemetry *telemetry.Telemetry
	// paymentsTransport, when set, wraps the gateway's transport to payments (to count
	// what crosses the hop).
	paymentsTransport func(http.RoundTripper) http.RoundTripper
}

func newFixture(t testing.TB, o fixtureOptions) *fixture {
	t.Helper()
	is := newIssuer(t)
	led := startLedger(t)
	if o.limiter == nil {
		l, err := gateway.NewMemoryLimiter(gateway.Limit{Rate: 10000, Burst: 10000, Period: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		o.limiter = l
	}
	gw, url, client := startGateway(t, is, led, o)
	return &fixture{issuer: is, ledger: led, gw: gw, url: url, http: client}
}

// startGateway starts one more gateway instance in front of led, trusting is.
func startGateway(t testing.TB, is *issuer, led *ledgerNode, o fixtureOptions) (*gateway.Gateway, string, *http.Client) {
	t.Helper()
	var ics []connect.Interceptor
	var refusals *telemetry.GatewayMetrics
	if o.telemetry != nil {
		var err error
		if ics, err = o.telemetry.RPCInterceptors(nil); err != nil {
			t.Fatal(err)
		}
		if refusals, err = o.telemetry.GatewayMetrics(); err != nil {
			t.Fatal(err)
		}
	}
	payments := led.upstream(services.ComponentPayments)
	if o.paymentsTransport != nil {
		c := *payments.Client
		c.Transport = o.paymentsTransport(c.Transport)
		payments.Client = &c
	}
	gw, err := gateway.New(gateway.Config{
		Payments: payments,
		Queries:  led.upstream(services.ComponentQueries),
		Audit:    led.upstream(services.ComponentAudit),
		Auth: gateway.Auth{
			Issuer: testIssuer, Audience: testAudience,
			JWKSURL: is.srv.URL + "/certs", JWKSClient: is.srv.Client(),
			JWKSMinInterval: o.jwksMinInterval, JWKSRefresh: o.jwksRefresh,
		},
		Limiter:             o.limiter,
		StreamsPerPrincipal: o.streams,
		Streams:             o.streamQuota,
		AllowH2C:            true, // served by httptest with its own TLS
		Interceptors:        ics,
		Refusals:            refusals,
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(gw.Handler())
	hs.EnableHTTP2 = true
	hs.StartTLS()
	t.Cleanup(hs.Close)
	return gw, hs.URL, hs.Client()
}

// api is the five clients with one bearer token.
type api struct {
	accounts ledgerv1connect.AccountServiceClient
	payments ledgerv1connect.PaymentServiceClient
	balances ledgerv1connect.BalanceServiceClient
	audit    ledgerv1connect.AuditServiceClient
	webhooks ledgerv1connect.WebhookServiceClient
}

func (f *fixture) as(token string) api { return apiAt(f.http, f.url, token) }

func apiAt(client *http.Client, url, token string) api {
	opt := connect.WithInterceptors(bearerInterceptor(token))
	return api{
		accounts: ledgerv1connect.NewAccountServiceClient(client, url, opt),
		payments: ledgerv1connect.NewPaymentServiceClient(client, url, opt),
		balances: ledgerv1connect.NewBalanceServiceClient(client, url, opt),
		audit:    ledgerv1connect.NewAuditServiceClient(client, url, opt),
		webhooks: ledgerv1connect.NewWebhookServiceClient(client, url, opt),
	}
}

type bearerInterceptor string

func (b bearerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if b != "" {
			req.Header().Set("Authorization", "Bearer "+string(b))
		}
		return next(ctx, req)
	}
}

func (b bearerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, s connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, s)
		if b != "" {
			conn.RequestHeader().Set("Authorization", "Bearer "+string(b))
		}
		return conn
	}
}

func (b bearerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// seed opens world (external), alice and bob (USD) through an operator and a treasury
// customer that owns world, and funds alice and bob with 100.00 each. It returns the
// tokens of alice and bob.
func (f *fixture) seed(t testing.TB) (alice, bob string) {
	t.Helper()
	ctx := context.Background()
	op := f.as(f.issuer.token(t, "operator-1", []string{"operator"}))
	for _, a := range []struct {
		id   string
		kind ledgerv1.AccountKind
	}{{"world", ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL}, {"alice", ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER}, {"bob", ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER}} {
		if _, err := op.accounts.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{AccountId: a.id, Asset: "USD", Kind: a.kind})); err != nil {
			t.Fatalf("operator opens %s: %v", a.id, err)
		}
	}
	treasury := f.as(f.issuer.token(t, "treasury", []string{"customer"}, "world"))
	for _, to := range []string{"alice", "bob"} {
		if _, err := treasury.payments.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{
			PaymentId: "fund-" + to, SourceAccountId: "world", DestinationAccountId: to,
			Amount: &ledgerv1.Money{Value: "100.00", Asset: "USD"},
		})); err != nil {
			t.Fatalf("treasury funds %s: %v", to, err)
		}
	}
	return f.issuer.token(t, "alice", []string{"customer"}, "alice"), f.issuer.token(t, "bob", []string{"customer"}, "bob")
}

// redisClient connects to the test Redis (database 12, flushed), or fails the test with
// how to start it: the rate limit is tested against the real thing, never skipped.
func redisClient(t testing.TB) *redis.Client {
	t.Helper()
	addr := os.Getenv("SECUREPAY_TEST_REDIS_ADDR")
	if addr == "" {
		t.Fatal("SECUREPAY_TEST_REDIS_ADDR is not set: run the tests with infra/local/test.sh (or start one with infra/local/redis.sh start DIR PORT)")
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, DB: 12})
	t.Cleanup(func() { _ = rdb.Close() })
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("redis at %s does not answer (%v): run the tests with infra/local/test.sh", addr, err)
	}
	if err := rdb.FlushDB(context.Background()).Err(); err != nil {
		t.Fatalf("flush redis: %v", err)
	}
	return rdb
}

// errorSummary is what a client can observe of an error: code, message and reasons.
func errorSummary(err error) string {
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		if err == nil {
			return "<nil>"
		}
		return "non-connect: " + err.Error()
	}
	return cerr.Code().String() + "|" + cerr.Message() + "|" + string(services.ReasonOf(cerr))
}

func timestamp(in time.Duration) *timestamppb.Timestamp { return timestamppb.New(time.Now().Add(in)) }

// quietPebble drops the embedded store's informational chatter from test output.
type quietPebble struct{}

func (quietPebble) Infof(string, ...any) {}
func (quietPebble) Errorf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pebble: "+format+"\n", args...)
}
func (quietPebble) Fatalf(format string, args ...any) { panic(fmt.Sprintf("pebble: "+format, args...)) }
