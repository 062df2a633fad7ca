package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/securepay/securepay/services/dispatch"
	"github.com/securepay/securepay/services/relay"
	"github.com/securepay/securepay/services/telemetry"
	"github.com/securepay/securepay/services/webhook"
)

// dispatcherConfig is `securepay serve dispatcher`, from flags and environment.
type dispatcherConfig struct {
	Brokers          []string
	KafkaVersion     string
	Group            string
	Topic            string
	DeadLetterTopic  string
	CreateTopics     bool
	Partitions       int
	Replication      int
	MinISR           int
	MaxAttempts      int
	BackoffBase      time.Duration
	BackoffMax       time.Duration
	BreakerThreshold int
	BreakerCooldown  time.Duration
	CircuitOpenGrace time.Duration
	Window           int
	AttemptTimeout   time.Duration
	// EndpointsFile is a static endpoint list (dispatch.ParseEndpoints), private to the
	// dispatcher's user: it holds the signing secrets.
	EndpointsFile string
	MetricsListen string // "" for none
	Telemetry     telemetrySettings
	LogLevel      slog.Level

	version sarama.KafkaVersion // parsed by Validate
}

// Validate names every problem at once, with the flag that fixes it, before anything is
// contacted.
func (c *dispatcherConfig) Validate() error {
	var errs []error
	if err := checkBrokers(c.Brokers); err != nil {
		errs = append(errs, err)
	}
	version, err := sarama.ParseKafkaVersion(c.KafkaVersion)
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("--kafka-version %q: %v", c.KafkaVersion, err))
	case !version.IsAtLeast(relay.MinKafkaVersion):
		errs = append(errs, fmt.Errorf("--kafka-version %s is older than %s, the oldest Kafka 4 brokers accept", version, relay.MinKafkaVersion))
	default:
		c.version = version
	}
	// Zero would mean the library's default: a flag set to 0 is a mistake to name, not
	// to override silently.
	if c.MaxAttempts < 1 || c.BreakerThreshold < 1 || c.Window < 1 || c.BackoffBase <= 0 || c.BreakerCooldown <= 0 || c.CircuitOpenGrace <= 0 || c.AttemptTimeout <= 0 {
		errs = append(errs, errors.New("--max-attempts, --breaker-threshold and --window must be at least 1; --backoff-base, --breaker-cooldown, --circuit-open-grace and --attempt-timeout positive"))
	}
	if c.Group == "" {
		errs = append(errs, errors.New("--group must not be empty"))
	}
	if c.Partitions < 1 || c.Partitions > 10_000 || c.Replication < -1 || c.Replication == 0 || c.Replication > 32767 || c.MinISR < 0 {
		errs = append(errs, errors.New("--topic-partitions must be 1..10000, --topic-replication-factor -1 (the broker's default) or positive, --topic-min-insync-replicas >= 0"))
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			errs = append(errs, fmt.Errorf("--metrics-listen %q is not host:port: %v", c.MetricsListen, err))
		}
	}
	if _, err := c.Telemetry.config("securepay-dispatcher"); err != nil {
		errs = append(errs, err)
	}
	// The delivery settings, as the library checks them (it names the problem; the flags
	// are --max-attempts, --backoff-base/--backoff-max, --breaker-*, --window,
	// --attempt-timeout).
	if err := c.dispatch(dispatch.StaticDirectory{}, nil).Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return usageError{msg: fmt.Sprintf("serve dispatcher: configuration is not usable:\n  - %v", joinLines(errs))}
	}
	return nil
}

// dispatch is the library's configuration of c, with dir as the endpoints.
func (c *dispatcherConfig) dispatch(dir dispatch.Directory, log *slog.Logger) dispatch.Config {
	cfg := dispatch.Config{
		Brokers: c.Brokers, Group: c.Group, Topic: c.Topic, DeadLetterTopic: c.DeadLetterTopic, Directory: dir,
		MaxAttempts: c.MaxAttempts, Backoff: dispatch.Backoff{Base: c.BackoffBase, Max: c.BackoffMax},
		BreakerThreshold: c.BreakerThreshold, BreakerCooldown: c.BreakerCooldown, CircuitOpenGrace: c.CircuitOpenGrace, Window: c.Window, Timeout: c.AttemptTimeout,
		Logger: log,
	}
	if c.version != (sarama.KafkaVersion{}) {
		cfg.Consumer = dispatch.ConsumerConfig("securepay-dispatcher-"+c.Group, c.version)
		cfg.Producer = relay.ProducerConfig("securepay-dispatcher-dlq-"+c.Group, c.version)
	}
	if c.CreateTopics {
		cfg.Topics = &relay.TopicSettings{Partitions: int32(c.Partitions), ReplicationFactor: int16(c.Replication), MinInsyncReplicas: c.MinISR}
	}
	return cfg
}

// dispatcherCmd is `securepay serve dispatcher`'s flags.
type dispatcherCmd struct {
	cfg     dispatcherConfig
	brokers string
	// The webhook registry (webhooks.go): endpoints registered through WebhookService, read
	// from PostgreSQL and opened with the key that sealed them.
	dsn, dsnFile, webhookKeyFile, webhookSchema string
}

func dispatcherCommand(e env) *Command {
	c := &dispatcherCmd{}
	cmd := &Command{
		UsageLine: "securepay serve dispatcher --kafka-brokers HOST:PORT[,...] (--postgres-dsn-file FILE --webhook-key-file FILE | --endpoints-file FILE) [flags]",
		Short:     "deliver account notifications from Kafka as signed webhooks",
		Long: "Consume securepay.notifications.v1 (what serve relay publishes) in a consumer group and\n" +
			"POST every account event to the endpoints subscribed to its account, signed with the\n" +
			"endpoint's secret (SecurePay-Signature; docs/WEBHOOKS.md says how to verify it).\n" +
			"Failed deliveries are retried with exponential backoff and jitter, each endpoint has\n" +
			"a circuit breaker, and after --max-attempts (or a 4xx answer) the notification goes\n" +
			"to the dead-letter topic. Offsets are committed only for handled notifications, so\n" +
			"a crash redelivers (receivers dedupe on SecurePay-Event-Id) and loses nothing.\n" +
			"Endpoints come from the webhook registry (WebhookService; --postgres-dsn-file and\n" +
			"--webhook-key-file, the key payments sealed their secrets with), and/or from\n" +
			"--endpoints-file (a JSON list, private to this user). `securepay migrate\n" +
			"--dispatcher-role ROLE` grants a login role the registry's reads and nothing more.",
		Run: c.run,
	}
	fs := &cmd.Flag
	ef := envFlags{fs, e}
	ef.String(&c.brokers, "kafka-brokers", "SECUREPAY_KAFKA_BROKERS", "", "comma-separated Kafka bootstrap `addresses` (host:port)")
	ef.String(&c.cfg.KafkaVersion, "kafka-version", "SECUREPAY_KAFKA_VERSION", relay.DefaultKafkaVersion.String(), "Kafka protocol `version` to speak (at least 2.1.0; Kafka 4 brokers refuse older)")
	ef.String(&c.cfg.Group, "group", "SECUREPAY_DISPATCHER_GROUP", "securepay-dispatcher", "Kafka consumer `group`: dispatchers of one group share the partitions")
	ef.String(&c.cfg.Topic, "notifications-topic", "SECUREPAY_NOTIFICATIONS_TOPIC", relay.TopicNotifications, "`topic` of the account events")
	ef.String(&c.cfg.DeadLetterTopic, "dead-letter-topic", "SECUREPAY_DEAD_LETTER_TOPIC", dispatch.TopicDeadLetters, "`topic` of the notifications given up on")
	fs.BoolVar(&c.cfg.CreateTopics, "create-topics", true, "create the two topics when missing (existing ones are left as they are)")
	fs.IntVar(&c.cfg.Partitions, "topic-partitions", 12, "partitions of a created topic")
	fs.IntVar(&c.cfg.Replication, "topic-replication-factor", -1, "replication factor of a created topic (-1: the broker's default)")
	fs.IntVar(&c.cfg.MinISR, "topic-min-insync-replicas", 0, "min.insync.replicas of a created topic (0: the broker's default; 2 of 3 in production)")
	fs.IntVar(&c.cfg.MaxAttempts, "max-attempts", 8, "attempts per notification and endpoint before it is dead-lettered")
	fs.DurationVar(&c.cfg.BackoffBase, "backoff-base", 500*time.Millisecond, "longest wait before the first retry; it doubles per retry (the wait is random below it)")
	fs.DurationVar(&c.cfg.BackoffMax, "backoff-max", 30*time.Second, "longest wait before any retry")
	fs.IntVar(&c.cfg.BreakerThreshold, "breaker-threshold", 5, "consecutive failures that open an endpoint's circuit")
	fs.DurationVar(&c.cfg.BreakerCooldown, "breaker-cooldown", 30*time.Second, "how long an open circuit refuses attempts before one probe")
	fs.DurationVar(&c.cfg.CircuitOpenGrace, "circuit-open-grace", time.Minute, "once an endpoint's circuit has been open this long (or while it is open and the window is full), its notifications are dead-lettered at once (circuit-open)")
	fs.IntVar(&c.cfg.Window, "window", 256, "notifications of one partition in delivery at once (what a slow endpoint can hold up)")
	fs.DurationVar(&c.cfg.AttemptTimeout, "attempt-timeout", 10*time.Second, "bound of one HTTP attempt, response included")
	ef.String(&c.dsn, "postgres-dsn", "SECUREPAY_POSTGRES_DSN", "", "PostgreSQL `DSN` of the webhook registry (visible in ps: prefer --postgres-dsn-file)")
	ef.String(&c.dsnFile, "postgres-dsn-file", "SECUREPAY_POSTGRES_DSN_FILE", "", "`file` holding the PostgreSQL DSN of the webhook registry, readable only by its owner")
	ef.String(&c.webhookKeyFile, "webhook-key-file", "SECUREPAY_WEBHOOK_KEY_FILE", "", "`file` holding the key the endpoints' secrets were sealed with (the payments component's)")
	ef.String(&c.webhookSchema, "webhook-schema", "SECUREPAY_WEBHOOK_SCHEMA", webhook.DefaultSchema, "`schema` of the webhook endpoints table")
	ef.String(&c.cfg.EndpointsFile, "endpoints-file", "SECUREPAY_DISPATCHER_ENDPOINTS_FILE", "", "JSON `file` of the endpoints and their secrets (docs/WEBHOOKS.md), readable only by its owner")
	ef.String(&c.cfg.MetricsListen, "metrics-listen", "SECUREPAY_DISPATCHER_METRICS_LISTEN", "", "serve Prometheus metrics on GET /metrics at this `address` (e.g. 127.0.0.1:9465; none by default)")
	telemetryFlags(ef, &c.cfg.Telemetry, "SECUREPAY_", false)
	return cmd
}

func (c *dispatcherCmd) run(ctx context.Context, e env, _ []string) error {
	cfg := c.cfg
	cfg.Brokers = splitList(c.brokers)
	cfg.LogLevel = slog.LevelInfo
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.EndpointsFile == "" && c.webhookKeyFile == "" {
		return usagef("serve dispatcher: no endpoints: set --postgres-dsn-file and --webhook-key-file (the webhook registry), or --endpoints-file (or SECUREPAY_DISPATCHER_ENDPOINTS_FILE) to the JSON list of docs/WEBHOOKS.md")
	}
	var dirs dispatch.Directories
	if c.webhookKeyFile != "" {
		reg, closeReg, err := c.openRegistry(ctx, e)
		if err != nil {
			return err
		}
		defer closeReg()
		dirs = append(dirs, reg)
	}
	if cfg.EndpointsFile != "" {
		data, err := readSecretFile(cfg.EndpointsFile)
		if err != nil {
			return usagef("serve dispatcher: --endpoints-file: %v", err)
		}
		static, err := dispatch.ParseEndpoints([]byte(data))
		if err != nil {
			return usagef("serve dispatcher: --endpoints-file %s: %v", cfg.EndpointsFile, err)
		}
		dirs = append(dirs, static)
	}
	return serveDispatcher(ctx, e, cfg, dirs)
}

// openRegistry opens the webhook registry the dispatcher reads: the key must open every
// stored secret (a wrong --webhook-key-file stops it before it consumes anything).
func (c *dispatcherCmd) openRegistry(ctx context.Context, e env) (*webhook.Registry, func(), error) {
	key, err := loadWebhookKey(c.webhookKeyFile)
	if err != nil {
		return nil, nil, usagef("serve dispatcher: %v", err)
	}
	dsn, err := secretSetting{what: "the PostgreSQL DSN", value: c.dsn, file: c.dsnFile,
		flag: "postgres-dsn", variable: "SECUREPAY_POSTGRES_DSN", fileFlag: "postgres-dsn-file", fileVar: "SECUREPAY_POSTGRES_DSN_FILE"}.resolve()
	switch {
	case err != nil:
		return nil, nil, usagef("serve dispatcher: %v", err)
	case dsn == "":
		return nil, nil, usagef("serve dispatcher: --webhook-key-file needs the registry's database: set --postgres-dsn-file or SECUREPAY_POSTGRES_DSN_FILE (or --postgres-dsn)")
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, nil, fmt.Errorf("serve dispatcher: connect: %v", redactDSNError(err))
	}
	log := slog.New(telemetry.NewLogHandler(e.stderr, &slog.HandlerOptions{Level: c.cfg.LogLevel}))
	reg, err := openWebhookRegistry(ctx, pool, c.webhookSchema, key, log)
	if err != nil {
		pool.Close()
		return nil, nil, fmt.Errorf("serve dispatcher: %w", err)
	}
	return reg, pool.Close, nil
}

// serveDispatcher runs the dispatcher of cfg with dir as its endpoints until ctx ends.
func serveDispatcher(ctx context.Context, e env, cfg dispatcherConfig, dir dispatch.Directory) error {
	log := slog.New(telemetry.NewLogHandler(e.stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	tel, closeTelemetry, err := openTelemetry(ctx, cfg.Telemetry, "securepay-dispatcher")
	if err != nil {
		return fmt.Errorf("serve dispatcher: %w", err)
	}
	defer closeTelemetry()
	dc := cfg.dispatch(dir, log)
	if dc.Metrics, err = tel.WebhookMetrics(dispatch.Reasons()...); err != nil {
		return fmt.Errorf("serve dispatcher: %w", err)
	}
	dc.Tracer = tel.Tracer("github.com/securepay/securepay/services/dispatch")
	d, err := dispatch.New(dc)
	if err != nil {
		return fmt.Errorf("serve dispatcher: %w", err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var bg sync.WaitGroup
	defer bg.Wait()
	if cfg.MetricsListen != "" {
		ln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("serve dispatcher: metrics: listen on %s: %w", cfg.MetricsListen, err)
		}
		log.Info("dispatcher metrics", "addr", ln.Addr().String())
		bg.Go(func() {
			if err := serveMetrics(runCtx, ln, tel); err != nil {
				log.Error("dispatcher metrics", "error", err)
			}
		})
	}
	log.Info("securepay dispatcher starting", "brokers", cfg.Brokers, "group", cfg.Group, "topic", cfg.Topic, "dead_letter_topic", cfg.DeadLetterTopic)
	if err := d.Run(runCtx); err != nil {
		return fmt.Errorf("serve dispatcher: %w", err)
	}
	log.Info("securepay dispatcher stopped")
	return nil
}

// devDispatcherConfig is the dispatcher of `securepay dev --kafka ADDR`: serve
// dispatcher's defaults on the dev relay's topics.
func devDispatcherConfig(relayCfg relayConfig) dispatcherConfig {
	return dispatcherConfig{
		Brokers: relayCfg.Brokers, KafkaVersion: relay.DefaultKafkaVersion.String(), version: relay.DefaultKafkaVersion,
		Group: "securepay-dev-dispatcher", Topic: relayCfg.Topics.Notifications, DeadLetterTopic: dispatch.TopicDeadLetters,
		CreateTopics: true, Partitions: relayCfg.Partitions, Replication: -1,
		MaxAttempts: 8, BackoffBase: 500 * time.Millisecond, BackoffMax: 30 * time.Second,
		BreakerThreshold: 5, BreakerCooldown: 30 * time.Second, CircuitOpenGrace: time.Minute, Window: 256, AttemptTimeout: 10 * time.Second,
	}
}

// startDevDispatcher runs the dispatcher of `securepay dev --kafka` in bg until ctx ends,
// delivering to dir's endpoints, reporting to dev's telemetry.
func startDevDispatcher(ctx context.Context, bg *sync.WaitGroup, cfg dispatcherConfig, dir dispatch.Directory, tel *telemetry.Telemetry, log *slog.Logger) error {
	dc := cfg.dispatch(dir, log)
	m, err := tel.WebhookMetrics(dispatch.Reasons()...)
	if err != nil {
		return err
	}
	dc.Metrics, dc.Tracer = m, tel.Tracer("github.com/securepay/securepay/services/dispatch")
	d, err := dispatch.New(dc)
	if err != nil {
		return err
	}
	bg.Go(func() {
		if err := d.Run(ctx); err != nil {
			log.Error("dev: dispatcher stopped", "error", err)
		}
	})
	return nil
}
