package domain_test

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/securepay/securepay/domain"
)

var (
	propSeed  = flag.Uint64("seed", 0, "seed for TestDecidePropertySequences (0: SECUREPAY_SEED or random)")
	propSteps = flag.Int("steps", 5000, "commands per run of TestDecidePropertySequences")
)

// propAccount is the reference model's view of an account, kept by the test's own
// arithmetic, independent of Decide and Evolve.
type propAccount struct {
	id     domain.AccountID
	asset  domain.Asset
	kind   domain.AccountKind
	limit  int64
	status domain.AccountStatus
	posted int64
	held   int64
}

type propPayment struct {
	cmd        domain.Command
	kind       domain.PaymentKind
	src, dst   domain.AccountID
	asset      domain.Asset
	authorised int64
	captured   int64
	refunded   int64
	expires    time.Time
	status     domain.PaymentStatus
}

type propModel struct {
	accounts map[domain.AccountID]*propAccount
	order    []domain.AccountID
	payments map[domain.PaymentID]*propPayment
	pids     []domain.PaymentID
}

func (m *propModel) remaining(p *propPayment) int64 {
	if p.status != domain.PaymentStatusAuthorised {
		return 0
	}
	return p.authorised - p.captured
}

// transferOutcome is the model's prediction for a one-step transfer or a batch leg: nil when
// it must be accepted, otherwise the sentinel it must be refused with.
func (m *propModel) legOutcome(work map[domain.AccountID]int64, l domain.Leg) error {
	if l.Amount.Minor <= 0 {
		return domain.ErrInvalidAmount
	}
	if l.Source == l.Destination {
		return domain.ErrInvalidInput
	}
	for _, id := range []domain.AccountID{l.Source, l.Destination} {
		a, ok := m.accounts[id]
		switch {
		case !ok || a.status == domain.AccountStatusNone:
			return domain.ErrAccountUnknown
		case a.status == domain.AccountStatusFrozen:
			return domain.ErrAccountFrozen
		case a.status == domain.AccountStatusClosed:
			return domain.ErrAccountClosed
		case a.asset != l.Amount.Asset:
			return domain.ErrAssetMismatch
		}
	}
	src := m.accounts[l.Source]
	if src.kind != domain.KindExternal && work[l.Source]-src.held-l.Amount.Minor < -src.limit {
		return domain.ErrInsufficientFunds
	}
	work[l.Source] -= l.Amount.Minor
	work[l.Destination] += l.Amount.Minor
	return nil
}

func (m *propModel) postedCopy() map[domain.AccountID]int64 {
	out := make(map[domain.AccountID]int64, len(m.accounts))
	for id, a := range m.accounts {
		out[id] = a.posted
	}
	return out
}

// TestDecidePropertySequences runs random command sequences through Decide, applies the
// accepted events with Evolve, and after every step checks the ledger invariants and a
// reference model. Replay a failure with -seed=N (or SECUREPAY_SEED=N).
func TestDecidePropertySequences(t *testing.T) {
	seed := *propSeed
	if seed == 0 {
		if env := os.Getenv("SECUREPAY_SEED"); env != "" {
			v, err := strconv.ParseUint(env, 10, 64)
			if err != nil {
				t.Fatalf("SECUREPAY_SEED=%q is not a number: %v", env, err)
			}
			seed = v
		}
	}
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replay with: go test ./domain/ -run TestDecidePropertySequences -seed=%d", seed)
		}
	})
	rng := rand.New(rand.NewPCG(seed, 0x5ec)) // fixed stream id: the seed alone decides the run
	specs := []domain.OpenAccount{
		openCmd("w-usd", usd, domain.KindExternal, 0),
		openCmd("c1", usd, domain.KindCustomer, 0),
		openCmd("c2", usd, domain.KindCustomer, 2000),
		openCmd("m1", usd, domain.KindMerchant, 0),
		openCmd("w-jpy", jpy, domain.KindExternal, 0),
		openCmd("c3", jpy, domain.KindCustomer, 0),
		openCmd("m2", jpy, domain.KindMerchant, 500),
	}
	model := &propModel{accounts: map[domain.AccountID]*propAccount{}, payments: map[domain.PaymentID]*propPayment{}}
	for _, s := range specs {
		model.accounts[s.AccountID] = &propAccount{id: s.AccountID, asset: s.Asset, kind: s.Kind, limit: s.CreditLimit}
		model.order = append(model.order, s.AccountID)
	}
	state := domain.State{Accounts: map[domain.AccountID]domain.Account{}, Payments: map[domain.PaymentID]domain.Payment{}}
	now := t0
	var replays []domain.Command // accepted commands whose retry must change nothing
	counts := map[string]int{}

	pickAccount := func() domain.AccountID { return model.order[rng.IntN(len(model.order))] }
	// Sources are often the external accounts, which fund the others; otherwise most
	// movements would bounce off empty accounts.
	pickSource := func() domain.AccountID {
		if rng.IntN(3) == 0 {
			return [2]domain.AccountID{"w-usd", "w-jpy"}[rng.IntN(2)]
		}
		return pickAccount()
	}
	// Payment commands mostly target authorisations, the kind with a life cycle.
	pickPayment := func() domain.PaymentID {
		if len(model.pids) == 0 || rng.IntN(10) == 0 {
			return domain.PaymentID(fmt.Sprintf("missing-%d", rng.IntN(3)))
		}
		for range 4 {
			id := model.pids[len(model.pids)-1-rng.IntN(min(len(model.pids), 30))]
			if model.payments[id].kind == domain.PaymentKindAuthorisation {
				return id
			}
		}
		return model.pids[rng.IntN(len(model.pids))]
	}
	amount := func(asset domain.Asset) domain.Money {
		switch rng.IntN(20) {
		case 0:
			return domain.Money{Asset: asset, Minor: -rng.Int64N(5)} // zero or negative
		case 1:
			other := usd
			if asset == usd {
				other = jpy
			}
			return domain.Money{Asset: other, Minor: 1 + rng.Int64N(100)}
		}
		return domain.Money{Asset: asset, Minor: 1 + rng.Int64N(3000)}
	}
	assetOf := func(id domain.AccountID) domain.Asset { return model.accounts[id].asset }
	pickDestination := func(src domain.AccountID) domain.AccountID {
		for range 5 {
			if id := pickAccount(); rng.IntN(10) == 0 || assetOf(id) == assetOf(src) {
				return id
			}
		}
		return pickAccount()
	}

	for step := range *propSteps {
		now = now.Add(time.Duration(rng.IntN(600)) * time.Second)
		var cmd domain.Command
		var predicted error
		havePrediction := false
		newPID := domain.PaymentID(fmt.Sprintf("p%d", step))
		switch r := rng.IntN(100); {
		case r < 8:
			spec := specs[rng.IntN(len(specs))]
			if rng.IntN(4) == 0 {
				spec.CreditLimit += 1 // same id, other input
			}
			cmd = spec
		case r < 9:
			cmd = domain.FreezeAccount{AccountID: pickAccount(), Reason: "property"}
		case r < 15:
			cmd = domain.UnfreezeAccount{AccountID: pickAccount()}
		case r < 16:
			if rng.IntN(5) > 0 { // closing is for ever: keep it rare so the ledger stays busy
				continue
			}
			cmd = domain.CloseAccount{AccountID: pickAccount()}
		case r < 40:
			src := pickSource()
			dst := pickDestination(src)
			c := xferCmd(string(newPID), string(src), string(dst), amount(assetOf(src)))
			cmd = c
			predicted = model.legOutcome(model.postedCopy(), domain.Leg{Source: c.Source, Destination: c.Destination, Amount: c.Amount})
			havePrediction = true
		case r < 48:
			var legs []domain.Leg
			for range 1 + rng.IntN(4) {
				src := pickSource()
				dst := pickDestination(src)
				legs = append(legs, leg(string(src), string(dst), amount(assetOf(src))))
			}
			cmd = batchCmd(string(newPID), legs...)
			work := model.postedCopy()
			for _, l := range legs {
				if predicted = model.legOutcome(work, l); predicted != nil {
					break
				}
			}
			havePrediction = true
		case r < 63:
			src := pickSource()
			dst := pickDestination(src)
			c := authCmd(string(newPID), string(src), string(dst), amount(assetOf(src)), now.Add(time.Duration(1+rng.IntN(48*3600))*time.Second))
			cmd = c
			// An authorisation is a leg that moves held money instead of posted money.
			work := model.postedCopy()
			predicted = model.legOutcome(work, domain.Leg{Source: c.Source, Destination: c.Destination, Amount: c.Amount})
			havePrediction = true
		case r < 75:
			pid := pickPayment()
			c := domain.Capture{PaymentID: pid, CaptureID: domain.OperationID(fmt.Sprintf("c%d", step))}
			if p := model.payments[pid]; p != nil && rng.IntN(4) > 0 {
				c.Amount = amount(p.asset)
			} else if rng.IntN(2) == 0 {
				c.Full = true
			} else {
				c.Amount = amount(usd)
			}
			cmd = c
		case r < 80:
			cmd = domain.Void{PaymentID: pickPayment()}
		case r < 87:
			cmd = domain.Expire{PaymentID: pickPayment()}
		case r < 95:
			pid := pickPayment()
			a := usd
			if p := model.payments[pid]; p != nil {
				a = p.asset
			}
			cmd = refundCmd(string(pid), fmt.Sprintf("r%d", step), amount(a))
		default:
			if len(replays) == 0 {
				continue
			}
			cmd = replays[rng.IntN(len(replays))]
			predicted, havePrediction = nil, true
		}
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("seed %d step %d, command %#v: %s", seed, step, cmd, fmt.Sprintf(format, args...))
		}

		events, err := domain.Decide(state, cmd, now)
		name := fmt.Sprintf("%T", cmd)
		if max := domain.MaxEvents(cmd); len(events) > max {
			fail("Decide returned %d events, MaxEvents promises at most %d", len(events), max)
		}
		switch {
		case err != nil:
			counts[name+" refused"]++
			counts[string(domain.ReasonOf(err))]++
			if !domain.IsDomainError(err) {
				fail("refusal %v wraps no domain sentinel", err)
			}
			if len(events) > 0 {
				fail("refused with %v but returned %d events", err, len(events))
			}
		case len(events) == 0:
			counts[name+" no-op"]++
		default:
			counts[name+" accepted"]++
		}
		if havePrediction {
			if predicted != nil && !errors.Is(err, predicted) {
				fail("the reference model refuses with %q, Decide said %v", predicted, err)
			}
			if predicted == nil && err != nil {
				fail("the reference model accepts this, Decide refused: %v", err)
			}
		}
		if err != nil {
			continue
		}
		if err := domain.CheckBalanced(events); err != nil {
			fail("accepted events do not balance: %v", err)
		}
		for _, e := range events {
			state = domain.Evolve(state, e)
			checkPairedAssertion(t, state, e)
		}
		if len(events) > 0 {
			applyToModel(model, cmd, now)
			switch cmd.(type) {
			case domain.OpenAccount, domain.Transfer, domain.BatchTransfer, domain.Authorise, domain.Capture, domain.Refund:
				replays = append(replays, cmd)
			}
		}
		checkInvariants(t, fail, state, model)
	}
	t.Logf("seed %d: %d steps: %v", seed, *propSteps, counts)
	for _, must := range []string{"domain.Transfer accepted", "domain.BatchTransfer accepted", "domain.Authorise accepted",
		"domain.Capture accepted", "domain.Void accepted", "domain.Expire accepted", "domain.Refund accepted",
		"domain.Transfer refused", "domain.FreezeAccount accepted"} {
		if counts[must] == 0 && *propSteps >= 2000 {
			t.Errorf("seed %d: in %d steps no %q happened: the generator does not exercise it", seed, *propSteps, must)
		}
	}
}

// applyToModel updates the reference model for an accepted command, by its own arithmetic.
func applyToModel(m *propModel, cmd domain.Command, now time.Time) {
	move := func(src, dst domain.AccountID, minor int64) {
		m.accounts[src].posted -= minor
		m.accounts[dst].posted += minor
	}
	switch c := cmd.(type) {
	case domain.OpenAccount:
		m.accounts[c.AccountID].status = domain.AccountStatusOpen
	case domain.FreezeAccount:
		m.accounts[c.AccountID].status = domain.AccountStatusFrozen
	case domain.UnfreezeAccount:
		m.accounts[c.AccountID].status = domain.AccountStatusOpen
	case domain.CloseAccount:
		m.accounts[c.AccountID].status = domain.AccountStatusClosed
	case domain.Transfer:
		move(c.Source, c.Destination, c.Amount.Minor)
		m.payments[c.PaymentID] = &propPayment{cmd: c, kind: domain.PaymentKindTransfer, src: c.Source, dst: c.Destination,
			asset: c.Amount.Asset, captured: c.Amount.Minor, status: domain.PaymentStatusCompleted}
		m.pids = append(m.pids, c.PaymentID)
	case domain.BatchTransfer:
		p := &propPayment{cmd: c, kind: domain.PaymentKindBatch, status: domain.PaymentStatusCompleted, asset: c.Legs[0].Amount.Asset}
		for _, l := range c.Legs {
			move(l.Source, l.Destination, l.Amount.Minor)
			p.captured += l.Amount.Minor
		}
		m.payments[c.PaymentID] = p
		m.pids = append(m.pids, c.PaymentID)
	case domain.Authorise:
		m.accounts[c.Source].held += c.Amount.Minor
		m.payments[c.PaymentID] = &propPayment{cmd: c, kind: domain.PaymentKindAuthorisation, src: c.Source, dst: c.Destination,
			asset: c.Amount.Asset, authorised: c.Amount.Minor, expires: c.ExpiresAt, status: domain.PaymentStatusAuthorised}
		m.pids = append(m.pids, c.PaymentID)
	case domain.Capture:
		p := m.payments[c.PaymentID]
		minor := c.Amount.Minor
		if c.Full {
			minor = m.remaining(p)
		}
		m.accounts[p.src].held -= minor
		move(p.src, p.dst, minor)
		p.captured += minor
		if p.captured == p.authorised {
			p.status = domain.PaymentStatusCaptured
		}
	case domain.Void:
		p := m.payments[c.PaymentID]
		m.accounts[p.src].held -= m.remaining(p)
		p.status = domain.PaymentStatusVoided
	case domain.Expire:
		p := m.payments[c.PaymentID]
		m.accounts[p.src].held -= m.remaining(p)
		p.status = domain.PaymentStatusExpired
	case domain.Refund:
		p := m.payments[c.PaymentID]
		move(p.dst, p.src, c.Amount.Minor)
		p.refunded += c.Amount.Minor
	}
}

func checkInvariants(t *testing.T, fail func(string, ...any), s domain.State, m *propModel) {
	t.Helper()
	sums := map[domain.Asset]int64{}
	for id, a := range s.Accounts {
		sums[a.Asset] += a.Posted
		if floor, limited := a.Floor(); limited && a.Available() < floor {
			fail("account %s has %d available, below its floor %d", id, a.Available(), floor)
		}
		if a.Held < 0 || a.OpenHolds < 0 {
			fail("account %s holds %d in %d holds", id, a.Held, a.OpenHolds)
		}
		want := m.accounts[id]
		if a.Posted != want.posted || a.Held != want.held || a.Status != want.status {
			fail("account %s: state has posted %d held %d %s, the model has posted %d held %d %s",
				id, a.Posted, a.Held, a.Status, want.posted, want.held, want.status)
		}
	}
	for asset, sum := range sums {
		if sum != 0 {
			fail("posted balances of %s sum to %d, not 0", asset, sum)
		}
	}
	holds := map[domain.AccountID]int{}
	for id, p := range s.Payments {
		if p.Kind == domain.PaymentKindAuthorisation {
			if p.Captured > p.Authorised {
				fail("payment %s captured %d of %d authorised", id, p.Captured, p.Authorised)
			}
			if (p.Status == domain.PaymentStatusVoided || p.Status == domain.PaymentStatusExpired) && p.Captured+p.Released != p.Authorised {
				fail("payment %s is %s: captured %d + released %d != authorised %d", id, p.Status, p.Captured, p.Released, p.Authorised)
			}
			if p.Status == domain.PaymentStatusAuthorised {
				holds[p.Legs[0].Source]++
			}
		}
		if p.Refunded > p.Captured || p.Refunded < 0 {
			fail("payment %s refunded %d of %d captured", id, p.Refunded, p.Captured)
		}
		want := m.payments[id]
		if p.Status != want.status || p.Captured != want.captured || p.Refunded != want.refunded || p.Authorised != want.authorised {
			fail("payment %s: state has %s captured %d refunded %d authorised %d; the model has %s %d %d %d", id,
				p.Status, p.Captured, p.Refunded, p.Authorised, want.status, want.captured, want.refunded, want.authorised)
		}
	}
	for id, a := range s.Accounts {
		if a.OpenHolds != holds[id] {
			fail("account %s counts %d open holds, %d authorisations are open on it", id, a.OpenHolds, holds[id])
		}
	}
}
