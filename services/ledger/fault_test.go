package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/services/ledger"
)

var errInjected = errors.New("injected fault")

// faultyStore fails some appends: either before anything is written (the disk said no), or
// after the append committed (the acknowledgement was lost: the caller cannot know). Both
// happen to real stores; the second is the one that makes ledgers double-spend or lose money.
type faultyStore struct {
	eventstore.Store
	mu        sync.Mutex
	rng       *rand.Rand
	before    float64 // probability of failing before the append
	lostAck   float64 // probability of committing, then reporting a failure
	injected  int
	committed int
}

func (f *faultyStore) Append(ctx context.Context, appends ...eventstore.StreamAppend) (eventstore.AppendResult, error) {
	f.mu.Lock()
	r := f.rng.Float64()
	f.mu.Unlock()
	if r < f.before {
		f.count(false)
		return eventstore.AppendResult{}, fmt.Errorf("%w: write refused before commit", errInjected)
	}
	res, err := f.Store.Append(ctx, appends...)
	if err == nil && r < f.before+f.lostAck {
		f.count(true)
		return eventstore.AppendResult{}, fmt.Errorf("%w: acknowledgement lost after commit", errInjected)
	}
	return res, err
}

func (f *faultyStore) count(committed bool) {
	f.mu.Lock()
	f.injected++
	if committed {
		f.committed++
	}
	f.mu.Unlock()
}

// TestFaultyAppends runs concurrent transfers while appends fail before or after commit.
// Whatever the processor answered, the log must hold every acknowledged payment exactly
// once, never hold a payment twice, keep every account above its floor, and the processor
// must agree with a replay once the failed calls are retried.
func TestFaultyAppends(t *testing.T) {
	seed := *simSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			defer func() {
				if t.Failed() {
					t.Logf("fault seed %d: replay with go test ./services/ledger -run 'TestFaultyAppends/%s' -sim.seed=%d", seed, b.name, seed)
				}
			}()
			store, _ := b.open(t)
			faulty := &faultyStore{Store: store, rng: rand.New(rand.NewPCG(seed, 1)), before: 0.05, lostAck: 0.05}
			p := newProcessor(t, faulty, ledger.Config{SharedStore: b.shared, MaxBatch: 16})
			setup := newProcessor(t, store, ledger.Config{SharedStore: true})
			open(t, setup, "world", usd, domain.KindExternal, 0)
			const accounts = 8
			for i := range accounts {
				id := fmt.Sprintf("acc-%d", i)
				open(t, setup, id, usd, domain.KindCustomer, 0)
				exec(t, setup, domain.Transfer{PaymentID: domain.PaymentID("fund-" + id), Source: "world", Destination: domain.AccountID(id), Amount: money(5_000, usd)})
			}

			type outcome struct {
				cmd domain.Transfer
				err error
			}
			const workers, each = 16, 40
			results := make([][]outcome, workers)
			var wg sync.WaitGroup
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(seed, uint64(100+w)))
					for j := range each {
						src, dst := rng.IntN(accounts), rng.IntN(accounts)
						if src == dst {
							dst = (dst + 1) % accounts
						}
						cmd := domain.Transfer{PaymentID: domain.PaymentID(fmt.Sprintf("f-%d-%d", w, j)),
							Source: domain.AccountID(fmt.Sprintf("acc-%d", src)), Destination: domain.AccountID(fmt.Sprintf("acc-%d", dst)),
							Amount: money(1+rng.Int64N(900), usd)}
						_, err := p.Execute(ctxT(t), ledger.Request{Command: cmd})
						results[w] = append(results[w], outcome{cmd, err})
					}
				}()
			}
			wg.Wait()
			if faulty.injected == 0 {
				t.Fatal("no fault was injected: the test proves nothing")
			}

			m := foldLog(t, store) // also checks every account stays above its floor at every event
			var acked, failed int
			for _, rs := range results {
				for _, r := range rs {
					n := m.Creations[r.cmd.PaymentID]
					switch {
					case r.err == nil:
						acked++
						if n != 1 {
							t.Errorf("payment %s was acknowledged but is recorded %d times", r.cmd.PaymentID, n)
						}
					case errors.Is(r.err, errInjected):
						failed++
						if n > 1 {
							t.Errorf("payment %s is recorded %d times", r.cmd.PaymentID, n)
						}
					case domain.IsDomainError(r.err):
						if n != 0 {
							t.Errorf("payment %s was refused (%v) but is recorded %d times", r.cmd.PaymentID, r.err, n)
						}
					default:
						t.Errorf("payment %s: unexpected error %v", r.cmd.PaymentID, r.err)
					}
				}
			}

			// The client's answer to an unknown outcome: retry with the same id and input.
			// Exactly once holds whatever happened the first time.
			faulty.mu.Lock()
			faulty.before, faulty.lostAck = 0, 0
			faulty.mu.Unlock()
			for _, rs := range results {
				for _, r := range rs {
					if !errors.Is(r.err, errInjected) {
						continue
					}
					if _, err := p.Execute(ctxT(t), ledger.Request{Command: r.cmd}); err != nil && !domain.IsDomainError(err) {
						t.Errorf("retry of %s: %v", r.cmd.PaymentID, err)
					}
				}
			}
			m = foldLog(t, store)
			for id, n := range m.Creations {
				if n != 1 {
					t.Errorf("after retries, payment %s is recorded %d times", id, n)
				}
			}
			var sum int64
			for stream, want := range m.Accounts {
				sum += want.Posted
				acc, _, _ := domain.ParseStream(stream)
				got, err := p.Account(ctxT(t), acc)
				if err != nil {
					t.Fatalf("account %s: %v", acc, err)
				}
				if got.Posted != want.Posted || got.Version != want.Version {
					t.Errorf("%s: processor says posted %d v%d, the log says %d v%d", acc, got.Posted, got.Version, want.Posted, want.Version)
				}
			}
			if sum != 0 {
				t.Errorf("balances sum to %d, want 0", sum)
			}
			if n, err := eventstore.VerifyChain(ctxT(t), store, 1000, nil); err != nil || n != m.Events {
				t.Errorf("hash chain: verified %d of %d: %v", n, m.Events, err)
			}
			t.Logf("seed %d: %d acknowledged, %d failed by %d injected faults (%d after commit), %d events", seed, acked, failed, faulty.injected, faulty.committed, m.Events)
		})
	}
}
