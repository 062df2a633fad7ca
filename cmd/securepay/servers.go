package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/eventstore/postgres"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/projections/memory"
	"github.com/securepay/securepay/projections/pg"
	redisviews "github.com/securepay/securepay/projections/redis"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/dispatch"
	"github.com/securepay/securepay/services/edge"
	"github.com/securepay/securepay/services/gateway"
	"github.com/securepay/securepay/services/ledger"
	"github.com/securepay/securepay/services/mtls"
	"github.com/securepay/securepay/services/relay"
	"github.com/securepay/securepay/services/telemetry"
	"github.com/securepay/securepay/services/webhook"
)

// devConfig is `securepay dev`.
type devConfig struct {
	Dir         string // "" means a temporary directory removed on exit
	Listen      string // loopback only (checkDevListen)
	CORSOrigins []string
	Reflection  bool
	LogLevel    slog.Level
	// HistoryCap bounds the in-memory history lines kept per account.
	HistoryCap int
	// GC is the Go runtime's soft memory limit and GOGC (gcsettings.go).
	GC     gcSettings
	Limits domain.Limits // ceilings on amounts and credit limits (limitFlags in main.go)
	Relay  *relayConfig  // --kafka: publish the log to this broker (relay.go)
	// Dispatcher delivers the relay's notifications as webhooks (with --kafka) to the
	// endpoints of WebhookEndpoints (dispatcher.go).
	Dispatcher       *dispatcherConfig
	WebhookEndpoints dispatch.StaticDirectory
	webhookFile      string
	// TokenKeyFile is the development token key (token.go); "" means the default.
	TokenKeyFile string
	Telemetry    telemetrySettings
	// MetricsListen is the loopback address of /metrics (the public port is the gateway's).
	MetricsListen string
	// RateLimit is each principal's allowance at dev's gateway (in memory: one process).
	RateLimit gateway.Limit
}

// devCmd is `securepay dev`'s flags.
type devCmd struct {
	cfg                    devConfig
	cors                   string
	verbose                bool
	memLimitMiB, gcPercent int
	kafka                  string
	webhookEndpoints       string
}

func devCommand(e env) *Command {
	c := &devCmd{}
	cmd := &Command{
		UsageLine: "securepay dev [--listen ADDRESS] [--dir DIRECTORY] [flags]",
		Short:     "run everything in one process on the embedded store (no external service)",
		Long: "Run the ledger, the API and in-memory views in one process on the embedded store,\n" +
			"with cleartext HTTP/2 (on loopback by default): for a laptop, not for production (see serve).",
		Run:      c.run,
		Commands: []*Command{devTokenCommand(e)},
	}
	fs := &cmd.Flag
	ef := envFlags{fs, e}
	ef.String(&c.cfg.Dir, "dir", "SECUREPAY_DEV_DIR", "", "keep the ledger in this `directory` (default: a temporary one, deleted on exit)")
	// Not SECUREPAY_LISTEN: that is serve's, and an address meant for a server (":8443")
	// would have bound dev, in cleartext and without authentication, on every interface.
	ef.String(&c.cfg.Listen, "listen", "SECUREPAY_DEV_LISTEN", "127.0.0.1:8080", "loopback `address` to listen on; port 0 picks a free one")
	ef.String(&c.cors, "cors-origins", "SECUREPAY_DEV_CORS_ORIGINS", services.LoopbackOrigins, "comma-separated browser `origins` allowed to call; \""+services.LoopbackOrigins+"\" is any page served from this machine, \"*\" any page at all")
	fs.BoolVar(&c.cfg.Reflection, "reflection", true, "serve gRPC reflection (grpcurl, buf curl --list-methods)")
	fs.BoolVar(&c.verbose, "v", false, "log every internal error and store message")
	fs.IntVar(&c.cfg.HistoryCap, "history-cap", 200, "history lines kept in memory per account (older pages answer HISTORY_TRIMMED)")
	fs.IntVar(&c.memLimitMiB, "memory-limit-mb", 300, "soft memory limit of the process in MiB, so the dev server stays small on a laptop (0: none; GOMEMLIMIT wins)")
	limitFlags(fs, &c.cfg.Limits)
	ef.String(&c.cfg.TokenKeyFile, "token-key-file", "SECUREPAY_DEV_TOKEN_KEY_FILE", "", "the development token signing key `file` (default: in $SECUREPAY_CACHE/dev or the user cache directory; made if absent)")
	ef.String(&c.kafka, "kafka", "SECUREPAY_DEV_KAFKA", "", "publish the log to the Kafka broker at `host:port` (securepay.payments.v1, securepay.notifications.v1); none by default")
	ef.String(&c.webhookEndpoints, "webhook-endpoints-file", "SECUREPAY_DEV_WEBHOOK_ENDPOINTS_FILE", "", "with --kafka: deliver notifications as webhooks to the endpoints of this JSON `file` too, besides those registered through WebhookService (docs/WEBHOOKS.md)")
	telemetryFlags(ef, &c.cfg.Telemetry, "SECUREPAY_DEV_", true)
	ef.String(&c.cfg.MetricsListen, "metrics-listen", "SECUREPAY_DEV_METRICS_LISTEN", "127.0.0.1:0", "loopback `address` of /metrics (Prometheus); port 0 picks a free one")
	fs.IntVar(&c.gcPercent, "gc-percent", 400, "heap growth between collections, in percent of the live heap (GOGC); only applied with a memory limit, which caps the heap it lets grow (GOGC wins)")
	// A load test from one principal needs more than a person at a terminal does; the
	// same names as serve gateway's.
	fs.IntVar(&c.cfg.RateLimit.Rate, "rate-limit", gateway.DefaultLimit.Rate, "calls per second one principal may make")
	fs.IntVar(&c.cfg.RateLimit.Burst, "rate-burst", gateway.DefaultLimit.Burst, "calls one principal may make at once")
	return cmd
}

func (c *devCmd) run(ctx context.Context, e env, _ []string) error {
	cfg := c.cfg
	cfg.CORSOrigins = splitList(c.cors)
	if c.memLimitMiB < 0 || cfg.HistoryCap < 1 || c.gcPercent < 1 || c.gcPercent > 10_000 {
		return usagef("dev: --memory-limit-mb must be >= 0, --history-cap >= 1 and --gc-percent in 1..10000")
	}
	if cfg.RateLimit.Rate < 1 || cfg.RateLimit.Burst < 1 {
		return usagef("dev: --rate-limit and --rate-burst must be >= 1 (calls per second, calls at once)")
	}
	cfg.RateLimit.Period = time.Second
	cfg.GC = resolveGC(e.getenv, c.memLimitMiB, c.gcPercent)
	if c.kafka != "" {
		rc, err := devRelayConfig(c.kafka)
		if err != nil {
			return err
		}
		cfg.Relay = &rc
		dc := devDispatcherConfig(rc)
		cfg.Dispatcher, cfg.WebhookEndpoints = &dc, dispatch.StaticDirectory{}
	}
	if c.webhookEndpoints != "" {
		if c.kafka == "" {
			return usagef("dev: --webhook-endpoints-file needs --kafka: webhooks are delivered from the notifications topic")
		}
		data, err := readSecretFile(c.webhookEndpoints)
		if err == nil {
			cfg.WebhookEndpoints, err = dispatch.ParseEndpoints([]byte(data))
		}
		if err != nil {
			return usagef("dev: --webhook-endpoints-file %s: %v", c.webhookEndpoints, err)
		}
		cfg.webhookFile = c.webhookEndpoints
	}
	cfg.LogLevel = slog.LevelWarn
	if c.verbose {
		cfg.LogLevel = slog.LevelDebug
	}
	return dev(ctx, e, cfg)
}

func dev(ctx context.Context, e env, cfg devConfig) error {
	// Text for a person, with the trace and correlation ids and secrets redacted.
	log := slog.New(telemetry.NewTextLogHandler(e.stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	// Collections cost about a sixth of the server's CPU at the default GOGC 100 under
	// load: a dev ledger's live heap is small, so letting it grow 4x between collections
	// (up to the memory limit) buys throughput for memory the limit still bounds.
	defer cfg.GC.apply()()
	dir := cfg.Dir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "securepay-dev-")
		if err != nil {
			return fmt.Errorf("dev: temporary directory: %w", err)
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	if err := checkDevListen(cfg.Listen); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("dev: listen on %s: %w (is another securepay running? try --listen 127.0.0.1:0)", cfg.Listen, err)
	}
	// A development ledger is small: a modest block cache keeps the process small too
	// (pebble needs at least two memtables' worth of it).
	store, err := embedded.Open(dir, embedded.Options{CacheBytes: 64 << 20, Logger: quietPebble{log}})
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: open the embedded store in %s: %w", dir, err)
	}
	defer store.Close()
	tel, closeTelemetry, err := openTelemetry(ctx, cfg.Telemetry, "securepay-dev")
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: %w", err)
	}
	defer closeTelemetry()
	obs, rpcIcs, err := serverTelemetry(tel, devGatewayTrust())
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: %w", err)
	}
	// The gateway's spans start each trace (it trusts no client's trace context) and
	// continue it to the components; its calls are counted by the components' metrics
	// (the calls it refuses itself only by securepay_gateway_refusals_total below).
	edgeIcs, err := tel.RPCTracing(nil)
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: %w", err)
	}
	// The refusals of dev's gateway are its own (no component sees them), so counting
	// them double-counts nothing, unlike the RPC histogram its components already fill.
	edgeRefusals, err := tel.GatewayMetrics()
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: %w", err)
	}
	// The public port is the gateway's; the metrics get a loopback port of their own.
	metricsLn, err := net.Listen("tcp", cfg.MetricsListen)
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: metrics: listen on %s: %w", cfg.MetricsListen, err)
	}
	defer metricsLn.Close()
	// 20,000 cached aggregates are plenty for a development ledger and keep it small;
	// the rest are read from the store (and its snapshots) when needed.
	snapKey, snapKeyFile, err := devSnapshotKey(dir)
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: %w", err)
	}
	proc, err := ledger.New(store, ledger.Config{Snapshots: store, SnapshotKey: snapKey, CacheSize: 20_000, Logger: log, Limits: cfg.Limits, Observer: obs})
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: start the ledger: %w", err)
	}
	defer proc.Close()
	// Webhook endpoints live in memory (lost on exit), their secrets sealed under a key
	// generated into the directory, as serve seals them in PostgreSQL.
	hookKey, hookKeyFile, err := devWebhookKey(dir)
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: %w", err)
	}
	hooks, err := webhook.NewRegistry(webhook.Config{Store: webhook.NewMemoryStore(), Key: hookKey, Logger: log})
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: %w", err)
	}
	hookService, err := webhookHandler(hooks, devComponentCaller())
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: %w", err)
	}
	// dev signs checkpoints with a key of its own, generated into its directory.
	devPrivate, keyFile, pubFile, keyCreated, err := devKey(dir)
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: checkpoint key: %w", err)
	}
	cpr, err := openCheckpointer(store, filepath.Join(dir, "tlog"), devPrivate, devCheckpointInterval, log)
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: checkpoints: %w", err)
	}
	defer cpr.close()
	views := memory.New(cfg.HistoryCap)
	runner, err := projections.NewRunner(projections.RunnerConfig{Store: store, Projectors: views.Projectors(), Logger: log, Observe: tel.ProjectionObserver()})
	if err == nil {
		err = tel.ObserveProjections(runner.Status, 0)
	}
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: projections: %w", err)
	}
	signer, keyNote, err := devTokenSigner(e, cfg.TokenKeyFile, dir)
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: %w", err)
	}
	limit := cfg.RateLimit
	if limit == (gateway.Limit{}) {
		limit = gateway.DefaultLimit // callers that build a devConfig themselves (tests)
	}
	limiter, err := gateway.NewMemoryLimiter(limit)
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: %w", err)
	}
	// The public port is the gateway; the components sit behind it on loopback mTLS
	// (devgateway.go). Cleartext on loopback: only a page this machine serves may call
	// (CORSOrigins), and only under a loopback name (DNS rebinding).
	stack, err := newDevStack(services.Config{
		Commands:    proc,
		Reader:      views.Reader(),
		Store:       store,
		Idempotency: services.NewMemoryIdempotencyStore(0, nil),
		Checkpoints: cpr.services(),
		Webhooks:    hookService,
		Logger:      log,
		// Behind the gateway on mTLS: only the gateway reaches the components, so its
		// trace context is ours.
		Interceptors: rpcIcs,
	}, signer, gateway.Config{CORSOrigins: cfg.CORSOrigins, LoopbackHostsOnly: true, Reflection: cfg.Reflection, Interceptors: edgeIcs, Refusals: edgeRefusals, Limiter: limiter}, log)
	if err != nil {
		ln.Close()
		return fmt.Errorf("dev: %w", err)
	}

	url := "http://" + ln.Addr().String()
	fmt.Fprintf(e.stdout, "SecurePay dev is listening on %s\n", url)
	fmt.Fprintf(e.stdout, "  protocols: Connect, gRPC and gRPC-web on one port (cleartext HTTP/2 and HTTP/1.1)\n")
	fmt.Fprintf(e.stdout, "  gateway:   every call needs a token (Authorization: Bearer); components behind it on loopback mTLS\n")
	fmt.Fprintf(e.stdout, "  tokens:    signed by the development key %s\n", keyNote)
	fmt.Fprintf(e.stdout, "  ledger:    embedded store in %s%s\n", dir, map[bool]string{true: " (deleted on exit)", false: ""}[cfg.Dir == ""])
	fmt.Fprintf(e.stdout, "  views:     in memory, rebuilt from the log at every start\n")
	fmt.Fprintf(e.stdout, "  snapshots: authenticated with the key in %s (generated on first use)\n", snapKeyFile)
	fmt.Fprintf(e.stdout, "  webhooks:  endpoints in memory (WebhookService), secrets sealed with the key in %s\n", hookKeyFile)
	if cfg.Relay != nil {
		fmt.Fprintf(e.stdout, "  relay:     the log to Kafka at %s (%s, %s)\n", strings.Join(cfg.Relay.Brokers, ","), cfg.Relay.Topics.Payments, cfg.Relay.Topics.Notifications)
	}
	if cfg.Dispatcher != nil {
		also := ""
		if cfg.webhookFile != "" {
			also = " and those of " + cfg.webhookFile
		}
		fmt.Fprintf(e.stdout, "  delivery:  %s to the registered endpoints%s (dead letters: %s)\n", cfg.Dispatcher.Topic, also, cfg.Dispatcher.DeadLetterTopic)
	}
	fmt.Fprintf(e.stdout, "  metrics:   http://%s/metrics (Prometheus)\n", metricsLn.Addr())
	if cfg.Telemetry.TraceFile != "" {
		fmt.Fprintf(e.stdout, "  traces:    one JSON line per span in %s\n", cfg.Telemetry.TraceFile)
	}
	fmt.Fprintln(e.stdout)
	fmt.Fprintf(e.stdout, "Make a first transfer (in another terminal):\n\n")
	fmt.Fprintf(e.stdout, "  export SECUREPAY_SERVER=%s\n", url)
	fmt.Fprintf(e.stdout, "  export SECUREPAY_TOKEN=$(securepay dev token%s --role operator,customer --account world,alice)\n", devTokenKeyFlag(e, signer))
	fmt.Fprintf(e.stdout, "  securepay account open world --asset USD --kind external && \\\n")
	fmt.Fprintf(e.stdout, "  securepay account open alice --asset USD && \\\n")
	fmt.Fprintf(e.stdout, "  securepay transfer --from world --to alice --amount 100.00 --asset USD && \\\n")
	fmt.Fprintf(e.stdout, "  securepay balance alice\n\n")
	printDevCheckpoints(e.stdout, dir, keyFile, pubFile, keyCreated) // audit_tlog.go
	fmt.Fprintf(e.stdout, "Stop with Ctrl-C: in-flight requests finish first.\n")

	g, gctx := errgroup.WithContext(ctx)
	viewsCtx, stopViews := context.WithCancel(context.Background())
	defer stopViews()
	// The background work ends before the processor and the store close (deferred).
	var bg sync.WaitGroup
	bg.Go(func() { _ = runner.Run(viewsCtx) })
	// Authorisations past their deadline are released by Expire commands in the log.
	expirer := &ledger.Expirer{Store: store, Processor: proc, Logger: log}
	bg.Go(func() { _ = expirer.Run(viewsCtx) })
	if cfg.Relay != nil {
		rm, err := tel.RelayMetrics()
		if err == nil {
			err = startDevRelay(viewsCtx, &bg, store, dir, *cfg.Relay, log, rm, tel.RelayTracer())
		}
		if err != nil {
			stopViews()
			bg.Wait()
			ln.Close()
			return fmt.Errorf("dev: relay: %w", err)
		}
	}
	if cfg.Dispatcher != nil {
		// Endpoints registered through WebhookService, and those of the file.
		dir := dispatch.Directories{hooks, cfg.WebhookEndpoints}
		if err := startDevDispatcher(viewsCtx, &bg, *cfg.Dispatcher, dir, tel, log); err != nil {
			stopViews()
			bg.Wait()
			ln.Close()
			return fmt.Errorf("dev: dispatcher: %w", err)
		}
	}
	cpr.run(viewsCtx, &bg)
	g.Go(func() error { return stack.serve(gctx, ln) })
	g.Go(func() error { return serveMetrics(gctx, metricsLn, tel) })
	err = g.Wait()
	stopViews()
	bg.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("dev: %w", err)
	}
	fmt.Fprintln(e.stdout, "SecurePay dev stopped.")
	return nil
}

// goRedisLogger sends go-redis's own lines to the debug log.
type goRedisLogger struct{ log *slog.Logger }

func (g goRedisLogger) Printf(ctx context.Context, format string, args ...any) {
	g.log.DebugContext(ctx, strings.TrimSpace(fmt.Sprintf(format, args...)), "component", "go-redis")
}

// quietPebble sends the embedded store's chatter to the debug log.
type quietPebble struct{ log *slog.Logger }

func (q quietPebble) Infof(format string, args ...any) {
	q.log.Debug(strings.TrimSpace(fmt.Sprintf(format, args...)), "component", "pebble")
}

func (q quietPebble) Errorf(format string, args ...any) {
	q.log.Error(strings.TrimSpace(fmt.Sprintf(format, args...)), "component", "pebble")
}

func (q quietPebble) Fatalf(format string, args ...any) {
	q.log.Error(strings.TrimSpace(fmt.Sprintf(format, args...)), "component", "pebble")
	os.Exit(1) // pebble's contract: Fatalf does not return
}

// serveConfig is `securepay serve`, from flags and environment.
type serveConfig struct {
	// Component is what runs: a services.Component, or "all" of them in one process.
	Component   string
	Listen      string
	PostgresDSN string
	// PostgresDSNFile names a file holding the DSN instead (secretSetting).
	PostgresDSNFile string
	EventSchema     string
	ViewSchema      string
	// RedisAddr is host:port or a redis:// or rediss:// URL (redisOptions).
	RedisAddr string
	// RedisAddrFile names a file holding RedisAddr instead, for a URL with a password.
	RedisAddrFile string
	RedisDB       int
	// RedisCAFile verifies a rediss:// server against these roots, not the system's.
	RedisCAFile string
	TLSCert     string
	TLSKey      string
	CORSOrigins []string
	Reflection  bool
	// SpiffeSocket is the SPIFFE Workload API a component gets its SVID from (mTLS);
	// TrustDomain the one its callers must belong to.
	SpiffeSocket string
	TrustDomain  string
	// HealthListen is a component's probe port (cleartext, health only).
	HealthListen string
	// PprofListen is the loopback address of Go's runtime profiles (pprof.go); "" serves
	// none.
	PprofListen string
	// newSource gets the component's SVID source; the Workload API at SpiffeSocket unless
	// a test sets it.
	newSource   func(ctx context.Context) (mtls.Source, func(), error)
	IdemTTL     time.Duration
	Shutdown    time.Duration
	MaxStreams  int
	Limits      domain.Limits // ceilings on amounts and credit limits (limitFlags in main.go)
	MaxReqBytes int
	ReqTimeout  time.Duration
	// RedisTimeout bounds each Redis call of a read (the balance cache) before it falls
	// back to PostgreSQL.
	RedisTimeout time.Duration
	// GC is the Go runtime's soft memory limit and GOGC (gcsettings.go).
	GC gcSettings
	// ProjectionWindow is projections.RunnerConfig.Window: how long a projector gathers
	// events into one view transaction.
	ProjectionWindow time.Duration
	LogLevel         slog.Level
	// SnapshotKeyFile holds the key that authenticates snapshots (snapshotkey.go).
	SnapshotKeyFile string
	snapshotKey     []byte
	Checkpoints     checkpointFlags // the Merkle tree's checkpoint signer (audit_tlog.go)
	checkpointKey   string          // read from Checkpoints.keyFile by Validate; "" when off
	Telemetry       telemetrySettings
	tlsCerts        *certReloader  // the pair of --tls-cert/--tls-key, reloaded when the files change
	redisOpts       *redis.Options // from RedisAddr, RedisDB and RedisCAFile

	// WebhookKeyFile holds the key that seals webhook secrets (webhooks.go); without it
	// payments answers WebhookService with WEBHOOKS_DISABLED. WebhookSchema holds the
	// endpoints table.
	WebhookKeyFile string
	WebhookSchema  string
	webhookKey     *webhook.Key
}

// Validate names every problem at once, with the flag and variable that fix it, and
// loads the TLS files (so a wrong path fails at start, not at the first handshake).
func (c *serveConfig) Validate() error {
	var errs []error
	comps, err := parseServeComponent(c.Component)
	if err != nil {
		errs = append(errs, err)
	}
	dsn, err := secretSetting{what: "the PostgreSQL DSN", value: c.PostgresDSN, file: c.PostgresDSNFile,
		flag: "postgres-dsn", variable: "SECUREPAY_POSTGRES_DSN", fileFlag: "postgres-dsn-file", fileVar: "SECUREPAY_POSTGRES_DSN_FILE"}.resolve()
	switch {
	case err != nil:
		errs = append(errs, err)
	case dsn == "":
		errs = append(errs, errors.New("the PostgreSQL DSN is missing: set --postgres-dsn-file or SECUREPAY_POSTGRES_DSN_FILE to a file holding it (or --postgres-dsn or SECUREPAY_POSTGRES_DSN, which ps shows as a flag; e.g. postgres://securepay@db:5432/securepay?sslmode=verify-full)"))
	default:
		if _, err := pgxpool.ParseConfig(dsn); err != nil {
			errs = append(errs, fmt.Errorf("the PostgreSQL DSN does not parse: %v", redactDSNError(err)))
		}
		c.PostgresDSN, c.PostgresDSNFile = dsn, "" // serve opens PostgresDSN
	}
	addr, err := secretSetting{what: "the Redis address", value: c.RedisAddr, file: c.RedisAddrFile,
		flag: "redis-addr", variable: "SECUREPAY_REDIS_ADDR", fileFlag: "redis-addr-file", fileVar: "SECUREPAY_REDIS_ADDR_FILE"}.resolve()
	switch {
	case err != nil:
		errs = append(errs, err)
	case addr == "" && !needsRedis(comps):
		// audit reads the log only.
	case addr == "":
		errs = append(errs, errors.New("the Redis address is missing: set --redis-addr or SECUREPAY_REDIS_ADDR (host:port, or redis[s]://[user:password@]host:port[/db]), or --redis-addr-file or SECUREPAY_REDIS_ADDR_FILE to a file holding it"))
	default:
		if opts, err := redisOptions(addr, c.RedisDB, c.RedisCAFile); err != nil {
			errs = append(errs, err)
		} else {
			c.redisOpts = opts
		}
		// As for the DSN: the file is read once, and a second Validate sees one value.
		c.RedisAddr, c.RedisAddrFile = addr, ""
	}
	// A component alone with a Workload API serves only over mTLS (its SVID is its
	// certificate, and every caller is authenticated). Otherwise, a component alone or all
	// of them serve TLS with a certificate of their own, authenticate no caller, and so
	// stay on loopback (for tests and a one-machine deployment behind a proxy).
	mtlsMode := err == nil && len(comps) == 1 && (c.SpiffeSocket != "" || c.newSource != nil)
	if err := checkServeListen(c.Listen, mtlsMode); err != nil {
		errs = append(errs, err)
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil && mtlsMode {
		errs = append(errs, fmt.Errorf("--trust-domain %q: %v", c.TrustDomain, err))
	}
	switch {
	case mtlsMode && (c.TLSCert != "" || c.TLSKey != ""):
		errs = append(errs, fmt.Errorf("serve %s takes no --tls-cert or --tls-key: its certificate is its X.509-SVID, from --spiffe-socket", c.Component))
	case mtlsMode:
		td, tdErr := spiffeid.TrustDomainFromString(c.TrustDomain)
		id, err := componentID(td, comps[0])
		if c.newSource == nil && tdErr == nil && err == nil {
			c.newSource = workloadSource(c.SpiffeSocket, id)
		}
		if c.HealthListen == "" {
			c.HealthListen = "127.0.0.1:0"
		}
	case c.SpiffeSocket != "":
		errs = append(errs, errors.New("--spiffe-socket is for one component alone (serve payments|queries|audit|projector); serve all makes no internal call"))
	case (c.TLSCert == "" || c.TLSKey == "") && len(comps) == 1:
		errs = append(errs, fmt.Errorf("serve %s needs an identity: --spiffe-socket or SECUREPAY_SPIFFE_SOCKET (the SPIFFE Workload API, e.g. unix:///run/spire/agent/public/api.sock) for mTLS, or --tls-cert and --tls-key for TLS on loopback without authentication", c.Component))
	case c.TLSCert == "" || c.TLSKey == "":
		errs = append(errs, errors.New("TLS is required: set --tls-cert and --tls-key (SECUREPAY_TLS_CERT, SECUREPAY_TLS_KEY) to PEM files; for a local cleartext server use `securepay dev`"))
	default:
		// The logger is the server's, set when it starts; until then reloads are silent.
		certs, err := newCertReloader(c.TLSCert, c.TLSKey, slog.New(slog.DiscardHandler))
		if err != nil {
			errs = append(errs, err)
		} else {
			c.tlsCerts = certs
		}
	}
	if c.SnapshotKeyFile != "" {
		if key, err := loadSnapshotKey(c.SnapshotKeyFile); err != nil {
			errs = append(errs, err)
		} else {
			c.snapshotKey = key
		}
	}
	if c.WebhookKeyFile != "" {
		if key, err := loadWebhookKey(c.WebhookKeyFile); err != nil {
			errs = append(errs, err)
		} else {
			c.webhookKey = key
		}
	}
	if c.IdemTTL <= 0 {
		errs = append(errs, fmt.Errorf("--idempotency-ttl must be positive, got %s", c.IdemTTL))
	}
	if c.MaxStreams <= 0 || c.MaxReqBytes <= 0 || c.ReqTimeout <= 0 || c.Shutdown <= 0 || c.RedisTimeout <= 0 {
		errs = append(errs, errors.New("--max-streams, --max-request-bytes, --request-timeout, --shutdown-timeout and --redis-timeout must be positive"))
	}
	if err := checkPprofListen(c.PprofListen); err != nil {
		errs = append(errs, err)
	}
	if c.ProjectionWindow < 0 || c.ProjectionWindow > time.Second {
		errs = append(errs, fmt.Errorf("--projection-window must be 0..1s, got %s", c.ProjectionWindow))
	}
	if key, err := c.Checkpoints.key(); err != nil {
		errs = append(errs, err)
	} else {
		c.checkpointKey = key
	}
	if _, err := c.Telemetry.config("securepay"); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("serve: configuration is not usable:\n  - %w", joinLines(errs))
	}
	return nil
}

// redactDSNError keeps a password that a parse error may quote out of logs.
func redactDSNError(err error) string {
	s := err.Error()
	if i := strings.Index(s, "://"); i >= 0 {
		if j := strings.Index(s[i:], "@"); j >= 0 {
			return s[:i+3] + "***" + s[i+j:]
		}
	}
	return s
}

type lines []error

func (l lines) Error() string {
	parts := make([]string, len(l))
	for i, e := range l {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n  - ")
}

func (l lines) Unwrap() []error { return l }

func joinLines(errs []error) error { return lines(errs) }

// serveCmd is `securepay serve`'s flags.
type serveCmd struct {
	cfg                    serveConfig
	cors                   string
	memLimitMiB, gcPercent int
}

func serveCommand(e env) *Command {
	cmd, _ := newServeCommand(e)
	return cmd
}

// newServeCommand is serveCommand with its flags' destination, which tests reach into
// for the SVID source.
func newServeCommand(e env) (*Command, *serveCmd) {
	c := &serveCmd{}
	cmd := &Command{
		UsageLine: "securepay serve [COMPONENT] --postgres-dsn-file FILE [--redis-addr HOST:PORT|URL] [--tls-cert FILE --tls-key FILE | --spiffe-socket ADDRESS] [flags]",
		Short:     "run the production server, or one of its components (PostgreSQL, Redis, TLS)",
		Long: "Run the production server: the event store and views on PostgreSQL (run migrate\n" +
			"first), idempotency keys and the balance cache on Redis, TLS on one port. Every\n" +
			"setting is checked at start and every problem listed at once.\n\n" +
			"COMPONENT runs one part alone: payments (every write, GetAccount, the expirer),\n" +
			"queries (GetPayment, GetBalance, ListHistory, WatchAccount from the views), audit\n" +
			"(AuditService; needs no Redis) or projector (runs the views; health only). Without\n" +
			"it, or with all, every component runs in this one process. The outbox relay to\n" +
			"Kafka runs alone with its own flags: securepay serve relay -h; so do the webhook\n" +
			"dispatcher (securepay serve dispatcher -h) and the public\n" +
			"gateway (OIDC tokens, roles, rate limits, mTLS to the components): securepay serve gateway -h.\n\n" +
			"A component alone with --spiffe-socket serves only over mTLS: its X.509-SVID comes\n" +
			"from the SPIFFE Workload API, every caller must present one, and each procedure is\n" +
			"allowed to the callers its table names (payments and queries: the gateway; audit:\n" +
			"the gateway and audit tooling; health: every component). Until the Workload API\n" +
			"gives it an SVID it serves nothing and its probe port (--health-listen) says not\n" +
			"ready. With --tls-cert and --tls-key instead (a component alone, or all) it\n" +
			"authenticates no caller, so it listens on loopback only.\n\n" +
			"Give secrets (the DSN, a Redis URL with a password) as files readable only by the\n" +
			"server's user, or in the environment: a flag's value is visible to every user in ps.",
		Args: []Arg{{Name: "COMPONENT", Optional: true}},
		Run:  c.run,
		// relay has flags of its own (Kafka, no listener, no Redis): a subcommand.
		Commands: []*Command{relayCommand(e), dispatcherCommand(e), gatewayServeCommand(e)},
	}
	fs := &cmd.Flag
	ef := envFlags{fs, e}
	ef.String(&c.cfg.Listen, "listen", "SECUREPAY_LISTEN", "127.0.0.1:8443", "`address` to listen on (loopback unless authentication is configured)")
	fs.BoolVar(&c.cfg.Reflection, "reflection", false, "serve gRPC reflection (grpcurl, buf curl --list-methods): it lists every procedure to any caller")
	ef.String(&c.cfg.SpiffeSocket, "spiffe-socket", "SECUREPAY_SPIFFE_SOCKET", "", "SPIFFE Workload API `address` a component gets its X.509-SVID from (mTLS), e.g. unix:///run/spire/agent/public/api.sock")
	ef.String(&c.cfg.TrustDomain, "trust-domain", "SECUREPAY_TRUST_DOMAIN", mtls.DefaultTrustDomain, "SPIFFE trust `domain` of the components")
	ef.String(&c.cfg.HealthListen, "health-listen", "SECUREPAY_HEALTH_LISTEN", "", healthListenUsage)
	ef.String(&c.cfg.PprofListen, "pprof-listen", "SECUREPAY_PPROF_LISTEN", "", "loopback `address` serving Go's runtime profiles at /debug/pprof/ (CPU, heap, goroutines); none by default")
	ef.String(&c.cfg.PostgresDSN, "postgres-dsn", "SECUREPAY_POSTGRES_DSN", "", "PostgreSQL `DSN` of the event store and views (visible in ps: prefer --postgres-dsn-file)")
	ef.String(&c.cfg.PostgresDSNFile, "postgres-dsn-file", "SECUREPAY_POSTGRES_DSN_FILE", "", "`file` holding the PostgreSQL DSN, readable only by its owner")
	ef.String(&c.cfg.EventSchema, "event-schema", "SECUREPAY_EVENT_SCHEMA", postgres.DefaultSchema, "`schema` of the event store")
	ef.String(&c.cfg.ViewSchema, "view-schema", "SECUREPAY_VIEW_SCHEMA", pg.DefaultSchema, "`schema` of the views")
	ef.String(&c.cfg.RedisAddr, "redis-addr", "SECUREPAY_REDIS_ADDR", "", "Redis for idempotency keys and the balance cache: `host:port`, or redis://[user:password@]host:port[/db] (rediss:// for TLS); a URL with a password belongs in --redis-addr-file")
	ef.String(&c.cfg.RedisAddrFile, "redis-addr-file", "SECUREPAY_REDIS_ADDR_FILE", "", "`file` holding the Redis address or URL, readable only by its owner")
	fs.IntVar(&c.cfg.RedisDB, "redis-db", 0, "Redis logical database `number` (a URL may name it instead)")
	ef.String(&c.cfg.RedisCAFile, "redis-ca-file", "SECUREPAY_REDIS_CA_FILE", "", "PEM `file` of the CA that signed a rediss:// server's certificate (default: the system's roots)")
	ef.String(&c.cfg.TLSCert, "tls-cert", "SECUREPAY_TLS_CERT", "", "PEM certificate chain `file`")
	ef.String(&c.cfg.TLSKey, "tls-key", "SECUREPAY_TLS_KEY", "", "PEM private key `file`")
	ef.String(&c.cfg.SnapshotKeyFile, "snapshot-key-file", "SECUREPAY_SNAPSHOT_KEY_FILE", "", "`file` holding the key that authenticates snapshots (32+ random bytes, private; the same for every instance; default: a key of this process only, so snapshots do not survive a restart)")
	ef.String(&c.cfg.WebhookKeyFile, "webhook-key-file", "SECUREPAY_WEBHOOK_KEY_FILE", "", "`file` holding the key that seals webhook endpoints' signing secrets in PostgreSQL (32+ random bytes, private; the same for every payments instance and the dispatcher); without it WebhookService answers WEBHOOKS_DISABLED")
	ef.String(&c.cfg.WebhookSchema, "webhook-schema", "SECUREPAY_WEBHOOK_SCHEMA", webhook.DefaultSchema, "`schema` of the webhook endpoints table")
	ef.String(&c.cors, "cors-origins", "SECUREPAY_CORS_ORIGINS", "", "comma-separated browser `origins` allowed to call")
	fs.DurationVar(&c.cfg.IdemTTL, "idempotency-ttl", 24*time.Hour, "how long a response is kept for Idempotency-Key replays")
	fs.DurationVar(&c.cfg.Shutdown, "shutdown-timeout", 30*time.Second, "how long in-flight requests get at shutdown")
	fs.IntVar(&c.cfg.MaxStreams, "max-streams", 256, "concurrent server streams (watch, log)")
	limitFlags(fs, &c.cfg.Limits)
	fs.IntVar(&c.cfg.MaxReqBytes, "max-request-bytes", 1<<20, "largest request message, in bytes")
	fs.DurationVar(&c.cfg.ReqTimeout, "request-timeout", 30*time.Second, "deadline of one unary request")
	telemetryFlags(ef, &c.cfg.Telemetry, "SECUREPAY_", false)
	fs.DurationVar(&c.cfg.RedisTimeout, "redis-timeout", redisviews.DefaultReadTimeout, "bound of one balance-cache call to Redis before a read falls back to PostgreSQL")
	fs.IntVar(&c.memLimitMiB, "memory-limit-mb", 1024, "soft memory limit of the process in MiB: the collector works harder near it, never fails an allocation (0: none; GOMEMLIMIT wins)")
	fs.IntVar(&c.gcPercent, "gc-percent", 400, "heap growth between collections, in percent of the live heap (GOGC); only applied with a memory limit, which caps the heap it lets grow (GOGC wins)")
	fs.DurationVar(&c.cfg.ProjectionWindow, "projection-window", 20*time.Millisecond, "how long a projector gathers events into one view transaction (0: none); readers that wait for their own writes are answered as soon as the events are in hand, others may see the views up to about twice this behind")
	c.cfg.Checkpoints.register(fs, e)
	return cmd, c
}

func (c *serveCmd) run(ctx context.Context, e env, args []string) error {
	cfg := c.cfg
	cfg.Component = "all"
	if len(args) > 0 {
		cfg.Component = args[0]
	}
	cfg.CORSOrigins = splitList(c.cors)
	cfg.LogLevel = slog.LevelInfo
	if c.memLimitMiB < 0 || c.gcPercent < 1 || c.gcPercent > 10_000 {
		return usagef("serve: --memory-limit-mb must be >= 0 and --gc-percent in 1..10000")
	}
	cfg.GC = resolveGC(e.getenv, c.memLimitMiB, c.gcPercent)
	if err := cfg.Validate(); err != nil {
		return err
	}
	return serve(ctx, e, cfg)
}

// lateWaiter lets the views wake read-your-writes waits from the runner, which is built
// after them (the runner needs the views' projectors).
type lateWaiter struct{ r *projections.Runner }

func (w *lateWaiter) Wait(ctx context.Context, projector string, position uint64) error {
	return w.r.Wait(ctx, projector, position)
}

func serve(ctx context.Context, e env, cfg serveConfig) error {
	// At GOGC 100 collections took 13-20 % of serve's CPU per transfer under load
	// (docs/PERFORMANCE.md); its live heap is tens of MB, so a heap 5x that between
	// collections, capped by the soft limit, costs memory the limit still bounds.
	defer cfg.GC.apply()()
	// JSON lines with the trace and correlation ids, secrets redacted (services/telemetry).
	log := slog.New(telemetry.NewLogHandler(e.stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	tel, closeTelemetry, err := openTelemetry(ctx, cfg.Telemetry, "securepay-"+cfg.Component)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer closeTelemetry()
	// A caller's trace context is trusted only from the gateway's mTLS peer: over TLS
	// without SPIFFE anyone may call, and a client must not choose our trace ids.
	var trust func(context.Context) bool
	if cfg.newSource != nil {
		td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
		if err != nil {
			return fmt.Errorf("serve: --trust-domain: %w", err)
		}
		trust = edge.TrustGateway(mtls.WellKnownIDs(td).Gateway)
	}
	obs, rpcIcs, err := serverTelemetry(tel, trust)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	// go-redis logs through one process-wide logger (its own, printing plain lines to
	// stderr that break the JSON log, once per failed dial). SetLogger is that global: set
	// here, where the process's logging is wired; it is atomic, so a second serve in the
	// same process (tests) only redirects it. Outages are reported by the views and health,
	// once each way, so go-redis's lines are debug detail.
	redis.SetLogger(goRedisLogger{log})
	comps := cfg.components()
	has := func(c services.Component) bool { return slices.Contains(comps, c) }
	store, err := postgres.Open(ctx, postgres.Config{DSN: cfg.PostgresDSN, Schema: cfg.EventSchema, Tracer: tel.PGXTracer()})
	if errors.Is(err, postgres.ErrSchemaNotMigrated) {
		return fmt.Errorf("serve: %w: run `securepay migrate` first", err)
	}
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer store.Close()
	if err := store.CheckServingRole(ctx); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	scfg := services.Config{
		Components:      comps,
		Store:           store,
		IdempotencyTTL:  cfg.IdemTTL,
		CORSOrigins:     cfg.CORSOrigins,
		Reflection:      cfg.Reflection,
		MaxRequestBytes: cfg.MaxReqBytes,
		RequestTimeout:  cfg.ReqTimeout,
		ShutdownTimeout: cfg.Shutdown,
		MaxStreams:      cfg.MaxStreams,
		Logger:          log,
		Interceptors:    rpcIcs,
		Metrics:         tel.MetricsHandler(),
	}
	var rdb *redis.Client
	if needsRedis(comps) {
		rdb = redis.NewClient(cfg.redisOpts)
		defer rdb.Close()
		if err := tel.InstrumentRedis(rdb); err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = rdb.Ping(pingCtx).Err()
		cancel()
		if err != nil {
			// Addr is host:port: the password of a URL is not part of it. A wrong password
			// comes back as WRONGPASS, which does not quote it either.
			return fmt.Errorf("serve: Redis at %s does not answer: %w", cfg.redisOpts.Addr, err)
		}
		// Reads fall back to PostgreSQL without Redis, idempotent writes answer
		// IDEMPOTENCY_STORE_UNAVAILABLE, and the Redis projectors catch up when it is
		// back: degraded, not down.
		scfg.Dependencies = []services.Dependency{{
			Name:  "redis",
			Check: func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
		}}
	}
	// The background work of the components: projections, the Redis sweeper, the
	// authorisation expirer. It ends before the processor and the store close (deferred).
	var background []func(ctx context.Context)
	if has(services.ComponentQueries) || has(services.ComponentProjector) {
		// The views' reads wake on the runner's commits when it runs in this process;
		// queries alone polls the view (projections/pg: a read answers only from a
		// checkpoint at or past min_position either way).
		waiter := &lateWaiter{}
		var w projections.Waiter
		if has(services.ComponentProjector) {
			w = waiter
		}
		pgViews, err := pg.Open(ctx, pg.Config{Pool: store.Pool(), Schema: cfg.ViewSchema, Waiter: w})
		if err != nil {
			return fmt.Errorf("serve: open the views: %w (run `securepay migrate` first?)", err)
		}
		redisViews, err := redisviews.New(redisviews.Config{Client: rdb, Logger: log, ReadTimeout: cfg.RedisTimeout})
		if err != nil {
			return fmt.Errorf("serve: redis views: %w", err)
		}
		scfg.Reader = pgViews.Reader()
		if has(services.ComponentQueries) {
			scfg.Reader = redisViews.CachedReader(pgViews.Reader())
		}
		if has(services.ComponentProjector) {
			runner, err := projections.NewRunner(projections.RunnerConfig{
				Store:      store,
				Projectors: append(pgViews.Projectors(), redisViews.Projectors()...),
				Window:     cfg.ProjectionWindow,
				Logger:     log,
				Observe:    tel.ProjectionObserver(),
			})
			if err == nil {
				err = tel.ObserveProjections(runner.Status, 0)
			}
			if err != nil {
				return fmt.Errorf("serve: projections: %w", err)
			}
			waiter.r = runner
			background = append(background,
				func(ctx context.Context) { _ = runner.Run(ctx) },
				func(ctx context.Context) { _ = redisViews.RunSweeper(ctx, 30*time.Second) })
		}
	}
	if has(services.ComponentPayments) {
		// Other instances append to the same store: refusals made on cached state are
		// re-checked against it.
		if cfg.snapshotKey == nil {
			log.Warn("no --snapshot-key-file: snapshots are authenticated with a key of this process only, so after a restart, and across instances, every account is folded from its events once")
		}
		proc, err := ledger.New(store, ledger.Config{SharedStore: true, Snapshots: store, SnapshotKey: cfg.snapshotKey, Logger: log, Limits: cfg.Limits, Observer: obs})
		if err != nil {
			return fmt.Errorf("serve: start the ledger: %w", err)
		}
		defer proc.Close()
		scfg.Commands = proc
		scfg.Idempotency = services.NewRedisIdempotencyStore(rdb, "")
		// Every instance runs an expirer: Expire is idempotent, so several are safe together.
		expirer := &ledger.Expirer{Store: store, Processor: proc, Logger: log}
		background = append(background, func(ctx context.Context) { _ = expirer.Run(ctx) })
	}
	if has(services.ComponentAudit) && cfg.checkpointKey != "" {
		// The audit component answers proofs from the tree it keeps and signs.
		cpr, err := openCheckpointer(store, cfg.Checkpoints.dir, cfg.checkpointKey, cfg.Checkpoints.interval, log)
		if err != nil {
			return fmt.Errorf("serve: checkpoints: %w", err)
		}
		defer cpr.close()
		scfg.Checkpoints = cpr.services()
		background = append(background, cpr.runUntil)
	}
	var svid *lateSource
	if cfg.newSource != nil {
		td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
		if err != nil {
			return fmt.Errorf("serve: --trust-domain: %w", err)
		}
		policy, err := services.ComponentPolicy(td, comps)
		if err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		svid = &lateSource{}
		scfg.TLS = mtls.ServerTLS(svid)
		scfg.Authorize = policy.Handler
		// The gateway asserts the principal a call acts for (idempotency keys, the events'
		// actor and correlation id); any other caller acts as its own SPIFFE ID.
		scfg.Caller, scfg.CorrelationID = edge.ForComponent(mtls.WellKnownIDs(td).Gateway)
		scfg.Dependencies = append(scfg.Dependencies, services.Dependency{Name: "svid", Check: svid.check, NeededBy: services.ServicesOf(comps)})
	} else {
		cfg.tlsCerts.log = log // before the first handshake: no reload can run yet
		scfg.TLS = &tls.Config{GetCertificate: cfg.tlsCerts.GetCertificate, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	}
	if has(services.ComponentPayments) {
		if cfg.webhookKey == nil {
			log.Warn("no --webhook-key-file: WebhookService answers WEBHOOKS_DISABLED (no endpoint can be registered)")
		} else {
			reg, err := openWebhookRegistry(ctx, store.Pool(), cfg.WebhookSchema, cfg.webhookKey, log)
			if err != nil {
				return fmt.Errorf("serve: %w", err)
			}
			if scfg.Webhooks, err = webhookHandler(reg, scfg.Caller); err != nil {
				return fmt.Errorf("serve: %w", err)
			}
		}
	}
	srv, err := services.NewServer(scfg)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	var healthAddr string
	if cfg.HealthListen != "" {
		hln, err := net.Listen("tcp", cfg.HealthListen)
		if err != nil {
			return fmt.Errorf("serve: listen for probes on %s: %w", cfg.HealthListen, err)
		}
		healthAddr = hln.Addr().String()
		defer serveHealth(ctx, hln, srv.HealthHandler())()
	}
	if cfg.PprofListen != "" {
		pln, err := net.Listen("tcp", cfg.PprofListen)
		if err != nil {
			return fmt.Errorf("serve: listen for pprof on %s: %w", cfg.PprofListen, err)
		}
		log.Info("securepay profiles", "pprof_addr", pln.Addr().String())
		defer servePprof(ctx, pln)()
	}
	if svid != nil {
		// Not ready, and no API port at all, until the Workload API gives an SVID:
		// never a plaintext fallback.
		log.Info("securepay waiting for its SVID", "component", cfg.Component, "health_addr", healthAddr, "spiffe_socket", cfg.SpiffeSocket)
		src, closeSrc, err := awaitSource(ctx, log, cfg.newSource)
		if err != nil {
			return fmt.Errorf("serve: no SVID before the end: %w", err)
		}
		defer closeSrc()
		svid.set(src)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("serve: listen on %s: %w", cfg.Listen, err)
	}
	attrs := []any{"addr", ln.Addr().String(), "component", cfg.Component, "mtls", svid != nil, "health_addr", healthAddr, "event_schema", cfg.EventSchema}
	if scfg.Reader != nil {
		attrs = append(attrs, "view_schema", cfg.ViewSchema)
	}
	if cfg.redisOpts != nil {
		attrs = append(attrs, "redis", cfg.redisOpts.Addr, "redis_db", cfg.redisOpts.DB, "redis_tls", cfg.redisOpts.TLSConfig != nil)
	}
	log.Info("securepay serving", attrs...)

	bgCtx, stopBackground := context.WithCancel(context.Background())
	defer stopBackground()
	var bg sync.WaitGroup
	for _, run := range background {
		bg.Go(func() { run(bgCtx) })
	}
	err = srv.Serve(ctx, ln)
	stopBackground()
	bg.Wait()
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	log.Info("securepay stopped")
	return nil
}

// migrateCmd is `securepay migrate`'s flags.
type migrateCmd struct {
	dsn, dsnFile, eventSchema, viewSchema, appRole, serveRole string
	relayRole, relaySchema                                    string
	webhookSchema, dispatcherRole                             string
}

func migrateCommand(e env) *Command {
	c := &migrateCmd{}
	cmd := &Command{
		UsageLine: "securepay migrate --postgres-dsn-file FILE [flags]",
		Short:     "create or upgrade the PostgreSQL schemas of the event store and the views",
		Run:       c.run,
	}
	ef := envFlags{&cmd.Flag, e}
	ef.String(&c.dsn, "postgres-dsn", "SECUREPAY_POSTGRES_DSN", "", "PostgreSQL `DSN` (a role that may CREATE in the database; visible in ps: prefer --postgres-dsn-file)")
	ef.String(&c.dsnFile, "postgres-dsn-file", "SECUREPAY_POSTGRES_DSN_FILE", "", "`file` holding the PostgreSQL DSN, readable only by its owner")
	ef.String(&c.eventSchema, "event-schema", "SECUREPAY_EVENT_SCHEMA", postgres.DefaultSchema, "`schema` of the event store")
	ef.String(&c.viewSchema, "view-schema", "SECUREPAY_VIEW_SCHEMA", pg.DefaultSchema, "`schema` of the views")
	ef.String(&c.appRole, "app-role", "SECUREPAY_APP_ROLE", postgres.DefaultAppRole, "`role` the event store writes as")
	ef.String(&c.serveRole, "serve-role", "SECUREPAY_SERVE_ROLE", "", "login `role` of securepay serve (created beforehand, owning nothing): granted the app role and the views, nothing more")
	ef.String(&c.relayRole, "relay-role", "SECUREPAY_RELAY_ROLE", "", "login `role` of securepay serve relay (created beforehand, owning nothing, not the serve role): granted SELECT on the log and its checkpoint table, nothing more")
	ef.String(&c.relaySchema, "relay-checkpoint-schema", "SECUREPAY_RELAY_SCHEMA", relay.DefaultCheckpointSchema, "`schema` of the relay's checkpoint table, created for --relay-role")
	ef.String(&c.webhookSchema, "webhook-schema", "SECUREPAY_WEBHOOK_SCHEMA", webhook.DefaultSchema, "`schema` of the webhook endpoints table")
	ef.String(&c.dispatcherRole, "dispatcher-role", "SECUREPAY_DISPATCHER_ROLE", "", "login `role` of the webhook dispatcher (created beforehand, owning nothing): granted SELECT on the webhook endpoints, nothing more")
	return cmd
}

func (c *migrateCmd) run(ctx context.Context, e env, _ []string) error {
	dsn, err := secretSetting{what: "the PostgreSQL DSN", value: c.dsn, file: c.dsnFile,
		flag: "postgres-dsn", variable: "SECUREPAY_POSTGRES_DSN", fileFlag: "postgres-dsn-file", fileVar: "SECUREPAY_POSTGRES_DSN_FILE"}.resolve()
	if err != nil {
		return usagef("migrate: %v", err)
	}
	if dsn == "" {
		return usagef("migrate: the PostgreSQL DSN is missing: set --postgres-dsn-file or SECUREPAY_POSTGRES_DSN_FILE (or --postgres-dsn or SECUREPAY_POSTGRES_DSN)")
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return fmt.Errorf("migrate: connect: %v", redactDSNError(err))
	}
	defer pool.Close()
	if err := postgres.CheckConnection(ctx, pool); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	applied, err := postgres.Migrate(ctx, pool, c.eventSchema, c.appRole)
	if err != nil {
		return fmt.Errorf("migrate: event store schema %s: %w", c.eventSchema, err)
	}
	fmt.Fprintf(e.stdout, "event store schema %s: %d migration(s) applied %v\n", c.eventSchema, len(applied), applied)
	if _, err := pg.Open(ctx, pg.Config{Pool: pool, Schema: c.viewSchema, Migrate: true}); err != nil {
		return fmt.Errorf("migrate: views schema %s: %w", c.viewSchema, err)
	}
	fmt.Fprintf(e.stdout, "views schema %s: up to date\n", c.viewSchema)
	if err := webhook.MigratePostgres(ctx, pool, c.webhookSchema); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	fmt.Fprintf(e.stdout, "webhook schema %s: up to date\n", c.webhookSchema)
	if c.dispatcherRole != "" {
		if err := webhook.GrantRead(ctx, pool, c.webhookSchema, c.dispatcherRole); err != nil {
			return fmt.Errorf("migrate: grant the dispatcher's reads to %s: %w", c.dispatcherRole, err)
		}
		fmt.Fprintf(e.stdout, "dispatcher role %s: SELECT on %s.endpoints\n", c.dispatcherRole, c.webhookSchema)
	}
	if c.relayRole != "" {
		if c.relayRole == c.serveRole {
			return usagef("migrate: --relay-role %s is also --serve-role: the relay reads the log and must not be able to append to it; give it a role of its own", c.relayRole)
		}
		if err := postgres.GrantRelay(ctx, pool, c.eventSchema, c.relayRole); err != nil {
			return fmt.Errorf("migrate: grant the relay's reads to %s: %w", c.relayRole, err)
		}
		if err := relay.GrantCheckpoints(ctx, pool, c.relaySchema, c.relayRole); err != nil {
			return fmt.Errorf("migrate: grant the relay's checkpoints to %s: %w", c.relayRole, err)
		}
		fmt.Fprintf(e.stdout, "relay role %s: SELECT on the log; SELECT, INSERT, UPDATE on %s.checkpoints\n", c.relayRole, c.relaySchema)
	}
	if c.serveRole == "" {
		fmt.Fprintf(e.stdout, "no --serve-role: no login role was granted %s; serve refuses a login role that owns the tables\n", c.appRole)
		return nil
	}
	if err := postgres.GrantServing(ctx, pool, postgres.ServingGrants{Schema: c.eventSchema, AppRole: c.appRole,
		LoginRole: c.serveRole, ViewSchemas: []string{c.viewSchema}, RegistrySchemas: []string{c.webhookSchema}}); err != nil {
		return fmt.Errorf("migrate: grant serving to %s: %w", c.serveRole, err)
	}
	fmt.Fprintf(e.stdout, "serve role %s: member of %s (INSERT and SELECT on the log; SELECT, INSERT, UPDATE on the views; SELECT, INSERT, UPDATE, DELETE on the webhook endpoints)\n", c.serveRole, c.appRole)
	return nil
}
