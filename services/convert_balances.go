package services

import (
	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/projections"
)

// Conversions of the BalanceService's queries and answers.

// defaultHistoryPage is the page size when a client sends 0.
const defaultHistoryPage = 100

func asOfFromProto(r *ledgerv1.GetBalanceRequest) projections.AsOf {
	switch a := r.GetAsOf().(type) {
	case *ledgerv1.GetBalanceRequest_AsOfPosition:
		return projections.AsOf{Position: a.AsOfPosition}
	case *ledgerv1.GetBalanceRequest_AsOfTime:
		return projections.AsOf{Time: a.AsOfTime.AsTime()}
	}
	return projections.AsOf{}
}

func historyPageSize(n uint32) int {
	if n == 0 {
		return defaultHistoryPage
	}
	return int(min(n, projections.MaxHistoryPage))
}

var entryKinds = map[projections.EntryKind]ledgerv1.EntryKind{
	projections.EntryDebit:        ledgerv1.EntryKind_ENTRY_KIND_DEBIT,
	projections.EntryCredit:       ledgerv1.EntryKind_ENTRY_KIND_CREDIT,
	projections.EntryHoldPlaced:   ledgerv1.EntryKind_ENTRY_KIND_HOLD_PLACED,
	projections.EntryHoldCaptured: ledgerv1.EntryKind_ENTRY_KIND_HOLD_CAPTURED,
	projections.EntryHoldReleased: ledgerv1.EntryKind_ENTRY_KIND_HOLD_RELEASED,
}

func entryToProto(e projections.Entry) *ledgerv1.HistoryEntry {
	a := e.Amount.Asset
	return &ledgerv1.HistoryEntry{
		Position:       e.Position,
		AccountId:      string(e.AccountID),
		PaymentId:      string(e.PaymentID),
		Kind:           entryKinds[e.Kind],
		Amount:         moneyToProto(e.Amount),
		PostedAfter:    domain.FormatMinor(e.PostedAfter, a),
		AvailableAfter: domain.FormatMinor(e.AvailableAfter, a),
		RecordedAt:     timeToProto(e.RecordedAt),
	}
}

// applyToBalance moves a watched balance forward by one event of the account's stream.
// The events carry the balances after them (PostedAfter, HeldAfter), so the watch needs no
// fold of its own: it repeats what the write side decided. It reports whether the event
// changed what a watcher sees, and the payment involved.
func applyToBalance(b *ledgerv1.Balance, ev domain.Event) (changed bool, payment domain.PaymentID) {
	switch e := ev.(type) {
	case domain.AccountDebited:
		b.PostedMinor, payment = e.PostedAfter, e.PaymentID
	case domain.AccountCredited:
		b.PostedMinor, payment = e.PostedAfter, e.PaymentID
	case domain.HoldPlaced:
		b.HeldMinor, payment = e.HeldAfter, e.PaymentID
	case domain.HoldCaptured:
		b.PostedMinor, b.HeldMinor, payment = e.PostedAfter, e.HeldAfter, e.PaymentID
	case domain.HoldReleased:
		b.HeldMinor, payment = e.HeldAfter, e.PaymentID
	case domain.AccountFrozen:
		b.Status = ledgerv1.AccountStatus_ACCOUNT_STATUS_FROZEN
	case domain.AccountUnfrozen:
		b.Status = ledgerv1.AccountStatus_ACCOUNT_STATUS_OPEN
	case domain.AccountClosed:
		b.Status = ledgerv1.AccountStatus_ACCOUNT_STATUS_CLOSED
	default:
		return false, ""
	}
	asset, err := domain.ParseAsset(b.GetAsset())
	if err != nil {
		return false, "" // the balance came from a view with a valid asset; cannot happen
	}
	b.AvailableMinor = b.PostedMinor - b.HeldMinor
	b.Posted = domain.FormatMinor(b.PostedMinor, asset)
	b.Held = domain.FormatMinor(b.HeldMinor, asset)
	b.Available = domain.FormatMinor(b.AvailableMinor, asset)
	return true, payment
}
