// Package bank is a Jepsen-style bank test of a running SecurePay server, through its
// public API: N accounts are funded from an external account, many clients transfer money
// between them while others read every balance at one log position, faults are injected
// (the caller says which: processes killed and restarted, PostgreSQL crashed, Redis
// emptied), and at the end the history of what clients were told is checked against the
// log:
//
//  1. every read of all balances at one position sums to the funded total, and shows no
//     account below its limit (0: they are customers without credit);
//  2. every acknowledged transfer is in the log exactly once, with the amount and
//     accounts it was sent with;
//  3. no refused transfer is in the log;
//  4. every transfer whose outcome was unknown (timeout, connection lost, server gone) is
//     in the log at most once, and looking its payment id up (GetPayment) agrees with
//     the log;
//  5. the log as the audit stream exports it verifies (hash chain), never takes an
//     account below its floor, creates each payment once, sums to zero per asset
//     (loadtest/invariant), holds no payment of this run that no client sent, and its
//     balances equal what the balance service answers for every account.
//
// Transfers whose outcome is unknown are retried a bounded number of times with the same
// payment id, as a client should: a retry of an applied transfer must answer with the
// first outcome, never apply it twice.
package bank

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/loadtest"
	"github.com/securepay/securepay/loadtest/invariant"
)

// Fault is one kind of failure the harness can cause. Inject causes it and returns once
// the system is meant to be whole again (the process restarted, the database back), or
// with an error if it could not do either; the checker keeps running through it.
type Fault struct {
	Name   string
	Inject func(ctx context.Context) error
}

// Config is one bank run.
type Config struct {
	Target   loadtest.Target
	RunID    string // prefixes account and payment ids; unique per run against one server
	Seed     uint64
	Accounts int   // 2..1000
	FundEach int64 // minor units given to each account at the start
	Writers  int   // concurrent transfer clients
	Readers  int   // concurrent clients reading all balances
	Duration time.Duration
	// Faults are injected in turn, one every FaultEvery, the first after FaultEvery.
	Faults     []Fault
	FaultEvery time.Duration
	// RequestTimeout bounds each call; past it, the outcome is unknown.
	RequestTimeout time.Duration
	// Settle bounds how long the final checks wait for the server to answer again.
	Settle time.Duration
	Log    io.Writer // progress lines; nil for none
	// Principals, when set, sends every call with a bearer token, as principals each
	// owning its accounts, for a run through the gateway (principals.go).
	Principals *Principals
}

func (c *Config) validate() error {
	var errs []error
	if c.Accounts < 2 || c.Accounts > 1000 {
		errs = append(errs, fmt.Errorf("accounts must be in 2..1000, got %d", c.Accounts))
	}
	if c.FundEach < 3 {
		errs = append(errs, fmt.Errorf("each account must be funded with at least 3 minor units, got %d", c.FundEach))
	}
	if c.Writers < 1 || c.Writers > 1000 || c.Readers < 0 || c.Readers > 100 {
		errs = append(errs, fmt.Errorf("writers must be in 1..1000 and readers in 0..100, got %d and %d", c.Writers, c.Readers))
	}
	if c.Duration <= 0 || c.RequestTimeout <= 0 || c.Settle <= 0 {
		errs = append(errs, errors.New("duration, request timeout and settle time must be positive"))
	}
	if len(c.Faults) > 0 && c.FaultEvery <= 0 {
		errs = append(errs, errors.New("faults need a positive interval"))
	}
	if c.Principals != nil {
		if err := c.Principals.validate(c.Accounts); err != nil {
			errs = append(errs, err)
		}
	}
	if c.RunID == "" || len(c.RunID) > 24 {
		errs = append(errs, fmt.Errorf("run id must be 1..24 characters, got %q", c.RunID))
	}
	return errors.Join(errs...)
}

// Outcome is what a client was told about one transfer.
type Outcome int

const (
	OK      Outcome = iota + 1 // acknowledged: applied
	Refused                    // a definite refusal: not applied
	Unknown                    // no answer that says either
)

func (o Outcome) String() string {
	switch o {
	case OK:
		return "ok"
	case Refused:
		return "refused"
	case Unknown:
		return "unknown"
	}
	return "outcome(" + strconv.Itoa(int(o)) + ")"
}

// classify reads a call's error. Only codes that say the server decided not to apply the
// command are refusals; everything else (unavailable, deadline, internal, aborted...) may
// have been applied.
func classify(err error) Outcome {
	if err == nil {
		return OK
	}
	switch connect.CodeOf(err) {
	case connect.CodeFailedPrecondition, connect.CodeInvalidArgument, connect.CodeNotFound,
		connect.CodeAlreadyExists, connect.CodeOutOfRange, connect.CodePermissionDenied, connect.CodeUnauthenticated:
		return Refused
	}
	return Unknown
}

// refusedBeforeTheLedger says a refusal came from the edge (the gateway's authentication
// or authorisation), which never reaches the ledger: after an earlier attempt with an
// unknown outcome it says nothing about whether that attempt was applied. A refusal from
// the ledger does, since a retried payment id answers with its first outcome.
func refusedBeforeTheLedger(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnauthenticated, connect.CodePermissionDenied:
		return true
	}
	return false
}

// op is one transfer a client sent, and what it was told in the end.
type op struct {
	id       string
	src, dst string
	minor    int64
	outcome  Outcome
	attempts int
	lastErr  string
}

// read is one read of all balances at one position.
type read struct {
	position uint64
	sum      int64
	lowest   int64
	at       string // the account with the lowest balance
}

// Report is a run's outcome.
type Report struct {
	Seed                                      uint64
	Attempted, Acknowledged, Refused, Unknown int
	// UnknownApplied and UnknownNotApplied split the unknown outcomes by what the log
	// says, after GetPayment agreed.
	UnknownApplied, UnknownNotApplied int
	Retries                           int
	Reads, ReadsFailed                int
	Faults                            []string // "12.3s kill-server", in order
	FaultErrors                       []string
	LogEvents                         uint64
	Violations                        []string
}

func (r *Report) violate(format string, args ...any) {
	// Bounded: a broken run can produce thousands; the first hundred say enough.
	if len(r.Violations) < 100 {
		r.Violations = append(r.Violations, fmt.Sprintf(format, args...))
	} else if len(r.Violations) == 100 {
		r.Violations = append(r.Violations, "... more violations not listed")
	}
}

// String is the report for people and test logs.
func (r *Report) String() string {
	s := fmt.Sprintf("seed %d: %d transfers attempted, %d acknowledged, %d refused, %d unknown (%d applied, %d not), %d retries; %d reads of all balances (%d failed); %d log events; faults %v",
		r.Seed, r.Attempted, r.Acknowledged, r.Refused, r.Unknown, r.UnknownApplied, r.UnknownNotApplied, r.Retries, r.Reads, r.ReadsFailed, r.LogEvents, r.Faults)
	if len(r.FaultErrors) > 0 {
		s += fmt.Sprintf("; fault errors %v", r.FaultErrors)
	}
	s += fmt.Sprintf("; %d violations", len(r.Violations))
	for _, v := range r.Violations {
		s += "\n  VIOLATION: " + v
	}
	return s
}

type checker struct {
	cfg     Config
	c       *loadtest.Clients
	ext     string
	accts   []string
	total   int64 // what the accounts hold together
	maxPos  atomic.Uint64
	mu      sync.Mutex
	ops     []*op
	reads   []read
	failed  int
	rep     *Report
	started time.Time
	writers []writerView // with Principals: what each writer sends as (principals.go)
}

func (k *checker) logf(format string, args ...any) {
	if k.cfg.Log != nil {
		fmt.Fprintf(k.cfg.Log, "bank %6.1fs: %s\n", time.Since(k.started).Seconds(), fmt.Sprintf(format, args...))
	}
}

// Run runs the bank test and returns its report; an error means the run itself could
// not be carried out (the server never answered), not that an invariant broke: those are
// the report's violations.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	k, err := newChecker(cfg)
	if err != nil {
		return nil, err
	}
	if err := k.setUp(ctx); err != nil {
		return nil, err
	}
	k.logf("%d accounts funded with %d each", cfg.Accounts, cfg.FundEach)
	k.load(ctx)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k.logf("load done: %d transfers sent; checking", len(k.ops))
	if err := k.check(ctx); err != nil {
		return k.rep, err
	}
	return k.rep, nil
}

func newChecker(cfg Config) (*checker, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	k := &checker{cfg: cfg, ext: cfg.RunID + "-ext", rep: &Report{Seed: cfg.Seed}, started: time.Now()}
	for i := range cfg.Accounts {
		k.accts = append(k.accts, cfg.RunID+"-a"+strconv.Itoa(i))
	}
	k.total = int64(cfg.Accounts) * cfg.FundEach
	var err error
	if cfg.Principals != nil {
		k.c, err = k.dialPrincipals()
	} else {
		k.c, err = cfg.Target.Dial()
	}
	if err != nil {
		return nil, err
	}
	return k, nil
}

// load runs the writers, the readers and the faults for the configured duration.
func (k *checker) load(ctx context.Context) {
	runCtx, stop := context.WithTimeout(ctx, k.cfg.Duration)
	defer stop()
	var wg sync.WaitGroup
	for i := range k.cfg.Writers {
		rng := rand.New(rand.NewPCG(k.cfg.Seed, uint64(i)))
		wg.Go(func() { k.write(runCtx, i, rng) })
	}
	for range k.cfg.Readers {
		wg.Go(func() { k.readLoop(runCtx) })
	}
	// A fault under way finishes (the process restarted) before the checks start.
	wg.Go(func() { k.inject(runCtx) })
	wg.Wait()
}

// call runs one request with the configured timeout, retrying while the server is
// unreachable, for set-up and final checks (never for the transfers under test).
func call[T any](ctx context.Context, k *checker, what string, f func(context.Context) (T, error)) (T, error) {
	return callWithin(ctx, k, k.cfg.RequestTimeout, what, f)
}

// callWithin is call with a bound of its own on each attempt (a stream of the whole log
// takes longer than one request).
func callWithin[T any](ctx context.Context, k *checker, timeout time.Duration, what string, f func(context.Context) (T, error)) (T, error) {
	deadline := time.Now().Add(k.cfg.Settle)
	var zero T
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		v, err := f(cctx)
		cancel()
		if err == nil {
			return v, nil
		}
		if classify(err) == Refused || ctx.Err() != nil || time.Now().After(deadline) {
			return zero, fmt.Errorf("%s (attempt %d): %w", what, attempt+1, err)
		}
		time.Sleep(min(50*time.Millisecond<<min(attempt, 4), time.Second))
	}
}

func (k *checker) setUp(ctx context.Context) error {
	open := func(id string, kind ledgerv1.AccountKind) error {
		_, err := call(ctx, k, "open "+id, func(ctx context.Context) (*connect.Response[ledgerv1.OpenAccountResponse], error) {
			return k.c.Accounts.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{AccountId: id, Asset: "USD", Kind: kind}))
		})
		return err
	}
	if err := open(k.ext, ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL); err != nil {
		return err
	}
	for i, a := range k.accts {
		if err := open(a, ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER); err != nil {
			return err
		}
		res, err := call(ctx, k, "fund "+a, func(ctx context.Context) (*connect.Response[ledgerv1.TransferResponse], error) {
			return k.c.Payments[0].Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{
				PaymentId: k.cfg.RunID + "-fund" + strconv.Itoa(i), SourceAccountId: k.ext, DestinationAccountId: a,
				Amount: money(k.cfg.FundEach),
			}))
		})
		if err != nil {
			return err
		}
		k.notePosition(res.Msg.GetResult().GetPosition())
	}
	return nil
}

func money(minor int64) *ledgerv1.Money {
	return &ledgerv1.Money{Value: fmt.Sprintf("%d.%02d", minor/100, minor%100), Asset: "USD"}
}

func (k *checker) notePosition(p uint64) {
	for {
		cur := k.maxPos.Load()
		if p <= cur || k.maxPos.CompareAndSwap(cur, p) {
			return
		}
	}
}

// maxRetries bounds the retries of a transfer whose outcome is unknown.
const maxRetries = 3

// write sends transfers between random accounts until ctx ends. Amounts go up to a third
// of what an account was funded with, so that refusals for want of money happen often.
func (k *checker) write(ctx context.Context, w int, rng *rand.Rand) {
	pc := k.transferClient(w)
	for seq := 0; ctx.Err() == nil; seq++ {
		i := k.source(w, rng)
		j := rng.IntN(len(k.accts) - 1)
		if j >= i {
			j++
		}
		o := &op{id: fmt.Sprintf("%s-w%d.%d", k.cfg.RunID, w, seq), src: k.accts[i], dst: k.accts[j], minor: 1 + rng.Int64N(k.cfg.FundEach/3)}
		req := &ledgerv1.TransferRequest{PaymentId: o.id, SourceAccountId: o.src, DestinationAccountId: o.dst, Amount: money(o.minor)}
		sawUnknown := false
		for o.attempts < 1+maxRetries {
			o.attempts++
			// The run's end does not cut a request short: that would only make unknowns.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), k.cfg.RequestTimeout)
			res, err := pc.Payments[w%len(pc.Payments)].Transfer(cctx, connect.NewRequest(req))
			cancel()
			o.outcome = classify(err)
			if err != nil {
				o.lastErr = err.Error()
			}
			if o.outcome == OK {
				k.notePosition(res.Msg.GetResult().GetPosition())
			}
			if o.outcome == Refused && sawUnknown && refusedBeforeTheLedger(err) {
				o.outcome = Unknown // resolved by looking the payment up at the end
				break
			}
			sawUnknown = sawUnknown || o.outcome == Unknown
			if o.outcome != Unknown || ctx.Err() != nil {
				break
			}
			time.Sleep(time.Duration(100+rng.IntN(200)) * time.Millisecond)
		}
		k.mu.Lock()
		k.ops = append(k.ops, o)
		k.mu.Unlock()
	}
}

// readLoop reads every balance at the newest acknowledged position, again and again.
func (k *checker) readLoop(ctx context.Context) {
	for ctx.Err() == nil {
		pos := k.maxPos.Load()
		r, err := k.readAll(ctx, pos)
		k.mu.Lock()
		if err != nil {
			k.failed++
		} else {
			k.reads = append(k.reads, r)
		}
		k.mu.Unlock()
		if err != nil {
			time.Sleep(50 * time.Millisecond) // the server is down or behind: do not spin
		}
	}
}

// readAll reads every account's balance as of pos, waiting (bounded) for the views to
// reach it. Any failure abandons the read: a partial read proves nothing.
func (k *checker) readAll(ctx context.Context, pos uint64) (read, error) {
	r := read{position: pos, lowest: 1<<63 - 1}
	for i, a := range k.accts {
		cctx, cancel := context.WithTimeout(ctx, k.cfg.RequestTimeout)
		res, err := k.c.Balances[i%len(k.c.Balances)].GetBalance(cctx, connect.NewRequest(&ledgerv1.GetBalanceRequest{
			AccountId: a, AsOf: &ledgerv1.GetBalanceRequest_AsOfPosition{AsOfPosition: pos}, MinPosition: pos,
		}))
		cancel()
		if err != nil {
			return r, err
		}
		b := res.Msg.GetBalance()
		r.sum += b.GetPostedMinor()
		if b.GetAvailableMinor() < r.lowest {
			r.lowest, r.at = b.GetAvailableMinor(), a
		}
	}
	return r, nil
}

// inject causes the faults in turn until ctx ends.
func (k *checker) inject(ctx context.Context) {
	if len(k.cfg.Faults) == 0 {
		return
	}
	t := time.NewTicker(k.cfg.FaultEvery)
	defer t.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f := k.cfg.Faults[n%len(k.cfg.Faults)]
		k.logf("fault: %s", f.Name)
		at := time.Since(k.started)
		// The fault runs to completion even when the run ends meanwhile: a server left
		// killed would fail the final checks for a reason that is not the ledger's.
		err := f.Inject(context.WithoutCancel(ctx))
		k.mu.Lock()
		k.rep.Faults = append(k.rep.Faults, fmt.Sprintf("%.1fs %s", at.Seconds(), f.Name))
		if err != nil {
			k.rep.FaultErrors = append(k.rep.FaultErrors, f.Name+": "+err.Error())
		}
		k.mu.Unlock()
		k.logf("fault %s done (err %v)", f.Name, err)
	}
}

// logged is what the log says about one payment of this run.
type logged struct {
	src, dst string
	minor    int64
}

// check runs the final checks on a server that is meant to be whole again.
func (k *checker) check(ctx context.Context) error {
	rep := k.rep
	// 1. Every read of all balances.
	rep.Reads, rep.ReadsFailed = len(k.reads), k.failed
	for _, r := range k.reads {
		if r.sum != k.total {
			rep.violate("balances as of position %d sum to %d, want the funded total %d", r.position, r.sum, k.total)
		}
		if r.lowest < 0 {
			rep.violate("as of position %d, %s has %d available, below its limit 0", r.position, r.at, r.lowest)
		}
	}

	// The log as the audit stream exports it, folded by the reference checker.
	model := invariant.New()
	payments := map[string]logged{}
	var head uint64
	_, err := callWithin(ctx, k, k.cfg.Settle, "stream the log", func(ctx context.Context) (struct{}, error) {
		// A fresh fold on every attempt: a stream cut midway is read again from the start.
		model, payments, head = invariant.New(), map[string]logged{}, 0
		s, err := k.c.Audit.StreamLog(ctx, connect.NewRequest(&ledgerv1.StreamLogRequest{BatchSize: 1000}))
		if err != nil {
			return struct{}{}, err
		}
		defer s.Close()
		for s.Receive() {
			for _, e := range s.Msg().GetEvents() {
				rec, err := recordedEvent(e)
				if err != nil {
					return struct{}{}, connect.NewError(connect.CodeInvalidArgument, err)
				}
				if err := model.Apply(&rec); err != nil {
					rep.violate("the log breaks an invariant: %v", err)
					return struct{}{}, connect.NewError(connect.CodeFailedPrecondition, err)
				}
				head = rec.Position
				ev, err := domain.DecodeEvent(rec.Type, rec.Data)
				if err != nil {
					return struct{}{}, connect.NewError(connect.CodeInvalidArgument, err)
				}
				if t, ok := ev.(domain.PaymentTransferred); ok {
					payments[string(t.PaymentID)] = logged{src: string(t.Source), dst: string(t.Destination), minor: t.Amount.Minor}
				}
			}
		}
		return struct{}{}, s.Err()
	})
	if err != nil {
		if len(rep.Violations) > 0 {
			return nil // the violation is the finding
		}
		return err
	}
	rep.LogEvents = model.Events
	if err := model.CheckFinal(); err != nil {
		rep.violate("the log as a whole: %v", err)
	}
	k.logf("log read: %d events up to position %d", model.Events, head)

	// 2-4. Every transfer against the log.
	sent := map[string]bool{}
	for _, o := range k.ops {
		sent[o.id] = true
		rep.Attempted++
		rep.Retries += o.attempts - 1
		l, inLog := payments[o.id]
		if n := model.Creations[domain.PaymentID(o.id)]; n > 1 {
			rep.violate("payment %s is in the log %d times", o.id, n)
		}
		switch o.outcome {
		case OK:
			rep.Acknowledged++
			if !inLog {
				rep.violate("acknowledged transfer %s (%s -> %s, %d) is not in the log", o.id, o.src, o.dst, o.minor)
			}
		case Refused:
			rep.Refused++
			if inLog {
				rep.violate("refused transfer %s (%s) is in the log", o.id, o.lastErr)
			}
		case Unknown:
			rep.Unknown++
			found, err := k.lookUp(ctx, o.id, head)
			if err != nil {
				return err
			}
			if found != inLog {
				rep.violate("GetPayment says %s exists: %v; the log says: %v", o.id, found, inLog)
			}
			if inLog {
				rep.UnknownApplied++
			} else {
				rep.UnknownNotApplied++
			}
		}
		if inLog && (l.src != o.src || l.dst != o.dst || l.minor != o.minor) {
			rep.violate("payment %s in the log moves %d from %s to %s; it was sent as %d from %s to %s", o.id, l.minor, l.src, l.dst, o.minor, o.src, o.dst)
		}
	}
	for id := range payments {
		if len(id) > len(k.cfg.RunID)+2 && id[:len(k.cfg.RunID)+2] == k.cfg.RunID+"-w" && !sent[id] {
			rep.violate("payment %s of this run is in the log but no client sent it", id)
		}
	}

	// 5. The log's balances are what the balance service answers, and sum to the total.
	var sum int64
	for _, a := range append(slices.Clone(k.accts), k.ext) {
		acc := model.Accounts[domain.AccountStream(domain.AccountID(a))]
		if acc == nil {
			rep.violate("account %s is not in the log", a)
			continue
		}
		if a != k.ext {
			sum += acc.Posted
		}
		res, err := call(ctx, k, "balance of "+a, func(ctx context.Context) (*connect.Response[ledgerv1.GetBalanceResponse], error) {
			return k.c.Balances[0].GetBalance(ctx, connect.NewRequest(&ledgerv1.GetBalanceRequest{AccountId: a, MinPosition: head}))
		})
		if err != nil {
			return err
		}
		b := res.Msg.GetBalance()
		if b.GetPostedMinor() != acc.Posted || b.GetHeldMinor() != acc.Held {
			rep.violate("%s: the balance service says posted %d held %d, the audit log says posted %d held %d",
				a, b.GetPostedMinor(), b.GetHeldMinor(), acc.Posted, acc.Held)
		}
	}
	if sum != k.total {
		rep.violate("in the log the accounts hold %d together, want the funded total %d", sum, k.total)
	}
	return nil
}

// lookUp asks the payments view, once it has applied head, whether payment id exists.
func (k *checker) lookUp(ctx context.Context, id string, head uint64) (bool, error) {
	_, err := call(ctx, k, "look up "+id, func(ctx context.Context) (*connect.Response[ledgerv1.GetPaymentResponse], error) {
		return k.c.Payments[0].GetPayment(ctx, connect.NewRequest(&ledgerv1.GetPaymentRequest{PaymentId: id, MinPosition: head}))
	})
	switch {
	case err == nil:
		return true, nil
	case connect.CodeOf(err) == connect.CodeNotFound:
		return false, nil
	}
	return false, err
}

// recordedEvent turns an exported event back into the store's form, hashes included, so
// the reference checker verifies the chain the auditors see.
func recordedEvent(e *ledgerv1.Event) (eventstore.RecordedEvent, error) {
	prev, err1 := eventstore.ParseHash(e.GetPrevHash())
	hash, err2 := eventstore.ParseHash(e.GetHash())
	if err := errors.Join(err1, err2); err != nil {
		return eventstore.RecordedEvent{}, fmt.Errorf("event at %d: %w", e.GetPosition(), err)
	}
	m := e.GetMetadata()
	return eventstore.RecordedEvent{
		Position: e.GetPosition(), Stream: e.GetStream(), StreamVersion: e.GetStreamVersion(), ID: e.GetId(), Type: e.GetType(),
		RecordedAt: e.GetRecordedAt().AsTime(), Data: e.GetData(),
		Metadata: eventstore.Metadata{CorrelationID: m.GetCorrelationId(), CausationID: m.GetCausationId(), Actor: m.GetActor(), TraceParent: m.GetTraceParent()},
		PrevHash: prev, Hash: hash,
	}, nil
}
