package ledger_test

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/loadtest/invariant"
	"github.com/securepay/securepay/services/ledger"
)

var simSeed = flag.Uint64("sim.seed", 0, "seed of the ledger simulation (0: a new one)")

// foldLog folds the log with the reference invariant checker, which fails on the first
// event after which an invariant does not hold (an account below its floor, a payment
// created twice, a broken chain).
func foldLog(t testing.TB, store eventstore.Store) *invariant.Model {
	t.Helper()
	m, err := invariant.Fold(ctxT(t), store, 1000)
	if err != nil {
		t.Fatalf("the log breaks an invariant: %v", err)
	}
	return m
}

// TestSimulation runs seeded random command sequences from many goroutines against each
// backend and checks the ledger's invariants against a reference model folded from the log:
// balances per asset sum to zero, no account below its floor at any point of the log,
// every accepted payment and operation recorded exactly once, refused ones not at all, the
// processor's state equal to a replay, and the hash chain intact.
func TestSimulation(t *testing.T) {
	seed := *simSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			defer func() {
				if t.Failed() {
					t.Logf("simulation seed %d: replay with go test ./services/ledger -run 'TestSimulation/%s' -sim.seed=%d", seed, b.name, seed)
				}
			}()
			runSimulation(t, b, seed)
		})
	}
}

type simOutcome struct {
	mu        sync.Mutex
	accepted  map[domain.PaymentID]bool // payments created
	ops       map[string]bool           // captures and refunds accepted
	refusedAt map[domain.PaymentID]bool // payments refused at least once
	retries   int                       // exact retries of applied commands
}

// simProcessors holds the processors workers call; the restarter replaces them while
// commands are in flight, so a command may be retried on a processor that has never seen it.
type simProcessors struct {
	mu       sync.Mutex
	procs    []*ledger.Processor
	restarts int
}

func (s *simProcessors) get(w int) *ledger.Processor {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.procs[w%len(s.procs)]
}

func (s *simProcessors) all() []*ledger.Processor {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*ledger.Processor(nil), s.procs...)
}

// restart closes processor i and puts a new one, with an empty cache, in its place.
func (s *simProcessors) restart(t *testing.T, i int, open func() *ledger.Processor) {
	s.mu.Lock()
	old := s.procs[i]
	s.procs[i] = open()
	s.restarts++
	s.mu.Unlock()
	if err := old.Close(); err != nil {
		t.Errorf("close processor %d: %v", i, err)
	}
}

// simRestartEvery is how many finished commands pass between two processor restarts.
const simRestartEvery = 150

func runSimulation(t *testing.T, b backend, seed uint64) {
	store, reopen := b.open(t)
	clock := &fixedClock{now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	// A cache much smaller than the working set: payments are evicted between a call and
	// its retry as they would be by a restart.
	cfg := ledger.Config{Clock: clock.Now, SharedStore: b.shared, MaxBatch: 64, CacheSize: 24}
	procs := &simProcessors{procs: []*ledger.Processor{newProcessor(t, store, cfg)}}
	if reopen != nil {
		shared := cfg
		shared.SharedStore = true
		procs.procs = append(procs.procs, newProcessor(t, reopen(), shared))
	}
	setup := procs.get(0)
	assets := []domain.Asset{usd, jpy}
	var ids []string
	for _, a := range assets {
		world := "world-" + a.Code
		open(t, setup, world, a, domain.KindExternal, 0)
		for i := range 6 {
			id := fmt.Sprintf("%s-%d", a.Code, i)
			ids = append(ids, id)
			limit := int64(0)
			if i == 0 {
				limit = 5_000
			}
			kind := domain.KindCustomer
			if i == 5 {
				kind = domain.KindMerchant
			}
			open(t, setup, id, a, kind, limit)
			exec(t, setup, domain.Transfer{PaymentID: domain.PaymentID("seed-" + id), Source: domain.AccountID(world),
				Destination: domain.AccountID(id), Amount: money(20_000, a)})
		}
	}
	out := &simOutcome{accepted: map[domain.PaymentID]bool{}, ops: map[string]bool{}, refusedAt: map[domain.PaymentID]bool{}}
	const workers, steps = 12, 120
	finished := make(chan struct{}, workers*steps)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			simWorker(t, procs, rng, w, steps, ids, clock, out, finished)
		}()
	}
	// The restarter: processor 0 is replaced every simRestartEvery commands, counted as
	// they finish, so restarts land among calls and their retries on every run.
	stopRestarts := make(chan struct{})
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		n := 0
		for {
			select {
			case <-finished:
				if n++; n%simRestartEvery == 0 {
					procs.restart(t, 0, func() *ledger.Processor { return newProcessor(t, store, cfg) })
				}
			case <-stopRestarts:
				return
			}
		}
	}()
	wg.Wait()
	close(stopRestarts)
	<-restarted
	if procs.restarts == 0 {
		t.Errorf("the simulation restarted no processor: it did not test retries after restarts")
	}

	m := foldLog(t, store)
	sums := map[domain.Asset]int64{}
	for _, acc := range m.Accounts {
		sums[acc.Asset] += acc.Posted
	}
	for a, sum := range sums {
		if sum != 0 {
			t.Errorf("balances of %s sum to %d, want 0", a, sum)
		}
	}
	for id := range out.accepted {
		if n := m.Creations[id]; n != 1 {
			t.Errorf("accepted payment %s is recorded %d times, want exactly once", id, n)
		}
	}
	for id, n := range m.Creations {
		if n != 1 {
			t.Errorf("payment %s is recorded %d times", id, n)
		}
		if !out.accepted[id] && len(id) > 5 && id[:5] != "seed-" {
			t.Errorf("payment %s is in the log but no caller was told it was accepted", id)
		}
	}
	for op := range out.ops {
		if m.Ops[op] != 1 {
			t.Errorf("accepted operation %s recorded %d times, want once", op, m.Ops[op])
		}
	}
	// The write side agrees with the replay, for every processor.
	for i, p := range procs.all() {
		for stream, want := range m.Accounts {
			acc, _, _ := domain.ParseStream(stream)
			got, err := p.Account(ctxT(t), acc)
			if err != nil {
				t.Fatalf("processor %d: account %s: %v", i, acc, err)
			}
			if b.shared && got.Version != want.Version {
				continue // another process wrote since this one last looked; the store is the truth
			}
			if got.Posted != want.Posted || got.Held != want.Held || got.Version != want.Version {
				t.Errorf("processor %d: %s: state posted=%d held=%d v%d, replay posted=%d held=%d v%d",
					i, acc, got.Posted, got.Held, got.Version, want.Posted, want.Held, want.Version)
			}
		}
	}
	if n, err := eventstore.VerifyChain(ctxT(t), store, 1000, nil); err != nil || n != m.Events {
		t.Errorf("hash chain: verified %d of %d events: %v", n, m.Events, err)
	}
	t.Logf("seed %d: %d events, %d payments accepted, %d operations, %d retries of applied commands, %d processor restarts",
		seed, m.Events, len(out.accepted), len(out.ops), out.retries, procs.restarts)
}

func simWorker(t *testing.T, procs *simProcessors, rng *rand.Rand, w, steps int, ids []string, clock *fixedClock, out *simOutcome, finished chan<- struct{}) {
	var mine []domain.Command // this worker's accepted creations, for retries and follow-ups
	pick := func() domain.AccountID { return domain.AccountID(ids[rng.IntN(len(ids))]) }
	assetOf := func(id domain.AccountID) domain.Asset {
		if id[:3] == "USD" {
			return usd
		}
		return jpy
	}
	for step := range steps {
		pid := domain.PaymentID(fmt.Sprintf("w%d-s%d", w, step))
		var cmd domain.Command
		// What the reference model expects of this step: a retry of an applied command is
		// answered with its original outcome; the same id with other input is a duplicate.
		retry, altered := false, false
		switch r := rng.IntN(100); {
		case r < 40:
			src, dst := pick(), pick()
			cmd = domain.Transfer{PaymentID: pid, Source: src, Destination: dst, Amount: money(1+rng.Int64N(8_000), assetOf(src))}
		case r < 50:
			legs := make([]domain.Leg, 1+rng.IntN(4))
			for i := range legs {
				src, dst := pick(), pick()
				legs[i] = domain.Leg{Source: src, Destination: dst, Amount: money(1+rng.Int64N(3_000), assetOf(src))}
			}
			cmd = domain.BatchTransfer{PaymentID: pid, Legs: legs}
		case r < 65:
			src, dst := pick(), pick()
			cmd = domain.Authorise{PaymentID: pid, Source: src, Destination: dst, Amount: money(1+rng.Int64N(6_000), assetOf(src)),
				ExpiresAt: clock.Now().Add(time.Duration(1+rng.IntN(30)) * time.Minute)}
		case r < 90 && len(mine) > 0:
			prev := mine[rng.IntN(len(mine))]
			switch prev := prev.(type) {
			case domain.Authorise:
				switch rng.IntN(4) {
				case 0:
					cmd = domain.Void{PaymentID: prev.PaymentID}
				case 1:
					cmd = domain.Expire{PaymentID: prev.PaymentID}
				default:
					cmd = domain.Capture{PaymentID: prev.PaymentID, CaptureID: domain.OperationID(fmt.Sprintf("c%d", step)),
						Amount: money(1+rng.Int64N(prev.Amount.Minor), prev.Amount.Asset)}
				}
			case domain.Transfer:
				if rng.IntN(2) == 0 {
					cmd, retry = prev, true // an exact retry
				} else {
					cmd = domain.Refund{PaymentID: prev.PaymentID, RefundID: domain.OperationID(fmt.Sprintf("r%d", step)),
						Amount: money(1+rng.Int64N(prev.Amount.Minor), prev.Amount.Asset)}
				}
			default:
				cmd, retry = prev, true
			}
		case r < 95 && len(mine) > 0:
			// Same id, different input.
			if prev, ok := mine[rng.IntN(len(mine))].(domain.Transfer); ok {
				prev.Amount.Minor++
				cmd, altered = prev, true
			} else {
				continue
			}
		default:
			clock.Advance(time.Duration(rng.IntN(5)) * time.Minute)
			continue
		}
		// A processor closed by a restart refuses with ErrClosed; the client retries the same
		// command on its replacement, as a client retries after a server restart.
		var res ledger.Result
		var err error
		for range 5 {
			res, err = procs.get(w).Execute(ctxT(t), ledger.Request{Command: cmd, Meta: eventstore.Metadata{Actor: fmt.Sprintf("worker-%d", w)}})
			if !errors.Is(err, ledger.ErrClosed) {
				break
			}
		}
		finished <- struct{}{}
		out.mu.Lock()
		switch {
		case errors.Is(err, eventstore.ErrConflict):
			// Allowed under contention between two processes; nothing was appended.
		case retry && (err != nil || !res.Replayed):
			t.Errorf("worker %d step %d: retry of applied %T %v: want its original outcome (replayed), got replayed=%v err=%v",
				w, step, cmd, cmd.Payments(), res.Replayed, err)
		case altered && !errors.Is(err, domain.ErrDuplicateID):
			t.Errorf("worker %d step %d: %T %v reused with other input: want %v, got %v", w, step, cmd, cmd.Payments(), domain.ErrDuplicateID, err)
		}
		if retry {
			out.retries++
		}
		switch {
		case err == nil:
			switch c := cmd.(type) {
			case domain.Transfer, domain.BatchTransfer, domain.Authorise:
				id := c.Payments()[0]
				if !res.Replayed {
					if out.accepted[id] {
						t.Errorf("payment %s accepted twice as new", id)
					}
					mine = append(mine, cmd)
				}
				out.accepted[id] = true
			case domain.Capture:
				out.ops[string(c.PaymentID)+"/capture/"+string(c.CaptureID)] = true
			case domain.Refund:
				out.ops[string(c.PaymentID)+"/refund/"+string(c.RefundID)] = true
			}
		case errors.Is(err, eventstore.ErrConflict):
			// Allowed under contention between two processes; nothing was appended.
		case domain.IsDomainError(err):
		default:
			t.Errorf("worker %d step %d %T: unexpected error %v", w, step, cmd, err)
		}
		out.mu.Unlock()
	}
}
