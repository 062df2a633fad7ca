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

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// ErrClosed is returned by calls made after Close.
var ErrClosed = errors.New("ledger: processor is closed")

// Config tunes a Processor. The zero value of every field has a sensible default;
// negative values are refused by Validate (they used to become defaults silently).
type Config struct {
	Clock      func() time.Time // the decision clock (authorisation expiry); default time.Now
	NewEventID func() string    // default: a UUIDv7 (time-ordered, unique); called from one goroutine

	// MaxBatch bounds the commands decided and appended together: one append, one fsync
	// or commit. 512 already amortises the commit to nothing measurable per transfer, and
	// keeps one batch's append well under the stores' request limits.
	MaxBatch int
	// QueueSize bounds the commands waiting for the loop (default 8192, 16 full batches):
	// beyond it callers block in Execute, which is the back-pressure a server needs.
	QueueSize int
	// CacheSize bounds the aggregates kept in memory (LRU; default 100,000, about 40 MB).
	CacheSize int
	// MaxAttempts bounds decide+append attempts of a call when the store reports
	// conflicts (another writer, or a speculative batch that failed); default 8.
	MaxAttempts int
	// LoadWorkers bounds parallel stream reads when loading a batch's aggregates; default 16.
	LoadWorkers int

	// Snapshots, when set, receives a snapshot of an account every SnapshotEvery events
	// (default 1,000) and is read when an account is not in the cache.
	Snapshots     eventstore.SnapshotStore
	SnapshotEvery uint64
	// SnapshotKey authenticates snapshots (HMAC-SHA256, at least MinSnapshotKeyBytes): a
	// snapshot is used only if this key made it, so it must be a secret the database's
	// roles do not hold. Processors sharing a store share the key, or ignore each other's
	// snapshots. Nil means a random key for this processor: its snapshots then only serve
	// it, and a restart folds every account from its events once.
	SnapshotKey []byte

	// SharedStore says other processes may append to the same store (PostgreSQL with
	// several instances). Then a refusal made on cached state is re-checked against the
	// store before it is returned, because the cache may be behind.
	SharedStore bool

	// BatchTimeout bounds the store calls of one batch; default 30s.
	BatchTimeout time.Duration

	// Limits are the ceilings on amounts and credit limits every decision applies (the
	// zero value is domain.DefaultLimits).
	Limits domain.Limits

	Logger *slog.Logger

	// Observer, when set, sees every command, batch append and retry (traces and
	// metrics; see observe.go). Nil observes nothing and costs nothing.
	Observer Observer
}

// Upper bounds that catch a unit mistake (bytes for entries, nanoseconds for seconds)
// before it becomes a process that eats the machine.
const (
	maxMaxBatch    = 1 << 16
	maxQueueSize   = 1 << 24
	maxCacheSize   = 1 << 26
	maxMaxAttempts = 1000
	maxLoadWorkers = 1024
)

// Validate reports every problem with c at once. Zero means "the default"; negative
// values and absurd ones are refused.
func (c Config) Validate() error {
	var errs []error
	bounded := func(name string, v, limit int) {
		if v < 0 || v > limit {
			errs = append(errs, fmt.Errorf("ledger config: %s is %d, want 0 (the default) to %d", name, v, limit))
		}
	}
	bounded("MaxBatch", c.MaxBatch, maxMaxBatch)
	bounded("QueueSize", c.QueueSize, maxQueueSize)
	bounded("CacheSize", c.CacheSize, maxCacheSize)
	bounded("MaxAttempts", c.MaxAttempts, maxMaxAttempts)
	bounded("LoadWorkers", c.LoadWorkers, maxLoadWorkers)
	if c.BatchTimeout < 0 {
		errs = append(errs, fmt.Errorf("ledger config: BatchTimeout is %s, want 0 (the default) or more", c.BatchTimeout))
	}
	if c.SnapshotKey != nil && len(c.SnapshotKey) < MinSnapshotKeyBytes {
		errs = append(errs, fmt.Errorf("ledger config: SnapshotKey is %d bytes, want at least %d", len(c.SnapshotKey), MinSnapshotKeyBytes))
	}
	if err := c.Limits.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("ledger config: %w", err))
	}
	return errors.Join(errs...)
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
	if c.MaxBatch == 0 {
		c.MaxBatch = 512
	}
	if c.QueueSize == 0 {
		c.QueueSize = 8192
	}
	if c.CacheSize == 0 {
		c.CacheSize = 100_000
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 8
	}
	if c.LoadWorkers == 0 {
		c.LoadWorkers = 16
	}
	if c.SnapshotEvery == 0 {
		c.SnapshotEvery = 1000
	}
	if c.BatchTimeout == 0 {
		c.BatchTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.SnapshotKey == nil {
		c.SnapshotKey = make([]byte, MinSnapshotKeyBytes)
		rand.Read(c.SnapshotKey) // never fails (crypto/rand since Go 1.24)
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
	// AccountPositions[i] is the log position Accounts[i] is true at: the account's last
	// event up to and including this command's. For a replay the accounts are as they are
	// now, and so are their positions. PaymentPosition is the same for Payment.
	AccountPositions []uint64
	PaymentPosition  uint64
}

// Processor executes commands. It is safe for concurrent use.
//
// Callers' commands queue (queue.go) for one loop goroutine, which decides a batch
// (prepare.go loads what it touches, decide.go decides each command) and hands it to one
// committer goroutine that appends it (pipeline.go); the loop then finishes each call
// (finish.go) and wakes its caller. The pipeline keeps these invariants:
//
//  1. Only the loop touches the cache, the batch states and the fields below marked as
//     its own; callers and the committer meet it only through channels.
//  2. Every batch is ONE atomic multi-stream append whose expected versions are the
//     versions its decisions were made on. Whatever the cache believed, the store
//     refuses an append decided on any other state (eventstore.ErrConflict).
//  3. The committer appends batches one at a time, in the order they were decided.
//  4. At most depth batches are in flight: 2 with a store this process owns alone
//     (speculative: the next batch is decided on the state the previous one leaves,
//     before it is durable), 1 with a shared store (another writer could make a
//     speculated version number match by chance).
//  5. A caller is answered only after its batch's append returned: an acknowledged
//     command is durable, and a refusal is never sent ahead of the state it rests on.
//  6. A refusal rests only on state that is real: a payment stream assumed absent
//     without a read is read before a refusal that names it is returned (start); with a
//     shared store, cached state a refusal used is re-read too.
//  7. After a failed append, the failed batch's and every later in-flight batch's
//     streams leave the cache, no new batch starts until the in-flight ones are
//     answered (poisoned), and their answers that appended nothing are decided again:
//     they may rest on the failed batch's speculative state.
//  8. One caller's command never fails another's: a batch holds at most MaxBatch
//     commands whose events can never exceed one append's limit (domain.MaxEvents),
//     metadata is validated per request before it joins a batch (Execute), and if the
//     store still refuses a batch as malformed, each of its calls is tried again alone.
//  9. Every retry is bounded: a call is decided at most MaxAttempts times, then fails
//     with an error wrapping eventstore.ErrConflict.
//  10. Close answers every queued call with ErrClosed, waits for the batches in flight
//     to be answered, and only then returns.
type Processor struct {
	store eventstore.Store
	cfg   Config
	hooks pipelineHooks

	queue   chan *call
	closing chan struct{}
	done    chan struct{}
	once    sync.Once

	snapQueue chan snapshotRequest
	snapDone  chan struct{}
	snapAuth  snapshotAuth
	snapWarn  *snapshotWarnings

	// Owned by the loop goroutine.
	inflight []*flight // decided batches the store has not answered yet, oldest first
	backlog  []*call   // calls taken from the queue or to be retried, waiting for a batch
	cache    *lru
	stale    map[string]bool // cached streams to catch up from the store before use
	mustRead map[string]bool // payment streams that may not be assumed absent
	poisoned bool            // a batch failed while later ones were in flight: drain them first
}

// pipelineHooks let the package's own tests observe the pipeline at the points where its
// branches split, so each branch can be driven deterministically. Nil in production.
type pipelineHooks struct {
	// decided is called by the loop after a batch was handed to the committer.
	decided func(calls int)
}

// New starts a processor on store. Close stops it.
func New(store eventstore.Store, cfg Config) (*Processor, error) {
	if store == nil {
		return nil, errors.New("ledger: a store is required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	p := &Processor{
		store:     store,
		cfg:       cfg,
		queue:     make(chan *call, cfg.QueueSize),
		closing:   make(chan struct{}),
		done:      make(chan struct{}),
		snapQueue: make(chan snapshotRequest, snapshotQueueSize),
		snapDone:  make(chan struct{}),
		snapAuth:  snapshotAuth{key: cfg.SnapshotKey},
		snapWarn:  &snapshotWarnings{logged: map[string]bool{}, log: cfg.Logger},
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

// Execute decides and appends one command and returns its outcome. Domain refusals wrap
// the domain.Err* sentinels; a conflict that outlived every retry wraps
// eventstore.ErrConflict. If ctx ends while the command is in flight, the command may
// still be committed: retrying with the same ids is always safe.
func (p *Processor) Execute(ctx context.Context, req Request) (Result, error) {
	if p.cfg.Observer == nil || req.Command == nil {
		return p.execute(ctx, req)
	}
	ctx, traceParent, done := p.cfg.Observer.Command(ctx, req.Command)
	if traceParent != "" {
		req.Meta.TraceParent = traceParent
	}
	res, err := p.execute(ctx, req)
	done(res, err)
	return res, err
}

func (p *Processor) execute(ctx context.Context, req Request) (Result, error) {
	if req.Command == nil {
		return Result{}, fmt.Errorf("%w: no command", domain.ErrInvalidInput)
	}
	// Checked here, alone, because the store would refuse the whole batch this request
	// joins: one caller's bad metadata must never fail anyone else's payment.
	if err := eventstore.ValidateMetadata(req.Meta); err != nil {
		return Result{}, fmt.Errorf("%w: %w", domain.ErrInvalidInput, err)
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

// AccountAt is Account with the log position the state is true at (the account's last
// event).
func (p *Processor) AccountAt(ctx context.Context, id domain.AccountID) (domain.Account, uint64, error) {
	c := &call{ctx: ctx, kind: callReadAccount, account: id, done: make(chan struct{})}
	if err := p.submit(ctx, c); err != nil {
		return domain.Account{}, 0, err
	}
	if c.err != nil {
		return domain.Account{}, 0, c.err
	}
	return c.res.Accounts[0], c.res.AccountPositions[0], nil
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
