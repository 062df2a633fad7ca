package dispatch

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/securepay/securepay/services/telemetry"
)

// partition delivers one claimed partition. Its loop reads messages in offset order,
// looks up their endpoints and hands one job per endpoint to that endpoint's lane: a FIFO
// served by one goroutine, so one endpoint sees one account's notifications in order,
// while different endpoints are served concurrently and a dead one holds up only itself.
// A message is handled when every one of its jobs is delivered or dead-lettered; the
// partition's offset is marked (and so committed) only up to the first message that is
// not, so a crash redelivers what was in flight and loses nothing.
//
// At most Window messages are pending, so an endpoint that is down would, once its lane
// holds that many, stop the partition and with it every other endpoint's lane. So while an
// endpoint's circuit is open a lane sheds: it dead-letters its jobs at once
// (ReasonCircuitOpen) when the circuit has been open longer than CircuitOpenGrace or the
// window is full, and keeps doing so until the endpoint answers again.
type partition struct {
	d        *Dispatcher
	producer sarama.SyncProducer
	sess     sarama.ConsumerGroupSession
	topic    string
	part     int32

	ctx    context.Context
	cancel context.CancelCauseFunc
	lanes  sync.WaitGroup

	mu      sync.Mutex
	pending []*pending       // in offset order; at most Window
	byLane  map[string]*lane // endpoint id → its lane, while it has work
	room    chan struct{}    // signalled when pending shrinks
	// full is closed when pending reaches Window and replaced when it falls below, waking
	// the lanes that wait out a backoff for an endpoint whose circuit is open.
	full    chan struct{}
	fullNow bool
}

// pending is a message being handled: remaining counts its jobs not yet finished.
type pending struct {
	offset    int64
	remaining int
}

type lane struct {
	queue []job
	// shedding: the lane dead-lettered a job because the endpoint's circuit was open; it
	// goes on doing so, without waiting, until an attempt gets an answer.
	shedding bool
}

// job is one notification for one endpoint.
type job struct {
	ctx context.Context // carries the consume span
	msg *sarama.ConsumerMessage
	n   Notification
	ep  Endpoint
	p   *pending
}

func newPartition(d *Dispatcher, producer sarama.SyncProducer, sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) *partition {
	ctx, cancel := context.WithCancelCause(sess.Context())
	return &partition{d: d, producer: producer, sess: sess, topic: claim.Topic(), part: claim.Partition(),
		ctx: ctx, cancel: cancel, byLane: map[string]*lane{}, room: make(chan struct{}, 1), full: make(chan struct{})}
}

// run handles messages until the claim ends (a rebalance, the session's end) or a dead
// letter cannot be published; jobs in flight are abandoned unmarked, to be redelivered.
func (p *partition) run(messages <-chan *sarama.ConsumerMessage) error {
	defer func() {
		p.cancel(nil)
		p.lanes.Wait()
	}()
	for {
		if !p.waitRoom() {
			break
		}
		select {
		case <-p.ctx.Done():
		case m, ok := <-messages:
			if !ok {
				return nil
			}
			p.handle(m)
			continue
		}
		break
	}
	if err := context.Cause(p.ctx); !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// waitRoom waits until fewer than Window messages are pending; false when the claim ends.
func (p *partition) waitRoom() bool {
	for {
		p.mu.Lock()
		n := len(p.pending)
		p.mu.Unlock()
		if n < p.d.cfg.Window {
			return true
		}
		select {
		case <-p.ctx.Done():
			return false
		case <-p.room:
		}
	}
}

// handle starts the handling of one message.
func (p *partition) handle(m *sarama.ConsumerMessage) {
	parent := p.ctx
	if sc, ok := telemetry.ParseTraceParent(header(m, HeaderTraceParent)); ok {
		parent = trace.ContextWithRemoteSpanContext(parent, sc)
	}
	ctx, span := p.d.tracer.Start(parent, "dispatch.consume", trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
		attribute.String("messaging.system", "kafka"),
		attribute.String("messaging.destination.name", m.Topic),
		attribute.Int("messaging.destination.partition.id", int(m.Partition)),
		attribute.Int64("messaging.kafka.offset", m.Offset),
		attribute.String("securepay.event.id", eventID(m)),
	))
	defer span.End()

	pm := p.track(m.Offset)
	defer p.finish(pm) // the guard: the message is not handled before every job is queued

	n, err := decode(m, p.d.known)
	if err == nil {
		ctx = telemetry.Correlate(ctx, n.CorrelationID) // the deliveries' log lines carry it
	}
	if err != nil {
		var bad *badMessage
		errors.As(err, &bad)
		span.SetStatus(codes.Error, err.Error())
		p.deadLetter(ctx, pm, deadLetter{msg: m, reason: bad.reason, err: err})
		return
	}
	span.SetAttributes(attribute.String("securepay.event.type", n.Type))
	endpoints, err := p.lookup(ctx, n.Account)
	if err != nil {
		if p.ctx.Err() != nil {
			p.mu.Lock()
			pm.remaining++ // abandoned: never marked, so handled again
			p.mu.Unlock()
			return
		}
		span.SetStatus(codes.Error, err.Error())
		p.deadLetter(ctx, pm, deadLetter{msg: m, reason: ReasonDirectory, attempts: p.d.cfg.DirectoryAttempts, err: err})
		return
	}
	seen := make(map[string]bool, len(endpoints))
	var jobs []job
	for _, ep := range endpoints {
		if seen[ep.ID] || !ep.Wants(n.Type) {
			continue
		}
		seen[ep.ID] = true
		jobs = append(jobs, job{ctx: ctx, msg: m, n: n, ep: ep, p: pm})
	}
	span.SetAttributes(attribute.Int("securepay.webhook.endpoints", len(jobs)))
	p.mu.Lock()
	pm.remaining += len(jobs)
	p.mu.Unlock()
	for _, j := range jobs {
		p.enqueue(j)
	}
}

// lookup asks the directory, retrying with backoff DirectoryAttempts times.
func (p *partition) lookup(ctx context.Context, account string) ([]Endpoint, error) {
	var err error
	for i := range p.d.cfg.DirectoryAttempts {
		if i > 0 && !sleep(ctx, p.d.cfg.Backoff.Delay(i, rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())))) {
			return nil, ctx.Err()
		}
		var eps []Endpoint
		if eps, err = p.d.cfg.Directory.Endpoints(ctx, account); err == nil {
			return eps, nil
		}
		p.d.log.WarnContext(ctx, "dispatcher: endpoint directory failed", "attempt", i+1, "error", err)
	}
	return nil, fmt.Errorf("endpoint directory: %w", err)
}

// deadLetter publishes dl and finishes one job of pm; when the topic is unreachable the
// claim stops (the message is left unmarked, to be handled again).
func (p *partition) deadLetter(ctx context.Context, pm *pending, dl deadLetter) {
	if err := p.d.sendDeadLetter(ctx, p.producer, dl); err != nil {
		if p.ctx.Err() == nil {
			p.cancel(err)
		}
		p.mu.Lock()
		pm.remaining++ // never finished
		p.mu.Unlock()
		return
	}
}

// track adds a message to the pending ones, with the guard job handle finishes.
func (p *partition) track(offset int64) *pending {
	p.mu.Lock()
	defer p.mu.Unlock()
	pm := &pending{offset: offset, remaining: 1}
	p.pending = append(p.pending, pm)
	if len(p.pending) >= p.d.cfg.Window && !p.fullNow {
		p.fullNow = true
		close(p.full)
	}
	return pm
}

// finish ends one job of pm and marks the offset past every handled message at the head.
func (p *partition) finish(pm *pending) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pm.remaining--
	var last *pending
	for len(p.pending) > 0 && p.pending[0].remaining == 0 {
		last = p.pending[0]
		p.pending[0] = nil
		p.pending = p.pending[1:]
	}
	if last == nil {
		return
	}
	if p.fullNow && len(p.pending) < p.d.cfg.Window {
		p.fullNow = false
		p.full = make(chan struct{})
	}
	// The committed offset is the next one to read.
	p.sess.MarkOffset(p.topic, p.part, last.offset+1, "")
	select {
	case p.room <- struct{}{}:
	default:
	}
}

// enqueue appends j to its endpoint's lane, starting the lane's goroutine if idle.
func (p *partition) enqueue(j job) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.byLane[j.ep.ID]
	if l != nil {
		l.queue = append(l.queue, j)
		return
	}
	l = &lane{queue: []job{j}}
	p.byLane[j.ep.ID] = l
	p.lanes.Go(func() { p.serve(j.ep.ID, l) })
}

// serve delivers a lane's jobs in order until it is empty.
func (p *partition) serve(id string, l *lane) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	for {
		p.mu.Lock()
		if len(l.queue) == 0 {
			delete(p.byLane, id)
			p.mu.Unlock()
			return
		}
		j := l.queue[0]
		l.queue[0] = job{}
		l.queue = l.queue[1:]
		p.mu.Unlock()
		if p.deliver(j, l, rng) {
			p.finish(j.p)
		}
	}
}

// deliver makes up to MaxAttempts attempts to post j, then dead-letters it; true when j is
// handled (delivered or dead-lettered), false when the claim ended first.
func (p *partition) deliver(j job, l *lane, rng *rand.Rand) bool {
	if p.ctx.Err() != nil {
		return false
	}
	cfg := &p.d.cfg
	ctx, span := p.d.tracer.Start(j.ctx, "dispatch.deliver", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		attribute.String("securepay.webhook.endpoint_id", j.ep.ID),
		attribute.String("securepay.event.id", j.n.ID),
		attribute.String("securepay.event.type", j.n.Type),
		attribute.String("http.request.method", "POST"),
	))
	defer span.End()
	br := p.d.breaker(j.ep.ID)
	var (
		lastErr error
		reason  = ReasonExhausted
		attempt int
	)
attempts:
	for attempt = 1; attempt <= cfg.MaxAttempts; attempt++ {
		if attempt > 1 && !p.pause(ctx, cfg.Backoff.Delay(attempt-1, rng), br) {
			span.SetStatus(codes.Error, "abandoned: the partition was revoked or the dispatcher stopped")
			return false
		}
		if now := cfg.Now(); !br.Allow(now) {
			lastErr = errCircuitOpen
			span.AddEvent("circuit open", trace.WithAttributes(attribute.Int("attempt", attempt)))
			if err, ok := p.shed(l, br, now); ok {
				// This refusal is not an attempt: the header counts those made.
				lastErr, reason, attempt = err, ReasonCircuitOpen, attempt-1
				break attempts
			}
			continue
		}
		res := p.d.post(ctx, j, attempt)
		if ctx.Err() != nil {
			br.Abandon()
			span.SetStatus(codes.Error, "abandoned: the partition was revoked or the dispatcher stopped")
			return false
		}
		if cfg.Metrics != nil {
			cfg.Metrics.Attempt(res.outcome, res.took)
		}
		span.AddEvent("attempt", trace.WithAttributes(attribute.Int("attempt", attempt),
			attribute.String("outcome", res.outcome), attribute.Int("http.response.status_code", res.status)))
		if res.outcome != telemetry.WebhookFailed {
			p.mu.Lock()
			l.shedding = false // it answered
			p.mu.Unlock()
		}
		switch res.outcome {
		case telemetry.WebhookDelivered:
			br.Success()
			span.SetAttributes(attribute.Int("securepay.webhook.attempts", attempt), attribute.Int("http.response.status_code", res.status))
			return true
		case telemetry.WebhookRejected:
			br.Success() // it answered: it is up
			lastErr, reason = res.err, ReasonRejected
			break attempts
		default:
			br.Failure(cfg.Now(), res.err)
			lastErr = res.err
		}
	}
	attempt = max(min(attempt, cfg.MaxAttempts), 0)
	span.SetAttributes(attribute.Int("securepay.webhook.attempts", attempt))
	span.SetStatus(codes.Error, reason+": "+lastErr.Error())
	if err := p.d.sendDeadLetter(ctx, p.producer, deadLetter{msg: j.msg, reason: reason, endpoint: j.ep.ID, attempts: attempt, err: lastErr}); err != nil {
		if p.ctx.Err() == nil {
			p.cancel(err)
		}
		return false
	}
	return true
}

// shed reports whether j's lane gives up on its job at once because the endpoint's
// circuit is open (see partition), with the dead letter's error: since when, and the
// breaker's last failure.
func (p *partition) shed(l *lane, br *Breaker, now time.Time) (error, bool) {
	since, last, down := br.Down()
	p.mu.Lock()
	defer p.mu.Unlock()
	if !down {
		l.shedding = false
		return nil, false
	}
	if !l.shedding && now.Sub(since) < p.d.cfg.CircuitOpenGrace && len(p.pending) < p.d.cfg.Window {
		return nil, false
	}
	l.shedding = true
	if last == nil {
		last = errCircuitOpen
	}
	return fmt.Errorf("circuit open since %s; last failure: %w", since.UTC().Format(time.RFC3339), last), true
}

// pause waits d before the next attempt, or less when the partition's window fills while
// the endpoint's circuit is open (its job is then shed at once); false when ctx ended.
func (p *partition) pause(ctx context.Context, d time.Duration, br *Breaker) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	p.mu.Lock()
	full := p.full
	p.mu.Unlock()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	case <-full:
		if _, _, down := br.Down(); down {
			return true
		}
	}
	// The window is full but the endpoint answers: its backoff is kept.
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

var errCircuitOpen = errors.New("circuit open: the endpoint failed repeatedly and is being given time to recover")
