// Package ledger is the write side of SecurePay: it turns commands into appended events.
//
// For each command it loads the aggregates the command touches, asks domain.Decide, and
// appends the resulting events to all touched streams in ONE atomic multi-stream append
// whose expected versions are the versions the decision was made on. Correctness therefore
// never depends on this process being alone: if another process (or a crash-restarted one)
// wrote to a stream in between, the store refuses the append with eventstore.ErrConflict,
// and the processor re-reads what changed and decides again, a bounded number of times.
//
// Throughput comes from two things. All commands of the process pass through one loop
// goroutine that owns an in-memory cache of aggregates, so commands on a hot account are
// serialised in memory instead of colliding in the store. And the loop decides every
// command that queued up while the previous append was being made durable, then appends
// all of them at once: one fsync (or one PostgreSQL commit) for hundreds of transfers.
package ledger

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// ErrClosed is returned by calls made after Close.
var ErrClosed = errors.New("ledger: processor is closed")

// Config tunes a Processor. The zero value of every field has a sensible default.
type Config struct {
	Clock      func() time.Time // the decision clock (authorisation expiry); default time.Now
	NewEventID func() string    // default: a UUIDv7 (time-ordered, unique); called from one goroutine

	MaxBatch    int // commands decided and appended together; default 512
	QueueSize   int // commands waiting for the loop; default 8192
	CacheSize   int // aggregates kept in memory (LRU); default 100,000
	MaxAttempts int // decide+append attempts per batch on conflicts; default 8
	LoadWorkers int // parallel stream reads when loading a batch's aggregates; default 16

	// Snapshots, when set, receives a snapshot of an account every SnapshotEvery events
	// (default 1,000) and is read when an account is not in the cache.
	Snapshots     eventstore.SnapshotStore
	SnapshotEvery uint64

	// SharedStore says other processes may append to the same store (PostgreSQL with
	// several instances). Then a refusal made on cached state is re-checked against the
	// store before it is returned, because the cache may be behind.
	SharedStore bool

	// BatchTimeout bounds the store calls of one batch; default 30s.
	BatchTimeout time.Duration

	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.NewEventID == nil {
		// Only the loop goroutine calls it, so the buffered reader needs no lock; reading
		// crypto/rand 4 KiB at a time instead of 10 bytes per event saves ~3% of the CPU of
		// a transfer.
		random := bufio.NewReaderSize(rand.Reader, 4096)
		c.NewEventID = func() string { return uuid.Must(uuid.NewV7FromReader(random)).String() }
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 512
	}
	if c.QueueSize <= 0 {
		c.QueueSize = 8192
	}
	if c.CacheSize <= 0 {
		c.CacheSize = 100_000
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 8
	}
	if c.LoadWorkers <= 0 {
		c.LoadWorkers = 16
	}
	if c.SnapshotEvery == 0 {
		c.SnapshotEvery = 1000
	}
	if c.BatchTimeout <= 0 {
		c.BatchTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Request is one command with the context it was asked in.
type Request struct {
	Command domain.Command
	Meta    eventstore.Metadata // actor, correlation and causation ids, trace context
}

// Result is the outcome of an accepted command.
type Result struct {
	// Position is the log position of the command's last event: once a view has applied
	// the log up to Position, it shows the command's effect. For a replay it is the
	// position of the original command.
	Position uint64
	Replayed bool             // same id and same input as an earlier command: nothing appended
	Accounts []domain.Account // every account the command touched, after the command
	Payment  *domain.Payment  // the payment, for payment commands
}

// Processor executes commands. It is safe for concurrent use.
type Processor struct {
	store eventstore.Store
	cfg   Config

	queue   chan *call
	closing chan struct{}
	done    chan struct{}
	once    sync.Once

	snapQueue chan eventstore.Snapshot
	snapDone  chan struct{}

	// Owned by the loop goroutine.
	inflight []*flight // decided batches the store has not answered yet, oldest first
	cache    *lru
	stale    map[string]bool // cached streams to catch up from the store before use
	mustRead map[string]bool // payment streams that may not be assumed absent
	poisoned bool            // a batch failed while later ones were in flight: drain them first
}

// New starts a processor on store. Close stops it.
func New(store eventstore.Store, cfg Config) (*Processor, error) {
	if store == nil {
		return nil, errors.New("ledger: a store is required")
	}
	cfg.setDefaults()
	p := &Processor{
		store:     store,
		cfg:       cfg,
		queue:     make(chan *call, cfg.QueueSize),
		closing:   make(chan struct{}),
		done:      make(chan struct{}),
		snapQueue: make(chan eventstore.Snapshot, 1024),
		snapDone:  make(chan struct{}),
		cache:     newLRU(cfg.CacheSize),
		stale:     map[string]bool{},
		mustRead:  map[string]bool{},
	}
	go p.loop()
	go p.snapshotter()
	return p, nil
}

// Close stops accepting commands, fails the ones still queued with ErrClosed, waits for
// the batch in progress, and stops the snapshot writer. It does not close the store.
func (p *Processor) Close() error {
	p.once.Do(func() { close(p.closing) })
	<-p.done
	<-p.snapDone
	return nil
}

type callKind uint8

const (
	callCommand callKind = iota
	callReadAccount
	callReadPayment
)

// call is one request travelling to the loop and back.
type call struct {
	ctx     context.Context
	kind    callKind
	req     Request
	account domain.AccountID // for reads
	payment domain.PaymentID // for reads

	// Filled by the loop before done is closed.
	res           Result
	err           error
	replayStream  string // for a replay: where the original was recorded ...
	replayVersion uint64 // ... and at which stream version
	attempt       int    // failed attempts so far (conflicts)
	done          chan struct{}
}

// Execute decides and appends one command and returns its outcome. Domain refusals wrap
// the domain.Err* sentinels; a conflict that outlived every retry wraps
// eventstore.ErrConflict. If ctx ends while the command is in flight, the command may
// still be committed: retrying with the same ids is always safe.
func (p *Processor) Execute(ctx context.Context, req Request) (Result, error) {
	if req.Command == nil {
		return Result{}, fmt.Errorf("%w: no command", domain.ErrInvalidInput)
	}
	c := &call{ctx: ctx, kind: callCommand, req: req, done: make(chan struct{})}
	if err := p.submit(ctx, c); err != nil {
		return Result{}, err
	}
	if c.err != nil {
		return Result{}, c.err
	}
	if c.res.Replayed && c.replayVersion > 0 {
		recs, err := p.store.ReadStream(ctx, c.replayStream, c.replayVersion-1, 1)
		if err != nil {
			return Result{}, fmt.Errorf("find original of replayed command: %w", err)
		}
		if len(recs) == 1 {
			c.res.Position = recs[0].Position
		}
	}
	return c.res, nil
}

// Account returns an account's current state on the write side (strongly consistent:
// it includes every command this processor has acknowledged).
func (p *Processor) Account(ctx context.Context, id domain.AccountID) (domain.Account, error) {
	c := &call{ctx: ctx, kind: callReadAccount, account: id, done: make(chan struct{})}
	if err := p.submit(ctx, c); err != nil {
		return domain.Account{}, err
	}
	if c.err != nil {
		return domain.Account{}, c.err
	}
	return c.res.Accounts[0], nil
}

// Payment returns a payment's current state on the write side.
func (p *Processor) Payment(ctx context.Context, id domain.PaymentID) (domain.Payment, error) {
	c := &call{ctx: ctx, kind: callReadPayment, payment: id, done: make(chan struct{})}
	if err := p.submit(ctx, c); err != nil {
		return domain.Payment{}, err
	}
	if c.err != nil {
		return domain.Payment{}, c.err
	}
	return *c.res.Payment, nil
}

func (p *Processor) submit(ctx context.Context, c *call) error {
	select {
	case <-p.closing:
		return ErrClosed
	default:
	}
	select {
	case p.queue <- c:
	case <-ctx.Done():
		return ctx.Err()
	case <-p.closing:
		return ErrClosed
	}
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// flight is a decided batch on its way to the store and back.
type flight struct {
	calls   []*call
	bs      *batchState
	appends []eventstore.StreamAppend // bs.appends in store order
	res     eventstore.AppendResult
	err     error
}

// The loop owns the cache and decides batches; the committer goroutine appends them, one
// at a time and in order. With a store this process owns alone (embedded), the loop
// decides the next batch while the previous one is being made durable, on the cache as
// the previous batch leaves it ("speculative"): if that batch fails, the next one's
// expected versions cannot match the store and it is retried, so speculation never
// commits a decision made on state that did not happen. With a shared store another
// process could make a version number match by chance, so there the loop waits.
func (p *Processor) loop() {
	defer close(p.done)
	defer close(p.snapQueue)
	depth := 1
	if p.speculative() {
		depth = 2
	}
	toStore := make(chan *flight, depth)
	fromStore := make(chan *flight, depth)
	go p.committer(toStore, fromStore)
	defer close(toStore)

	var retry []*call
	closing := p.closing
	for {
		if closing == nil && len(p.inflight) == 0 {
			for _, c := range retry {
				c.err = ErrClosed
				close(c.done)
			}
			p.drain()
			return
		}
		// After a failed append, no batch starts until those in flight are answered: their
		// state is gone from the cache, and a batch decided on the store's state meanwhile
		// could reuse a version number an in-flight batch is about to write with other
		// content — the one way an expected version could match a state that was never
		// decided on.
		room := len(p.inflight) < depth && closing != nil && !p.poisoned
		if room && len(retry) > 0 {
			batch := p.fill(retry)
			retry = nil
			p.start(batch, toStore)
			continue
		}
		var queue <-chan *call
		if room {
			queue = p.queue
		}
		select {
		case c := <-queue:
			p.start(p.fill([]*call{c}), toStore)
		case f := <-fromStore:
			p.inflight = p.inflight[1:]
			retry = p.complete(f, p.inflight, retry)
		case <-closing:
			closing = nil
		}
	}
}

// fill tops a batch up with whatever is already queued, without waiting.
func (p *Processor) fill(batch []*call) []*call {
	for len(batch) < p.cfg.MaxBatch {
		select {
		case c := <-p.queue:
			batch = append(batch, c)
		default:
			return batch
		}
	}
	return batch
}

func (p *Processor) speculative() bool { return !p.cfg.SharedStore }

func (p *Processor) committer(in <-chan *flight, out chan<- *flight) {
	for f := range in {
		if len(f.appends) > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), p.cfg.BatchTimeout)
			f.res, f.err = p.store.Append(ctx, f.appends...)
			cancel()
		}
		out <- f
	}
}

func (p *Processor) drain() {
	for {
		select {
		case c := <-p.queue:
			c.err = ErrClosed
			close(c.done)
		default:
			return
		}
	}
}

func (p *Processor) snapshotter() {
	defer close(p.snapDone)
	for s := range p.snapQueue {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := p.cfg.Snapshots.SaveSnapshot(ctx, s); err != nil {
			// Snapshots are only a cache: a failure costs replay time later, nothing else.
			p.cfg.Logger.Warn("save snapshot", "stream", s.Stream, "version", s.Version, "err", err)
		}
		cancel()
	}
}

// batchState is the working set of one batch: the aggregates as the batch's decisions
// leave them, on top of the cache, plus what must be appended.
type batchState struct {
	base    map[string]*aggregate // state before the batch (from cache or store)
	work    map[string]*aggregate // state after the decisions so far
	assumed map[string]bool       // payment streams assumed absent without a read
	fresh   map[string]bool       // streams read from the store in this batch
	appends []eventstore.StreamAppend
	index   map[string]int // stream -> index in appends
	refs    map[*call][]eventRef
	order   []int    // appends' indexes in the order they are sent to the store
	starts  []uint64 // first position of each append, once the store answered
	now     time.Time
}

type eventRef struct{ stream, event int }

// start decides a batch and hands it to the committer.
//
// A refusal is only returned once it is known to rest on the real state of every payment
// stream the command names. A payment id missing from the cache is assumed new without a
// read (the append's NoStream expectation checks that for free); but a refusal appends
// nothing, so nothing would check the assumption, and a retry of a payment that was
// applied before a restart or an eviction would be decided anew against today's balances
// and refused — telling a client "refused" for money that moved. So a refusal made on an
// assumed stream sends the batch round again with that stream read from the store.
// Each such round reads at least one stream that the previous round assumed, so the
// rounds end; they cost one read per refused new payment, none for accepted ones.
func (p *Processor) start(batch []*call, toStore chan<- *flight) {
	live := make([]*call, 0, len(batch))
	readAll := false
	for _, c := range batch {
		if err := c.ctx.Err(); err != nil {
			c.err = err // the caller is gone; do not commit what nobody waits for
			close(c.done)
			continue
		}
		readAll = readAll || c.attempt >= 2
		live = append(live, c)
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.BatchTimeout)
	defer cancel()
	confirm := map[string]bool{} // payment streams this batch must read, not assume absent
	for attempt := 1; ; attempt++ {
		bs, err := p.prepare(ctx, live, readAll, confirm)
		if err != nil {
			p.failAll(live, err)
			return
		}
		assumed, recheck := p.decideAll(bs, live)
		if len(assumed) > 0 {
			for _, s := range assumed {
				confirm[s] = true
			}
			p.resetResults(live)
			continue
		}
		if len(recheck) > 0 && attempt < p.cfg.MaxAttempts {
			// Shared store: refusals made on cached state are confirmed on fresh state.
			for _, s := range recheck {
				p.stale[s] = true
			}
			p.resetResults(live)
			continue
		}
		if p.speculative() {
			for _, agg := range bs.work {
				p.cache.put(agg)
			}
		}
		f := &flight{calls: live, bs: bs, appends: bs.ordered()}
		toStore <- f // never blocks: the channel holds as many flights as may be in flight
		p.inflight = append(p.inflight, f)
		return
	}
}

// complete handles a batch the store has answered and returns the calls to retry.
func (p *Processor) complete(f *flight, later []*flight, retry []*call) []*call {
	defer func() {
		if len(later) == 0 {
			p.poisoned = false
		}
	}()
	if f.err == nil {
		p.commit(f.bs, f.res)
		for _, c := range f.calls {
			if p.poisoned && len(f.bs.refs[c]) == 0 && c.attempt+1 < p.cfg.MaxAttempts {
				// An earlier batch failed: an answer that appended nothing may rest on
				// its speculative state. Decide it again.
				c.attempt++
				p.resetResults([]*call{c})
				retry = append(retry, c)
				continue
			}
			p.finishCall(c, f.bs, f.res)
		}
		return retry
	}
	// The append failed. Forget the touched streams' cached state: with speculation the
	// cache holds this batch's (and later batches') unconfirmed state; with a shared
	// store the outcome may be unknown (a timeout after commit).
	var conflict *eventstore.ConflictError
	isConflict := errors.As(f.err, &conflict)
	if isConflict {
		p.mustRead[conflict.Stream] = true
	}
	if p.speculative() {
		p.poisoned = len(later) > 0
		for _, g := range append([]*flight{f}, later...) {
			for _, a := range g.appends {
				p.cache.remove(a.Stream)
			}
		}
	} else {
		for _, a := range f.appends {
			p.stale[a.Stream] = true
		}
	}
	for _, c := range f.calls {
		c.attempt++
		if isConflict && c.attempt < p.cfg.MaxAttempts {
			p.resetResults([]*call{c})
			retry = append(retry, c)
			continue
		}
		if isConflict {
			c.err = fmt.Errorf("ledger: %d attempts conflicted with other writers: %w", c.attempt, f.err)
		} else {
			c.err = fmt.Errorf("ledger: append: %w", f.err)
		}
		c.res = Result{}
		close(c.done)
	}
	return retry
}

func (p *Processor) resetResults(calls []*call) {
	for _, c := range calls {
		c.res, c.err, c.replayStream, c.replayVersion = Result{}, nil, "", 0
	}
}

func (p *Processor) failAll(calls []*call, err error) {
	for _, c := range calls {
		c.err = err
		c.res = Result{}
		close(c.done)
	}
}

// prepare makes sure every aggregate the batch touches is in the cache and up to date,
// reading from the store in parallel what is missing or stale.
func (p *Processor) prepare(ctx context.Context, calls []*call, readAll bool, confirm map[string]bool) (*batchState, error) {
	bs := &batchState{
		base: map[string]*aggregate{}, work: map[string]*aggregate{}, assumed: map[string]bool{}, fresh: map[string]bool{},
		index: map[string]int{}, refs: map[*call][]eventRef{}, now: p.cfg.Clock(),
	}
	var jobs []loadJob
	want := func(stream string, optimistic bool) {
		if _, seen := bs.base[stream]; seen {
			return
		}
		if agg, ok := p.cache.get(stream); ok {
			bs.base[stream] = agg
			if p.stale[stream] {
				jobs = append(jobs, loadJob{stream, agg})
			}
			return
		}
		if agg := p.inflightState(stream); agg != nil {
			// Evicted from the cache while a batch in flight writes it: the store does not
			// have that state yet, the flight does.
			bs.base[stream] = agg
			p.cache.put(agg)
			return
		}
		if optimistic && !readAll && !p.mustRead[stream] && !confirm[stream] {
			// A new payment id: assume the stream is absent. The append's NoStream
			// expectation checks it atomically; a retry of an old payment that fell out of
			// the cache costs one conflict and one read.
			bs.base[stream] = &aggregate{stream: stream}
			bs.assumed[stream] = true
			return
		}
		bs.base[stream] = nil
		jobs = append(jobs, loadJob{stream, nil})
	}
	// Payments first: commands on existing payments touch the payment's accounts.
	for _, c := range calls {
		switch c.kind {
		case callReadPayment:
			want(domain.PaymentStream(c.payment), false)
		case callCommand:
			creates := false
			switch c.req.Command.(type) {
			case domain.Transfer, domain.BatchTransfer, domain.Authorise:
				creates = true
			}
			for _, id := range c.req.Command.Payments() {
				want(domain.PaymentStream(id), creates)
			}
		}
	}
	if err := p.runLoads(ctx, bs, jobs); err != nil {
		return nil, err
	}
	jobs = jobs[:0]
	for _, c := range calls {
		switch c.kind {
		case callReadAccount:
			want(domain.AccountStream(c.account), false)
		case callCommand:
			for _, id := range c.req.Command.Accounts() {
				want(domain.AccountStream(id), false)
			}
			for _, id := range c.req.Command.Payments() {
				if agg := bs.base[domain.PaymentStream(id)]; agg != nil {
					for _, acc := range domain.AccountsOf(agg.payment) {
						want(domain.AccountStream(acc), false)
					}
				}
			}
		}
	}
	if err := p.runLoads(ctx, bs, jobs); err != nil {
		return nil, err
	}
	return bs, nil
}

// inflightState returns the newest state of stream that a batch in flight will write, or
// nil. With speculation the cache holds that state, but a cache smaller than the working
// set may have evicted it.
func (p *Processor) inflightState(stream string) *aggregate {
	for i := len(p.inflight) - 1; i >= 0; i-- {
		if agg, ok := p.inflight[i].bs.work[stream]; ok {
			return agg
		}
	}
	return nil
}

// loadJob reads one stream: from scratch, or catching up from a cached state.
type loadJob struct {
	stream string
	from   *aggregate // nil: load from scratch (with snapshots for accounts)
}

func (p *Processor) runLoads(ctx context.Context, bs *batchState, jobs []loadJob) error {
	if len(jobs) == 0 {
		return nil
	}
	results := make([]*aggregate, len(jobs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(p.cfg.LoadWorkers)
	for i, j := range jobs {
		g.Go(func() error {
			var agg *aggregate
			var err error
			switch {
			case j.from != nil:
				agg, err = loadStream(gctx, p.store, j.from)
			default:
				id, isAccount, ok := streamKind(j.stream)
				switch {
				case !ok:
					err = fmt.Errorf("ledger: %q is not an account or payment stream", j.stream)
				case isAccount:
					agg, err = loadAccount(gctx, p.store, p.cfg.Snapshots, domain.AccountID(id))
				default:
					agg, err = loadPayment(gctx, p.store, domain.PaymentID(id))
				}
			}
			results[i] = agg
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("ledger: load aggregates: %w", err)
	}
	for i, j := range jobs {
		bs.base[j.stream] = results[i]
		bs.fresh[j.stream] = true
		delete(p.stale, j.stream)
		delete(p.mustRead, j.stream)
		p.cache.put(results[i])
	}
	return nil
}

// ordered returns the batch's appends with every account stream before every payment
// stream. A payment command's payment event is then its last event in the log, so the
// position of that one event is "the command's position" — the same number whether the
// command was just made or is a retry answered from the payment stream alone.
func (bs *batchState) ordered() []eventstore.StreamAppend {
	bs.order = bs.order[:0]
	for pass := range 2 {
		for i, a := range bs.appends {
			_, isAccount, _ := streamKind(a.Stream)
			if isAccount == (pass == 0) {
				bs.order = append(bs.order, i)
			}
		}
	}
	out := make([]eventstore.StreamAppend, len(bs.appends))
	for k, i := range bs.order {
		out[k] = bs.appends[i]
	}
	return out
}

// current returns the working state of a stream in this batch.
func (bs *batchState) current(stream string) *aggregate {
	if a, ok := bs.work[stream]; ok {
		return a
	}
	if a := bs.base[stream]; a != nil {
		return a
	}
	return &aggregate{stream: stream}
}

// decideAll decides every call in order on the batch's working state and collects the
// events to append. It returns the payment streams a refusal assumed absent without a
// read (always to be confirmed), and the streams whose cached state a refusal relied on
// when those must be confirmed against the store (shared store only).
func (p *Processor) decideAll(bs *batchState, calls []*call) (assumed, recheck []string) {
	for _, c := range calls {
		switch c.kind {
		case callReadAccount:
			a := bs.current(domain.AccountStream(c.account)).account
			if !a.Exists() {
				c.err = fmt.Errorf("%w: account %s does not exist", domain.ErrAccountUnknown, c.account)
			}
			c.res.Accounts = []domain.Account{a}
			continue
		case callReadPayment:
			pay := bs.current(domain.PaymentStream(c.payment)).payment
			if !pay.Exists() {
				c.err = fmt.Errorf("%w: payment %s does not exist", domain.ErrPaymentUnknown, c.payment)
			}
			c.res.Payment = &pay
			continue
		}
		cmd := c.req.Command
		state := domain.State{Accounts: map[domain.AccountID]domain.Account{}, Payments: map[domain.PaymentID]domain.Payment{}}
		var touched []string
		for _, id := range cmd.Payments() {
			s := domain.PaymentStream(id)
			state.Payments[id] = bs.current(s).payment
			touched = append(touched, s)
		}
		accounts := cmd.Accounts()
		for _, id := range cmd.Payments() {
			accounts = append(accounts, domain.AccountsOf(state.Payments[id])...)
		}
		for _, id := range accounts {
			s := domain.AccountStream(id)
			state.Accounts[id] = bs.current(s).account
			touched = append(touched, s)
		}
		events, err := domain.Decide(state, cmd, bs.now)
		if err == nil {
			err = domain.CheckBalanced(events)
			if err != nil {
				err = fmt.Errorf("ledger: refusing an unbalanced decision (a bug): %w", err)
			}
		}
		if err != nil {
			c.err = err
			for _, id := range cmd.Payments() {
				if s := domain.PaymentStream(id); bs.assumed[s] {
					assumed = append(assumed, s)
				}
			}
			if p.cfg.SharedStore && domain.IsDomainError(err) {
				recheck = append(recheck, p.unconfirmed(bs, touched)...)
			}
			continue
		}
		if len(events) == 0 {
			p.replayResult(bs, c, state, accounts)
			continue
		}
		if err := p.stage(bs, c, events); err != nil {
			c.err = err
			continue
		}
		p.result(bs, c, accounts)
	}
	return assumed, recheck
}

// unconfirmed lists the touched streams whose state came from the cache rather than from a
// read in this batch.
func (p *Processor) unconfirmed(bs *batchState, streams []string) []string {
	var out []string
	for _, s := range streams {
		if !bs.fresh[s] && !bs.assumed[s] {
			out = append(out, s)
		}
	}
	return out
}

// stage encodes a decision's events, adds them to the batch's appends and folds them into
// the working state.
func (p *Processor) stage(bs *batchState, c *call, events []domain.Event) error {
	type encoded struct {
		stream string
		data   eventstore.EventData
	}
	enc := make([]encoded, 0, len(events))
	meta := c.req.Meta
	if meta.CorrelationID == "" {
		if ids := c.req.Command.Payments(); len(ids) > 0 {
			meta.CorrelationID = string(ids[0])
		}
	}
	for _, e := range events {
		name, data, err := domain.EncodeEvent(e)
		if err != nil {
			return fmt.Errorf("ledger: %w", err)
		}
		enc = append(enc, encoded{e.Stream(), eventstore.EventData{ID: p.cfg.NewEventID(), Type: name, Data: data, Metadata: meta}})
	}
	for i, e := range events {
		s := enc[i].stream
		idx, ok := bs.index[s]
		if !ok {
			base := bs.current(s)
			idx = len(bs.appends)
			bs.index[s] = idx
			bs.appends = append(bs.appends, eventstore.StreamAppend{Stream: s, Expected: eventstore.Exact(base.version)})
		}
		bs.appends[idx].Events = append(bs.appends[idx].Events, enc[i].data)
		bs.refs[c] = append(bs.refs[c], eventRef{idx, len(bs.appends[idx].Events) - 1})

		// The batch owns its work copies and may update them in place; the base (the
		// cache's state) is copied once, on the batch's first event for the stream.
		next, owned := bs.work[s]
		if !owned {
			copied := *bs.current(s)
			next = &copied
			bs.work[s] = next
		}
		switch e.(type) {
		case domain.AccountEvent:
			next.account = domain.EvolveAccount(next.account, e)
		case domain.PaymentEvent:
			next.payment = domain.EvolvePayment(next.payment, e)
		}
		next.version++
	}
	return nil
}

func (p *Processor) result(bs *batchState, c *call, accounts []domain.AccountID) {
	seen := make(map[domain.AccountID]bool, len(accounts))
	for _, id := range accounts {
		if !seen[id] {
			seen[id] = true
			c.res.Accounts = append(c.res.Accounts, bs.current(domain.AccountStream(id)).account)
		}
	}
	if ids := c.req.Command.Payments(); len(ids) > 0 {
		pay := bs.current(domain.PaymentStream(ids[0])).payment
		c.res.Payment = &pay
	}
}

// replayResult answers a command that changes nothing: a retry of an applied command, or
// a no-op such as freezing a frozen account. It records where the original (or the latest
// state) was written so its position can be reported.
func (p *Processor) replayResult(bs *batchState, c *call, state domain.State, accounts []domain.AccountID) {
	c.res.Replayed = true
	p.result(bs, c, accounts)
	var op domain.Op
	switch cmd := c.req.Command.(type) {
	case domain.Transfer, domain.BatchTransfer, domain.Authorise:
		id := cmd.Payments()[0]
		op, _ = state.Payments[id].FindOp(domain.OpCreate, "")
		c.replayStream = domain.PaymentStream(id)
	case domain.Capture:
		op, _ = state.Payments[cmd.PaymentID].FindOp(domain.OpCapture, cmd.CaptureID)
		c.replayStream = domain.PaymentStream(cmd.PaymentID)
	case domain.Refund:
		op, _ = state.Payments[cmd.PaymentID].FindOp(domain.OpRefund, cmd.RefundID)
		c.replayStream = domain.PaymentStream(cmd.PaymentID)
	case domain.Void, domain.Expire:
		// Nothing to do: the answer is the payment as it stands.
		id := cmd.Payments()[0]
		op.Version = state.Payments[id].Version
		c.replayStream = domain.PaymentStream(id)
	case domain.OpenAccount:
		op.Version = 1
		c.replayStream = domain.AccountStream(cmd.AccountID)
	case domain.FreezeAccount, domain.UnfreezeAccount, domain.CloseAccount:
		id := cmd.Accounts()[0]
		op.Version = state.Accounts[id].Version
		c.replayStream = domain.AccountStream(id)
	}
	c.replayVersion = op.Version
}

// commit records a successful append: the batch's state becomes the cache's (with
// speculation it already is), and accounts that crossed a snapshot boundary are
// snapshotted.
func (p *Processor) commit(bs *batchState, res eventstore.AppendResult) {
	for s, agg := range bs.work {
		if v, ok := res.Versions[s]; ok && v != agg.version {
			// The store and our fold disagree: never trust the cache for this stream again.
			p.cfg.Logger.Error("stream version mismatch after append", "stream", s, "store", v, "cache", agg.version)
			p.cache.remove(s)
			continue
		}
		if !p.speculative() {
			p.cache.put(agg)
		}
		var before uint64
		if base := bs.base[s]; base != nil {
			before = base.version
		}
		if p.cfg.Snapshots != nil && agg.account.Exists() && agg.version/p.cfg.SnapshotEvery > before/p.cfg.SnapshotEvery {
			if state, err := encodeAccountSnapshot(agg.account); err == nil {
				select {
				case p.snapQueue <- eventstore.Snapshot{Stream: s, Version: agg.version, Schema: accountSnapshotSchema, State: state}:
				default: // the writer is behind; the next boundary will do
				}
			}
		}
	}
}

// finishCall computes a call's position and wakes its caller.
func (p *Processor) finishCall(c *call, bs *batchState, res eventstore.AppendResult) {
	if bs.starts == nil && len(bs.order) > 0 {
		bs.starts = make([]uint64, len(bs.appends))
		next := res.FirstPosition
		for _, i := range bs.order {
			bs.starts[i] = next
			next += uint64(len(bs.appends[i].Events))
		}
	}
	for _, r := range bs.refs[c] {
		if pos := bs.starts[r.stream] + uint64(r.event); pos > c.res.Position {
			c.res.Position = pos
		}
	}
	if c.res.Replayed && c.replayVersion > 0 {
		// The original may be in this very batch: then its position is known here;
		// otherwise Execute looks it up in the store.
		if idx, ok := bs.index[c.replayStream]; ok {
			if base := bs.base[c.replayStream]; base != nil && c.replayVersion > base.version {
				c.res.Position = bs.starts[idx] + (c.replayVersion - base.version - 1)
				c.replayVersion = 0
			}
		}
	}
	close(c.done)
}
