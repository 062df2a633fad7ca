// Package relay publishes the event log to Kafka: the log is the outbox. A Relay tails the
// global log from its checkpoint and sends every event, in log order, to the topic of its
// stream (securepay.payments.v1 or securepay.notifications.v1, keyed by payment or account
// id), with an idempotent producer that waits for every in-sync replica.
//
// Guarantees (docs/KAFKA.md):
//
//   - Nothing is lost: the checkpoint only moves over events the broker acknowledged, and
//     only over a contiguous run of them.
//   - Nothing is invented: every message is an event of the log, with its id.
//   - Redelivery is bounded: after a crash, or a restart of the producer after an error,
//     the relay re-publishes from its checkpoint, so at most Window events (those sent but
//     not yet covered by a saved checkpoint) are published again. Consumers dedupe by the
//     event id header.
//   - Per-key order: all events of one account or payment go to one partition, in log
//     order; the idempotent producer with one request in flight keeps that order across
//     its retries, and a session's connections are fenced at its first failed publish
//     (fence.go), so a message the producer gave up on is not overtaken by the next one.
//   - Bounded memory: at most Window events are in flight, whatever the broker does; while
//     it is down the relay waits and retries, and the ledger, which never waits for the
//     relay, keeps taking payments.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"sync"
	"time"

	"github.com/IBM/sarama"

	"github.com/securepay/securepay/eventstore"
)

// Config configures a Relay.
type Config struct {
	Store       eventstore.Store
	Checkpoints Checkpoints
	// Brokers are the bootstrap addresses, host:port.
	Brokers []string
	// Producer is checked by CheckProducer; nil means ProducerConfig("securepay-relay",
	// DefaultKafkaVersion).
	Producer *sarama.Config
	// TopicNames: the zero value is securepay.payments.v1 and securepay.notifications.v1.
	TopicNames TopicNames
	// Topics, when set, are created at start if missing, with these settings.
	Topics *TopicSettings
	// Window bounds the events sent and not yet covered by a saved checkpoint: the memory
	// the relay holds while the broker is slow or down, and what a crash re-publishes.
	// Default 10,000 (about 10 MB of messages); at most 1,000,000.
	Window int
	// MaxBatch bounds the events read from the log at once; default 1,000.
	MaxBatch int
	// RetryBackoff is the first wait after a failed session (broker unreachable, a message
	// that outlived the producer's retries, the checkpoint store down); it doubles up to
	// 5s and returns to this value once a session makes progress. Default 200ms.
	RetryBackoff time.Duration
	// DrainTimeout bounds how long a stopping relay waits for the acknowledgements of what
	// it already sent, so that a clean stop re-publishes nothing; default 10s.
	DrainTimeout time.Duration
	Logger       *slog.Logger
	// Observe, when set, is called for every acknowledged event, from the relay's
	// acknowledgement goroutine: it must return quickly (a histogram, a counter).
	Observe func(Published)
	// SaveInterval spaces the checkpoint saves: after a save, the next waits until this
	// much time passed or half the window is acknowledged and unsaved, whichever comes
	// first. Each save is a PostgreSQL commit (a WAL flush) competing with the ledger's own,
	// and saving after every acknowledgement costs one per few events at low rates. It
	// delays nothing a consumer sees (events are published before they are saved) and
	// changes no bound: a crash still re-publishes at most Window events. Default 100ms;
	// negative saves after every acknowledgement.
	SaveInterval time.Duration
	// Clock stamps acknowledgements for Observe; default time.Now.
	Clock func() time.Time
	// Metrics, when set, receives every acknowledgement and failed publish, and the
	// relay's progress every ProgressInterval (default 1s); *telemetry.RelayMetrics is one.
	Metrics          Metrics
	ProgressInterval time.Duration
	// Tracer, when set, traces each batch's publish and chooses the trace context its
	// messages carry (trace.go).
	Tracer Tracer
}

// Metrics is what the relay reports for dashboards and alerts ("relay stalled").
type Metrics interface {
	Acked(topic string, recordedAt time.Time)
	PublishFailed(topic string)
	// Progress: the saved checkpoint, the log's head, the age of the oldest event not yet
	// covered by the checkpoint (0 when caught up), the messages sent and not acknowledged.
	Progress(checkpoint, head uint64, oldestUnacked time.Duration, inFlight int)
}

// Published is one event the broker acknowledged.
type Published struct {
	Position   uint64
	RecordedAt time.Time // when the ledger committed it
	AckedAt    time.Time // when the broker's acknowledgement reached the relay
	Topic      string
	Partition  int32
	Offset     int64
}

const (
	defaultWindow       = 10_000
	maxWindow           = 1_000_000
	defaultMaxBatch     = 1_000
	defaultRetryBackoff = 200 * time.Millisecond
	maxRetryBackoff     = 5 * time.Second
	defaultDrainTimeout = 10 * time.Second
	defaultSaveInterval = 100 * time.Millisecond
	saveTimeout         = 10 * time.Second
)

// Validate reports every problem with c at once, the producer's settings included.
func (c Config) Validate() error {
	var errs []error
	if c.Store == nil {
		errs = append(errs, errors.New("a Store is required"))
	}
	if c.Checkpoints == nil {
		errs = append(errs, errors.New("a Checkpoints store is required"))
	}
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("no Kafka broker address"))
	}
	for _, b := range c.Brokers {
		if b == "" {
			errs = append(errs, errors.New("an empty Kafka broker address"))
		}
	}
	if c.Window < 0 || c.Window > maxWindow {
		errs = append(errs, fmt.Errorf("window %d out of 0..%d", c.Window, maxWindow))
	}
	if c.MaxBatch < 0 || c.MaxBatch > eventstore.MaxReadLimit {
		errs = append(errs, fmt.Errorf("max batch %d out of 0..%d", c.MaxBatch, eventstore.MaxReadLimit))
	}
	if c.RetryBackoff < 0 || c.DrainTimeout < 0 {
		errs = append(errs, errors.New("the retry backoff and drain timeout must not be negative"))
	}
	names := c.TopicNames.withDefaults()
	for _, n := range names.list() {
		if !topicName.MatchString(n) {
			errs = append(errs, fmt.Errorf("topic name %q must be 1..249 of a-z A-Z 0-9 . _ -", n))
		}
	}
	if names.Payments == names.Notifications {
		errs = append(errs, fmt.Errorf("the payments and notifications topics are both %q", names.Payments))
	}
	if c.Producer != nil {
		if err := CheckProducer(c.Producer); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Topics != nil {
		if err := c.Topics.validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("relay: configuration is not usable: %w", errors.Join(errs...))
	}
	return nil
}

var topicName = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

// State is where a relay is in its life.
type State string

const (
	StateStarting   State = "starting"
	StateRunning    State = "running"
	StateRetrying   State = "retrying" // a session failed; the next starts after a backoff
	StateStopped    State = "stopped"  // an error retrying cannot fix; see Status.Error
	StateNotRunning State = "not-running"
)

// Status describes a relay.
type Status struct {
	State      State
	Checkpoint uint64 // saved: every event up to it is in Kafka
	Acked      uint64 // acknowledged, not necessarily saved yet
	Error      string // the last error, "" after a session makes progress
}

// Relay publishes the log to Kafka. Run it once.
type Relay struct {
	cfg Config
	log *slog.Logger

	mu     sync.Mutex
	status Status
	sent   uint64 // the last position handed to the producer in the current session
	win    *window
	traced tracedBatches // with a Tracer: the batches sent and not yet acknowledged
}

// New checks cfg and returns a Relay ready to Run.
func New(cfg Config) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Producer == nil {
		cfg.Producer = ProducerConfig("securepay-relay", DefaultKafkaVersion)
	}
	cfg.TopicNames = cfg.TopicNames.withDefaults()
	if cfg.Window == 0 {
		cfg.Window = defaultWindow
	}
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = defaultMaxBatch
	}
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = defaultRetryBackoff
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = defaultDrainTimeout
	}
	if cfg.SaveInterval == 0 {
		cfg.SaveInterval = defaultSaveInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = time.Second
	}
	return &Relay{cfg: cfg, log: cfg.Logger.With("component", "relay"), status: Status{State: StateNotRunning}}, nil
}

// Status reports the relay's state and positions.
func (r *Relay) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status
}

func (r *Relay) setStatus(f func(*Status)) {
	r.mu.Lock()
	f(&r.status)
	r.mu.Unlock()
}

// permanentError is a failure that retrying cannot fix: an event the relay cannot publish,
// another relay on the same checkpoint, a broken invariant.
type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

func permanent(err error) error { return permanentError{err} }

// Run publishes until ctx ends (returning ctx's error, after a clean stop: what was sent is
// acknowledged and saved, within DrainTimeout) or a permanent error. Transient failures — the
// broker unreachable or refusing, the checkpoint store down — end the session, and a new
// one starts from the saved checkpoint after a backoff, for as long as ctx lasts: a relay
// that gave up would need a person to restart it, while the one waiting catches up by
// itself when the broker is back. The backoff bounds its rate.
func (r *Relay) Run(ctx context.Context) error {
	r.setStatus(func(s *Status) { s.State = StateStarting })
	if r.cfg.Metrics != nil {
		progressCtx, stop := context.WithCancel(ctx)
		defer stop()
		go r.reportProgress(progressCtx)
	}
	backoff := r.cfg.RetryBackoff
	for {
		before := r.Status().Checkpoint
		err := r.session(ctx)
		if ctx.Err() != nil {
			r.setStatus(func(s *Status) { s.State = StateNotRunning })
			if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				r.log.Warn("relay stopped with an error", "error", err)
			}
			return ctx.Err()
		}
		var perm permanentError
		if errors.As(err, &perm) {
			r.setStatus(func(s *Status) { s.State, s.Error = StateStopped, err.Error() })
			r.log.Error("relay stopped", "error", err)
			return err
		}
		if r.Status().Checkpoint > before {
			backoff = r.cfg.RetryBackoff
		}
		r.setStatus(func(s *Status) { s.State, s.Error = StateRetrying, errString(err) })
		r.log.Warn("relay session ended; retrying from the checkpoint", "error", err, "backoff", backoff, "checkpoint", r.Status().Checkpoint)
		select {
		case <-ctx.Done():
			r.setStatus(func(s *Status) { s.State = StateNotRunning })
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxRetryBackoff)
	}
}

// errOrCanceled is the first non-nil of errs, or context.Canceled.
func errOrCanceled(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return context.Canceled
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// session runs one producer from the saved checkpoint until ctx ends or something fails.
// Its goroutines: the subscription (this one) sends; acks reads the producer's outcomes into
// the window; saver saves the acknowledged run. All of them end before session returns.
func (r *Relay) session(ctx context.Context) error {
	cp, err := r.cfg.Checkpoints.Load(ctx)
	if err != nil {
		return fmt.Errorf("load checkpoint: %w", err)
	}
	r.setStatus(func(s *Status) { s.Checkpoint, s.Acked = cp, cp })
	fence, producerConfig := r.fencedProducerConfig()
	defer fence.close()
	client, err := sarama.NewClient(r.cfg.Brokers, producerConfig)
	if err != nil {
		return fmt.Errorf("connect to Kafka at %v: %w", r.cfg.Brokers, err)
	}
	defer client.Close()
	if r.cfg.Topics != nil {
		if err := ensureTopics(client, r.cfg.TopicNames.list(), *r.cfg.Topics); err != nil {
			return err
		}
	}
	producer, err := sarama.NewAsyncProducerFromClient(client)
	if err != nil {
		return fmt.Errorf("start the Kafka producer: %w", err)
	}
	r.setStatus(func(s *Status) { s.State = StateRunning })
	r.log.Info("relay publishing", "from_position", cp, "brokers", r.cfg.Brokers)

	w := newWindow(cp, r.cfg.Window)
	r.mu.Lock()
	r.win, r.sent = w, cp
	r.mu.Unlock()
	// sendCtx ends the sending: at ctx's end, or with the first failure as its cause.
	sendCtx, stopSending := context.WithCancelCause(ctx)
	defer stopSending(nil)
	// saveCtx outlives sendCtx: what is acknowledged while the producer drains is saved.
	saveCtx, stopSaving := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSaving()

	acksDone := make(chan struct{})
	go func() {
		defer close(acksDone)
		r.acks(producer, w, func(err error) {
			fence.close() // before anything else: see fence.go
			stopSending(err)
		})
	}()
	saverDone := make(chan struct{})
	go func() {
		defer close(saverDone)
		r.saver(saveCtx, w, stopSending)
	}()

	// The subscription reads one batch ahead of the sender, so reading the log and
	// handing events to the producer overlap; memory stays bounded by two batches beyond
	// the window. This relies on the store handing each batch in a slice of its own.
	batches := make(chan []eventstore.RecordedEvent, 1)
	sendDone := make(chan struct{})
	go func() {
		defer close(sendDone)
		if err := r.send(sendCtx, batches, producer, w); err != nil && sendCtx.Err() == nil {
			stopSending(err)
		}
	}()
	subErr := r.cfg.Store.Subscribe(sendCtx, cp, r.cfg.MaxBatch, func(ctx context.Context, batch []eventstore.RecordedEvent) error {
		select {
		case batches <- batch:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	close(batches)
	<-sendDone

	// Drain: no more sends; the producer flushes what it holds and reports every outcome,
	// then closes its channels. Bounded by its own retries and timeouts; DrainTimeout
	// bounds the wait for a clean stop beyond that.
	producer.AsyncClose()
	select {
	case <-acksDone:
	case <-time.After(r.cfg.DrainTimeout + r.producerRetryBudget()):
		r.log.Warn("relay: the producer did not finish draining in time; its unacknowledged events will be re-published")
		// The producer's goroutines end when its retries run out; acks ends with them.
	}
	stopSaving()
	<-saverDone
	saved, acked := w.positions()
	if r.cfg.Tracer != nil {
		r.traced.acked(acked)
		r.traced.abandon(fmt.Errorf("relay: the session ended before the broker acknowledged: %w", errOrCanceled(context.Cause(sendCtx), subErr)))
	}
	if acked > saved {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), saveTimeout)
		err := r.cfg.Checkpoints.Save(sctx, acked)
		cancel()
		if err != nil {
			return r.sessionError(err, subErr, sendCtx)
		}
		w.markSaved(acked)
		r.setStatus(func(s *Status) { s.Checkpoint = acked })
	}
	return r.sessionError(nil, subErr, sendCtx)
}

// sessionError picks what ended the session: a failure recorded as sendCtx's cause first
// (the subscription only saw it as a cancellation), then the subscription's own error.
func (r *Relay) sessionError(saveErr, subErr error, sendCtx context.Context) error {
	if cause := context.Cause(sendCtx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	var perm permanentError
	if errors.As(saveErr, &perm) || errors.Is(saveErr, ErrCheckpointAhead) {
		return permanent(saveErr)
	}
	if saveErr != nil {
		return saveErr
	}
	if errors.As(subErr, &perm) {
		return subErr
	}
	if subErr != nil && !errors.Is(subErr, context.Canceled) {
		return fmt.Errorf("read the log: %w", subErr)
	}
	return subErr
}

// send hands the events of each batch to the producer, each once the window admits it,
// until batches closes or ctx ends.
func (r *Relay) send(ctx context.Context, batches <-chan []eventstore.RecordedEvent, producer sarama.AsyncProducer, w *window) error {
	for batch := range batches {
		msgs, encErr := r.cfg.TopicNames.messages(batch)
		if r.cfg.Tracer != nil && len(msgs) > 0 {
			traceParents, done := r.cfg.Tracer.Publish(ctx, batch[:len(msgs)])
			r.traced.add(batch[len(msgs)-1].Position, done)
			for i, tp := range traceParents {
				if tp != "" {
					setTraceParent(msgs[i], tp)
				}
			}
		}
		// The events before one that cannot be published are sent, so the checkpoint
		// stops right before it.
		for i, msg := range msgs {
			if err := w.admit(ctx, batch[i].Position); err != nil {
				return err
			}
			select {
			case producer.Input() <- msg:
			case <-ctx.Done():
				return ctx.Err()
			}
			if r.cfg.Metrics != nil {
				r.mu.Lock()
				r.sent = batch[i].Position
				r.mu.Unlock()
			}
		}
		if encErr != nil {
			return permanent(encErr)
		}
	}
	return nil
}

// reportProgress sends the relay's progress to Metrics every ProgressInterval until ctx
// ends. A failed read of the log skips one report.
func (r *Relay) reportProgress(ctx context.Context) {
	t := time.NewTicker(r.cfg.ProgressInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		cp, sent, w := r.status.Checkpoint, r.sent, r.win
		r.mu.Unlock()
		inFlight := 0
		if w != nil {
			if _, acked := w.positions(); sent > acked {
				inFlight = int(sent - acked)
			}
		}
		head, err := r.cfg.Store.Head(ctx)
		if err != nil {
			continue
		}
		var age time.Duration
		if head > cp {
			next, err := r.cfg.Store.ReadAll(ctx, cp, 1)
			if err != nil {
				continue
			}
			if len(next) == 1 {
				age = max(0, r.cfg.Clock().Sub(next[0].RecordedAt))
			}
		}
		r.cfg.Metrics.Progress(cp, head, age, inFlight)
	}
}

// fencedProducerConfig returns a copy of the producer's settings whose connections go
// through a new fence (fence.go), over the dialer the settings would have used.
func (r *Relay) fencedProducerConfig() (*fence, *sarama.Config) {
	c := *r.cfg.Producer
	var next dialer = &net.Dialer{Timeout: c.Net.DialTimeout, KeepAlive: c.Net.KeepAlive, LocalAddr: c.Net.LocalAddr}
	if c.Net.Proxy.Enable && c.Net.Proxy.Dialer != nil {
		next = c.Net.Proxy.Dialer
	}
	f := newFence(next)
	c.Net.Proxy.Enable, c.Net.Proxy.Dialer = true, f
	return f, &c
}

// producerRetryBudget is about the longest the producer retries one message.
func (r *Relay) producerRetryBudget() time.Duration {
	p := r.cfg.Producer.Producer
	return time.Duration(p.Retry.Max+1) * (2*time.Second + p.Timeout)
}

// acks moves the window on every acknowledgement and ends the sending at the first
// failure, until the producer closes its channels.
func (r *Relay) acks(producer sarama.AsyncProducer, w *window, fail context.CancelCauseFunc) {
	successes, errs := producer.Successes(), producer.Errors()
	// After a failed publish: the first failed position of each topic and key. A later
	// position of the same key acknowledged afterwards was written before the fence closed
	// (fence.go), so Kafka holds that key's events out of log order; the relay cannot undo
	// a write, but an operator must hear of it.
	var failed map[string]uint64
	for successes != nil || errs != nil {
		select {
		case m, ok := <-successes:
			if !ok {
				successes = nil
				continue
			}
			pos, ok := positionOf(m)
			if !ok {
				fail(permanent(fmt.Errorf("relay: an acknowledgement for %s without the position the relay sent", m.Topic)))
				continue
			}
			if first, ok := failed[messageKey(m)]; ok && pos > first {
				r.log.Error("relay: per-key order broken in Kafka: an event was acknowledged after an earlier event of its key failed; consumers see them out of log order",
					"topic", m.Topic, "key", messageKey(m), "acknowledged_position", pos, "failed_position", first)
			}
			if err := w.ack(pos); err != nil {
				fail(permanent(err))
				continue
			}
			if r.cfg.Tracer != nil {
				_, through := w.positions()
				r.traced.acked(through)
			}
			if r.cfg.Metrics != nil {
				r.cfg.Metrics.Acked(m.Topic, m.Timestamp)
			}
			if r.cfg.Observe != nil {
				r.cfg.Observe(Published{Position: pos, RecordedAt: m.Timestamp, AckedAt: r.cfg.Clock(), Topic: m.Topic, Partition: m.Partition, Offset: m.Offset})
			}
		case pe, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			pos, _ := positionOf(pe.Msg)
			if failed == nil {
				failed = make(map[string]uint64)
			}
			if _, ok := failed[messageKey(pe.Msg)]; !ok {
				failed[messageKey(pe.Msg)] = pos
			}
			if r.cfg.Metrics != nil {
				r.cfg.Metrics.PublishFailed(pe.Msg.Topic)
			}
			// The first failure is the cause; the ones after it are its consequences.
			fail(fmt.Errorf("publish position %d to %s: %w", pos, pe.Msg.Topic, pe.Err))
		}
	}
}

// saver saves the acknowledged run as it grows: one save at a time, each covering every
// acknowledgement that arrived during the previous one and the SaveInterval after it.
func (r *Relay) saver(ctx context.Context, w *window, fail context.CancelCauseFunc) {
	var last time.Time
	for {
		acked, err := w.waitAcked(ctx)
		if err != nil {
			return
		}
		if wait := r.cfg.SaveInterval - time.Since(last); wait > 0 {
			// Half the window unsaved saves at once: the sender must never wait for a
			// save that is only being spaced out.
			if acked, err = w.waitUnsaved(ctx, max(1, w.size/2), wait); err != nil {
				return
			}
		}
		sctx, cancel := context.WithTimeout(ctx, saveTimeout)
		err = r.cfg.Checkpoints.Save(sctx, acked)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return // stopping: the session saves once more itself
			}
			if errors.Is(err, ErrCheckpointAhead) {
				err = permanent(err)
			}
			fail(fmt.Errorf("save checkpoint: %w", err))
			return
		}
		last = time.Now()
		w.markSaved(acked)
		r.setStatus(func(s *Status) { s.Checkpoint, s.Acked, s.Error = acked, acked, "" })
	}
}
