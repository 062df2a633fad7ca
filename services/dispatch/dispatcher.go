package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/securepay/securepay/services/relay"
)

// Config configures a Dispatcher.
type Config struct {
	// Brokers are the Kafka bootstrap addresses, host:port.
	Brokers []string
	// Group is the consumer group; every dispatcher of one deployment shares it, and the
	// partitions are spread over them. Default "securepay-dispatcher".
	Group string
	// Topic is read; default securepay.notifications.v1.
	Topic string
	// DeadLetterTopic receives what could not be delivered; default
	// securepay.notifications.dlq.v1.
	DeadLetterTopic string
	// Topics, when set, creates both topics at start if missing, with these settings.
	Topics *relay.TopicSettings
	// Directory says who is subscribed to an account. Required.
	Directory Directory

	// Consumer: nil means ConsumerConfig("securepay-dispatcher", relay.DefaultKafkaVersion).
	Consumer *sarama.Config
	// Producer of dead letters, checked by relay.CheckProducer (idempotent, acks=all);
	// nil means relay.ProducerConfig("securepay-dispatcher-dlq", relay.DefaultKafkaVersion).
	Producer *sarama.Config

	// MaxAttempts bounds the attempts per notification and endpoint, refused ones (open
	// circuit) included; after them it is dead-lettered. Default 8, at most 100.
	MaxAttempts int
	// Backoff between attempts; default Base 500ms, Max 30s: with 8 attempts a
	// notification is given up on after about a minute at most.
	Backoff Backoff
	// BreakerThreshold consecutive failures open an endpoint's circuit for
	// BreakerCooldown; defaults 5 and 30s.
	BreakerThreshold int
	BreakerCooldown  time.Duration
	// CircuitOpenGrace: once an endpoint's circuit has been open (through failed probes)
	// this long, its notifications are dead-lettered at once (ReasonCircuitOpen) instead
	// of each waiting out its attempts; they are also whenever its circuit is open and the
	// partition's Window is full, so a dead endpoint never holds the others for long.
	// Default 1 minute (about what MaxAttempts take with the default backoff).
	CircuitOpenGrace time.Duration
	// Window bounds the messages of one partition being delivered at once: deliveries to
	// different endpoints run concurrently, and a slow endpoint holds at most this many
	// messages (and the partition's committed offset) until it catches up or they are
	// dead-lettered. Default 256, at most 10,000.
	Window int
	// DirectoryAttempts bounds the lookups of one notification's endpoints before it is
	// dead-lettered (ReasonDirectory); default 10.
	DirectoryAttempts int
	// Timeout bounds one HTTP attempt, response included; default 10s.
	Timeout time.Duration
	// Client posts the webhooks; nil means a client of its own that follows no redirect.
	// Its Timeout, when zero, is set to Timeout.
	Client *http.Client

	Metrics Metrics      // nil: none; *telemetry.WebhookMetrics is one
	Tracer  trace.Tracer // nil: none
	Logger  *slog.Logger // nil: discard
	Now     func() time.Time
}

// Metrics is what the dispatcher reports for dashboards and alerts.
type Metrics interface {
	// Attempt: one HTTP attempt's outcome (telemetry.WebhookDelivered, WebhookFailed,
	// WebhookRejected) and how long it took.
	Attempt(outcome string, took time.Duration)
	// DeadLettered: one notification the broker acknowledged on the dead-letter topic, by
	// its reason (a Reason constant, as in the securepay-dlq-reason header).
	DeadLettered(reason string)
	// CircuitsOpen: how many endpoints' breakers are not closed.
	CircuitsOpen(n int)
}

const (
	defaultGroup             = "securepay-dispatcher"
	defaultMaxAttempts       = 8
	maxMaxAttempts           = 100
	defaultWindow            = 256
	maxWindow                = 10_000
	defaultBreakerThreshold  = 5
	defaultBreakerCooldown   = 30 * time.Second
	defaultCircuitOpenGrace  = time.Minute
	defaultDirectoryAttempts = 10
	defaultTimeout           = 10 * time.Second
	sessionBackoffMax        = 30 * time.Second
)

var topicName = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

func (c Config) withDefaults() Config {
	if c.Group == "" {
		c.Group = defaultGroup
	}
	if c.Topic == "" {
		c.Topic = relay.TopicNotifications
	}
	if c.DeadLetterTopic == "" {
		c.DeadLetterTopic = TopicDeadLetters
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = defaultMaxAttempts
	}
	if c.Backoff == (Backoff{}) {
		c.Backoff = Backoff{Base: 500 * time.Millisecond, Max: 30 * time.Second}
	}
	if c.BreakerThreshold == 0 {
		c.BreakerThreshold = defaultBreakerThreshold
	}
	if c.BreakerCooldown == 0 {
		c.BreakerCooldown = defaultBreakerCooldown
	}
	if c.CircuitOpenGrace == 0 {
		c.CircuitOpenGrace = defaultCircuitOpenGrace
	}
	if c.Window == 0 {
		c.Window = defaultWindow
	}
	if c.DirectoryAttempts == 0 {
		c.DirectoryAttempts = defaultDirectoryAttempts
	}
	if c.Timeout == 0 {
		c.Timeout = defaultTimeout
	}
	return c
}

// Validate reports every problem with c at once.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("no Kafka broker address"))
	}
	for _, b := range c.Brokers {
		if b == "" {
			errs = append(errs, errors.New("an empty Kafka broker address"))
		}
	}
	if c.Directory == nil {
		errs = append(errs, errors.New("a Directory of endpoints is required"))
	}
	for _, n := range []string{c.Topic, c.DeadLetterTopic} {
		if !topicName.MatchString(n) {
			errs = append(errs, fmt.Errorf("topic name %q must be 1..249 of a-z A-Z 0-9 . _ -", n))
		}
	}
	if c.Topic == c.DeadLetterTopic {
		errs = append(errs, fmt.Errorf("the notifications and dead-letter topics are both %q", c.Topic))
	}
	if c.MaxAttempts < 1 || c.MaxAttempts > maxMaxAttempts {
		errs = append(errs, fmt.Errorf("max attempts %d out of 1..%d", c.MaxAttempts, maxMaxAttempts))
	}
	if c.Backoff.Base <= 0 || c.Backoff.Max < c.Backoff.Base {
		errs = append(errs, fmt.Errorf("backoff base %s must be positive and at most its max %s", c.Backoff.Base, c.Backoff.Max))
	}
	if c.BreakerThreshold < 1 || c.BreakerCooldown < 0 {
		errs = append(errs, fmt.Errorf("breaker threshold %d must be at least 1 and cooldown %s not negative", c.BreakerThreshold, c.BreakerCooldown))
	}
	if c.CircuitOpenGrace < 0 {
		errs = append(errs, fmt.Errorf("circuit-open grace %s must not be negative", c.CircuitOpenGrace))
	}
	if c.Window < 1 || c.Window > maxWindow {
		errs = append(errs, fmt.Errorf("window %d out of 1..%d", c.Window, maxWindow))
	}
	if c.DirectoryAttempts < 1 || c.DirectoryAttempts > maxMaxAttempts {
		errs = append(errs, fmt.Errorf("directory attempts %d out of 1..%d", c.DirectoryAttempts, maxMaxAttempts))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout %s must not be negative", c.Timeout))
	}
	if c.Producer != nil {
		if err := relay.CheckProducer(c.Producer); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Consumer != nil {
		if err := c.Consumer.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("consumer configuration: %w", err))
		}
		if c.Consumer.Consumer.Offsets.AutoCommit.Enable && c.Consumer.Consumer.Offsets.AutoCommit.Interval <= 0 {
			errs = append(errs, errors.New("consumer auto-commit interval must be positive"))
		}
	}
	if c.Topics != nil {
		if c.Topics.Partitions < 1 {
			errs = append(errs, fmt.Errorf("topic partitions %d must be at least 1", c.Topics.Partitions))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("dispatch: configuration is not usable: %w", errors.Join(errs...))
	}
	return nil
}

// ConsumerConfig returns the consumer-group settings the dispatcher runs with: a new
// group starts at the oldest message (a notification is never skipped), offsets of
// handled messages only are committed every second and at a clean stop.
func ConsumerConfig(clientID string, version sarama.KafkaVersion) *sarama.Config {
	c := sarama.NewConfig()
	c.ClientID = clientID
	c.Version = version
	c.Consumer.Return.Errors = true
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Offsets.AutoCommit.Enable = true
	c.Consumer.Offsets.AutoCommit.Interval = time.Second
	c.Metadata.AllowAutoTopicCreation = false
	c.Net.DialTimeout = 5 * time.Second
	c.Net.ReadTimeout = 10 * time.Second
	c.Net.WriteTimeout = 10 * time.Second
	return c
}

// Dispatcher delivers the notifications topic to the endpoints of a Directory. Run it
// once; run several (same Group) to share the partitions.
type Dispatcher struct {
	cfg    Config
	log    *slog.Logger
	tracer trace.Tracer
	known  map[string]bool
	client *http.Client

	mu       sync.Mutex
	breakers map[string]*Breaker // by endpoint id, shared by every partition
	open     atomic.Int64        // breakers not closed
}

// New checks cfg and returns a Dispatcher ready to Run.
func New(cfg Config) (*Dispatcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if cfg.Consumer == nil {
		cfg.Consumer = ConsumerConfig("securepay-dispatcher", relay.DefaultKafkaVersion)
	}
	if cfg.Producer == nil {
		cfg.Producer = relay.ProducerConfig("securepay-dispatcher-dlq", relay.DefaultKafkaVersion)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	d := &Dispatcher{cfg: cfg, log: cfg.Logger, tracer: cfg.Tracer, known: map[string]bool{}, client: cfg.Client, breakers: map[string]*Breaker{}}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.tracer == nil {
		d.tracer = noop.NewTracerProvider().Tracer("")
	}
	for _, t := range NotificationTypes() {
		d.known[t] = true
	}
	if d.client == nil {
		transport := http.DefaultTransport.(*http.Transport).Clone()
		transport.MaxIdleConnsPerHost = 4
		transport.ResponseHeaderTimeout = cfg.Timeout
		d.client = &http.Client{
			Transport: transport,
			// A redirect is answered as it is (ReasonRejected): following it would send
			// the signed notification somewhere the endpoint's owner did not register.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if d.client.Timeout == 0 {
		c := *d.client
		c.Timeout = cfg.Timeout
		d.client = &c
	}
	return d, nil
}

// Run consumes until ctx ends (nil then) or Kafka cannot be reached at start. A session
// that ends on an error (the dead-letter topic unreachable) is started again after a
// backoff; what it had not handled is delivered again.
func (d *Dispatcher) Run(ctx context.Context) error {
	client, err := sarama.NewClient(d.cfg.Brokers, d.cfg.Consumer)
	if err != nil {
		return fmt.Errorf("dispatch: connect to Kafka %v: %w", d.cfg.Brokers, err)
	}
	defer client.Close()
	if d.cfg.Topics != nil {
		if err := relay.EnsureTopics(client, []string{d.cfg.Topic, d.cfg.DeadLetterTopic}, *d.cfg.Topics); err != nil {
			return fmt.Errorf("dispatch: %w", err)
		}
	}
	producer, err := sarama.NewSyncProducer(d.cfg.Brokers, d.cfg.Producer)
	if err != nil {
		return fmt.Errorf("dispatch: dead-letter producer: %w", err)
	}
	defer producer.Close()
	group, err := sarama.NewConsumerGroupFromClient(d.cfg.Group, client)
	if err != nil {
		return fmt.Errorf("dispatch: consumer group %s: %w", d.cfg.Group, err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer group.Close() // closes Errors, which ends the goroutine below; commits marked offsets
	wg.Go(func() {
		for err := range group.Errors() {
			d.log.Warn("dispatcher: consumer group", "error", err)
		}
	})
	h := &groupHandler{d: d, producer: producer}
	wait := time.Duration(0)
	for ctx.Err() == nil {
		err := group.Consume(ctx, []string{d.cfg.Topic}, h)
		if errors.Is(err, sarama.ErrClosedConsumerGroup) || ctx.Err() != nil {
			break
		}
		if ferr := h.takeFatal(); ferr != nil {
			err = ferr
		}
		if err == nil {
			wait = 0 // a rebalance: rejoin at once
			continue
		}
		wait = min(max(2*wait, time.Second), sessionBackoffMax)
		d.log.Error("dispatcher: session ended; rejoining", "error", err, "after", wait)
		if !sleep(ctx, wait) {
			break
		}
	}
	return nil
}

// breaker returns the endpoint's breaker, made at first use.
func (d *Dispatcher) breaker(endpoint string) *Breaker {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := d.breakers[endpoint]
	if b == nil {
		b = NewBreaker(d.cfg.BreakerThreshold, d.cfg.BreakerCooldown, d.breakerChanged)
		d.breakers[endpoint] = b
	}
	return b
}

func (d *Dispatcher) breakerChanged(from, to BreakerState) {
	var n int64
	switch {
	case from == Closed && to != Closed:
		n = d.open.Add(1)
	case from != Closed && to == Closed:
		n = d.open.Add(-1)
	default:
		return
	}
	if d.cfg.Metrics != nil {
		d.cfg.Metrics.CircuitsOpen(int(n))
	}
}

// groupHandler is the sarama.ConsumerGroupHandler of a Dispatcher.
type groupHandler struct {
	d        *Dispatcher
	producer sarama.SyncProducer

	mu    sync.Mutex
	fatal error // why a claim stopped the session, for Run's backoff
}

func (h *groupHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (h *groupHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h *groupHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	err := newPartition(h.d, h.producer, sess, claim).run(claim.Messages())
	if err != nil {
		h.mu.Lock()
		h.fatal = err
		h.mu.Unlock()
	}
	return err
}

func (h *groupHandler) takeFatal() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	err := h.fatal
	h.fatal = nil
	return err
}

func eventID(m *sarama.ConsumerMessage) string { return header(m, relay.HeaderEventID) }
