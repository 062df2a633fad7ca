package ledger_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/services/ledger"
)

// A payment id that is in the log is recognised whatever the processor's cache holds:
// after a restart, on another process, or after eviction. The retry gets the original
// outcome (replayed, at the original position) even when today's balances would refuse it,
// and the same id with other input gets DUPLICATE_ID, for every kind of command that
// carries a client-chosen id. (Freeze, unfreeze and close carry none: they set a state, and
// a repeat is answered with the state as it is.)
func TestRetryAfterRestart(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			for _, restart := range restartKinds(b) {
				t.Run(restart.name, func(t *testing.T) { testRetryAfterRestart(t, b, restart) })
			}
		})
	}
}

// restartKind describes how the second processor differs from the first.
type restartKind struct {
	name string
	// next closes the first processor (or not) and returns the processor that receives
	// the retries.
	next func(t *testing.T, first *ledger.Processor, env *restartEnv) *ledger.Processor
	// tinyCache runs the first processor with a cache far smaller than the working set.
	tinyCache bool
	// snapshots makes both processors save and load account snapshots every 2 events.
	snapshots bool
}

type restartEnv struct {
	store  eventstore.Store
	reopen func() eventstore.Store // the same store through a new handle (a restarted process)
	cfg    ledger.Config
}

func restartKinds(b backend) []restartKind {
	kinds := []restartKind{
		{name: "processor restarted", next: func(t *testing.T, first *ledger.Processor, env *restartEnv) *ledger.Processor {
			first.Close()
			return newProcessor(t, env.store, env.cfg)
		}},
		{name: "process restarted with snapshots", snapshots: true, next: func(t *testing.T, first *ledger.Processor, env *restartEnv) *ledger.Processor {
			first.Close() // flushes the snapshot writer
			env.store = env.reopen()
			cfg := env.cfg
			cfg.Snapshots = env.store.(eventstore.SnapshotStore)
			return newProcessor(t, env.store, cfg)
		}},
		{name: "evicted without restart", tinyCache: true, next: func(t *testing.T, first *ledger.Processor, env *restartEnv) *ledger.Processor {
			return first
		}},
	}
	if b.shared {
		kinds = append(kinds, restartKind{name: "another process", next: func(t *testing.T, first *ledger.Processor, env *restartEnv) *ledger.Processor {
			return newProcessor(t, env.reopen(), env.cfg)
		}})
	}
	return kinds
}

// openRestartable returns a store and a function that reopens it as a restarted process
// would: the embedded store is closed and opened again from its directory.
func openRestartable(t *testing.T, b backend) (eventstore.Store, func() eventstore.Store) {
	if b.name != "embedded" {
		return b.open(t)
	}
	dir := t.TempDir()
	var current *embedded.Store
	open := func() eventstore.Store {
		if current != nil {
			if err := current.Close(); err != nil {
				t.Fatalf("close embedded store: %v", err)
			}
		}
		s, err := embedded.Open(dir, embedded.Options{})
		if err != nil {
			t.Fatalf("open embedded store in %s: %v", dir, err)
		}
		current = s
		return s
	}
	t.Cleanup(func() { current.Close() })
	return open(), open
}

func testRetryAfterRestart(t *testing.T, b backend, restart restartKind) {
	store, reopen := openRestartable(t, b)
	clock := &fixedClock{now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	env := &restartEnv{store: store, reopen: reopen, cfg: ledger.Config{Clock: clock.Now, SharedStore: b.shared}}
	if restart.snapshots {
		env.cfg.SnapshotEvery = 2
		env.cfg.SnapshotKey = snapshotKey(t) // shared by the processors before and after the restart
	}
	firstCfg := env.cfg
	if restart.tinyCache {
		firstCfg.CacheSize = 3
	}
	if restart.snapshots {
		firstCfg.Snapshots = store.(eventstore.SnapshotStore)
	}
	p := newProcessor(t, store, firstCfg)
	expires := clock.Now().Add(time.Hour)

	open(t, p, "world", usd, domain.KindExternal, 0)
	open(t, p, "alice", usd, domain.KindCustomer, 0)
	open(t, p, "bob", usd, domain.KindCustomer, 0)
	open(t, p, "carol", usd, domain.KindMerchant, 0)
	exec(t, p, domain.Transfer{PaymentID: "fund", Source: "world", Destination: "alice", Amount: money(100_00, usd)})

	// Every kind of command, completed while alice had money.
	completed := []domain.Command{
		domain.Transfer{PaymentID: "t1", Source: "alice", Destination: "bob", Amount: money(30_00, usd), Reference: "rent"},
		domain.BatchTransfer{PaymentID: "b1", Legs: []domain.Leg{
			{Source: "alice", Destination: "bob", Amount: money(10_00, usd)},
			{Source: "alice", Destination: "carol", Amount: money(10_00, usd)},
		}},
		domain.Authorise{PaymentID: "a1", Source: "alice", Destination: "carol", Amount: money(20_00, usd), ExpiresAt: expires},
		domain.Capture{PaymentID: "a1", CaptureID: "c1", Amount: money(5_00, usd)},
		domain.Authorise{PaymentID: "a2", Source: "alice", Destination: "carol", Amount: money(5_00, usd), ExpiresAt: expires},
		domain.Void{PaymentID: "a2"},
		domain.Refund{PaymentID: "t1", RefundID: "r1", Amount: money(10_00, usd)},
		domain.OpenAccount{AccountID: "dave", Asset: usd, Kind: domain.KindCustomer, CreditLimit: 50_00},
	}
	// The same ids with other input: each must be refused as a duplicate, never decided anew.
	altered := []domain.Command{
		domain.Transfer{PaymentID: "t1", Source: "alice", Destination: "bob", Amount: money(30_01, usd), Reference: "rent"},
		domain.BatchTransfer{PaymentID: "b1", Legs: []domain.Leg{{Source: "alice", Destination: "bob", Amount: money(20_00, usd)}}},
		domain.Authorise{PaymentID: "a1", Source: "alice", Destination: "carol", Amount: money(20_00, usd), ExpiresAt: expires.Add(time.Minute)},
		domain.Capture{PaymentID: "a1", CaptureID: "c1", Amount: money(6_00, usd)},
		domain.Refund{PaymentID: "t1", RefundID: "r1", Amount: money(9_00, usd)},
		domain.OpenAccount{AccountID: "dave", Asset: usd, Kind: domain.KindCustomer, CreditLimit: 60_00},
	}
	// A refusal is not recorded: retried on unchanged state it is refused the same way.
	refused := []struct {
		cmd  domain.Command
		want error
	}{
		{domain.Transfer{PaymentID: "x1", Source: "bob", Destination: "alice", Amount: money(1_000_00, usd)}, domain.ErrInsufficientFunds},
		{domain.Capture{PaymentID: "a2", CaptureID: "c9", Amount: money(1_00, usd)}, domain.ErrPaymentState},
		{domain.Refund{PaymentID: "t1", RefundID: "r9", Amount: money(100_00, usd)}, domain.ErrInvalidAmount},
	}

	original := make([]ledger.Result, len(completed))
	for i, cmd := range completed {
		original[i] = exec(t, p, cmd)
	}
	for _, r := range refused {
		if _, err := p.Execute(ctxT(t), ledger.Request{Command: r.cmd}); !errors.Is(err, r.want) {
			t.Fatalf("before restart, %T %v: want %v, got %v", r.cmd, r.cmd.Payments(), r.want, err)
		}
	}
	// Drain alice: every original decision would now be refused for lack of funds.
	a, err := p.Account(ctxT(t), "alice")
	if err != nil {
		t.Fatalf("read alice: %v", err)
	}
	exec(t, p, domain.Transfer{PaymentID: "drain", Source: "alice", Destination: "world", Amount: money(a.Available(), usd)})
	if restart.tinyCache {
		// Touch enough other streams to push every payment out of the 3-entry cache.
		for i := range 8 {
			open(t, p, fmt.Sprintf("filler-%d", i), usd, domain.KindCustomer, 0)
		}
	}

	p2 := restart.next(t, p, env)
	before := head(t, env.store)
	for i, cmd := range completed {
		res, err := p2.Execute(ctxT(t), ledger.Request{Command: cmd})
		if err != nil {
			t.Errorf("retry %d (%T of %v %v): want the original outcome (replayed), got error %v", i, cmd, cmd.Payments(), cmd.Accounts(), err)
			continue
		}
		if !res.Replayed {
			t.Errorf("retry %d (%T of %v): want replayed=true, got a new decision at position %d", i, cmd, cmd.Payments(), res.Position)
		}
		if res.Position != original[i].Position {
			t.Errorf("retry %d (%T of %v): want the original position %d, got %d", i, cmd, cmd.Payments(), original[i].Position, res.Position)
		}
	}
	for _, cmd := range altered {
		if _, err := p2.Execute(ctxT(t), ledger.Request{Command: cmd}); !errors.Is(err, domain.ErrDuplicateID) {
			t.Errorf("same id, other input (%T of %v %v): want %v, got %v", cmd, cmd.Payments(), cmd.Accounts(), domain.ErrDuplicateID, err)
		}
	}
	for _, r := range refused {
		if _, err := p2.Execute(ctxT(t), ledger.Request{Command: r.cmd}); !errors.Is(err, r.want) {
			t.Errorf("refused before, retried (%T of %v): want %v again, got %v", r.cmd, r.cmd.Payments(), r.want, err)
		}
	}
	if after := head(t, env.store); after != before {
		t.Errorf("retries appended %d events, want none", after-before)
	}
}
