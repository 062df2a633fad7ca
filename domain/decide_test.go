package domain_test

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/securepay/securepay/domain"
)

// bal is an account's expected state after the scenario's events are applied.
type bal struct {
	posted, held, available int64
	holds                   int
	version                 uint64
	status                  domain.AccountStatus
}

// pay is a payment's expected state after the scenario's events are applied.
type pay struct {
	status                                  domain.PaymentStatus
	authorised, captured, refunded, release int64
	version                                 uint64
}

// scenario: given events, when a command at time now, then exactly these events (none for a
// retry or a no-op) or an error wrapping err; and after folding given+then, these balances.
type scenario struct {
	name     string
	given    []domain.Event
	when     domain.Command
	now      time.Time // t0 when zero
	then     []domain.Event
	err      error
	limits   domain.Limits // the defaults when zero
	accounts map[domain.AccountID]bal
	payments map[domain.PaymentID]pay
}

func runScenarios(t *testing.T, scenarios []scenario) {
	t.Helper()
	names := map[string]bool{}
	for _, sc := range scenarios {
		if names[sc.name] {
			t.Fatalf("two scenarios are named %q", sc.name)
		}
		names[sc.name] = true
		t.Run(sc.name, func(t *testing.T) { runScenario(t, sc) })
	}
}

func runScenario(t *testing.T, sc scenario) {
	now := sc.now
	if now.IsZero() {
		now = t0
	}
	state := fold(sc.given)
	untouched := fold(sc.given)
	state.Limits, untouched.Limits = sc.limits, sc.limits
	got, err := domain.Decide(state, sc.when, now)
	if !reflect.DeepEqual(state, untouched) {
		t.Fatalf("Decide modified the state it was given")
	}
	if sc.err != nil {
		if !errors.Is(err, sc.err) {
			t.Fatalf("when %T: want error wrapping %q, got %v (events %v)", sc.when, sc.err, err, got)
		}
		if len(got) != 0 {
			t.Fatalf("when %T: refused with %v but also returned %d events", sc.when, err, len(got))
		}
		if !domain.IsDomainError(err) || domain.ReasonOf(err) == "" {
			t.Fatalf("refusal %v has no machine-readable reason", err)
		}
		return
	}
	if err != nil {
		t.Fatalf("when %T: want accepted, got error %v", sc.when, err)
	}
	if len(got) != len(sc.then) {
		t.Fatalf("when %T: want %d events, got %d:\n%s", sc.when, len(sc.then), len(got), dump(got))
	}
	for i := range got {
		if !reflect.DeepEqual(got[i], sc.then[i]) {
			t.Fatalf("event %d:\n got  %#v\n want %#v", i, got[i], sc.then[i])
		}
	}
	if err := domain.CheckBalanced(got); err != nil {
		t.Fatalf("accepted events do not balance: %v", err)
	}
	after := state
	for _, e := range got {
		after = domain.Evolve(after, e)
		checkPairedAssertion(t, after, e)
	}
	if !reflect.DeepEqual(state, untouched) {
		t.Fatalf("Evolve modified the state it was given")
	}
	for id, want := range sc.accounts {
		a := after.Accounts[id]
		status := want.status
		if status == domain.AccountStatusNone {
			status = domain.AccountStatusOpen
		}
		gotBal := bal{a.Posted, a.Held, a.Available(), a.OpenHolds, a.Version, a.Status}
		want.status = status
		if gotBal != want {
			t.Errorf("account %s: got %+v, want %+v", id, gotBal, want)
		}
	}
	for id, want := range sc.payments {
		p := after.Payments[id]
		gotPay := pay{p.Status, p.Authorised, p.Captured, p.Refunded, p.Released, p.Version}
		if gotPay != want {
			t.Errorf("payment %s: got %+v, want %+v", id, gotPay, want)
		}
	}
}

// checkPairedAssertion checks what an event says about the balance after it against the
// balance Evolve computed (the projector makes the same check: an assertion in pairs).
func checkPairedAssertion(t testing.TB, s domain.State, e domain.Event) {
	t.Helper()
	var id domain.AccountID
	var posted, held *int64
	switch e := e.(type) {
	case domain.AccountDebited:
		id, posted = e.AccountID, &e.PostedAfter
	case domain.AccountCredited:
		id, posted = e.AccountID, &e.PostedAfter
	case domain.HoldPlaced:
		id, held = e.AccountID, &e.HeldAfter
	case domain.HoldReleased:
		id, held = e.AccountID, &e.HeldAfter
	case domain.HoldCaptured:
		id, posted, held = e.AccountID, &e.PostedAfter, &e.HeldAfter
	default:
		return
	}
	a := s.Accounts[id]
	if posted != nil && *posted != a.Posted {
		t.Fatalf("%s says %s posted after = %d, the folded account has %d", e.Name(), id, *posted, a.Posted)
	}
	if held != nil && *held != a.Held {
		t.Fatalf("%s says %s held after = %d, the folded account has %d", e.Name(), id, *held, a.Held)
	}
}

func dump(events []domain.Event) string {
	var b strings.Builder
	for _, e := range events {
		fmt.Fprintf(&b, "  %#v\n", e)
	}
	return b.String()
}

func metaN(n int) domain.Metadata {
	m := domain.Metadata{}
	for i := range n {
		m[fmt.Sprintf("k%d", i)] = "v"
	}
	return m
}

func TestDecideAccounts(t *testing.T) {
	dave := openCmd("dave", usd, domain.KindCustomer, 0)
	dave.Metadata = domain.Metadata{"tier": "gold"}
	daveOther := dave
	daveOther.CreditLimit = 100
	withMeta := func(m domain.Metadata) domain.OpenAccount {
		c := openCmd("dave", usd, domain.KindCustomer, 0)
		c.Metadata = m
		return c
	}
	frozenBob := cat(base(), one(domain.AccountFrozen{AccountID: "bob"}))
	carolHold := authCmd("h1", "carol", "shop", usdMoney(1000), exp)
	runScenarios(t, []scenario{
		{name: "open customer", when: dave, then: one(opened(dave)),
			accounts: map[domain.AccountID]bal{"dave": {version: 1}}},
		{name: "open external", when: openCmd("bank", usd, domain.KindExternal, 0),
			then: one(opened(openCmd("bank", usd, domain.KindExternal, 0)))},
		{name: "open merchant with credit limit", when: openCmd("m2", btc, domain.KindMerchant, 7),
			then: one(opened(openCmd("m2", btc, domain.KindMerchant, 7)))},
		{name: "open replayed with same input", given: one(opened(dave)), when: dave},
		{name: "open replayed after the account was closed", given: cat(one(opened(dave)), one(domain.AccountClosed{AccountID: "dave"})), when: dave},
		{name: "open same id other input", given: one(opened(dave)), when: daveOther, err: domain.ErrDuplicateID},
		{name: "open same id other metadata", given: one(opened(dave)), when: withMeta(domain.Metadata{"tier": "silver"}), err: domain.ErrDuplicateID},
		{name: "open empty id", when: openCmd("", usd, domain.KindCustomer, 0), err: domain.ErrInvalidInput},
		{name: "open id with space", when: openCmd("a b", usd, domain.KindCustomer, 0), err: domain.ErrInvalidInput},
		{name: "open id too long", when: openCmd(strings.Repeat("a", domain.MaxIDBytes+1), usd, domain.KindCustomer, 0), err: domain.ErrInvalidInput},
		{name: "open id of max length", when: openCmd(strings.Repeat("a", domain.MaxIDBytes), usd, domain.KindCustomer, 0),
			then: one(opened(openCmd(strings.Repeat("a", domain.MaxIDBytes), usd, domain.KindCustomer, 0)))},
		{name: "open with wrong scale for USD", when: openCmd("d", domain.Asset{Code: "USD", Scale: 3}, domain.KindCustomer, 0), err: domain.ErrInvalidInput},
		{name: "open with no asset", when: openCmd("d", domain.Asset{}, domain.KindCustomer, 0), err: domain.ErrInvalidInput},
		{name: "open with lower-case asset", when: openCmd("d", domain.Asset{Code: "usd", Scale: 2}, domain.KindCustomer, 0), err: domain.ErrInvalidInput},
		{name: "open with scale 19", when: openCmd("d", domain.Asset{Code: "PTS", Scale: 19}, domain.KindCustomer, 0), err: domain.ErrInvalidInput},
		{name: "open with no kind", when: openCmd("d", usd, domain.KindUnspecified, 0), err: domain.ErrInvalidInput},
		{name: "open with unknown kind", when: openCmd("d", usd, domain.AccountKind(9), 0), err: domain.ErrInvalidInput},
		{name: "open with negative credit limit", when: openCmd("d", usd, domain.KindCustomer, -1), err: domain.ErrInvalidAmount},
		{name: "open external with credit limit", when: openCmd("d", usd, domain.KindExternal, 1), err: domain.ErrInvalidInput},
		{name: "open with 16 metadata entries", when: withMeta(metaN(16)), then: one(opened(withMeta(metaN(16))))},
		{name: "open with 17 metadata entries", when: withMeta(metaN(17)), err: domain.ErrLimitExceeded},
		{name: "open with metadata value too long", when: withMeta(domain.Metadata{"k": strings.Repeat("v", domain.MaxMetadataValueBytes+1)}), err: domain.ErrLimitExceeded},
		{name: "open with upper-case metadata key", when: withMeta(domain.Metadata{"Tier": "gold"}), err: domain.ErrInvalidInput},
		{name: "open with empty metadata key", when: withMeta(domain.Metadata{"": "gold"}), err: domain.ErrInvalidInput},
		{name: "open with metadata key too long", when: withMeta(domain.Metadata{strings.Repeat("k", domain.MaxMetadataKeyBytes+1): "v"}), err: domain.ErrInvalidInput},
		{name: "open with metadata value not UTF-8", when: withMeta(domain.Metadata{"k": "\xff"}), err: domain.ErrInvalidInput},

		{name: "freeze", given: base(), when: domain.FreezeAccount{AccountID: "alice", Reason: "fraud review"},
			then:     one(domain.AccountFrozen{AccountID: "alice", Reason: "fraud review"}),
			accounts: map[domain.AccountID]bal{"alice": {posted: 10000, available: 10000, version: 3, status: domain.AccountStatusFrozen}}},
		{name: "freeze frozen is a no-op", given: base(), when: domain.FreezeAccount{AccountID: "ice"}},
		{name: "freeze closed", given: base(), when: domain.FreezeAccount{AccountID: "gone"}, err: domain.ErrAccountClosed},
		{name: "freeze unknown", given: base(), when: domain.FreezeAccount{AccountID: "nobody"}, err: domain.ErrAccountUnknown},
		{name: "freeze invalid id", given: base(), when: domain.FreezeAccount{AccountID: "no body"}, err: domain.ErrInvalidInput},
		{name: "freeze reason too long", given: base(), when: domain.FreezeAccount{AccountID: "alice", Reason: strings.Repeat("r", domain.MaxReasonBytes+1)}, err: domain.ErrLimitExceeded},
		{name: "freeze reason not UTF-8", given: base(), when: domain.FreezeAccount{AccountID: "alice", Reason: "\xfe"}, err: domain.ErrInvalidInput},
		{name: "unfreeze", given: base(), when: domain.UnfreezeAccount{AccountID: "ice"},
			then:     one(domain.AccountUnfrozen{AccountID: "ice"}),
			accounts: map[domain.AccountID]bal{"ice": {posted: 500, available: 500, version: 4}}},
		{name: "unfreeze open is a no-op", given: base(), when: domain.UnfreezeAccount{AccountID: "alice"}},
		{name: "unfreeze closed", given: base(), when: domain.UnfreezeAccount{AccountID: "gone"}, err: domain.ErrAccountClosed},
		{name: "unfreeze unknown", given: base(), when: domain.UnfreezeAccount{AccountID: "nobody"}, err: domain.ErrAccountUnknown},
		{name: "close empty", given: base(), when: domain.CloseAccount{AccountID: "bob"},
			then:     one(domain.AccountClosed{AccountID: "bob"}),
			accounts: map[domain.AccountID]bal{"bob": {version: 2, status: domain.AccountStatusClosed}}},
		{name: "close frozen empty", given: frozenBob, when: domain.CloseAccount{AccountID: "bob"},
			then:     one(domain.AccountClosed{AccountID: "bob"}),
			accounts: map[domain.AccountID]bal{"bob": {version: 3, status: domain.AccountStatusClosed}}},
		{name: "close closed is a no-op", given: base(), when: domain.CloseAccount{AccountID: "gone"}},
		{name: "close with balance", given: base(), when: domain.CloseAccount{AccountID: "alice"}, err: domain.ErrAccountNotEmpty},
		{name: "close frozen with balance", given: base(), when: domain.CloseAccount{AccountID: "ice"}, err: domain.ErrAccountNotEmpty},
		{name: "close external with negative balance", given: base(), when: domain.CloseAccount{AccountID: "world"}, err: domain.ErrAccountNotEmpty},
		{name: "close with open hold and zero posted", given: cat(base(), authorised(carolHold, 1000)),
			when: domain.CloseAccount{AccountID: "carol"}, err: domain.ErrAccountNotEmpty},
		{name: "close unknown", given: base(), when: domain.CloseAccount{AccountID: "nobody"}, err: domain.ErrAccountUnknown},
	})
}

func TestDecideTransfer(t *testing.T) {
	p1 := xferCmd("p1", "alice", "bob", usdMoney(2500))
	all := xferCmd("p1", "alice", "bob", usdMoney(10000))
	with := func(f func(*domain.Transfer)) domain.Transfer {
		c := p1
		f(&c)
		return c
	}
	held := authCmd("h1", "alice", "shop", usdMoney(8000), exp)
	runScenarios(t, []scenario{
		{name: "transfer", given: base(), when: p1, then: transferred(p1, 7500, 2500),
			accounts: map[domain.AccountID]bal{"alice": {posted: 7500, available: 7500, version: 3}, "bob": {posted: 2500, available: 2500, version: 2}},
			payments: map[domain.PaymentID]pay{"p1": {status: domain.PaymentStatusCompleted, captured: 2500, version: 1}}},
		{name: "transfer everything available", given: base(), when: all, then: transferred(all, 0, 10000),
			accounts: map[domain.AccountID]bal{"alice": {version: 3}}},
		{name: "transfer one minor unit past the floor", given: base(), when: xferCmd("p1", "alice", "bob", usdMoney(10001)), err: domain.ErrInsufficientFunds},
		{name: "transfer from empty account", given: base(), when: xferCmd("p1", "bob", "alice", usdMoney(1)), err: domain.ErrInsufficientFunds},
		{name: "transfer within credit limit", given: base(), when: xferCmd("p1", "carol", "bob", usdMoney(5000)),
			then:     transferred(xferCmd("p1", "carol", "bob", usdMoney(5000)), -5000, 5000),
			accounts: map[domain.AccountID]bal{"carol": {posted: -5000, available: -5000, version: 2}}},
		{name: "transfer past credit limit", given: base(), when: xferCmd("p1", "carol", "bob", usdMoney(5001)), err: domain.ErrInsufficientFunds},
		{name: "transfer from external goes negative", given: base(), when: xferCmd("p1", "world", "bob", usdMoney(1_000_000_00)),
			then:     transferred(xferCmd("p1", "world", "bob", usdMoney(1_000_000_00)), -1_000_000_00-10500, 1_000_000_00),
			accounts: map[domain.AccountID]bal{"world": {posted: -100010500, available: -100010500, version: 4}}},
		{name: "transfer to external", given: base(), when: xferCmd("p1", "alice", "world", usdMoney(100)),
			then: transferred(xferCmd("p1", "alice", "world", usdMoney(100)), 9900, -10400)},
		{name: "transfer to account in another asset", given: base(), when: xferCmd("p1", "alice", "yen", usdMoney(100)), err: domain.ErrAssetMismatch},
		{name: "transfer amount in another asset", given: base(), when: xferCmd("p1", "alice", "bob", jpyMoney(100)), err: domain.ErrAssetMismatch},
		{name: "transfer USD amount with wrong scale", given: base(), when: xferCmd("p1", "alice", "bob", domain.Money{Asset: domain.Asset{Code: "USD", Scale: 3}, Minor: 1}), err: domain.ErrAssetMismatch},
		{name: "transfer from frozen", given: base(), when: xferCmd("p1", "ice", "bob", usdMoney(100)), err: domain.ErrAccountFrozen},
		{name: "transfer to frozen", given: base(), when: xferCmd("p1", "alice", "ice", usdMoney(100)), err: domain.ErrAccountFrozen},
		{name: "transfer from closed", given: base(), when: xferCmd("p1", "gone", "bob", usdMoney(100)), err: domain.ErrAccountClosed},
		{name: "transfer to closed", given: base(), when: xferCmd("p1", "alice", "gone", usdMoney(100)), err: domain.ErrAccountClosed},
		{name: "transfer to same account", given: base(), when: xferCmd("p1", "alice", "alice", usdMoney(100)), err: domain.ErrInvalidInput},
		{name: "transfer zero", given: base(), when: xferCmd("p1", "alice", "bob", usdMoney(0)), err: domain.ErrInvalidAmount},
		{name: "transfer negative", given: base(), when: xferCmd("p1", "alice", "bob", usdMoney(-100)), err: domain.ErrInvalidAmount},
		{name: "transfer without asset", given: base(), when: xferCmd("p1", "alice", "bob", domain.Money{Minor: 100}), err: domain.ErrInvalidAmount},
		{name: "transfer from unknown", given: base(), when: xferCmd("p1", "nobody", "bob", usdMoney(100)), err: domain.ErrAccountUnknown},
		{name: "transfer to unknown", given: base(), when: xferCmd("p1", "alice", "nobody", usdMoney(100)), err: domain.ErrAccountUnknown},
		{name: "transfer with invalid payment id", given: base(), when: xferCmd("p 1", "alice", "bob", usdMoney(100)), err: domain.ErrInvalidInput},
		{name: "transfer with invalid account id", given: base(), when: xferCmd("p1", "alice", "b/b", usdMoney(100)), err: domain.ErrInvalidInput},
		{name: "transfer reference too long", given: base(), when: with(func(c *domain.Transfer) { c.Reference = strings.Repeat("r", domain.MaxReferenceBytes+1) }), err: domain.ErrLimitExceeded},
		{name: "transfer metadata too big", given: base(), when: with(func(c *domain.Transfer) { c.Metadata = metaN(17) }), err: domain.ErrLimitExceeded},
		{name: "transfer replayed", given: cat(base(), transferred(p1, 7500, 2500)), when: p1},
		{name: "transfer replayed when funds are now insufficient", given: cat(base(), transferred(all, 0, 10000)), when: all},
		{name: "transfer same id other amount", given: cat(base(), transferred(p1, 7500, 2500)), when: with(func(c *domain.Transfer) { c.Amount = usdMoney(2501) }), err: domain.ErrDuplicateID},
		{name: "transfer same id other reference", given: cat(base(), transferred(p1, 7500, 2500)), when: with(func(c *domain.Transfer) { c.Reference = "other" }), err: domain.ErrDuplicateID},
		{name: "transfer same id other destination", given: cat(base(), transferred(p1, 7500, 2500)), when: with(func(c *domain.Transfer) { c.Destination = "shop" }), err: domain.ErrDuplicateID},
		{name: "transfer reusing an authorisation's id", given: cat(base(), authorised(authCmd("p1", "alice", "bob", usdMoney(2500), exp), 2500)), when: p1, err: domain.ErrDuplicateID},
		{name: "transfer blocked by a hold", given: cat(base(), authorised(held, 8000)), when: xferCmd("p1", "alice", "bob", usdMoney(2001)), err: domain.ErrInsufficientFunds},
		{name: "transfer beside a hold", given: cat(base(), authorised(held, 8000)), when: xferCmd("p1", "alice", "bob", usdMoney(2000)),
			then:     transferred(xferCmd("p1", "alice", "bob", usdMoney(2000)), 8000, 2000),
			accounts: map[domain.AccountID]bal{"alice": {posted: 8000, held: 8000, available: 0, holds: 1, version: 4}}},
	})
}

func TestDecideBatch(t *testing.T) {
	two := batchCmd("b1", leg("alice", "bob", usdMoney(1000)), leg("alice", "shop", usdMoney(2000)))
	chain := batchCmd("b1", leg("alice", "bob", usdMoney(10000)), leg("bob", "shop", usdMoney(10000)))
	assets := batchCmd("b1", leg("world", "bob", usdMoney(100)), leg("yworld", "yen", jpyMoney(500)))
	var max []domain.Leg
	for range domain.MaxBatchLegs {
		max = append(max, leg("world", "bob", usdMoney(1)))
	}
	full := batchCmd("b1", max...)
	var fullEvents []domain.Event
	for i := range domain.MaxBatchLegs {
		fullEvents = append(fullEvents,
			domain.AccountDebited{AccountID: "world", PaymentID: "b1", Amount: usdMoney(1), PostedAfter: -10500 - int64(i) - 1},
			domain.AccountCredited{AccountID: "bob", PaymentID: "b1", Amount: usdMoney(1), PostedAfter: int64(i) + 1})
	}
	batchEvent := func(c domain.BatchTransfer) domain.Event {
		return domain.PaymentBatchTransferred{PaymentID: c.PaymentID, Legs: c.Legs, Reference: c.Reference, Metadata: c.Metadata, Fingerprint: domain.Fingerprint(c)}
	}
	twoEvents := cat(one(batchEvent(two)),
		one(domain.AccountDebited{AccountID: "alice", PaymentID: "b1", Amount: usdMoney(1000), PostedAfter: 9000}),
		one(domain.AccountCredited{AccountID: "bob", PaymentID: "b1", Amount: usdMoney(1000), PostedAfter: 1000}),
		one(domain.AccountDebited{AccountID: "alice", PaymentID: "b1", Amount: usdMoney(2000), PostedAfter: 7000}),
		one(domain.AccountCredited{AccountID: "shop", PaymentID: "b1", Amount: usdMoney(2000), PostedAfter: 2000}))
	otherTwo := batchCmd("b1", leg("alice", "bob", usdMoney(1000)), leg("alice", "shop", usdMoney(2001)))
	runScenarios(t, []scenario{
		{name: "batch of two", given: base(), when: two, then: twoEvents,
			accounts: map[domain.AccountID]bal{"alice": {posted: 7000, available: 7000, version: 4}, "bob": {posted: 1000, available: 1000, version: 2},
				"shop": {posted: 2000, available: 2000, version: 2}},
			payments: map[domain.PaymentID]pay{"b1": {status: domain.PaymentStatusCompleted, captured: 3000, version: 1}}},
		{name: "batch legs see each other to pass", given: base(), when: chain,
			then: cat(one(batchEvent(chain)),
				one(domain.AccountDebited{AccountID: "alice", PaymentID: "b1", Amount: usdMoney(10000), PostedAfter: 0}),
				one(domain.AccountCredited{AccountID: "bob", PaymentID: "b1", Amount: usdMoney(10000), PostedAfter: 10000}),
				one(domain.AccountDebited{AccountID: "bob", PaymentID: "b1", Amount: usdMoney(10000), PostedAfter: 0}),
				one(domain.AccountCredited{AccountID: "shop", PaymentID: "b1", Amount: usdMoney(10000), PostedAfter: 10000})),
			accounts: map[domain.AccountID]bal{"alice": {version: 3}, "bob": {version: 3}, "shop": {posted: 10000, available: 10000, version: 2}}},
		{name: "batch legs see each other to refuse", given: base(), when: batchCmd("b1", leg("alice", "bob", usdMoney(6000)), leg("alice", "shop", usdMoney(6000))), err: domain.ErrInsufficientFunds},
		{name: "batch reversed chain refused", given: base(), when: batchCmd("b1", leg("bob", "shop", usdMoney(10000)), leg("alice", "bob", usdMoney(10000))), err: domain.ErrInsufficientFunds},
		{name: "batch with a frozen leg refuses all", given: base(), when: batchCmd("b1", leg("alice", "bob", usdMoney(1000)), leg("ice", "bob", usdMoney(100))), err: domain.ErrAccountFrozen},
		{name: "batch with a zero leg refuses all", given: base(), when: batchCmd("b1", leg("alice", "bob", usdMoney(1000)), leg("alice", "shop", usdMoney(0))), err: domain.ErrInvalidAmount},
		{name: "batch with an unknown account refuses all", given: base(), when: batchCmd("b1", leg("alice", "bob", usdMoney(1000)), leg("alice", "nobody", usdMoney(1))), err: domain.ErrAccountUnknown},
		{name: "batch with a mismatched asset refuses all", given: base(), when: batchCmd("b1", leg("alice", "bob", usdMoney(1000)), leg("alice", "yen", usdMoney(1))), err: domain.ErrAssetMismatch},
		{name: "batch with a self leg refuses all", given: base(), when: batchCmd("b1", leg("alice", "bob", usdMoney(1000)), leg("bob", "bob", usdMoney(1))), err: domain.ErrInvalidInput},
		{name: "batch in two assets", given: base(), when: assets,
			then: cat(one(batchEvent(assets)),
				one(domain.AccountDebited{AccountID: "world", PaymentID: "b1", Amount: usdMoney(100), PostedAfter: -10600}),
				one(domain.AccountCredited{AccountID: "bob", PaymentID: "b1", Amount: usdMoney(100), PostedAfter: 100}),
				one(domain.AccountDebited{AccountID: "yworld", PaymentID: "b1", Amount: jpyMoney(500), PostedAfter: -500}),
				one(domain.AccountCredited{AccountID: "yen", PaymentID: "b1", Amount: jpyMoney(500), PostedAfter: 500})),
			accounts: map[domain.AccountID]bal{"yen": {posted: 500, available: 500, version: 2}}},
		{name: "batch of the maximum legs", given: base(), when: full, then: cat(one(batchEvent(full)), fullEvents),
			accounts: map[domain.AccountID]bal{"bob": {posted: domain.MaxBatchLegs, available: domain.MaxBatchLegs, version: domain.MaxBatchLegs + 1}}},
		{name: "batch over the maximum legs", given: base(), when: batchCmd("b1", append(max, leg("world", "bob", usdMoney(1)))...), err: domain.ErrLimitExceeded},
		{name: "batch without legs", given: base(), when: batchCmd("b1"), err: domain.ErrInvalidInput},
		{name: "batch replayed", given: cat(base(), twoEvents), when: two},
		{name: "batch same id other legs", given: cat(base(), twoEvents), when: otherTwo, err: domain.ErrDuplicateID},
		{name: "batch reusing a transfer's id", given: cat(base(), transferred(xferCmd("b1", "alice", "bob", usdMoney(1)), 9999, 1)), when: two, err: domain.ErrDuplicateID},
	})
}

func TestDecideAuthorise(t *testing.T) {
	a1 := authCmd("a1", "alice", "shop", usdMoney(3000), exp)
	big := authCmd("big", "alice", "shop", usdMoney(8000), exp)
	// A deadline given in another zone and with nanoseconds is stored as UTC microseconds.
	zoned := authCmd("a1", "alice", "shop", usdMoney(3000), exp.In(time.FixedZone("CEST", 2*3600)).Add(1500*time.Nanosecond))
	zonedStored := authCmd("a1", "alice", "shop", usdMoney(3000), exp.Add(time.Microsecond))
	with := func(f func(*domain.Authorise)) domain.Authorise {
		c := a1
		f(&c)
		return c
	}
	runScenarios(t, []scenario{
		{name: "authorise", given: base(), when: a1, then: authorised(a1, 3000),
			accounts: map[domain.AccountID]bal{"alice": {posted: 10000, held: 3000, available: 7000, holds: 1, version: 3},
				"shop": {version: 1}},
			payments: map[domain.PaymentID]pay{"a1": {status: domain.PaymentStatusAuthorised, authorised: 3000, version: 1}}},
		{name: "authorise stores the deadline as UTC microseconds", given: base(), when: zoned, then: authorised(zonedStored, 3000)},
		{name: "authorise replayed with the deadline in another zone", given: cat(base(), authorised(zonedStored, 3000)), when: zoned},
		{name: "authorise a second hold", given: cat(base(), authorised(big, 8000)), when: with(func(c *domain.Authorise) { c.Amount = usdMoney(2000) }),
			then:     authorised(with(func(c *domain.Authorise) { c.Amount = usdMoney(2000) }), 10000),
			accounts: map[domain.AccountID]bal{"alice": {posted: 10000, held: 10000, available: 0, holds: 2, version: 4}}},
		{name: "authorise more than available beside a hold", given: cat(base(), authorised(big, 8000)), when: with(func(c *domain.Authorise) { c.Amount = usdMoney(2001) }), err: domain.ErrInsufficientFunds},
		{name: "authorise more than posted", given: base(), when: with(func(c *domain.Authorise) { c.Amount = usdMoney(10001) }), err: domain.ErrInsufficientFunds},
		{name: "authorise within credit limit", given: base(), when: authCmd("a1", "carol", "shop", usdMoney(5000), exp),
			then:     authorised(authCmd("a1", "carol", "shop", usdMoney(5000), exp), 5000),
			accounts: map[domain.AccountID]bal{"carol": {held: 5000, available: -5000, holds: 1, version: 2}}},
		{name: "authorise past credit limit", given: base(), when: authCmd("a1", "carol", "shop", usdMoney(5001), exp), err: domain.ErrInsufficientFunds},
		{name: "authorise from external", given: base(), when: authCmd("a1", "world", "shop", usdMoney(1<<40), exp),
			then: authorised(authCmd("a1", "world", "shop", usdMoney(1<<40), exp), 1<<40)},
		{name: "authorise expiring now", given: base(), when: with(func(c *domain.Authorise) { c.ExpiresAt = t0 }), err: domain.ErrInvalidInput},
		{name: "authorise expiring in the past", given: base(), when: with(func(c *domain.Authorise) { c.ExpiresAt = t0.Add(-time.Second) }), err: domain.ErrInvalidInput},
		{name: "authorise without deadline", given: base(), when: with(func(c *domain.Authorise) { c.ExpiresAt = time.Time{} }), err: domain.ErrInvalidInput},
		{name: "authorise at the longest deadline", given: base(), when: with(func(c *domain.Authorise) { c.ExpiresAt = t0.Add(domain.MaxAuthorisationTTL) }),
			then: authorised(with(func(c *domain.Authorise) { c.ExpiresAt = t0.Add(domain.MaxAuthorisationTTL) }), 3000)},
		{name: "authorise past the longest deadline", given: base(), when: with(func(c *domain.Authorise) { c.ExpiresAt = t0.Add(domain.MaxAuthorisationTTL + time.Microsecond) }), err: domain.ErrLimitExceeded},
		{name: "authorise from frozen", given: base(), when: with(func(c *domain.Authorise) { c.Source = "ice" }), err: domain.ErrAccountFrozen},
		{name: "authorise to closed", given: base(), when: with(func(c *domain.Authorise) { c.Destination = "gone" }), err: domain.ErrAccountClosed},
		{name: "authorise to frozen", given: base(), when: with(func(c *domain.Authorise) { c.Destination = "ice" }), err: domain.ErrAccountFrozen},
		{name: "authorise from unknown", given: base(), when: with(func(c *domain.Authorise) { c.Source = "nobody" }), err: domain.ErrAccountUnknown},
		{name: "authorise to unknown", given: base(), when: with(func(c *domain.Authorise) { c.Destination = "nobody" }), err: domain.ErrAccountUnknown},
		{name: "authorise to another asset", given: base(), when: with(func(c *domain.Authorise) { c.Destination = "yen" }), err: domain.ErrAssetMismatch},
		{name: "authorise amount in another asset", given: base(), when: with(func(c *domain.Authorise) { c.Amount = jpyMoney(3000) }), err: domain.ErrAssetMismatch},
		{name: "authorise to the same account", given: base(), when: with(func(c *domain.Authorise) { c.Destination = "alice" }), err: domain.ErrInvalidInput},
		{name: "authorise zero", given: base(), when: with(func(c *domain.Authorise) { c.Amount = usdMoney(0) }), err: domain.ErrInvalidAmount},
		{name: "authorise invalid payment id", given: base(), when: with(func(c *domain.Authorise) { c.PaymentID = "" }), err: domain.ErrInvalidInput},
		{name: "authorise replayed after its deadline", given: cat(base(), authorised(a1, 3000)), when: a1, now: exp.Add(time.Hour)},
		{name: "authorise replayed when funds are now held", given: cat(base(), authorised(a1, 3000), authorised(authCmd("h2", "alice", "bob", usdMoney(7000), exp), 10000)), when: a1},
		{name: "authorise same id other amount", given: cat(base(), authorised(a1, 3000)), when: with(func(c *domain.Authorise) { c.Amount = usdMoney(3001) }), err: domain.ErrDuplicateID},
		{name: "authorise same id other deadline", given: cat(base(), authorised(a1, 3000)), when: with(func(c *domain.Authorise) { c.ExpiresAt = exp.Add(time.Second) }), err: domain.ErrDuplicateID},
		{name: "authorise reusing a transfer's id", given: cat(base(), transferred(xferCmd("a1", "alice", "bob", usdMoney(1)), 9999, 1)), when: a1, err: domain.ErrDuplicateID},
	})
}

func TestDecideCaptureVoidExpire(t *testing.T) {
	a1 := authCmd("a1", "alice", "shop", usdMoney(3000), exp)
	auth := cat(base(), authorised(a1, 3000))
	c1 := captureCmd("a1", "c1", usdMoney(1000))
	c2 := captureCmd("a1", "c2", usdMoney(1500))
	c3 := captureCmd("a1", "c3", usdMoney(500))
	fullCap := domain.Capture{PaymentID: "a1", CaptureID: "all", Full: true}
	afterC1 := cat(auth, captured(a1, c1, 1000, 1000, 9000, 2000, 1000))
	afterC2 := cat(afterC1, captured(a1, c2, 1500, 2500, 7500, 500, 2500))
	afterAll := cat(afterC2, captured(a1, c3, 500, 3000, 7000, 0, 3000))
	voided := cat(afterC1, released(a1, 2000, 0, domain.ReleaseVoided))
	expired := cat(auth, released(a1, 3000, 0, domain.ReleaseExpired))
	transfer := cat(base(), transferred(xferCmd("t1", "alice", "bob", usdMoney(100)), 9900, 100))
	runScenarios(t, []scenario{
		{name: "capture part", given: auth, when: c1, then: captured(a1, c1, 1000, 1000, 9000, 2000, 1000),
			accounts: map[domain.AccountID]bal{"alice": {posted: 9000, held: 2000, available: 7000, holds: 1, version: 4},
				"shop": {posted: 1000, available: 1000, version: 2}},
			payments: map[domain.PaymentID]pay{"a1": {status: domain.PaymentStatusAuthorised, authorised: 3000, captured: 1000, version: 2}}},
		{name: "capture part again", given: afterC1, when: c2, then: captured(a1, c2, 1500, 2500, 7500, 500, 2500),
			accounts: map[domain.AccountID]bal{"alice": {posted: 7500, held: 500, available: 7000, holds: 1, version: 5}},
			payments: map[domain.PaymentID]pay{"a1": {status: domain.PaymentStatusAuthorised, authorised: 3000, captured: 2500, version: 3}}},
		{name: "capture the last part", given: afterC2, when: c3, then: captured(a1, c3, 500, 3000, 7000, 0, 3000),
			accounts: map[domain.AccountID]bal{"alice": {posted: 7000, available: 7000, version: 6}, "shop": {posted: 3000, available: 3000, version: 4}},
			payments: map[domain.PaymentID]pay{"a1": {status: domain.PaymentStatusCaptured, authorised: 3000, captured: 3000, version: 4}}},
		{name: "capture in full", given: auth, when: fullCap, then: captured(a1, fullCap, 3000, 3000, 7000, 0, 3000),
			accounts: map[domain.AccountID]bal{"alice": {posted: 7000, available: 7000, version: 4}},
			payments: map[domain.PaymentID]pay{"a1": {status: domain.PaymentStatusCaptured, authorised: 3000, captured: 3000, version: 2}}},
		{name: "capture the rest in full", given: afterC1, when: fullCap, then: captured(a1, fullCap, 2000, 3000, 7000, 0, 3000),
			accounts: map[domain.AccountID]bal{"alice": {posted: 7000, available: 7000, version: 5}}},
		{name: "capture just before the deadline", given: auth, when: c1, now: exp.Add(-time.Microsecond), then: captured(a1, c1, 1000, 1000, 9000, 2000, 1000)},
		{name: "capture over what remains", given: afterC1, when: captureCmd("a1", "c2", usdMoney(2001)), err: domain.ErrInvalidAmount},
		{name: "capture over the authorisation", given: auth, when: captureCmd("a1", "c1", usdMoney(3001)), err: domain.ErrInvalidAmount},
		{name: "capture at the deadline", given: auth, when: c1, now: exp, err: domain.ErrPaymentState},
		{name: "capture after the deadline", given: auth, when: c1, now: exp.Add(time.Hour), err: domain.ErrPaymentState},
		{name: "capture in another asset", given: auth, when: captureCmd("a1", "c1", jpyMoney(1000)), err: domain.ErrAssetMismatch},
		{name: "capture zero", given: auth, when: captureCmd("a1", "c1", usdMoney(0)), err: domain.ErrInvalidAmount},
		{name: "capture in full with an amount", given: auth, when: domain.Capture{PaymentID: "a1", CaptureID: "all", Full: true, Amount: usdMoney(1)}, err: domain.ErrInvalidInput},
		{name: "capture replayed", given: afterC1, when: c1},
		{name: "capture replayed after the payment is captured", given: afterAll, when: c1},
		{name: "capture replayed after the deadline", given: afterC1, when: c1, now: exp.Add(time.Hour)},
		{name: "capture same id other amount", given: afterC1, when: captureCmd("a1", "c1", usdMoney(999)), err: domain.ErrDuplicateID},
		{name: "capture after full capture", given: afterAll, when: captureCmd("a1", "c4", usdMoney(1)), err: domain.ErrPaymentState},
		{name: "capture after void", given: voided, when: c2, err: domain.ErrPaymentState},
		{name: "capture after expiry", given: expired, when: c1, err: domain.ErrPaymentState},
		{name: "capture unknown payment", given: base(), when: c1, err: domain.ErrPaymentUnknown},
		{name: "capture a transfer", given: transfer, when: captureCmd("t1", "c1", usdMoney(1)), err: domain.ErrPaymentState},
		{name: "capture with invalid id", given: auth, when: captureCmd("a1", "c 1", usdMoney(1)), err: domain.ErrInvalidInput},
		{name: "capture from frozen source", given: cat(auth, one(domain.AccountFrozen{AccountID: "alice"})), when: c1, err: domain.ErrAccountFrozen},
		{name: "capture to frozen destination", given: cat(auth, one(domain.AccountFrozen{AccountID: "shop"})), when: c1, err: domain.ErrAccountFrozen},

		{name: "void releases what remains", given: afterC1, when: domain.Void{PaymentID: "a1"}, then: released(a1, 2000, 0, domain.ReleaseVoided),
			accounts: map[domain.AccountID]bal{"alice": {posted: 9000, available: 9000, version: 5}, "shop": {posted: 1000, available: 1000, version: 2}},
			payments: map[domain.PaymentID]pay{"a1": {status: domain.PaymentStatusVoided, authorised: 3000, captured: 1000, release: 2000, version: 3}}},
		{name: "void whole authorisation", given: auth, when: domain.Void{PaymentID: "a1"}, then: released(a1, 3000, 0, domain.ReleaseVoided),
			accounts: map[domain.AccountID]bal{"alice": {posted: 10000, available: 10000, version: 4}}},
		{name: "void with a frozen source", given: cat(auth, one(domain.AccountFrozen{AccountID: "alice"})), when: domain.Void{PaymentID: "a1"},
			then: released(a1, 3000, 0, domain.ReleaseVoided)},
		{name: "void twice is a no-op", given: voided, when: domain.Void{PaymentID: "a1"}},
		{name: "void a captured payment", given: afterAll, when: domain.Void{PaymentID: "a1"}, err: domain.ErrPaymentState},
		{name: "void an expired payment", given: expired, when: domain.Void{PaymentID: "a1"}, err: domain.ErrPaymentState},
		{name: "void unknown payment", given: base(), when: domain.Void{PaymentID: "a1"}, err: domain.ErrPaymentUnknown},
		{name: "void a transfer", given: transfer, when: domain.Void{PaymentID: "t1"}, err: domain.ErrPaymentState},
		{name: "void invalid id", given: base(), when: domain.Void{PaymentID: ""}, err: domain.ErrInvalidInput},

		{name: "expire before the deadline", given: auth, when: domain.Expire{PaymentID: "a1"}, now: exp.Add(-time.Microsecond), err: domain.ErrPaymentState},
		{name: "expire at the deadline", given: auth, when: domain.Expire{PaymentID: "a1"}, now: exp, then: released(a1, 3000, 0, domain.ReleaseExpired),
			accounts: map[domain.AccountID]bal{"alice": {posted: 10000, available: 10000, version: 4}},
			payments: map[domain.PaymentID]pay{"a1": {status: domain.PaymentStatusExpired, authorised: 3000, release: 3000, version: 2}}},
		{name: "expire after a partial capture", given: afterC1, when: domain.Expire{PaymentID: "a1"}, now: exp.Add(time.Hour), then: released(a1, 2000, 0, domain.ReleaseExpired),
			accounts: map[domain.AccountID]bal{"alice": {posted: 9000, available: 9000, version: 5}}},
		{name: "expire twice is a no-op", given: expired, when: domain.Expire{PaymentID: "a1"}, now: exp.Add(time.Hour)},
		{name: "expire a voided payment", given: voided, when: domain.Expire{PaymentID: "a1"}, now: exp, err: domain.ErrPaymentState},
		{name: "expire a captured payment", given: afterAll, when: domain.Expire{PaymentID: "a1"}, now: exp, err: domain.ErrPaymentState},
		{name: "expire unknown payment", given: base(), when: domain.Expire{PaymentID: "a1"}, now: exp, err: domain.ErrPaymentUnknown},
		{name: "expire a transfer", given: transfer, when: domain.Expire{PaymentID: "t1"}, now: exp, err: domain.ErrPaymentState},
	})
}

func TestDecideRefund(t *testing.T) {
	t1 := xferCmd("t1", "alice", "shop", usdMoney(4000))
	paid := cat(base(), transferred(t1, 6000, 4000))
	r1 := refundCmd("t1", "r1", usdMoney(1000))
	afterR1 := cat(paid, refunded(r1, "shop", "alice", 1000, 3000, 7000))
	a1 := authCmd("a1", "alice", "shop", usdMoney(3000), exp)
	partlyCaptured := cat(base(), authorised(a1, 3000), captured(a1, captureCmd("a1", "c1", usdMoney(1000)), 1000, 1000, 9000, 2000, 1000))
	b1 := batchCmd("b1", leg("alice", "shop", usdMoney(100)))
	batch := cat(base(), one(domain.PaymentBatchTransferred{PaymentID: "b1", Legs: b1.Legs, Reference: b1.Reference, Fingerprint: domain.Fingerprint(b1)}),
		one(domain.AccountDebited{AccountID: "alice", PaymentID: "b1", Amount: usdMoney(100), PostedAfter: 9900}),
		one(domain.AccountCredited{AccountID: "shop", PaymentID: "b1", Amount: usdMoney(100), PostedAfter: 100}))
	runScenarios(t, []scenario{
		{name: "refund part", given: paid, when: r1, then: refunded(r1, "shop", "alice", 1000, 3000, 7000),
			accounts: map[domain.AccountID]bal{"alice": {posted: 7000, available: 7000, version: 4}, "shop": {posted: 3000, available: 3000, version: 3}},
			payments: map[domain.PaymentID]pay{"t1": {status: domain.PaymentStatusCompleted, captured: 4000, refunded: 1000, version: 2}}},
		{name: "refund the rest", given: afterR1, when: refundCmd("t1", "r2", usdMoney(3000)),
			then:     refunded(refundCmd("t1", "r2", usdMoney(3000)), "shop", "alice", 4000, 0, 10000),
			payments: map[domain.PaymentID]pay{"t1": {status: domain.PaymentStatusCompleted, captured: 4000, refunded: 4000, version: 3}}},
		{name: "refund in full", given: paid, when: refundCmd("t1", "r1", usdMoney(4000)),
			then: refunded(refundCmd("t1", "r1", usdMoney(4000)), "shop", "alice", 4000, 0, 10000)},
		{name: "refund over what is refundable", given: afterR1, when: refundCmd("t1", "r2", usdMoney(3001)), err: domain.ErrInvalidAmount},
		{name: "refund over the payment", given: paid, when: refundCmd("t1", "r1", usdMoney(4001)), err: domain.ErrInvalidAmount},
		{name: "refund a captured part", given: partlyCaptured, when: refundCmd("a1", "r1", usdMoney(1000)),
			then:     refunded(refundCmd("a1", "r1", usdMoney(1000)), "shop", "alice", 1000, 0, 10000),
			accounts: map[domain.AccountID]bal{"alice": {posted: 10000, held: 2000, available: 8000, holds: 1, version: 5}},
			payments: map[domain.PaymentID]pay{"a1": {status: domain.PaymentStatusAuthorised, authorised: 3000, captured: 1000, refunded: 1000, version: 3}}},
		{name: "refund more than captured", given: partlyCaptured, when: refundCmd("a1", "r1", usdMoney(1001)), err: domain.ErrInvalidAmount},
		{name: "refund an uncaptured authorisation", given: cat(base(), authorised(a1, 3000)), when: refundCmd("a1", "r1", usdMoney(1)), err: domain.ErrInvalidAmount},
		{name: "refund a batch", given: batch, when: refundCmd("b1", "r1", usdMoney(100)), err: domain.ErrPaymentState},
		{name: "refund replayed", given: afterR1, when: r1},
		{name: "refund replayed when the payer is now empty", given: cat(afterR1, transferred(xferCmd("out", "shop", "bob", usdMoney(3000)), 0, 3000)), when: r1},
		{name: "refund same id other amount", given: afterR1, when: refundCmd("t1", "r1", usdMoney(999)), err: domain.ErrDuplicateID},
		{name: "refund when the payee spent the money", given: cat(paid, transferred(xferCmd("out", "shop", "bob", usdMoney(4000)), 0, 4000)),
			when: r1, err: domain.ErrInsufficientFunds},
		{name: "refund in another asset", given: paid, when: refundCmd("t1", "r1", jpyMoney(1000)), err: domain.ErrAssetMismatch},
		{name: "refund zero", given: paid, when: refundCmd("t1", "r1", usdMoney(0)), err: domain.ErrInvalidAmount},
		{name: "refund unknown payment", given: base(), when: r1, err: domain.ErrPaymentUnknown},
		{name: "refund with invalid id", given: paid, when: refundCmd("t1", "", usdMoney(1)), err: domain.ErrInvalidInput},
		{name: "refund to a frozen account", given: cat(paid, one(domain.AccountFrozen{AccountID: "alice"})), when: r1, err: domain.ErrAccountFrozen},
		{name: "refund from a frozen account", given: cat(paid, one(domain.AccountFrozen{AccountID: "shop"})), when: r1, err: domain.ErrAccountFrozen},
	})
}

// Refusals that guard the bounds on operations per payment.
func TestDecideOperationLimits(t *testing.T) {
	a1 := authCmd("a1", "world", "shop", usdMoney(1000), exp)
	given := cat(base(), authorised(a1, 1000))
	for i := range domain.MaxCapturesPerPayment {
		c := captureCmd("a1", fmt.Sprintf("c%d", i), usdMoney(1))
		given = append(given, captured(a1, c, 1, int64(i+1), -10500-int64(i+1), 1000-int64(i+1), int64(i+1))...)
	}
	t1 := xferCmd("t1", "world", "shop", usdMoney(1000))
	refundsGiven := cat(base(), transferred(t1, -11500, 1000))
	for i := range domain.MaxRefundsPerPayment {
		r := refundCmd("t1", fmt.Sprintf("r%d", i), usdMoney(1))
		refundsGiven = append(refundsGiven, refunded(r, "shop", "world", int64(i+1), 1000-int64(i+1), -11500+int64(i+1))...)
	}
	runScenarios(t, []scenario{
		{name: "capture past the limit of captures", given: given, when: captureCmd("a1", "one-more", usdMoney(1)), err: domain.ErrLimitExceeded},
		{name: "capture replayed at the limit", given: given, when: captureCmd("a1", "c0", usdMoney(1))},
		{name: "refund past the limit of refunds", given: refundsGiven, when: refundCmd("t1", "one-more", usdMoney(1)), err: domain.ErrLimitExceeded},
	})
}

// Balances overflow int64 only with absurd amounts, but the arithmetic must refuse rather
// than wrap around.
func TestDecideRefusesOverflow(t *testing.T) {
	huge := int64(1<<63 - 1)
	given := cat(base(), transferred(xferCmd("w", "world", "bob", usdMoney(huge-10500)), -huge, huge-10500))
	nearTop := cat(base(), one(opened(openCmd("ext2", usd, domain.KindExternal, 0))),
		transferred(xferCmd("w", "ext2", "bob", usdMoney(huge-5000)), -(huge-5000), huge-5000))
	deep := cat(base(), one(opened(openCmd("deep", usd, domain.KindCustomer, huge))))
	deepHold := cat(deep, authorised(authCmd("a1", "deep", "bob", usdMoney(10), exp), 10))
	deepDebit := cat(deep, transferred(xferCmd("d1", "deep", "bob", usdMoney(10)), -10, 10))
	// The ceilings keep new amounts far from the edge; these scenarios lift them to reach
	// the arithmetic that must hold for balances recorded before ceilings existed.
	unbounded := domain.Limits{Assets: map[domain.Asset]domain.Ceilings{usd: {MaxAmount: huge, MaxCreditLimit: huge}}}
	runScenarios(t, []scenario{
		{name: "external debit past MinInt64", given: given, when: xferCmd("p1", "world", "shop", usdMoney(2)), err: domain.ErrLimitExceeded},
		{name: "credit past MaxInt64", given: nearTop, when: xferCmd("p1", "alice", "bob", usdMoney(5001)), err: domain.ErrLimitExceeded},
		// An account whose credit limit is the whole int64 range: posted minus held must not
		// wrap around and let the balance below the floor.
		{name: "debit beside a hold at the bottom of int64", given: deepHold, when: xferCmd("p1", "deep", "bob", usdMoney(huge)), err: domain.ErrInsufficientFunds, limits: unbounded},
		{name: "hold beside a debit at the bottom of int64", given: deepDebit, when: authCmd("a2", "deep", "bob", usdMoney(huge), exp), err: domain.ErrInsufficientFunds, limits: unbounded},
		{name: "credit up to MaxInt64", given: nearTop, when: xferCmd("p1", "alice", "bob", usdMoney(5000)),
			then: transferred(xferCmd("p1", "alice", "bob", usdMoney(5000)), 5000, huge)},
	})
}

func TestDecideUnknownCommand(t *testing.T) {
	if _, err := domain.Decide(domain.State{}, nil, t0); !errors.Is(err, domain.ErrInvalidInput) {
		t.Fatalf("Decide(nil command): want ErrInvalidInput, got %v", err)
	}
}

// Two commands with the same id are "the same request" exactly when their fingerprints are
// equal: every input field counts, and metadata order does not.
func TestFingerprint(t *testing.T) {
	m1 := domain.Metadata{}
	m2 := domain.Metadata{}
	for i := range 16 {
		m1[fmt.Sprintf("k%02d", i)] = "v"
		m2[fmt.Sprintf("k%02d", 15-i)] = "v"
	}
	a := xferCmd("p1", "alice", "bob", usdMoney(100))
	b := a
	a.Metadata, b.Metadata = m1, m2
	if domain.Fingerprint(a) != domain.Fingerprint(b) {
		t.Fatalf("fingerprint depends on metadata insertion order")
	}
	base := xferCmd("p1", "alice", "bob", usdMoney(100))
	variants := map[string]domain.Command{
		"payment id":     xferCmd("p2", "alice", "bob", usdMoney(100)),
		"source":         xferCmd("p1", "carol", "bob", usdMoney(100)),
		"destination":    xferCmd("p1", "alice", "shop", usdMoney(100)),
		"amount":         xferCmd("p1", "alice", "bob", usdMoney(101)),
		"asset":          xferCmd("p1", "alice", "bob", domain.Money{Asset: domain.Asset{Code: "EUR", Scale: 2}, Minor: 100}),
		"reference":      func() domain.Transfer { c := base; c.Reference = "other"; return c }(),
		"metadata":       func() domain.Transfer { c := base; c.Metadata = domain.Metadata{"k": "v"}; return c }(),
		"field boundary": func() domain.Transfer { c := base; c.Source, c.Destination = "alic", "ebob"; return c }(),
		"command kind":   authCmd("p1", "alice", "bob", usdMoney(100), time.Time{}),
	}
	want := domain.Fingerprint(base)
	for name, c := range variants {
		if domain.Fingerprint(c) == want {
			t.Errorf("changing the %s leaves the fingerprint unchanged", name)
		}
	}
	full := domain.Capture{PaymentID: "a1", CaptureID: "c1", Full: true}
	if domain.Fingerprint(full) == domain.Fingerprint(domain.Capture{PaymentID: "a1", CaptureID: "c1"}) {
		t.Errorf("a full capture and an empty capture share a fingerprint")
	}
}
