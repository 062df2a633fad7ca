package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/gateway"
	"github.com/securepay/securepay/services/mtls"
	"github.com/securepay/securepay/services/telemetry"
)

// gatewayServeConfig is `securepay serve gateway`.
type gatewayServeConfig struct {
	Listen                       string
	TLSCert, TLSKey              string
	SPIFFESocket, TrustDomain    string
	PaymentsURL, QueriesURL      string
	AuditURL                     string
	Issuer, Audience, JWKSURL    string
	Algorithms                   string
	RedisAddr, RedisAddrFile     string
	RedisDB                      int
	RedisCAFile                  string
	Rate, Burst, StreamsPerPrinc int
	CORS                         string
	Reflection                   bool
	Shutdown                     time.Duration
	// HopBatch gathers the calls to payments that arrive together into one
	// HopService.Forward (gateway.HopBatched); false sends each alone, to compare.
	HopBatch bool
	// HopInFlight bounds the Forwards in flight at once (gateway.Config.HopInFlight).
	HopInFlight int
	// HealthListen is the probe port (cleartext, health only), as the components have.
	HealthListen string
	// MetricsListen serves /metrics (Prometheus), loopback by default as the probe port.
	MetricsListen string
	// PprofListen is the loopback address of Go's runtime profiles (pprof.go); "" serves
	// none. The gateway is on every request's path, so its profile is the one to take
	// first when a call is slow.
	PprofListen string
	// newSource gets the gateway's SVID source: the Workload API at SPIFFESocket unless
	// a test sets it.
	newSource func(ctx context.Context) (mtls.Source, func(), error)
	// Telemetry is where the gateway's spans go (--otlp-endpoint, --trace-sample-ratio).
	Telemetry telemetrySettings
}

func gatewayServeCommand(e env) *Command {
	cmd, _ := newGatewayServeCommand(e)
	return cmd
}

// newGatewayServeCommand is gatewayServeCommand with its flags' destination, which tests
// reach into for the SVID source.
func newGatewayServeCommand(e env) (*Command, *gatewayServeConfig) {
	c := &gatewayServeConfig{}
	cmd := &Command{
		UsageLine: "securepay serve gateway --oidc-issuer URL --oidc-audience AUD --oidc-jwks-url URL --payments-url URL --queries-url URL --audit-url URL --tls-cert FILE --tls-key FILE --redis-addr HOST:PORT|URL [flags]",
		Short:     "run the public gateway: OIDC/JWT, roles and ownership, rate limits, mTLS to the components",
		Long: "Run the public gateway. Every call needs an access token from the OIDC issuer\n" +
			"(Authorization: Bearer), is authorised by role and by the accounts the token owns,\n" +
			"is rate-limited per principal (GCRA in Redis, shared by all gateways), and is\n" +
			"forwarded over SPIFFE mTLS to the payments, queries or audit component. The\n" +
			"gateway's SVID comes from the SPIFFE Workload API: until it has one it asks again\n" +
			"with backoff, does not listen on its public port, and its probe port\n" +
			"(--health-listen) says not ready (there is no plaintext path to the components).\n" +
			"See infra/keycloak for an issuer that puts the roles and accounts claims in its tokens.",
		Run: func(ctx context.Context, e env, _ []string) error { return serveGateway(ctx, e, *c) },
	}
	fs := &cmd.Flag
	ef := envFlags{fs, e}
	ef.String(&c.Listen, "listen", "SECUREPAY_GATEWAY_LISTEN", ":8443", "public `address` to listen on (TLS; every call is authenticated)")
	ef.String(&c.TLSCert, "tls-cert", "SECUREPAY_TLS_CERT", "", "PEM certificate chain `file` of the public port")
	ef.String(&c.TLSKey, "tls-key", "SECUREPAY_TLS_KEY", "", "PEM private key `file` of the public port")
	ef.String(&c.SPIFFESocket, "spiffe-socket", "SPIFFE_ENDPOINT_SOCKET", "", "SPIFFE Workload API `address` (unix:///run/spire/agent.sock)")
	ef.String(&c.TrustDomain, "trust-domain", "SECUREPAY_TRUST_DOMAIN", mtls.DefaultTrustDomain, "SPIFFE trust `domain` of the components")
	ef.String(&c.HealthListen, "health-listen", "SECUREPAY_HEALTH_LISTEN", "127.0.0.1:0", healthListenUsage)
	ef.String(&c.MetricsListen, "metrics-listen", "SECUREPAY_GATEWAY_METRICS_LISTEN", "127.0.0.1:0", "`address` of GET /metrics (Prometheus: RPCs by procedure and code, refusals by reason, Go runtime); default 127.0.0.1, any free port (logged as metrics_addr)")
	ef.String(&c.PaymentsURL, "payments-url", "SECUREPAY_PAYMENTS_URL", "", "https `URL` of the payments component")
	ef.String(&c.QueriesURL, "queries-url", "SECUREPAY_QUERIES_URL", "", "https `URL` of the queries component")
	ef.String(&c.AuditURL, "audit-url", "SECUREPAY_AUDIT_URL", "", "https `URL` of the audit component")
	ef.String(&c.Issuer, "oidc-issuer", "SECUREPAY_OIDC_ISSUER", "", "the tokens' issuer (`iss`), e.g. https://keycloak.example.com/realms/securepay")
	ef.String(&c.Audience, "oidc-audience", "SECUREPAY_OIDC_AUDIENCE", "", "the `audience` the tokens must name (aud)")
	ef.String(&c.JWKSURL, "oidc-jwks-url", "SECUREPAY_OIDC_JWKS_URL", "", "the issuer's JWKS `URL` (Keycloak: ISSUER/protocol/openid-connect/certs)")
	ef.String(&c.Algorithms, "oidc-algorithms", "SECUREPAY_OIDC_ALGORITHMS", "RS256,ES256", "comma-separated signature `algorithms` accepted (none and HS* never)")
	ef.String(&c.RedisAddr, "redis-addr", "SECUREPAY_REDIS_ADDR", "", "Redis of the rate limits: `host:port` or redis[s]:// URL (a URL with a password belongs in --redis-addr-file)")
	ef.String(&c.RedisAddrFile, "redis-addr-file", "SECUREPAY_REDIS_ADDR_FILE", "", "`file` holding the Redis address or URL, readable only by its owner")
	ef.String(&c.PprofListen, "pprof-listen", "SECUREPAY_PPROF_LISTEN", "", "loopback `address` serving Go's runtime profiles at /debug/pprof/ (CPU, heap, goroutines); none by default")
	fs.IntVar(&c.RedisDB, "redis-db", 0, "Redis logical database `number`")
	ef.String(&c.RedisCAFile, "redis-ca-file", "SECUREPAY_REDIS_CA_FILE", "", "PEM `file` of the CA of a rediss:// server")
	fs.IntVar(&c.Rate, "rate-limit", gateway.DefaultLimit.Rate, "calls per second one principal may make, across all gateways")
	fs.IntVar(&c.Burst, "rate-burst", gateway.DefaultLimit.Burst, "calls one principal may make at once")
	fs.IntVar(&c.StreamsPerPrinc, "streams-per-principal", 4, "open streams (watch, log) one principal may hold across all gateways (leases in Redis; a dead gateway's expire within 30s)")
	ef.String(&c.CORS, "cors-origins", "SECUREPAY_CORS_ORIGINS", "", "comma-separated browser `origins` allowed to call")
	fs.BoolVar(&c.Reflection, "reflection", false, "serve gRPC reflection (it lists every procedure to any caller)")
	fs.DurationVar(&c.Shutdown, "shutdown-timeout", 30*time.Second, "how long in-flight requests get at shutdown")
	fs.BoolVar(&c.HopBatch, "hop-batch", true, "send the calls to payments that arrive while others are in flight together, in one HopService.Forward; false: each call on its own, as before (to compare)")
	fs.IntVar(&c.HopInFlight, "hop-in-flight", gateway.DefaultHopInFlight, "with --hop-batch, the Forwards to payments in flight at once (1..64); a call waits only while all are busy")
	telemetryFlags(ef, &c.Telemetry, "SECUREPAY_", false)
	return cmd, c
}

// validate names every problem at once.
func (c *gatewayServeConfig) validate() (*redis.Options, *certReloader, spiffeid.TrustDomain, error) {
	var errs []error
	need := func(v, flag, variable, what string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is missing: set --%s or %s", what, flag, variable))
		}
	}
	need(c.Issuer, "oidc-issuer", "SECUREPAY_OIDC_ISSUER", "the OIDC issuer")
	need(c.Audience, "oidc-audience", "SECUREPAY_OIDC_AUDIENCE", "the token audience")
	if c.newSource == nil {
		need(c.SPIFFESocket, "spiffe-socket", "SPIFFE_ENDPOINT_SOCKET", "the SPIFFE Workload API address")
	}
	if c.HealthListen == "" {
		errs = append(errs, errors.New("the probe port is missing: set --health-listen or SECUREPAY_HEALTH_LISTEN (default 127.0.0.1:0, any free port)"))
	}
	if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
		errs = append(errs, fmt.Errorf("--metrics-listen %q is not host:port (e.g. 127.0.0.1:9466): %v", c.MetricsListen, err))
	}
	if err := checkPprofListen(c.PprofListen); err != nil {
		errs = append(errs, err)
	}
	for _, u := range []struct{ v, flag, variable, what string }{
		{c.PaymentsURL, "payments-url", "SECUREPAY_PAYMENTS_URL", "the payments component's URL"},
		{c.QueriesURL, "queries-url", "SECUREPAY_QUERIES_URL", "the queries component's URL"},
		{c.AuditURL, "audit-url", "SECUREPAY_AUDIT_URL", "the audit component's URL"},
		{c.JWKSURL, "oidc-jwks-url", "SECUREPAY_OIDC_JWKS_URL", "the issuer's JWKS URL"},
	} {
		need(u.v, u.flag, u.variable, u.what)
		if u.v == "" {
			continue
		}
		if p, err := url.Parse(u.v); err != nil || p.Scheme != "https" || p.Host == "" {
			errs = append(errs, fmt.Errorf("--%s %q must be an https:// URL (there is no plaintext path)", u.flag, u.v))
		}
	}
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if err != nil {
		errs = append(errs, fmt.Errorf("--trust-domain %q: %v", c.TrustDomain, err))
	}
	if c.HopInFlight < 1 || c.HopInFlight > 64 {
		errs = append(errs, fmt.Errorf("--hop-in-flight %d must be between 1 and 64", c.HopInFlight))
	}
	if c.Rate <= 0 || c.Burst <= 0 || c.StreamsPerPrinc <= 0 || c.Shutdown <= 0 {
		errs = append(errs, errors.New("--rate-limit, --rate-burst, --streams-per-principal and --shutdown-timeout must be positive"))
	}
	var ropts *redis.Options
	addr, err := secretSetting{what: "the Redis address", value: c.RedisAddr, file: c.RedisAddrFile,
		flag: "redis-addr", variable: "SECUREPAY_REDIS_ADDR", fileFlag: "redis-addr-file", fileVar: "SECUREPAY_REDIS_ADDR_FILE"}.resolve()
	switch {
	case err != nil:
		errs = append(errs, err)
	case addr == "":
		errs = append(errs, errors.New("the Redis address of the rate limits is missing: set --redis-addr or SECUREPAY_REDIS_ADDR, or --redis-addr-file"))
	default:
		if ropts, err = redisOptions(addr, c.RedisDB, c.RedisCAFile); err != nil {
			errs = append(errs, err)
		}
	}
	var certs *certReloader
	if c.TLSCert == "" || c.TLSKey == "" {
		errs = append(errs, errors.New("TLS is required on the public port: set --tls-cert and --tls-key (SECUREPAY_TLS_CERT, SECUREPAY_TLS_KEY)"))
	} else if certs, err = newCertReloader(c.TLSCert, c.TLSKey, slog.New(slog.DiscardHandler)); err != nil {
		errs = append(errs, err)
	}
	if _, err := parseGatewayAlgorithms(c.Algorithms); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.Telemetry.config("securepay-gateway"); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, nil, td, fmt.Errorf("serve gateway: configuration is not usable:\n  - %w", joinLines(errs))
	}
	return ropts, certs, td, nil
}

func parseGatewayAlgorithms(s string) ([]string, error) {
	algs := splitList(s)
	if len(algs) == 0 {
		return nil, errors.New("--oidc-algorithms names no algorithm")
	}
	return algs, nil
}

func serveGateway(ctx context.Context, e env, c gatewayServeConfig) error {
	ropts, certs, td, err := c.validate()
	if err != nil {
		return err
	}
	// JSON lines with the trace and correlation ids, secrets redacted (services/telemetry).
	log := slog.New(telemetry.NewLogHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	certs.log = log // before the first handshake: no reload can run yet
	tel, closeTelemetry, err := openTelemetry(ctx, c.Telemetry, "securepay-gateway")
	if err != nil {
		return fmt.Errorf("serve gateway: %w", err)
	}
	defer closeTelemetry()
	// Each call starts a trace of ours (a client's traceparent is only linked) and each
	// forward continues it to the component, which trusts the gateway's SPIFFE ID. The
	// RPC metrics run outside the gateway's authentication (gateway.Config.Interceptors),
	// so the calls it refuses itself are counted by procedure and code too, and
	// refusals says why. (dev's gateway counts refusals only: its components count the
	// rest in the same registry.)
	ics, err := tel.RPCInterceptors(nil)
	if err != nil {
		return fmt.Errorf("serve gateway: %w", err)
	}
	refusals, err := tel.GatewayMetrics()
	if err != nil {
		return fmt.Errorf("serve gateway: %w", err)
	}
	ids := mtls.WellKnownIDs(td)
	newSource := c.newSource
	if newSource == nil {
		newSource = workloadSource(c.SPIFFESocket, ids.Gateway)
	}
	// Everything is built before the SVID comes, so a wrong setting fails at start; the
	// clients to the components read the SVID at each handshake, and none is made until
	// the public port opens.
	svid := &lateSource{}
	rdb := redis.NewClient(ropts)
	defer rdb.Close()
	algs, _ := parseGatewayAlgorithms(c.Algorithms)
	limiter, err := gateway.NewRedisLimiter(rdb, gateway.Limit{Rate: c.Rate, Burst: c.Burst, Period: time.Second})
	if err != nil {
		return fmt.Errorf("serve gateway: %w", err)
	}
	streams, err := gateway.NewRedisStreamQuota(rdb, c.StreamsPerPrinc, gateway.DefaultStreamLeaseTTL, log)
	if err != nil {
		return fmt.Errorf("serve gateway: %w", err)
	}
	gw, err := gateway.New(gateway.Config{
		Payments:     gateway.Upstream{URL: c.PaymentsURL, Client: mtls.HTTPClient(svid, ids.Payments)},
		Queries:      gateway.Upstream{URL: c.QueriesURL, Client: mtls.HTTPClient(svid, ids.Queries)},
		Audit:        gateway.Upstream{URL: c.AuditURL, Client: mtls.HTTPClient(svid, ids.Audit)},
		Auth:         gateway.Auth{Issuer: c.Issuer, Audience: c.Audience, JWKSURL: c.JWKSURL, Algorithms: algs},
		Limiter:      limiter,
		Streams:      streams,
		CORSOrigins:  splitList(c.CORS),
		Reflection:   c.Reflection,
		TLS:          &tls.Config{GetCertificate: certs.GetCertificate, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}},
		Logger:       log,
		Interceptors: ics,
		Refusals:     refusals,
		Hop:          c.hopMode(),
		HopInFlight:  c.HopInFlight,
	})
	if err != nil {
		return fmt.Errorf("serve gateway: %w", err)
	}
	// Every procedure the gateway serves is forwarded over mTLS: without the SVID none
	// can be answered, so the whole gateway is not ready.
	gatewayServices := services.ServicesOf(services.Components())
	probe := services.NewProbe([]services.Dependency{{Name: "svid", Check: svid.check, NeededBy: gatewayServices}}, gatewayServices, log)
	hln, err := net.Listen("tcp", c.HealthListen)
	if err != nil {
		return fmt.Errorf("serve gateway: listen for probes on %s: %w", c.HealthListen, err)
	}
	healthAddr := hln.Addr().String()
	defer serveHealth(ctx, hln, probe.Handler())()
	// Metrics from the start: a gateway that waits for its SVID still shows its runtime.
	mln, err := net.Listen("tcp", c.MetricsListen)
	if err != nil {
		return fmt.Errorf("serve gateway: metrics: listen on %s: %w", c.MetricsListen, err)
	}
	metricsAddr := mln.Addr().String()
	metricsCtx, stopMetrics := context.WithCancel(context.WithoutCancel(ctx))
	metricsDone := make(chan struct{})
	go func() {
		defer close(metricsDone)
		if err := serveMetrics(metricsCtx, mln, tel); err != nil {
			log.Warn("gateway metrics stopped", "error", err)
		}
	}()
	// Served until the public port is shut down, so the last calls' counts can be scraped.
	defer func() { stopMetrics(); <-metricsDone }()
	if c.PprofListen != "" {
		pln, err := net.Listen("tcp", c.PprofListen)
		if err != nil {
			return fmt.Errorf("serve gateway: listen for pprof on %s: %w", c.PprofListen, err)
		}
		log.Info("gateway profiles", "pprof_addr", pln.Addr().String())
		defer servePprof(ctx, pln)()
	}
	// At shutdown the probe turns not ready first, so a load balancer stops sending new
	// calls while the in-flight ones finish.
	stopDrain := context.AfterFunc(ctx, probe.Drain)
	defer stopDrain()

	// No public port at all until the Workload API gives the SVID: a client is refused
	// at connect, rather than accepted by a gateway that cannot reach any component.
	log.Info("gateway waiting for its SVID", "spiffe_id", ids.Gateway.String(), "spiffe_socket", c.SPIFFESocket, "health_addr", healthAddr, "metrics_addr", metricsAddr, "listen", c.Listen)
	src, closeSrc, err := awaitSource(ctx, log, newSource)
	if err != nil {
		return fmt.Errorf("serve gateway: no SVID for %s before the end: %w", ids.Gateway, err)
	}
	defer closeSrc()
	svid.set(src)
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return fmt.Errorf("serve gateway: listen on %s: %w", c.Listen, err)
	}
	log.Info("gateway serving", "listen", ln.Addr().String(), "health_addr", healthAddr, "metrics_addr", metricsAddr, "issuer", c.Issuer, "payments", c.PaymentsURL, "queries", c.QueriesURL, "audit", c.AuditURL, "hop_batch", c.HopBatch)
	return gw.Serve(ctx, ln, c.Shutdown)
}

// hopMode is --hop-batch as the gateway's HopMode.
func (c *gatewayServeConfig) hopMode() gateway.HopMode {
	if c.HopBatch {
		return gateway.HopBatched
	}
	return gateway.HopAlone
}
