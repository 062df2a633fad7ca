package domain_test

import (
	"time"

	"github.com/securepay/securepay/domain"
)

// The fixture ledger most decide scenarios start from. Times are fixed: nothing in a test
// of the domain reads a clock.
var (
	t0  = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	exp = t0.Add(24 * time.Hour)
)

func usdMoney(minor int64) domain.Money { return domain.Money{Asset: usd, Minor: minor} }
func jpyMoney(minor int64) domain.Money { return domain.Money{Asset: jpy, Minor: minor} }

func openCmd(id string, a domain.Asset, k domain.AccountKind, limit int64) domain.OpenAccount {
	return domain.OpenAccount{AccountID: domain.AccountID(id), Asset: a, Kind: k, CreditLimit: limit}
}

// opened is the event Decide writes for openCmd(...).
func opened(c domain.OpenAccount) domain.Event {
	return domain.AccountOpened{AccountID: c.AccountID, Asset: c.Asset, Kind: c.Kind, CreditLimit: c.CreditLimit,
		Metadata: c.Metadata, Fingerprint: domain.Fingerprint(c)}
}

func xferCmd(pid, src, dst string, amount domain.Money) domain.Transfer {
	return domain.Transfer{PaymentID: domain.PaymentID(pid), Source: domain.AccountID(src),
		Destination: domain.AccountID(dst), Amount: amount, Reference: "ref-" + pid}
}

// transferred is what Decide writes for a transfer, given the balances after it.
func transferred(c domain.Transfer, srcAfter, dstAfter int64) []domain.Event {
	return []domain.Event{
		domain.PaymentTransferred{PaymentID: c.PaymentID, Source: c.Source, Destination: c.Destination, Amount: c.Amount,
			Reference: c.Reference, Metadata: c.Metadata, Fingerprint: domain.Fingerprint(c)},
		domain.AccountDebited{AccountID: c.Source, PaymentID: c.PaymentID, Amount: c.Amount, PostedAfter: srcAfter},
		domain.AccountCredited{AccountID: c.Destination, PaymentID: c.PaymentID, Amount: c.Amount, PostedAfter: dstAfter},
	}
}

func leg(src, dst string, amount domain.Money) domain.Leg {
	return domain.Leg{Source: domain.AccountID(src), Destination: domain.AccountID(dst), Amount: amount}
}

func batchCmd(pid string, legs ...domain.Leg) domain.BatchTransfer {
	return domain.BatchTransfer{PaymentID: domain.PaymentID(pid), Legs: legs, Reference: "ref-" + pid}
}

func authCmd(pid, src, dst string, amount domain.Money, expires time.Time) domain.Authorise {
	return domain.Authorise{PaymentID: domain.PaymentID(pid), Source: domain.AccountID(src),
		Destination: domain.AccountID(dst), Amount: amount, ExpiresAt: expires, Reference: "ref-" + pid}
}

func authorised(c domain.Authorise, heldAfter int64) []domain.Event {
	return []domain.Event{
		domain.PaymentAuthorised{PaymentID: c.PaymentID, Source: c.Source, Destination: c.Destination, Amount: c.Amount,
			ExpiresAt: c.ExpiresAt, Reference: c.Reference, Metadata: c.Metadata, Fingerprint: domain.Fingerprint(c)},
		domain.HoldPlaced{AccountID: c.Source, PaymentID: c.PaymentID, Amount: c.Amount, HeldAfter: heldAfter},
	}
}

func captureCmd(pid, capID string, amount domain.Money) domain.Capture {
	return domain.Capture{PaymentID: domain.PaymentID(pid), CaptureID: domain.OperationID(capID), Amount: amount}
}

// captured is what Decide writes for capture c of authorisation a, which captures amount.
func captured(a domain.Authorise, c domain.Capture, amount, total, srcPosted, srcHeld, dstPosted int64) []domain.Event {
	m := domain.Money{Asset: a.Amount.Asset, Minor: amount}
	return []domain.Event{
		domain.PaymentCaptured{PaymentID: a.PaymentID, CaptureID: c.CaptureID, Amount: m, CapturedTotal: total, Fingerprint: domain.Fingerprint(c)},
		domain.HoldCaptured{AccountID: a.Source, PaymentID: a.PaymentID, Amount: m, PostedAfter: srcPosted, HeldAfter: srcHeld,
			Closes: total == a.Amount.Minor},
		domain.AccountCredited{AccountID: a.Destination, PaymentID: a.PaymentID, Amount: m, PostedAfter: dstPosted},
	}
}

func released(a domain.Authorise, amount, heldAfter int64, reason string) []domain.Event {
	m := domain.Money{Asset: a.Amount.Asset, Minor: amount}
	var pe domain.Event = domain.PaymentVoided{PaymentID: a.PaymentID, Released: m}
	if reason == domain.ReleaseExpired {
		pe = domain.PaymentExpired{PaymentID: a.PaymentID, Released: m}
	}
	return []domain.Event{pe, domain.HoldReleased{AccountID: a.Source, PaymentID: a.PaymentID, Amount: m, HeldAfter: heldAfter, Reason: reason}}
}

func refundCmd(pid, refID string, amount domain.Money) domain.Refund {
	return domain.Refund{PaymentID: domain.PaymentID(pid), RefundID: domain.OperationID(refID), Amount: amount}
}

// refunded is what Decide writes for refund r: payer is the original destination.
func refunded(r domain.Refund, payer, payee string, total, payerAfter, payeeAfter int64) []domain.Event {
	return []domain.Event{
		domain.PaymentRefunded{PaymentID: r.PaymentID, RefundID: r.RefundID, Amount: r.Amount, RefundedTotal: total, Fingerprint: domain.Fingerprint(r)},
		domain.AccountDebited{AccountID: domain.AccountID(payer), PaymentID: r.PaymentID, Amount: r.Amount, PostedAfter: payerAfter},
		domain.AccountCredited{AccountID: domain.AccountID(payee), PaymentID: r.PaymentID, Amount: r.Amount, PostedAfter: payeeAfter},
	}
}

func cat(parts ...[]domain.Event) []domain.Event {
	var out []domain.Event
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func one(e domain.Event) []domain.Event { return []domain.Event{e} }

// base is the fixture ledger, in USD unless said otherwise:
//
//	world   external, funds everyone          posted -10500, version 3
//	alice   customer, funded with 100.00      posted  10000, version 2
//	bob     customer, empty                   version 1
//	carol   customer, credit limit 50.00      version 1
//	shop    merchant, empty                   version 1
//	yen     customer in JPY, empty            version 1
//	yworld  external in JPY                   version 1
//	ice     customer, 5.00, frozen            posted 500, version 3
//	gone    customer, closed                  version 2
func base() []domain.Event {
	fundAlice := xferCmd("fund-alice", "world", "alice", usdMoney(10000))
	fundIce := xferCmd("fund-ice", "world", "ice", usdMoney(500))
	return cat(
		one(opened(openCmd("world", usd, domain.KindExternal, 0))),
		one(opened(openCmd("alice", usd, domain.KindCustomer, 0))),
		one(opened(openCmd("bob", usd, domain.KindCustomer, 0))),
		one(opened(openCmd("carol", usd, domain.KindCustomer, 5000))),
		one(opened(openCmd("shop", usd, domain.KindMerchant, 0))),
		one(opened(openCmd("yen", jpy, domain.KindCustomer, 0))),
		one(opened(openCmd("yworld", jpy, domain.KindExternal, 0))),
		one(opened(openCmd("ice", usd, domain.KindCustomer, 0))),
		one(opened(openCmd("gone", usd, domain.KindCustomer, 0))),
		transferred(fundAlice, -10000, 10000),
		transferred(fundIce, -10500, 500),
		one(domain.AccountFrozen{AccountID: "ice", Reason: "fixture"}),
		one(domain.AccountClosed{AccountID: "gone"}),
	)
}

// fold applies events to an empty state, the way the command processor loads aggregates.
func fold(events []domain.Event) domain.State {
	s := domain.State{Accounts: map[domain.AccountID]domain.Account{}, Payments: map[domain.PaymentID]domain.Payment{}}
	for _, e := range events {
		s = domain.Evolve(s, e)
	}
	return s
}
