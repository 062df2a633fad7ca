// Package gateway is SecurePay's public face: it serves the API's five services
// (Connect, gRPC and gRPC-web), authenticates every call with an OIDC/JWT access token,
// authorises it against one declarative policy (Policy: roles, then the accounts the
// token owns), limits each principal's rate (GCRA, shared in Redis) and its open
// streams (leases, shared in Redis), and forwards what it allows to the component that owns the procedure: writes
// to payments, reads to queries, the log to audit. It holds no ledger state.
//
// What reaches a component: the request message as the client sent it (its very bytes,
// when it came as binary protobuf: relay.go), its Idempotency-Key and trace context, and
// the principal and correlation id in the headers of package edge, which the components
// believe only from the gateway's SPIFFE ID.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	connectcors "connectrpc.com/cors"
	"connectrpc.com/grpcreflect"
	"github.com/rs/cors"

	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/internal/coalesce"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/edge"
	"github.com/securepay/securepay/services/telemetry"
)

// Config wires a Gateway. The three upstreams and Auth's Issuer, Audience and key source
// are required; everything else has a default.
type Config struct {
	// Payments serves AccountService and PaymentService writes, Queries their reads and
	// BalanceService, Audit AuditService.
	Payments, Queries, Audit Upstream

	Auth Auth

	// Limiter bounds each principal's calls (one per RPC, a stream counts once). Use
	// NewRedisLimiter with several gateways; default: NewMemoryLimiter(DefaultLimit).
	Limiter Limiter
	// Streams bounds the server streams (watch, log) each principal holds open. Use
	// NewRedisStreamQuota with several gateways; default:
	// NewMemoryStreamQuota(StreamsPerPrincipal), this gateway's streams only.
	Streams StreamQuota
	// StreamsPerPrincipal is the default Streams' bound; default 4.
	StreamsPerPrincipal int
	// MaxRequestBytes bounds one request message; default 1 MiB, as the components.
	MaxRequestBytes int
	// CORSOrigins lists the browser origins allowed to call (services.LoopbackOrigins:
	// pages on this machine; "*": any); empty refuses other origins.
	CORSOrigins []string
	// LoopbackHostsOnly refuses requests addressed to a name that is not a loopback one
	// (DNS rebinding), for securepay dev.
	LoopbackHostsOnly bool
	// Reflection serves gRPC reflection of the API (grpcurl, buf curl --list-methods).
	Reflection bool
	// TLS serves HTTP/2 over TLS (Serve). Without it Serve speaks cleartext HTTP/2 and
	// HTTP/1.1, which only AllowH2C permits (securepay dev, on loopback).
	TLS      *tls.Config
	AllowH2C bool
	Logger   *slog.Logger
	// Interceptors run on every call the gateway serves, before its authentication, and on
	// every call it forwards, outermost first: services/telemetry's RPCInterceptors(nil),
	// so each call is a server span that starts a trace of ours (a client's traceparent is
	// only linked: the edge trusts no caller's trace context) and each forward a client
	// span whose context the component continues over mTLS.
	Interceptors []connect.Interceptor
	// Refusals counts the calls the gateway refuses itself (before forwarding), by reason,
	// and the calls per Forward to payments; nil counts nothing. The RPC histogram of
	// Interceptors has the refusals' codes, not why.
	Refusals *telemetry.GatewayMetrics
	// Hop is how unary calls to the payments component travel: HopBatched gathers those
	// that arrive while others are in flight into one HopService.Forward (batch.go),
	// HopAlone sends each on its own; HopDefault is the default of the two. HopInFlight
	// bounds the Forwards in flight at once; default DefaultHopInFlight.
	Hop         HopMode
	HopInFlight int
}

// Upstream is one component the gateway forwards to.
type Upstream struct {
	// URL is the component's base URL, such as "https://payments.internal:8443".
	URL string
	// Client calls it. In production: mtls.HTTPClient(gatewaySource, componentID), HTTP/2
	// over mTLS with the gateway's SVID; one client per upstream for the gateway's life,
	// so connections are reused and a transfer costs no handshake.
	Client *http.Client
}

// Auth says which tokens the gateway accepts.
type Auth struct {
	// Issuer and Audience must equal the token's iss and one of its aud.
	Issuer, Audience string
	// JWKSURL is the issuer's key set (Keycloak:
	// https://HOST/realms/REALM/protocol/openid-connect/certs), fetched with JWKSClient
	// (default: a client with a 10 s timeout). StaticJWKS, a JWKS document, replaces it
	// where the keys are known at start (securepay dev). Exactly one of the two.
	JWKSURL    string
	JWKSClient *http.Client
	StaticJWKS []byte
	// Algorithms allowed, by JWA name; default RS256 and ES256. none and HS* are refused.
	Algorithms []string
	// Leeway tolerated on exp, nbf and iat for clock skew; default 30 s, at most 5 min.
	Leeway time.Duration
	// RolesClaim and AccountsClaim name the claims holding the principal's roles and the
	// account ids it owns (a string or a list of strings); defaults "roles" and
	// "accounts". See infra/keycloak for mapping them in an identity provider.
	RolesClaim, AccountsClaim string
	// MaxTokenBytes refuses longer tokens before parsing them; default 8 KiB.
	MaxTokenBytes int
	// JWKSRefresh refetches the key set when older than this; default 15 min.
	// JWKSMinInterval is the least time between two fetches, however many tokens carry
	// an unknown kid; default 30 s.
	JWKSRefresh, JWKSMinInterval time.Duration
}

// DefaultLimit is each principal's allowance when Config.Limiter is nil.
var DefaultLimit = Limit{Rate: 200, Burst: 400, Period: time.Second}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	switch {
	case c.Payments.URL == "" || c.Queries.URL == "" || c.Audit.URL == "":
		return errors.New("gateway config: the URLs of Payments, Queries and Audit are required")
	case c.Payments.Client == nil || c.Queries.Client == nil || c.Audit.Client == nil:
		return errors.New("gateway config: the Clients of Payments, Queries and Audit (mTLS to each component) are required")
	case c.Auth.Issuer == "" || c.Auth.Audience == "":
		return errors.New("gateway config: Auth.Issuer and Auth.Audience are required")
	case (c.Auth.JWKSURL == "") == (len(c.Auth.StaticJWKS) == 0):
		return errors.New("gateway config: exactly one of Auth.JWKSURL and Auth.StaticJWKS is required")
	case c.Auth.Leeway < 0 || c.Auth.Leeway > 5*time.Minute:
		return errors.New("gateway config: Auth.Leeway must be between 0 and 5 minutes")
	case c.TLS == nil && !c.AllowH2C:
		return errors.New("gateway config: TLS is required (cleartext h2c only with AllowH2C, for local development)")
	case c.Hop < HopDefault || c.Hop > HopAlone:
		return fmt.Errorf("gateway config: Hop %d is none of HopDefault, HopBatched and HopAlone", c.Hop)
	case c.HopInFlight < 0 || c.HopInFlight > 64:
		return errors.New("gateway config: HopInFlight must be between 0 (the default, 4) and 64")
	case c.StreamsPerPrincipal < 0 || c.MaxRequestBytes < 0 || c.Auth.MaxTokenBytes < 0 ||
		c.Auth.JWKSRefresh < 0 || c.Auth.JWKSMinInterval < 0:
		return errors.New("gateway config: sizes and intervals must not be negative")
	}
	return nil
}

// Gateway is the public API's handler. Serve its Handler on the public listener (TLS).
type Gateway struct {
	cfg      Config
	verifier *verifier
	limiter  Limiter
	streams  StreamQuota
	policy   map[string]Rule
	up       upstreams
	// lastWrite is the highest log position a write through this gateway committed at.
	// Ownership look-ups of payments read at least there, so a capture right after its
	// authorisation finds the payment (read-your-writes within one gateway).
	lastWrite atomic.Uint64
	handler   http.Handler
}

// clients are the service clients of one component, for the gateway's own calls (the
// ownership look-ups); what it forwards goes through the routes' hops (routes.go).
type clients struct {
	accounts ledgerv1connect.AccountServiceClient
	payments ledgerv1connect.PaymentServiceClient
	balances ledgerv1connect.BalanceServiceClient
	audit    ledgerv1connect.AuditServiceClient
	webhooks ledgerv1connect.WebhookServiceClient
}

// upstreams routes a procedure to the component that serves it, by services.ComponentOf:
// the components' own table, so the gateway never sends a call where it is Unimplemented
// (GetAccount is a payments read; GetPayment a queries one). The route of every procedure
// is worked out once, in New: ComponentOf builds its tables on each call.
type upstreams map[string]clients

func (u upstreams) of(procedure string) clients {
	return u[procedure] // every API procedure has a route; TestEveryProcedureHasItsRoute checks
}

func newUpstreams(byComponent map[services.Component]clients) upstreams {
	u := upstreams{}
	for c, cl := range byComponent {
		for _, p := range services.Procedures(c) {
			u[p] = cl
		}
	}
	return u
}

// New builds a Gateway. It does not fetch the key set: the first request does, so a
// gateway starts while its issuer is down and serves as soon as the issuer answers.
func New(cfg Config) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &cfg.Auth
	if len(a.Algorithms) == 0 {
		a.Algorithms = []string{"RS256", "ES256"}
	}
	algs, err := parseAlgorithms(a.Algorithms)
	if err != nil {
		return nil, err
	}
	if a.Leeway == 0 {
		a.Leeway = 30 * time.Second
	}
	if a.RolesClaim == "" {
		a.RolesClaim = "roles"
	}
	if a.AccountsClaim == "" {
		a.AccountsClaim = "accounts"
	}
	if a.MaxTokenBytes == 0 {
		a.MaxTokenBytes = 8 << 10
	}
	if a.JWKSRefresh == 0 {
		a.JWKSRefresh = 15 * time.Minute
	}
	if a.JWKSMinInterval == 0 {
		a.JWKSMinInterval = 30 * time.Second
	}
	if a.JWKSClient == nil {
		a.JWKSClient = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.StreamsPerPrincipal == 0 {
		cfg.StreamsPerPrincipal = 4
	}
	if cfg.MaxRequestBytes == 0 {
		cfg.MaxRequestBytes = 1 << 20
	}
	if cfg.Hop == HopDefault {
		cfg.Hop = HopBatched
	}
	if cfg.HopInFlight == 0 {
		cfg.HopInFlight = DefaultHopInFlight
	}
	if cfg.Limiter == nil {
		if cfg.Limiter, err = NewMemoryLimiter(DefaultLimit); err != nil {
			return nil, err
		}
	}
	if cfg.Streams == nil {
		if cfg.Streams, err = NewMemoryStreamQuota(cfg.StreamsPerPrincipal); err != nil {
			return nil, err
		}
	}
	var keys keySource
	if len(a.StaticJWKS) > 0 {
		set, err := keySetFromJSON(a.StaticJWKS)
		if err != nil {
			return nil, err
		}
		keys = staticKeys{set: set}
	} else {
		keys = &jwksCache{
			url: a.JWKSURL, client: a.JWKSClient, refresh: a.JWKSRefresh, minInterval: a.JWKSMinInterval,
			fetchTimeout: 10 * time.Second, now: time.Now, log: cfg.Logger,
		}
	}
	g := &Gateway{
		cfg: cfg,
		verifier: &verifier{
			keys: keys, issuer: a.Issuer, audience: a.Audience, algorithms: algs, leeway: a.Leeway,
			maxBytes: a.MaxTokenBytes, rolesClaim: a.RolesClaim, accountsClaim: a.AccountsClaim, now: time.Now,
		},
		limiter: cfg.Limiter,
		streams: cfg.Streams,
		policy:  Policy(),
	}
	// Upstream answers are bounded like requests: a component is trusted, but a bug that
	// streams gigabytes should not take the gateway's memory with it.
	copts := []connect.ClientOption{connect.WithReadMaxBytes(64 << 20), connect.WithSendMaxBytes(cfg.MaxRequestBytes),
		connect.WithInterceptors(cfg.Interceptors...)}
	byComponent := map[services.Component]clients{}
	components := map[services.Component]component{}
	for c, u := range map[services.Component]Upstream{
		services.ComponentPayments: cfg.Payments, services.ComponentQueries: cfg.Queries, services.ComponentAudit: cfg.Audit,
	} {
		hc := hopClient(u.Client)
		components[c] = component{client: hc, url: strings.TrimRight(u.URL, "/")}
		byComponent[c] = clients{
			accounts: ledgerv1connect.NewAccountServiceClient(hc, u.URL, copts...),
			payments: ledgerv1connect.NewPaymentServiceClient(hc, u.URL, copts...),
			balances: ledgerv1connect.NewBalanceServiceClient(hc, u.URL, copts...),
			audit:    ledgerv1connect.NewAuditServiceClient(hc, u.URL, copts...),
			webhooks: ledgerv1connect.NewWebhookServiceClient(hc, u.URL, copts...),
		}
	}
	g.up = newUpstreams(byComponent)
	opts := []connect.HandlerOption{
		connect.WithReadMaxBytes(cfg.MaxRequestBytes),
		// As the components (services.compressMinBytes): answers are a few hundred bytes,
		// and gzip of each was 7 % of BenchmarkTransfer's CPU for no saving on the wire.
		connect.WithCompressMinBytes(compressMinBytes),
		connect.WithInterceptors(append(slices.Clip(cfg.Interceptors), &authInterceptor{g: g})...),
	}
	mux := http.NewServeMux()
	r := &router{
		g: g, mux: mux, components: components, mounted: map[string]bool{},
		handlerOpts: append(opts, handlerCodecs()...),
		clientOpts:  append(slices.Clip(copts), hopCodec()),
	}
	if cfg.Hop.batched() {
		pay := components[services.ComponentPayments]
		r.batcher = newHopBatcher(newForwarder(pay.client, pay.url), cfg.HopInFlight)
		r.batcher.observe = cfg.Refusals.Forwarded
	}
	g.mountAccounts(r)
	g.mountPayments(r)
	g.mountBalances(r)
	g.mountAudit(r)
	g.mountWebhooks(r)
	if r.err != nil {
		return nil, r.err
	}
	// The routes and the policy name the same procedures: one without the other is a
	// procedure nobody may call, or one the policy allows that answers 404.
	for p := range g.policy {
		if !r.mounted[p] {
			return nil, fmt.Errorf("gateway: %s is in the policy but has no route", p)
		}
	}
	if len(r.mounted) != len(g.policy) {
		return nil, fmt.Errorf("gateway: %d routes, %d procedures in the policy", len(r.mounted), len(g.policy))
	}
	mux.Handle("/healthz", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		// Liveness of the gateway itself; each component reports its own readiness.
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	}))
	if cfg.Reflection {
		reflector := grpcreflect.NewStaticReflector(ledgerv1connect.AccountServiceName, ledgerv1connect.PaymentServiceName,
			ledgerv1connect.BalanceServiceName, ledgerv1connect.AuditServiceName, ledgerv1connect.WebhookServiceName)
		mux.Handle(grpcreflect.NewHandlerV1(reflector))
		mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	}
	var h http.Handler = mux
	if len(cfg.CORSOrigins) > 0 {
		h = cors.New(cors.Options{
			AllowOriginFunc: services.OriginAllowed(cfg.CORSOrigins),
			AllowedMethods:  connectcors.AllowedMethods(),
			AllowedHeaders:  append(connectcors.AllowedHeaders(), services.IdempotencyKeyHeader, "Authorization", "X-Correlation-Id", "X-Request-Id"),
			ExposedHeaders:  append(connectcors.ExposedHeaders(), services.ReplayedHeader, ResponseCorrelationHeader, "Retry-After"),
			MaxAge:          7200,
		}).Handler(h)
	}
	if cfg.LoopbackHostsOnly {
		h = services.LoopbackHostsOnly(h)
	}
	// The HTTP/2 transport's round trip, at the bottom of Connect's handler, the
	// interceptors and the hop's client, grew the request goroutine's stack there, with
	// all the frames above it to copy: 9 % of the gateway's CPU in a profile of
	// infra/local/gateway-cost.sh, half of it inside the round trip's select.
	g.handler = services.GrowStackFirst(h)
	return g, nil
}

// compressMinBytes: answers smaller than this go to the client uncompressed.
const compressMinBytes = 4 << 10

// hopClient is what the gateway's Connect clients call a component with: the client's
// transport itself, when the http.Client adds nothing but redirect handling. A component
// never redirects (an internal hop that answered 3xx would be a fault, which the gateway
// now reports instead of following), and http.Client.Do copies every request's headers
// for a redirect that never comes: a map and a slice per header per call. A client with a
// timeout, a cookie jar or its own redirect policy is used as it is.
func hopClient(c *http.Client) connect.HTTPClient {
	if c.Timeout != 0 || c.Jar != nil || c.CheckRedirect != nil {
		return c
	}
	rt := c.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	return roundTripper{rt}
}

type roundTripper struct{ rt http.RoundTripper }

func (r roundTripper) Do(req *http.Request) (*http.Response, error) { return r.rt.RoundTrip(req) }

// Handler serves the public API.
func (g *Gateway) Handler() http.Handler { return g.handler }

// Serve serves the public API on ln until ctx ends, then shuts down: open streams are
// cut (clients reconnect elsewhere) and unary calls get shutdownTimeout to finish.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener, shutdownTimeout time.Duration) error {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	if g.cfg.TLS != nil {
		protocols.SetHTTP2(true)
	} else {
		protocols.SetUnencryptedHTTP2(true)
	}
	srv := &http.Server{
		Handler:           g.handler,
		Protocols:         &protocols,
		TLSConfig:         g.cfg.TLS,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       120 * time.Second,
		HTTP2:             &http.HTTP2Config{SendPingTimeout: 5 * time.Second, PingTimeout: 5 * time.Second},
		ErrorLog:          slog.NewLogLogger(g.cfg.Logger.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() {
		if g.cfg.TLS != nil {
			// Fewer write system calls under TLS (internal/coalesce; see services.Server.Serve).
			errc <- srv.ServeTLS(coalesce.Listener(ln, coalesce.Options{}), "", "")
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("gateway: serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	// Shutdown waits for idle connections only; streams never become idle, so they are
	// closed when the timeout ends.
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("gateway: serve %s: %w", ln.Addr(), err)
	}
	return nil
}

// call is what the gateway knows about a request once authenticated.
type call struct {
	principal   Principal
	correlation string
}

type callKey struct{}

func callOf(ctx context.Context) (call, bool) {
	c, ok := ctx.Value(callKey{}).(call)
	return c, ok
}

// ResponseCorrelationHeader returns the correlation id to the client, so that a support
// request can quote it.
const ResponseCorrelationHeader = "X-Correlation-Id"

// authInterceptor authenticates, rate-limits and (for streams) applies the stream quota,
// before any handler runs. Refusals here have no side effect: nothing was forwarded.
type authInterceptor struct{ g *Gateway }

func (i *authInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		// The correlation id comes first, so that even a refusal's log line and answer
		// carry it.
		corr := edge.CorrelationFromClient(req.Header())
		ctx = telemetry.Correlate(ctx, corr)
		res, err := i.unary(ctx, req, corr, next)
		if err != nil {
			var cerr *connect.Error
			if errors.As(err, &cerr) {
				cerr.Meta().Set(ResponseCorrelationHeader, corr)
			}
			return nil, err
		}
		res.Header().Set(ResponseCorrelationHeader, corr)
		return res, nil
	}
}

func (i *authInterceptor) unary(ctx context.Context, req connect.AnyRequest, corr string, next connect.UnaryFunc) (connect.AnyResponse, error) {
	c, err := i.g.admit(ctx, req.Header(), corr)
	if err != nil {
		return nil, err
	}
	return next(context.WithValue(ctx, callKey{}, c), req)
}

func (i *authInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i *authInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		corr := edge.CorrelationFromClient(conn.RequestHeader())
		ctx = telemetry.Correlate(ctx, corr)
		conn.ResponseHeader().Set(ResponseCorrelationHeader, corr)
		c, err := i.g.admit(ctx, conn.RequestHeader(), corr)
		if err != nil {
			return err
		}
		release, ok, err := i.g.streams.Acquire(ctx, c.principal.Subject)
		if err != nil {
			i.g.cfg.Logger.WarnContext(ctx, "gateway: stream quota unavailable", "error", err)
			i.g.cfg.Refusals.Refused(telemetry.RefusalLimiterDown)
			// Failing closed, as the rate limit does: no answer must not mean no quota.
			return services.NewError(services.ReasonRateLimiterDown, "the stream quota is unavailable; retry the stream shortly")
		}
		if !ok {
			i.g.cfg.Refusals.Refused(telemetry.RefusalStreamQuota)
			return i.g.rateLimited(fmt.Sprintf("this principal already holds %d open streams (watch, log), the most it may hold across all gateways; close one before opening another", i.g.streams.Max()), 0)
		}
		defer release()
		return next(context.WithValue(ctx, callKey{}, c), conn)
	}
}

// admit authenticates the bearer token and spends one call of the principal's allowance.
// correlation is the request's id (edge.CorrelationFromClient), which the call carries.
func (g *Gateway) admit(ctx context.Context, h http.Header, correlation string) (call, error) {
	raw := h.Get("Authorization")
	if raw == "" {
		g.cfg.Refusals.Refused(telemetry.RefusalUnauthenticated)
		return call{}, services.NewError(services.ReasonUnauthenticated, "this API needs an access token: send it as \"Authorization: Bearer TOKEN\"")
	}
	tok, ok := bearer(raw)
	if !ok {
		g.cfg.Refusals.Refused(telemetry.RefusalUnauthenticated)
		return call{}, services.NewError(services.ReasonUnauthenticated, "the Authorization header must be \"Bearer TOKEN\"")
	}
	p, err := g.verifier.verify(ctx, tok)
	if err != nil {
		var te *tokenError
		msg := "the access token was refused"
		if errors.As(err, &te) {
			msg = "the access token was refused: " + te.public
		}
		g.cfg.Logger.InfoContext(ctx, "gateway: token refused", "error", err)
		g.cfg.Refusals.Refused(telemetry.RefusalUnauthenticated)
		return call{}, services.NewError(services.ReasonUnauthenticated, msg)
	}
	allowed, wait, err := g.limiter.Allow(ctx, p.Subject)
	if err != nil {
		g.cfg.Logger.WarnContext(ctx, "gateway: rate limiter unavailable", "error", err)
		g.cfg.Refusals.Refused(telemetry.RefusalLimiterDown)
		// Failing closed: a limiter that cannot answer must not turn into no limit.
		return call{}, services.NewError(services.ReasonRateLimiterDown, "the rate limiter is unavailable; retry shortly with the same ids and Idempotency-Key")
	}
	if !allowed {
		g.cfg.Refusals.Refused(telemetry.RefusalRateLimited)
		return call{}, g.rateLimited("this principal has made more calls than its rate allows; retry after the Retry-After seconds", wait)
	}
	return call{principal: p, correlation: correlation}, nil
}

// rateLimited is RESOURCE_EXHAUSTED with when to retry: the Retry-After header (whole
// seconds, at least 1) and a google.rpc.RetryInfo detail (exact).
func (g *Gateway) rateLimited(msg string, wait time.Duration) *connect.Error {
	cerr := services.NewError(services.ReasonRateLimited, msg)
	if wait <= 0 {
		wait = time.Second
	}
	secs := int64((wait + time.Second - 1) / time.Second)
	cerr.Meta().Set("Retry-After", strconv.FormatInt(secs, 10))
	addRetryInfo(cerr, wait)
	return cerr
}
