package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/securepay/securepay/eventstore"
)

// Projector maintains one view from the global log. Its name carries its version
// ("accounts.v1"): a new version of the fold is a new name, and its view is rebuilt.
//
// Apply receives events with consecutive positions starting right after the checkpoint.
// It must make the view's writes and the new checkpoint durable together (one database
// transaction, one Redis MULTI, one critical section in memory), so a crash at any point
// leaves the view at a checkpoint it fully includes: nothing counted twice, nothing lost.
// If an event cannot be applied, Apply commits the events before it and returns an
// *ApplyError (errors.Is(err, ErrPoison)) naming it. ErrCheckpointMoved means someone else
// (a rebuild's swap) moved the checkpoint: the runtime re-reads it and resubscribes.
type Projector interface {
	Name() string
	Checkpoint(ctx context.Context) (uint64, error)
	Apply(ctx context.Context, batch []eventstore.RecordedEvent) error
}

// FailureRecorder is implemented by projectors whose view can remember why the projector
// stopped, so that `securepay projections status` in another process can say it.
type FailureRecorder interface {
	RecordFailure(ctx context.Context, failure *ApplyError) error
}

// ErrCheckpointMoved is returned by Apply when the stored checkpoint is not the one the
// batch follows (a rebuild swapped the view in, or a database crash lost the last commits).
var ErrCheckpointMoved = errors.New("projections: checkpoint moved under the projector")

// Rechecker is implemented by projectors whose view can end up holding less than the
// projector applied: PostgreSQL views commit asynchronously, so a database crash can lose
// the last batches after Apply returned (the log keeps their events). A reader that finds
// the view's checkpoint below a position the runner reported applied sends on the channel;
// the runner then stops answering Wait from its checkpoint, re-reads it from the view and
// re-applies from there, whether or not new events arrive. The channel must be buffered:
// senders never block, and one pending request stands for any number.
type Rechecker interface {
	Recheck() <-chan struct{}
}

// Waiter waits until a projector has applied a position; *Runner implements it. Views
// that answer read-your-writes reads in the process that runs their projectors take one,
// to be woken as soon as a batch commits instead of polling.
type Waiter interface {
	Wait(ctx context.Context, projector string, position uint64) error
}

var _ Waiter = (*Runner)(nil)

// errRecheck ends a follow because a reader found the view behind the runner's checkpoint.
var errRecheck = errors.New("projections: a reader found the view behind the checkpoint")

// State is where a projector is in its life.
type State string

const (
	StateStarting   State = "starting"
	StateRunning    State = "running"
	StateRetrying   State = "retrying"         // a transient error; retried with backoff, bounded
	StateStopped    State = "stopped-on-error" // an event it cannot apply, or retries exhausted
	StateRebuilding State = "rebuilding"       // a shadow copy is being built (status from the view)
	StateIdle       State = "not-running"      // the view has no checkpoint for it yet
	StateStalled    State = "stalled"          // behind the head, checkpoint unchanged for StallAfter
)

// Status describes one projector.
type Status struct {
	Name          string
	State         State
	Checkpoint    uint64
	Head          uint64
	LagEvents     uint64
	LagSeconds    float64 // age of the oldest event not yet applied; 0 when caught up
	Error         string
	ErrorPosition uint64
	// Rebuild progress, when State is StateRebuilding.
	RebuildCheckpoint uint64
}

// RunnerConfig configures a Runner.
type RunnerConfig struct {
	Store      eventstore.Store
	Projectors []Projector
	// MaxBatch bounds the events handed to one Apply (one transaction); default 5,000.
	MaxBatch int
	// MaxRetries bounds consecutive transient failures of one projector before it stops;
	// default 20. Backoff doubles from RetryBackoff (default 100ms) up to 5s.
	MaxRetries   int
	RetryBackoff time.Duration
	// Window lets a projector gather events for up to this long before it applies them, so
	// that one transaction and one checkpoint write carry many events when the log grows a
	// few events at a time (one caller, light load): the view's commits per event fall
	// from one to one per window. A batch of WindowEvents or more is applied at once, and a
	// Wait for a position is answered as soon as the events up to it are in hand: only
	// readers that do not wait for a position (none gave one, or they poll the view from
	// another process) see the view up to about two windows behind. 0 (the default) applies
	// every batch as it arrives.
	Window time.Duration
	// WindowEvents is the size at which a gathered batch is applied without waiting out the
	// Window; default 1,000, at most MaxBatch.
	WindowEvents int
	Logger       *slog.Logger
	Clock        func() time.Time
	// Observe, when set, is called around every Apply with the projector's name and the
	// batch; Apply runs in the context it returns (derived from ctx) and done gets Apply's
	// error. services/telemetry's ProjectionObserver continues each event's trace there.
	Observe func(ctx context.Context, projector string, batch []eventstore.RecordedEvent) (_ context.Context, done func(error))
}

// Validate reports the first problem with c.
func (c RunnerConfig) Validate() error {
	if c.Store == nil {
		return errors.New("projections runner: Store is required")
	}
	if len(c.Projectors) == 0 {
		return errors.New("projections runner: no projectors")
	}
	names := map[string]bool{}
	for _, p := range c.Projectors {
		if p == nil || p.Name() == "" {
			return errors.New("projections runner: a projector has no name")
		}
		if names[p.Name()] {
			return fmt.Errorf("projections runner: projector %s given twice", p.Name())
		}
		names[p.Name()] = true
	}
	if c.MaxBatch < 0 || c.MaxBatch > eventstore.MaxReadLimit {
		return fmt.Errorf("projections runner: MaxBatch %d out of 0..%d", c.MaxBatch, eventstore.MaxReadLimit)
	}
	if c.Window < 0 || c.Window > time.Minute {
		return fmt.Errorf("projections runner: Window %v out of 0..1m (it delays every reader that does not wait for a position)", c.Window)
	}
	if c.WindowEvents < 0 || c.WindowEvents > eventstore.MaxReadLimit {
		return fmt.Errorf("projections runner: WindowEvents %d out of 0..%d", c.WindowEvents, eventstore.MaxReadLimit)
	}
	if c.MaxRetries < 0 || c.RetryBackoff < 0 {
		return errors.New("projections runner: MaxRetries and RetryBackoff must not be negative")
	}
	return nil
}

// Runner runs projectors, one goroutine each, and tracks their status.
//
// Wait answers read-your-writes waits from each projector's checkpoint held in memory, and
// only while that checkpoint is confirmed: read from the view, or advanced since by Apply
// calls that returned nil (Apply checks the stored checkpoint under a lock before it writes,
// so a success also proves that the view held everything before the batch). Anything that
// may mean the view lost commits withdraws the confirmation until the checkpoint has been
// read from the view again: an error of the projector's Apply or of its subscription (a
// database crash fails both, and may leave the view behind), ErrCheckpointMoved, and a
// Rechecker's request. While a projector retries, waits for positions it had applied
// therefore block too, for at most its backoff.
type Runner struct {
	cfg  RunnerConfig
	runs map[string]*run
}

type run struct {
	p       Projector
	signal  *eventstore.Signal // broadcast after every change of checkpoint, confirmed or state
	recheck <-chan struct{}    // from a Rechecker; nil (never ready) for other projectors
	demand  chan struct{}      // (buffered, one) a Wait raised want: a gathering window looks again

	mu         sync.Mutex
	state      State
	checkpoint uint64
	confirmed  bool // see Runner: Wait may answer from checkpoint
	err        string
	errPos     uint64
	// want is the lowest position a Wait registered since the checkpoint last advanced (0:
	// none): a gathering window holding it applies at once. Waiters still waiting register
	// again when they wake, so clearing it at every advance loses nobody.
	want uint64
}

// wanted returns the lowest position a waiter needs, 0 if none.
func (r *run) wanted() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.want
}

func (r *run) set(f func(*run)) {
	r.mu.Lock()
	f(r)
	r.mu.Unlock()
}

// NewRunner checks cfg and returns a Runner ready to Run.
func NewRunner(cfg RunnerConfig) (*Runner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = 5000
	}
	if cfg.WindowEvents == 0 {
		cfg.WindowEvents = 1000
	}
	cfg.WindowEvents = min(cfg.WindowEvents, cfg.MaxBatch)
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = 20
	}
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = 100 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	r := &Runner{cfg: cfg, runs: make(map[string]*run, len(cfg.Projectors))}
	for _, p := range cfg.Projectors {
		rn := &run{p: p, signal: eventstore.NewSignal(), demand: make(chan struct{}, 1), state: StateStarting}
		if rc, ok := p.(Rechecker); ok {
			rn.recheck = rc.Recheck()
		}
		r.runs[p.Name()] = rn
	}
	return r, nil
}

// Run runs every projector until ctx ends and returns ctx's error. A projector that stops
// on an error does not stop the others; its status says why.
func (r *Runner) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, rn := range r.runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.runOne(ctx, rn)
		}()
	}
	wg.Wait()
	return ctx.Err()
}

func (r *Runner) runOne(ctx context.Context, rn *run) {
	log := r.cfg.Logger.With("projector", rn.p.Name())
	failures := 0
	backoff := r.cfg.RetryBackoff
	for ctx.Err() == nil {
		before, _ := r.Checkpoint(rn.p.Name())
		err := r.follow(ctx, rn)
		if ctx.Err() != nil {
			return
		}
		if after, _ := r.Checkpoint(rn.p.Name()); after > before {
			failures, backoff = 0, r.cfg.RetryBackoff // the limit is on consecutive failures
		}
		var poison *ApplyError
		switch {
		case errors.As(err, &poison):
			log.Error("projector stopped: event cannot be applied", "position", poison.Position, "error", poison.Err)
			if rec, ok := rn.p.(FailureRecorder); ok {
				if rerr := rec.RecordFailure(context.WithoutCancel(ctx), poison); rerr != nil {
					log.Error("record projector failure", "error", rerr)
				}
			}
			// Apply committed the events before the poison: that checkpoint is confirmed.
			rn.set(func(rn *run) {
				rn.state, rn.err, rn.errPos, rn.checkpoint, rn.confirmed = StateStopped, poison.Error(), poison.Position, poison.Position-1, true
			})
			rn.signal.Broadcast()
			return
		}
		// The view may have lost commits (a database crash fails both the subscription and
		// Apply): no Wait answers until follow has read the checkpoint from the view again.
		rn.set(func(rn *run) { rn.confirmed = false })
		rn.signal.Broadcast()
		if errors.Is(err, errRecheck) {
			// Not a failure of the projector, and bounded: a request is only sent by a
			// reader that found the view behind, and the next follow's re-read makes the
			// runner agree with the view.
			log.Warn("a reader found the view behind the projector's checkpoint; re-reading it from the view")
			continue
		}
		failures++
		if errors.Is(err, ErrCheckpointMoved) && failures == 1 {
			log.Info("checkpoint moved (view swapped by a rebuild); resubscribing")
			continue
		}
		if failures > r.cfg.MaxRetries {
			rn.set(func(rn *run) {
				rn.state, rn.err = StateStopped, fmt.Sprintf("gave up after %d consecutive failures: %v", failures-1, err)
			})
			rn.signal.Broadcast()
			log.Error("projector stopped after retries", "error", err)
			return
		}
		rn.set(func(rn *run) { rn.state, rn.err = StateRetrying, err.Error() })
		log.Warn("projector failed; retrying", "error", err, "attempt", failures, "backoff", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// follow subscribes from the projector's checkpoint and applies batches until an error.
//
// The subscription runs one batch ahead of the apply: while the projector's goroutine
// writes batch N, the subscription reads and hands over batch N+1 (a channel of one), so
// reading the log and writing the view overlap instead of alternating. Memory stays
// bounded at two batches. This relies on the store handing each batch in a slice it does
// not reuse after handle returns (both backends allocate one per read).
func (r *Runner) follow(ctx context.Context, rn *run) error {
	// Requests sent before this read are answered by it.
	drain(rn.recheck)
	cp, err := rn.p.Checkpoint(ctx)
	if err != nil {
		return fmt.Errorf("read checkpoint: %w", err)
	}
	rn.set(func(rn *run) { rn.checkpoint, rn.confirmed, rn.state = cp, true, StateRunning })
	rn.signal.Broadcast()
	subCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan []eventstore.RecordedEvent, 1)
	subDone := make(chan error, 1)
	go func() {
		subDone <- r.cfg.Store.Subscribe(subCtx, cp, r.cfg.MaxBatch, func(ctx context.Context, batch []eventstore.RecordedEvent) error {
			select {
			case batches <- batch:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	stop := func(err error) error {
		cancel()
		<-subDone
		return err
	}
	var carry []eventstore.RecordedEvent // received by a window but too many to add to its batch
	for {
		batch := carry
		carry = nil
		if batch == nil {
			select {
			case batch = <-batches:
			case <-rn.recheck:
				return stop(errRecheck)
			case err := <-subDone:
				// Apply what was handed over before the subscription ended, then report why.
				select {
				case batch = <-batches:
					subDone <- err
				default:
					return err
				}
			}
		}
		// The pair of the store's promise: batches continue exactly where the checkpoint is.
		if batch[0].Position != cp+1 {
			return stop(fmt.Errorf("subscription delivered position %d after checkpoint %d", batch[0].Position, cp))
		}
		if r.cfg.Window > 0 && len(batch) < r.cfg.WindowEvents {
			var err error
			if batch, carry, err = r.gather(rn, batch, batches, subDone); err != nil {
				return stop(err)
			}
		}
		if err := r.apply(ctx, rn.p, batch); err != nil {
			return stop(err)
		}
		cp = batch[len(batch)-1].Position
		rn.set(func(rn *run) { rn.checkpoint, rn.confirmed, rn.state, rn.err, rn.want = cp, true, StateRunning, "", 0 })
		rn.signal.Broadcast()
	}
}

// gather holds a small batch for up to the Window before it is applied, so that one
// transaction carries more events. It does not take more batches from the subscription
// while it waits: the subscription, one batch ahead, blocks with the next batch in hand
// while the log grows, and its next read takes everything appended meanwhile at once, so
// a window costs one read of the log and one apply however many events it carries (taking
// batches as they come would cost a read per append, which is what the window saves).
//
// It returns early, with what it holds, when a Wait needs a position it holds (the waiter
// does not wait out the window); when a waiter needs a position beyond it, it takes the
// subscription's batches as they come until it holds that position. Taking batches can
// make the batch reach WindowEvents (applied at once) or exceed MaxBatch: then the batch
// that did not fit is returned as carry, to start the next one. When the subscription
// ends, gather puts its error back for follow and returns what it holds, to be applied.
func (r *Runner) gather(rn *run, batch []eventstore.RecordedEvent, batches <-chan []eventstore.RecordedEvent, subDone chan error) (held, carry []eventstore.RecordedEvent, err error) {
	timer := time.NewTimer(r.cfg.Window)
	defer timer.Stop()
	owned := false // batch is the store's slice until the first append copies it
	for {
		last := batch[len(batch)-1].Position
		var more <-chan []eventstore.RecordedEvent
		if want := rn.wanted(); want != 0 {
			if want <= last {
				return batch, nil, nil
			}
			more = batches // nil (never ready) unless a waiter needs what we do not hold
		}
		select {
		case <-timer.C:
			return batch, nil, nil
		case <-rn.demand:
		case b := <-more:
			if b[0].Position != last+1 {
				return nil, nil, fmt.Errorf("subscription delivered position %d after %d", b[0].Position, last)
			}
			if len(batch)+len(b) > r.cfg.MaxBatch {
				return batch, b, nil
			}
			if !owned {
				batch = append(make([]eventstore.RecordedEvent, 0, min(r.cfg.MaxBatch, 2*(len(batch)+len(b)))), batch...)
				owned = true
			}
			batch = append(batch, b...)
			if len(batch) >= r.cfg.WindowEvents {
				return batch, nil, nil
			}
		case <-rn.recheck:
			return nil, nil, errRecheck
		case err := <-subDone:
			subDone <- err
			return batch, nil, nil
		}
	}
}

// apply is the projector's Apply, observed when RunnerConfig.Observe is set.
func (r *Runner) apply(ctx context.Context, p Projector, batch []eventstore.RecordedEvent) error {
	if r.cfg.Observe == nil {
		return p.Apply(ctx, batch)
	}
	ctx, done := r.cfg.Observe(ctx, p.Name(), batch)
	err := p.Apply(ctx, batch)
	done(err)
	return err
}

// drain empties a recheck channel (nil: nothing to do).
func drain(c <-chan struct{}) {
	select {
	case <-c:
	default:
	}
}

// Checkpoint returns the in-process checkpoint of a projector run by r.
func (r *Runner) Checkpoint(name string) (uint64, bool) {
	rn, ok := r.runs[name]
	if !ok {
		return 0, false
	}
	rn.mu.Lock()
	defer rn.mu.Unlock()
	return rn.checkpoint, true
}

// Wait blocks until projector name has applied position and its checkpoint is confirmed
// (see Runner), ctx ends (ErrNotCaughtUp), or the projector stops on an error.
func (r *Runner) Wait(ctx context.Context, name string, position uint64) error {
	rn, ok := r.runs[name]
	if !ok {
		return fmt.Errorf("projections: no projector %s in this process", name)
	}
	if position == 0 {
		return nil // every view includes the empty prefix of the log
	}
	for {
		wake := rn.signal.C()
		rn.mu.Lock()
		cp, confirmed, state, msg := rn.checkpoint, rn.confirmed, rn.state, rn.err
		// Tell a gathering window (RunnerConfig.Window) that someone waits for position; in
		// the same critical section as the read, so no advance clears it unseen.
		raised := cp < position && (rn.want == 0 || position < rn.want)
		if raised {
			rn.want = position
		}
		rn.mu.Unlock()
		if cp >= position && confirmed {
			return nil
		}
		if state == StateStopped {
			return fmt.Errorf("%w: projector %s stopped at %d: %s", ErrNotCaughtUp, name, cp, msg)
		}
		if raised {
			select {
			case rn.demand <- struct{}{}:
			default:
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: projector %s is at %d, asked for %d: %v", ErrNotCaughtUp, name, cp, position, ctx.Err())
		case <-wake:
		}
	}
}

// Status reports every projector run by r, with the log's head and the lag.
func (r *Runner) Status(ctx context.Context) ([]Status, error) {
	head, err := r.cfg.Store.Head(ctx)
	if err != nil {
		return nil, fmt.Errorf("projections status: head: %w", err)
	}
	out := make([]Status, 0, len(r.runs))
	for _, p := range r.cfg.Projectors {
		rn := r.runs[p.Name()]
		rn.mu.Lock()
		st := Status{Name: p.Name(), State: rn.state, Checkpoint: rn.checkpoint, Head: head, Error: rn.err, ErrorPosition: rn.errPos}
		rn.mu.Unlock()
		if err := fillLag(ctx, r.cfg.Store, r.cfg.Clock(), &st); err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// fillLag sets the lag fields from Checkpoint and Head: the lag in seconds is the age of the
// oldest event the projector has not applied.
func fillLag(ctx context.Context, s eventstore.Store, now time.Time, st *Status) error {
	st.LagEvents, st.LagSeconds = 0, 0
	if st.Head <= st.Checkpoint {
		return nil
	}
	st.LagEvents = st.Head - st.Checkpoint
	next, err := s.ReadAll(ctx, st.Checkpoint, 1)
	if err != nil {
		return fmt.Errorf("projections status: read after %d: %w", st.Checkpoint, err)
	}
	if len(next) == 1 {
		st.LagSeconds = max(0, now.Sub(next[0].RecordedAt).Seconds())
	}
	return nil
}
