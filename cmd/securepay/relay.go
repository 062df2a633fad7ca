package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/postgres"
	"github.com/securepay/securepay/services/relay"
	"github.com/securepay/securepay/services/telemetry"
)

// relayConfig is `securepay serve relay`, from flags and environment.
type relayConfig struct {
	PostgresDSN     string
	PostgresDSNFile string
	EventSchema     string
	// Brokers are Kafka bootstrap addresses, host:port.
	Brokers          []string
	KafkaVersion     string // protocol version, e.g. 3.6.0
	Acks             string // only "all" is accepted: the flag exists so a wrong setting is refused, not ignored
	Name             string // the relay's checkpoint name
	CheckpointSchema string
	Window           int
	Topics           relay.TopicNames
	CreateTopics     bool
	Partitions       int
	Replication      int
	MinISR           int
	MetricsListen    string // "" for none
	LogLevel         slog.Level
	Telemetry        telemetrySettings // serve relay's traces (dev's relay uses dev's)

	producer *sarama.Config // built by Validate
}

// Validate names every problem at once, with the flag that fixes it; it builds the
// producer's settings and refuses unsafe ones before anything is contacted.
func (c *relayConfig) Validate() error {
	var errs []error
	dsn, err := secretSetting{what: "the PostgreSQL DSN", value: c.PostgresDSN, file: c.PostgresDSNFile,
		flag: "postgres-dsn", variable: "SECUREPAY_POSTGRES_DSN", fileFlag: "postgres-dsn-file", fileVar: "SECUREPAY_POSTGRES_DSN_FILE"}.resolve()
	switch {
	case err != nil:
		errs = append(errs, err)
	case dsn == "":
		errs = append(errs, errors.New("the PostgreSQL DSN of the event store is missing: set --postgres-dsn-file or SECUREPAY_POSTGRES_DSN_FILE (or --postgres-dsn or SECUREPAY_POSTGRES_DSN)"))
	default:
		if _, err := pgxpool.ParseConfig(dsn); err != nil {
			errs = append(errs, fmt.Errorf("the PostgreSQL DSN does not parse: %v", redactDSNError(err)))
		}
		c.PostgresDSN, c.PostgresDSNFile = dsn, ""
	}
	if err := checkBrokers(c.Brokers); err != nil {
		errs = append(errs, err)
	}
	version, err := sarama.ParseKafkaVersion(c.KafkaVersion)
	if err != nil {
		errs = append(errs, fmt.Errorf("--kafka-version %q: %v", c.KafkaVersion, err))
	}
	producer := relay.ProducerConfig("securepay-relay-"+c.Name, version)
	switch c.Acks {
	case "all", "-1":
	case "0", "1", "leader", "none":
		// Refused rather than ignored: someone who asked for it believes it is in force.
		producer.Producer.RequiredAcks = sarama.WaitForLocal
	default:
		errs = append(errs, fmt.Errorf("--kafka-acks %q: say all", c.Acks))
	}
	if err := relay.CheckProducer(producer); err != nil {
		errs = append(errs, fmt.Errorf("%w (the relay publishes with acks=all, idempotence and one request in flight, at protocol %s or later)", err, relay.MinKafkaVersion))
	} else {
		c.producer = producer
	}
	if c.Window < 1 || c.Window > 1_000_000 {
		errs = append(errs, fmt.Errorf("--window must be 1..1000000, got %d", c.Window))
	}
	if c.Partitions < 1 || c.Partitions > 10_000 || c.Replication < -1 || c.Replication == 0 || c.Replication > 32767 || c.MinISR < 0 {
		errs = append(errs, errors.New("--topic-partitions must be 1..10000, --topic-replication-factor -1 (the broker's default) or positive, --topic-min-insync-replicas >= 0"))
	}
	if c.Name == "" {
		errs = append(errs, errors.New("--name must not be empty"))
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			errs = append(errs, fmt.Errorf("--metrics-listen %q is not host:port: %v", c.MetricsListen, err))
		}
	}
	if len(errs) > 0 {
		return usageError{msg: fmt.Sprintf("serve relay: configuration is not usable:\n  - %v", joinLines(errs))}
	}
	return nil
}

func checkBrokers(brokers []string) error {
	if len(brokers) == 0 {
		return errors.New("no Kafka broker: set --kafka-brokers or SECUREPAY_KAFKA_BROKERS to host:port[,host:port...]")
	}
	for _, b := range brokers {
		if _, port, err := net.SplitHostPort(b); err != nil || port == "" {
			return fmt.Errorf("the Kafka broker address %q is not host:port", b)
		}
	}
	return nil
}

// relayCmd is `securepay serve relay`'s flags.
type relayCmd struct {
	cfg     relayConfig
	brokers string
}

func relayCommand(e env) *Command {
	c := &relayCmd{}
	cmd := &Command{
		UsageLine: "securepay serve relay --postgres-dsn-file FILE --kafka-brokers HOST:PORT[,...] [flags]",
		Short:     "publish the event log to Kafka (the outbox relay)",
		Long: "Publish every event of the log to Kafka, from a checkpoint kept in PostgreSQL:\n" +
			"payment events to securepay.payments.v1 (key: payment id), account events to\n" +
			"securepay.notifications.v1 (key: account id); docs/KAFKA.md has the schema.\n" +
			"The producer is idempotent and waits for every in-sync replica (acks=all); the\n" +
			"checkpoint moves only over acknowledged events, so a crash re-publishes at most\n" +
			"--window events, and consumers dedupe by the securepay-event-id header. Run one\n" +
			"relay per --name.",
		Run: c.run,
	}
	fs := &cmd.Flag
	ef := envFlags{fs, e}
	ef.String(&c.cfg.PostgresDSN, "postgres-dsn", "SECUREPAY_POSTGRES_DSN", "", "PostgreSQL `DSN` of the event store (visible in ps: prefer --postgres-dsn-file)")
	ef.String(&c.cfg.PostgresDSNFile, "postgres-dsn-file", "SECUREPAY_POSTGRES_DSN_FILE", "", "`file` holding the PostgreSQL DSN, readable only by its owner")
	ef.String(&c.cfg.EventSchema, "event-schema", "SECUREPAY_EVENT_SCHEMA", postgres.DefaultSchema, "`schema` of the event store")
	ef.String(&c.brokers, "kafka-brokers", "SECUREPAY_KAFKA_BROKERS", "", "comma-separated Kafka bootstrap `addresses` (host:port)")
	ef.String(&c.cfg.KafkaVersion, "kafka-version", "SECUREPAY_KAFKA_VERSION", relay.DefaultKafkaVersion.String(), "Kafka protocol `version` to speak (at least 2.1.0; Kafka 4 brokers refuse older)")
	ef.String(&c.cfg.Acks, "kafka-acks", "SECUREPAY_KAFKA_ACKS", "all", "`acknowledgements` to wait for: only all is accepted, anything less can lose acknowledged events")
	ef.String(&c.cfg.Name, "name", "SECUREPAY_RELAY_NAME", "securepay-relay", "the relay's `name`: its checkpoint's key (one running relay per name)")
	ef.String(&c.cfg.CheckpointSchema, "checkpoint-schema", "SECUREPAY_RELAY_SCHEMA", relay.DefaultCheckpointSchema, "PostgreSQL `schema` of the relay's checkpoint table (created if missing)")
	ef.String(&c.cfg.Topics.Payments, "payments-topic", "SECUREPAY_PAYMENTS_TOPIC", relay.TopicPayments, "`topic` of the payment events")
	ef.String(&c.cfg.Topics.Notifications, "notifications-topic", "SECUREPAY_NOTIFICATIONS_TOPIC", relay.TopicNotifications, "`topic` of the account events")
	fs.IntVar(&c.cfg.Window, "window", 10_000, "events in flight at most: the memory held while Kafka is down, and what a crash re-publishes")
	fs.BoolVar(&c.cfg.CreateTopics, "create-topics", true, "create the topics when missing (existing ones are left as they are)")
	fs.IntVar(&c.cfg.Partitions, "topic-partitions", 12, "partitions of a created topic")
	fs.IntVar(&c.cfg.Replication, "topic-replication-factor", -1, "replication factor of a created topic (-1: the broker's default)")
	ef.String(&c.cfg.MetricsListen, "metrics-listen", "SECUREPAY_RELAY_METRICS_LISTEN", "", "serve Prometheus metrics on GET /metrics at this `address` (e.g. 127.0.0.1:9464; none by default)")
	fs.IntVar(&c.cfg.MinISR, "topic-min-insync-replicas", 0, "min.insync.replicas of a created topic (0: the broker's default; 2 of 3 in production)")
	telemetryFlags(ef, &c.cfg.Telemetry, "SECUREPAY_", false)
	return cmd
}

func (c *relayCmd) run(ctx context.Context, e env, _ []string) error {
	cfg := c.cfg
	cfg.Brokers = splitList(c.brokers)
	cfg.LogLevel = slog.LevelInfo
	if err := cfg.Validate(); err != nil {
		return err
	}
	return serveRelay(ctx, e, cfg)
}

func serveRelay(ctx context.Context, e env, cfg relayConfig) error {
	// JSON lines with the trace and correlation ids, secrets redacted (services/telemetry).
	log := slog.New(telemetry.NewLogHandler(e.stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	tel, closeTelemetry, err := openTelemetry(ctx, cfg.Telemetry, "securepay-relay")
	if err != nil {
		return fmt.Errorf("serve relay: %w", err)
	}
	defer closeTelemetry()
	store, err := postgres.Open(ctx, postgres.Config{DSN: cfg.PostgresDSN, Schema: cfg.EventSchema})
	if errors.Is(err, postgres.ErrSchemaNotMigrated) {
		return fmt.Errorf("serve relay: %w: run `securepay migrate` first", err)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" { // insufficient_privilege
		return fmt.Errorf("serve relay: %w: the login role cannot read the event log; as the owner, run `securepay migrate --relay-role ROLE` for it", err)
	}
	if err != nil {
		return fmt.Errorf("serve relay: %w", err)
	}
	defer store.Close()
	// Like serve, the relay refuses a login role that could change the log; it reads only,
	// so it also refuses one that could append (docs/KAFKA.md, "Running it").
	if err := store.CheckRelayRole(ctx); err != nil {
		return fmt.Errorf("serve relay: %w", err)
	}
	cps, err := relay.OpenPGCheckpoints(ctx, store.Pool(), cfg.CheckpointSchema, cfg.Name)
	if err != nil {
		return fmt.Errorf("serve relay: %w", err)
	}
	var metrics relay.Metrics
	if cfg.MetricsListen != "" {
		m, stop, err := serveRelayMetrics(ctx, tel, cfg.MetricsListen, log)
		if err != nil {
			return fmt.Errorf("serve relay: %w", err)
		}
		defer stop()
		metrics = m
	}
	r, err := newRelay(store, cps, cfg, log, metrics, tel.RelayTracer())
	if err != nil {
		return fmt.Errorf("serve relay: %w", err)
	}
	log.Info("securepay relay starting", "brokers", cfg.Brokers, "name", cfg.Name, "payments_topic", cfg.Topics.Payments, "notifications_topic", cfg.Topics.Notifications)
	err = r.Run(ctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("serve relay: %w", err)
	}
	log.Info("securepay relay stopped", "checkpoint", r.Status().Checkpoint)
	return nil
}

// serveRelayMetrics serves the relay's Prometheus metrics on addr until stop is called.
func serveRelayMetrics(ctx context.Context, tel *telemetry.Telemetry, addr string, log *slog.Logger) (relay.Metrics, func(), error) {
	m, err := tel.RelayMetrics()
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", tel.MetricsHandler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 15 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	log.Info("relay metrics", "addr", ln.Addr().String())
	return m, func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}, nil
}

func newRelay(store eventstore.Store, cps relay.Checkpoints, cfg relayConfig, log *slog.Logger, metrics relay.Metrics, tracer relay.Tracer) (*relay.Relay, error) {
	rc := relay.Config{
		Store: store, Checkpoints: cps, Brokers: cfg.Brokers, Producer: cfg.producer,
		TopicNames: cfg.Topics, Window: cfg.Window, Logger: log, Metrics: metrics, Tracer: tracer,
	}
	if cfg.CreateTopics {
		rc.Topics = &relay.TopicSettings{Partitions: int32(cfg.Partitions), ReplicationFactor: int16(cfg.Replication), MinInsyncReplicas: cfg.MinISR}
	}
	return relay.New(rc)
}

// devRelayConfig is the relay of `securepay dev --kafka ADDR`: the defaults of serve
// relay, one partition per topic's worth of a laptop, the checkpoint in the dev directory.
func devRelayConfig(brokers string) (relayConfig, error) {
	cfg := relayConfig{
		Brokers: splitList(brokers), KafkaVersion: relay.DefaultKafkaVersion.String(), Acks: "all", Name: "dev",
		Window: 10_000, CreateTopics: true, Partitions: 3, Replication: -1,
		Topics: relay.TopicNames{Payments: relay.TopicPayments, Notifications: relay.TopicNotifications},
	}
	if err := checkBrokers(cfg.Brokers); err != nil {
		return cfg, usagef("dev: --kafka: %s", strings.TrimPrefix(err.Error(), "no Kafka broker: "))
	}
	cfg.producer = relay.ProducerConfig("securepay-dev-relay", relay.DefaultKafkaVersion)
	return cfg, nil
}

// startDevRelay runs the relay of `securepay dev --kafka` in bg until ctx ends, with its
// checkpoint in the dev directory (kept with --dir, so a restart continues where it was),
// reporting to metrics (dev's /metrics).
func startDevRelay(ctx context.Context, bg *sync.WaitGroup, store eventstore.Store, dir string, cfg relayConfig, log *slog.Logger, metrics relay.Metrics, tracer relay.Tracer) error {
	r, err := newRelay(store, relay.FileCheckpoints{Path: filepath.Join(dir, "relay.checkpoint")}, cfg, log, metrics, tracer)
	if err != nil {
		return err
	}
	bg.Go(func() { _ = r.Run(ctx) })
	return nil
}
