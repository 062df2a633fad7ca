package kurrentdb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	kdb "github.com/kurrent-io/KurrentDB-Client-Go/kurrentdb"

	"github.com/securepay/securepay/eventstore"
)

// Store is an eventstore.Store (and eventstore.SnapshotStore) on KurrentDB. It is safe for
// concurrent use; see the package comment for the design.
type Store struct {
	cfg    Config
	client *kdb.Client
	names  streamNames
	signal *eventstore.Signal // local commits, for subscribers in this process

	// writer is a one-slot semaphore: one append in flight per process. Appends are
	// serialised by the log stream anyway; queueing them here instead of racing costs no
	// throughput and spares a wasted round trip per lost race. It also guards tip.
	writer chan struct{}
	tip    logTip
	tipOK  bool // tip is the log's end as of this process's last commit
	// seen holds, per stream, a version the stream is known to have reached (from this
	// process's commits and from conflicts). Versions only grow, so an Exact or NoStream
	// expectation below it is certain to fail and is refused without a round trip: that
	// keeps many goroutines racing one stream from each costing the server an append.
	// Guarded by writer; bounded by maxSeenStreams.
	seen map[string]uint64

	mu       sync.Mutex // guards closed and the Add side of inflight
	closed   bool
	inflight sync.WaitGroup
	life     context.Context // cancelled by Close, ending every operation in flight
	endLife  context.CancelFunc
}

var (
	_ eventstore.Store         = (*Store)(nil)
	_ eventstore.SnapshotStore = (*Store)(nil)
)

// Open connects to the server named by cfg.URL and checks that it supports multi-stream
// appends. Nothing is written: the log stream is created by the first append.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	conf, err := kdb.ParseConnectionString(cfg.URL)
	if err != nil {
		return nil, errors.New("kurrentdb open: URL is not a valid KurrentDB connection string")
	}
	conf.Logger = clientLogger(cfg.Logger)
	client, err := kdb.NewClient(conf)
	if err != nil {
		return nil, fmt.Errorf("kurrentdb open: %w", err)
	}
	if err := checkServer(ctx, client); err != nil {
		return nil, err
	}
	life, endLife := context.WithCancel(context.Background())
	return &Store{
		cfg:     cfg,
		client:  client,
		names:   streamNames{namespace: cfg.Namespace},
		signal:  eventstore.NewSignal(),
		writer:  make(chan struct{}, 1),
		seen:    make(map[string]uint64),
		life:    life,
		endLife: endLife,
	}, nil
}

// checkServer asks the server's version. The client call takes no context, so it runs
// aside; if ctx ends first the client is closed once the call returns (closing it while
// the call is in flight can panic inside the client).
func checkServer(ctx context.Context, client *kdb.Client) error {
	type answer struct {
		v   *kdb.ServerVersion
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		v, err := client.GetServerVersion()
		ch <- answer{v, err}
	}()
	select {
	case a := <-ch:
		if a.err != nil {
			_ = client.Close()
			return fmt.Errorf("kurrentdb open: contact server: %w", a.err)
		}
		if !a.v.IsAtLeast(25, 0, 0) {
			_ = client.Close()
			return fmt.Errorf("kurrentdb open: server version %d.%d.%d: %w", a.v.Major, a.v.Minor, a.v.Patch, ErrUnsupportedServer)
		}
		return nil
	case <-ctx.Done():
		go func() {
			<-ch
			_ = client.Close()
		}()
		return fmt.Errorf("kurrentdb open: contact server: %w", ctx.Err())
	}
}

// begin registers an operation; the returned context ends when ctx ends or the store
// closes, and done must be called when the operation no longer uses the client.
func (s *Store) begin(ctx context.Context) (context.Context, func(), error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, nil, eventstore.ErrClosed
	}
	s.inflight.Add(1)
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.life, cancel)
	return ctx, func() {
		stop()
		cancel()
		s.inflight.Done()
	}, nil
}

// Close ends every operation in flight, waits for them, then closes the connection. The
// client may panic if closed while a call is starting, hence the wait.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return eventstore.ErrClosed
	}
	s.closed = true
	s.mu.Unlock()
	s.endLife()
	s.signal.Broadcast() // idle subscribers re-read, see ErrClosed and return
	s.inflight.Wait()
	return s.client.Close()
}

// Head returns the last position of the log, read from the server (another process may
// have committed since this one last did).
func (s *Store) Head(ctx context.Context) (uint64, error) {
	opCtx, done, err := s.begin(ctx)
	if err != nil {
		return 0, err
	}
	defer done()
	t, err := s.readTip(opCtx)
	if err != nil {
		return 0, s.opError(ctx, fmt.Errorf("head: %w", err))
	}
	return t.position, nil
}

// Append: see eventstore.Store and the package comment.
func (s *Store) Append(ctx context.Context, appends ...eventstore.StreamAppend) (eventstore.AppendResult, error) {
	if err := eventstore.ValidateAppend(appends); err != nil {
		return eventstore.AppendResult{}, err
	}
	if err := checkAppendText(appends); err != nil {
		return eventstore.AppendResult{}, err
	}
	opCtx, done, err := s.begin(ctx)
	if err != nil {
		return eventstore.AppendResult{}, err
	}
	defer done()
	res, err := s.append(opCtx, appends)
	return res, s.opError(ctx, err)
}

func (s *Store) append(ctx context.Context, appends []eventstore.StreamAppend) (eventstore.AppendResult, error) {
	select {
	case s.writer <- struct{}{}:
	case <-ctx.Done():
		return eventstore.AppendResult{}, fmt.Errorf("append: waiting for this process's previous append: %w", ctx.Err())
	}
	defer func() { <-s.writer }()

	for i, a := range appends {
		if a.Expected.IsAny() {
			continue
		}
		if v, ok := s.seen[a.Stream]; ok && v > a.Expected.Version() {
			return eventstore.AppendResult{}, s.conflictAt(ctx, appends, i, v)
		}
	}
	for attempt := range s.cfg.MaxAppendAttempts {
		if attempt > 0 {
			if err := backoff(ctx, attempt); err != nil {
				return eventstore.AppendResult{}, fmt.Errorf("append: %w", err)
			}
		}
		p, reqs, err := s.plan(ctx, appends, attempt == 0)
		if err != nil {
			s.tipOK = false
			return eventstore.AppendResult{}, fmt.Errorf("append: %w", err)
		}
		out, err := s.send(ctx, p, reqs, appends)
		switch out {
		case committed:
			s.tip, s.tipOK = p.after, true
			for stream, v := range p.result.Versions {
				s.saw(stream, v)
			}
			s.signal.Broadcast()
			return p.result, nil
		case retry:
			s.tipOK = false
		default:
			// A caller's conflict leaves the log as it was; anything else may hide a commit.
			if !errors.Is(err, eventstore.ErrConflict) {
				s.tipOK = false
			}
			return eventstore.AppendResult{}, err
		}
	}
	return eventstore.AppendResult{}, fmt.Errorf("append: %w (%d attempts)", ErrContention, s.cfg.MaxAppendAttempts)
}

// maxSeenStreams bounds Store.seen; when full it is emptied, which costs only round trips.
const maxSeenStreams = 100_000

// saw records that stream has reached version v; the writer slot must be held.
func (s *Store) saw(stream string, v uint64) {
	if v <= s.seen[stream] {
		return
	}
	if len(s.seen) >= maxSeenStreams {
		clear(s.seen)
	}
	s.seen[stream] = v
}

// opError makes an operation's error say why it ended: the caller's context (so that
// errors.Is(err, context.DeadlineExceeded) holds even when the client reports the deadline
// in its own terms) or Close (ErrClosed).
func (s *Store) opError(caller context.Context, err error) error {
	if err == nil {
		return nil
	}
	if cerr := caller.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w: %w", cerr, err)
	}
	if s.life.Err() != nil && !errors.Is(err, eventstore.ErrClosed) {
		return fmt.Errorf("%w: %w", eventstore.ErrClosed, err)
	}
	return err
}

// backoff spreads out the retries of processes racing for the log's next slot.
func backoff(ctx context.Context, attempt int) error {
	limit := min(time.Millisecond<<min(attempt, 6), 50*time.Millisecond)
	t := time.NewTimer(rand.N(limit) + 1)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// plan reads what an attempt needs (the tip unless this process holds it, and the version
// of every stream appended with Any) and computes the attempt. On a first attempt an Any
// stream this process has seen is pinned to the version it saw, without a read: if another
// process wrote it since, the pinned expectation fails and the retry reads.
func (s *Store) plan(ctx context.Context, appends []eventstore.StreamAppend, firstAttempt bool) (*appendPlan, []kdb.AppendStreamRequest, error) {
	if !s.tipOK {
		t, err := s.readTip(ctx)
		if err != nil {
			return nil, nil, err
		}
		s.tip, s.tipOK = t, true
	}
	bases := make([]uint64, len(appends))
	for i, a := range appends {
		if !a.Expected.IsAny() {
			bases[i] = a.Expected.Version()
			continue
		}
		if v, ok := s.seen[a.Stream]; ok && firstAttempt {
			bases[i] = v
			continue
		}
		v, err := s.streamVersion(ctx, a.Stream)
		if err != nil {
			return nil, nil, err
		}
		s.saw(a.Stream, v)
		bases[i] = v
	}
	p, err := buildPlan(s.tip, appends, bases, s.cfg.Clock(), uuid.New)
	if err != nil {
		return nil, nil, err
	}
	reqs, err := p.requests(s.names)
	if err != nil {
		return nil, nil, err
	}
	return p, reqs, nil
}

type outcome uint8

const (
	failed    outcome = iota // not committed (or unknown, see ErrOutcomeUnknown); err says why
	committed                // the plan is in the log
	retry                    // not committed and never will be; plan again from a fresh tip
)

// slotState is what the log stream holds at the first position a plan claims.
type slotState uint8

const (
	slotEmpty slotState = iota // nothing yet: the plan may still commit
	slotOurs                   // the plan's own first entry: it committed
	slotTaken                  // another attempt's entry: the plan can never commit
)

// send submits one plan and works out its fate. An error that leaves the outcome unknown
// is settled through the log stream: the slot at the plan's first position is a fence,
// since every attempt planned from the same tip expects the log stream at the same
// revision, at most one of them ever commits, and whichever did is the entry in that slot.
// While the slot is empty the identical request (same event ids) is sent again, up to
// MaxResends times; a resend can only commit this same plan.
func (s *Store) send(ctx context.Context, p *appendPlan, reqs []kdb.AppendStreamRequest, appends []eventstore.StreamAppend) (outcome, error) {
	var unsettled error // the last error that left the outcome unknown
	for range s.cfg.MaxResends + 1 {
		_, err := s.client.MultiStreamAppend(ctx, slices.Values(reqs))
		if err == nil {
			return committed, nil
		}
		if errorCode(err) == kdb.ErrorCodeUnsupportedFeature {
			return failed, fmt.Errorf("append: %w: %w", ErrUnsupportedServer, err)
		}
		if !definitelyNotApplied(err) {
			unsettled = err
			st, rerr := s.slot(ctx, p)
			switch {
			case rerr != nil && ctx.Err() != nil:
				return failed, fmt.Errorf("append: %w: %w (then reading the log: %w)", ErrOutcomeUnknown, err, rerr)
			case rerr != nil:
				continue // the server may be back by the next send
			case st == slotOurs:
				return committed, nil
			case st == slotTaken:
				return retry, nil
			}
			continue
		}
		if unsettled != nil {
			// An earlier send of this plan may have committed: then the streams moved and
			// this rejection is about our own commit.
			st, rerr := s.slot(ctx, p)
			switch {
			case rerr != nil:
				return failed, fmt.Errorf("append: %w: %w (then reading the log: %w)", ErrOutcomeUnknown, unsettled, rerr)
			case st == slotOurs:
				return committed, nil
			case st == slotEmpty && !isConflict(err):
				// An earlier send may still be in flight and commit later.
				return failed, fmt.Errorf("append: %w: %w (then: %w)", ErrOutcomeUnknown, unsettled, err)
			}
			// The slot is another's, or a stream moved without the log moving (impossible
			// for a store-written stream, so the plan's expectations can never hold again).
		}
		return s.rejected(ctx, appends, err)
	}
	return failed, fmt.Errorf("append: %w after %d sends: %w", ErrOutcomeUnknown, s.cfg.MaxResends+1, unsettled)
}

// rejected turns a definite rejection into an outcome: a conflict on the log stream or on a
// stream appended with Any (whose version this store pinned) is retried; a conflict on a
// stream with an explicit expectation is the caller's *eventstore.ConflictError.
func (s *Store) rejected(ctx context.Context, appends []eventstore.StreamAppend, err error) (outcome, error) {
	if isTooLarge(err) {
		return failed, fmt.Errorf("append: %w: KurrentDB refused the size: %w", eventstore.ErrInvalidAppend, err)
	}
	if !isConflict(err) {
		return failed, fmt.Errorf("append: %w", err)
	}
	c, named := revisionConflict(err)
	if named && c.stream == s.names.log() {
		return retry, nil
	}
	at := -1
	if named {
		at = slices.IndexFunc(appends, func(a eventstore.StreamAppend) bool { return s.names.user(a.Stream) == c.stream })
	}
	if at >= 0 && appends[at].Expected.IsAny() {
		return retry, nil
	}
	if at >= 0 {
		actual := c.actual
		if !c.actualKnown {
			v, rerr := s.streamVersion(ctx, appends[at].Stream)
			if rerr != nil {
				return failed, fmt.Errorf("append: rejected (%w), then reading %q: %w", err, appends[at].Stream, rerr)
			}
			actual = v
		}
		return failed, s.conflictAt(ctx, appends, at, actual)
	}
	// The server named no stream we know: find a failing expectation ourselves.
	for i, a := range appends {
		if a.Expected.IsAny() {
			continue
		}
		v, rerr := s.streamVersion(ctx, a.Stream)
		if rerr != nil {
			return failed, fmt.Errorf("append: rejected (%w), then reading %q: %w", err, a.Stream, rerr)
		}
		if !a.Expected.Allows(v) {
			return failed, s.conflictAt(ctx, appends, i, v)
		}
	}
	return retry, nil // no explicit expectation failed: the log stream moved
}

// conflictAt reports that appends[at]'s expectation failed with the stream at actual, as
// the caller's *eventstore.ConflictError. The contract names the first failing stream,
// and the server (or the seen cache) names one, not necessarily the first, so the
// explicit expectations before it are read and checked. A read error there leaves the
// conflict at `at` reported: it is certain, only its rank is not.
func (s *Store) conflictAt(ctx context.Context, appends []eventstore.StreamAppend, at int, actual uint64) error {
	s.saw(appends[at].Stream, actual)
	for i := range at {
		a := appends[i]
		if a.Expected.IsAny() {
			continue
		}
		v, err := s.streamVersion(ctx, a.Stream)
		if err != nil {
			break
		}
		if !a.Expected.Allows(v) {
			s.saw(a.Stream, v)
			at, actual = i, v
			break
		}
	}
	a := appends[at]
	return fmt.Errorf("append: %w", &eventstore.ConflictError{Stream: a.Stream, Expected: a.Expected, Actual: actual})
}

// slot reads the log stream at the plan's first position.
func (s *Store) slot(ctx context.Context, p *appendPlan) (slotState, error) {
	evs, err := s.readForward(ctx, s.names.log(), p.tip.position, 1)
	if err != nil {
		return slotEmpty, err
	}
	switch {
	case len(evs) == 0:
		return slotEmpty, nil
	case evs[0].EventID == p.entryIDs[0]:
		return slotOurs, nil
	default:
		return slotTaken, nil
	}
}

// readTip reads the last entry of the log stream.
func (s *Store) readTip(ctx context.Context) (logTip, error) {
	ev, err := s.readLast(ctx, s.names.log())
	if err != nil || ev == nil {
		return logTip{}, err
	}
	e, err := decodeLogEntry(ev.Data, ev.EventNumber)
	if err != nil {
		return logTip{}, fmt.Errorf("read the log's tip: %w", err)
	}
	return logTip{position: e.Position, hash: e.Hash}, nil
}

// streamVersion reads a user stream's current version (0 when it does not exist).
func (s *Store) streamVersion(ctx context.Context, stream string) (uint64, error) {
	ev, err := s.readLast(ctx, s.names.user(stream))
	if err != nil || ev == nil {
		return 0, err
	}
	return ev.EventNumber + 1, nil
}

// readLast returns a stream's last event, or nil when the stream does not exist.
func (s *Store) readLast(ctx context.Context, name string) (*kdb.RecordedEvent, error) {
	rs, err := s.client.ReadStream(ctx, name, kdb.ReadStreamOptions{Direction: kdb.Backwards, From: kdb.End{}, RequiresLeader: true}, 1)
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("read the end of %q: %w", name, err)
	}
	defer rs.Close()
	ev, err := rs.Recv()
	switch {
	case errors.Is(err, io.EOF) || isNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("read the end of %q: %w", name, err)
	}
	return ev.OriginalEvent(), nil
}

// readForward returns up to count events of a stream from revision from on, in order. A
// stream that does not exist reads as empty. Reads go to the leader (Config.Validate
// insists on a leader connection; RequiresLeader is set as well for clients that send it),
// so a reader sees every append acknowledged before it started.
func (s *Store) readForward(ctx context.Context, name string, from, count uint64) ([]*kdb.RecordedEvent, error) {
	rs, err := s.client.ReadStream(ctx, name, kdb.ReadStreamOptions{Direction: kdb.Forwards, From: kdb.Revision(from), RequiresLeader: true}, count)
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("read %q from revision %d: %w", name, from, err)
	}
	defer rs.Close()
	out := make([]*kdb.RecordedEvent, 0, min(count, 1024))
	for uint64(len(out)) < count {
		ev, err := rs.Recv()
		switch {
		case errors.Is(err, io.EOF):
			return out, nil
		case isNotFound(err):
			return nil, nil
		case err != nil:
			return nil, fmt.Errorf("read %q from revision %d: %w", name, from, err)
		}
		out = append(out, ev.OriginalEvent())
	}
	return out, nil
}

// decodeStored rebuilds a contract event from a user-stream event, checking that the
// version in its metadata is the revision KurrentDB keeps it at.
func decodeStored(stream string, ev *kdb.RecordedEvent) (eventstore.RecordedEvent, error) {
	rec, err := decodeEventMeta(ev.UserMetadata)
	if err != nil {
		return rec, fmt.Errorf("stream %q revision %d: %w", stream, ev.EventNumber, err)
	}
	if rec.StreamVersion != ev.EventNumber+1 {
		return rec, fmt.Errorf("stream %q revision %d: metadata says version %d, want %d", stream, ev.EventNumber, rec.StreamVersion, ev.EventNumber+1)
	}
	rec.Stream = stream
	rec.Data = ev.Data
	return rec, nil
}

// ReadStream: see eventstore.Store. A name this store refuses to write (see
// checkStreamName) can hold no events and reads as empty.
func (s *Store) ReadStream(ctx context.Context, stream string, afterVersion uint64, limit int) ([]eventstore.RecordedEvent, error) {
	opCtx, done, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	if checkStreamName(stream) != nil {
		return nil, nil
	}
	out, err := s.readStream(opCtx, stream, afterVersion, eventstore.ClampLimit(limit))
	return out, s.opError(ctx, err)
}

func (s *Store) readStream(ctx context.Context, stream string, afterVersion uint64, limit int) ([]eventstore.RecordedEvent, error) {
	raw, err := s.readForward(ctx, s.names.user(stream), afterVersion, uint64(limit))
	if err != nil {
		return nil, fmt.Errorf("read stream: %w", err)
	}
	out := make([]eventstore.RecordedEvent, len(raw))
	for i, ev := range raw {
		if out[i], err = decodeStored(stream, ev); err != nil {
			return nil, fmt.Errorf("read stream: %w", err)
		}
		if want := afterVersion + uint64(i) + 1; out[i].StreamVersion != want {
			return nil, fmt.Errorf("read stream %q: got version %d, want %d", stream, out[i].StreamVersion, want)
		}
	}
	return out, nil
}

// ReadAll: see eventstore.Store. The log stream names the events of the requested
// positions; each stream's share of a page is a contiguous run of its versions (versions
// and positions both grow in commit order), so it is fetched with one read, and the reads
// run in parallel, ReadConcurrency at a time.
func (s *Store) ReadAll(ctx context.Context, afterPosition uint64, limit int) ([]eventstore.RecordedEvent, error) {
	opCtx, done, err := s.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	out, err := s.readAll(opCtx, afterPosition, eventstore.ClampLimit(limit))
	return out, s.opError(ctx, err)
}

func (s *Store) readAll(ctx context.Context, afterPosition uint64, limit int) ([]eventstore.RecordedEvent, error) {
	raw, err := s.readForward(ctx, s.names.log(), afterPosition, uint64(limit))
	if err != nil {
		return nil, fmt.Errorf("read all: %w", err)
	}
	entries := make([]logEntry, len(raw))
	for i, ev := range raw {
		if ev.EventNumber != afterPosition+uint64(i) {
			return nil, fmt.Errorf("read all: log stream returned revision %d, want %d", ev.EventNumber, afterPosition+uint64(i))
		}
		if entries[i], err = decodeLogEntry(ev.Data, ev.EventNumber); err != nil {
			return nil, fmt.Errorf("read all: %w", err)
		}
	}
	runs, err := groupRuns(entries)
	if err != nil {
		return nil, fmt.Errorf("read all: %w", err)
	}
	if err := s.fetchRuns(ctx, runs); err != nil {
		return nil, fmt.Errorf("read all: %w", err)
	}
	return assemble(entries, runs)
}

// run is one stream's share of a ReadAll page: versions first..last, fetched into events.
type run struct {
	stream      string
	first, last uint64
	events      []eventstore.RecordedEvent
}

// groupRuns collects each stream's versions in a page and checks they are contiguous;
// a gap means the log stream itself is damaged.
func groupRuns(entries []logEntry) ([]*run, error) {
	byStream := make(map[string]*run)
	var runs []*run
	for _, e := range entries {
		r, ok := byStream[e.Stream]
		if !ok {
			r = &run{stream: e.Stream, first: e.Version, last: e.Version}
			byStream[e.Stream] = r
			runs = append(runs, r)
			continue
		}
		if e.Version != r.last+1 {
			return nil, &eventstore.ChainBreak{Position: e.Position, Reason: fmt.Sprintf("log entry names %s version %d after version %d", e.Stream, e.Version, r.last)}
		}
		r.last = e.Version
	}
	return runs, nil
}

// fetchRuns reads every run, at most ReadConcurrency reads at a time.
func (s *Store) fetchRuns(ctx context.Context, runs []*run) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, s.cfg.ReadConcurrency)
	errs := make([]error, len(runs))
	var wg sync.WaitGroup
	for i, r := range runs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = ctx.Err()
		}
		if errs[i] != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			raw, err := s.readForward(ctx, s.names.user(r.stream), r.first-1, r.last-r.first+1)
			if err == nil {
				r.events = make([]eventstore.RecordedEvent, len(raw))
				for j, ev := range raw {
					if r.events[j], err = decodeStored(r.stream, ev); err != nil {
						break
					}
				}
			}
			if err != nil {
				errs[i] = err
				cancel()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// assemble lays the fetched events out in log order. The log entry is authoritative for
// where an event sits and what its hash is; the event's own copy of those is not
// consulted, so an event altered behind the store's back fails ChainHash at its position.
func assemble(entries []logEntry, runs []*run) ([]eventstore.RecordedEvent, error) {
	byStream := make(map[string]*run, len(runs))
	for _, r := range runs {
		byStream[r.stream] = r
	}
	out := make([]eventstore.RecordedEvent, len(entries))
	for i, e := range entries {
		r := byStream[e.Stream]
		k := e.Version - r.first
		if k >= uint64(len(r.events)) {
			return nil, &eventstore.ChainBreak{Position: e.Position, Reason: fmt.Sprintf("the log names %s version %d, which is not stored", e.Stream, e.Version)}
		}
		ev := r.events[k]
		if ev.StreamVersion != e.Version {
			return nil, &eventstore.ChainBreak{Position: e.Position, Reason: fmt.Sprintf("the log names %s version %d, the stream returned version %d", e.Stream, e.Version, ev.StreamVersion)}
		}
		ev.Position = e.Position
		ev.Hash = e.Hash
		out[i] = ev
	}
	return out, nil
}

// Subscribe: see eventstore.Store. It polls ReadAll (eventstore.PollSubscription), woken
// by this process's commits and, unless DisableLogWatch, by a KurrentDB catch-up
// subscription to the log stream that reports other processes' commits.
func (s *Store) Subscribe(ctx context.Context, afterPosition uint64, maxBatch int, handle func(context.Context, []eventstore.RecordedEvent) error) error {
	opCtx, done, err := s.begin(ctx)
	if err != nil {
		return err
	}
	defer done()
	return s.opError(ctx, s.subscribe(opCtx, afterPosition, maxBatch, handle))
}

func (s *Store) subscribe(ctx context.Context, afterPosition uint64, maxBatch int, handle func(context.Context, []eventstore.RecordedEvent) error) error {
	wake := eventstore.NewSignal()
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel below: the helpers end with ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Taken here, before the subscription's first read, not in the goroutine: a commit
	// made between that read and the goroutine's first step would otherwise wake nobody.
	local := s.signal.C()
	wg.Go(func() { forward(ctx, local, s.signal, wake) })
	if !s.cfg.DisableLogWatch {
		wg.Go(func() { s.watchLog(ctx, wake) })
	}
	return eventstore.PollSubscription{ReadAll: s.ReadAll, Signal: wake, PollInterval: s.cfg.PollInterval}.Run(ctx, afterPosition, maxBatch, handle)
}

// forward repeats on to every broadcast of from made after c was taken from it, until ctx
// ends. Each next channel is taken before to is broadcast, never after: a broadcast of
// from just before it was taken precedes to's broadcast, so the read of the subscriber
// that to wakes sees its commit; one after it closes the channel. Taken after to's
// broadcast, a broadcast of from between the two would wake nobody until the next poll.
func forward(ctx context.Context, c <-chan struct{}, from, to *eventstore.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c:
		}
		c = from.C()
		to.Broadcast()
	}
}

// logWatchRetryDelay paces re-subscribing after the server dropped the watch; polling
// keeps the subscriber correct meanwhile.
const logWatchRetryDelay = 2 * time.Second

// watchLog wakes the subscriber whenever the log stream grows. It is only an accelerator:
// when it cannot subscribe, PollInterval still bounds the subscriber's delay, so its
// failures are retried (paced, until ctx ends) rather than reported.
func (s *Store) watchLog(ctx context.Context, wake *eventstore.Signal) {
	for ctx.Err() == nil {
		sub, err := s.client.SubscribeToStream(ctx, s.names.log(), kdb.SubscribeToStreamOptions{From: kdb.End{}})
		if err == nil {
			// The watch starts at the log's end as of its confirmation: commits of other
			// processes made before it woke nobody, so re-read now rather than at the next
			// poll (the PostgreSQL listener does the same once it is listening).
			wake.Broadcast()
			for ctx.Err() == nil {
				ev := sub.Recv()
				if ev.SubscriptionDropped != nil {
					break
				}
				if ev.EventAppeared != nil {
					wake.Broadcast()
				}
			}
			_ = sub.Close()
		}
		t := time.NewTimer(logWatchRetryDelay)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}
