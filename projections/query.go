package projections

import (
	"context"
	"errors"
	"time"

	"github.com/securepay/securepay/domain"
)

// The query contract between the views and the API: the Connect handlers depend on Reader
// only, so the same API serves views kept in PostgreSQL (`securepay serve`) or in memory
// (`securepay dev`).

// ErrNotCaughtUp is returned when a view has not reached a requested log position within
// the caller's bound (read-your-writes timed out).
var ErrNotCaughtUp = errors.New("projections: view has not caught up to the requested position")

// ErrNotFound is returned for an account or payment the view does not know (at the
// requested point in time).
var ErrNotFound = errors.New("projections: not found")

// ErrHistoryTrimmed is returned by views that keep only the newest part of each account's
// history (the in-memory views) for a point in history they no longer keep. It is an
// answer a Reader may give, never a wrong balance.
var ErrHistoryTrimmed = errors.New("projections: history before this point was trimmed from the in-memory view")

// AsOf selects a point in the past. The zero value means "now". When both are set the
// earlier point wins.
type AsOf struct {
	Position uint64    // include events up to and including this log position
	Time     time.Time // include events recorded at or before this time
}

// IsNow reports whether a is the zero AsOf.
func (a AsOf) IsNow() bool { return a.Position == 0 && a.Time.IsZero() }

// Includes reports whether an event at (position, at) is inside the point a.
func (a AsOf) Includes(position uint64, at time.Time) bool {
	if a.Position != 0 && position > a.Position {
		return false
	}
	if !a.Time.IsZero() && at.After(a.Time) {
		return false
	}
	return true
}

// Balance is an account as a view knows it, at the log position that last changed it.
//
// It is the domain's account plus that position, so that an account has one type whether
// it comes from the write side (a command's result) or from a view, and the API converts
// it once. Every view fills ID, Asset, Kind, Status, Posted and Held (Available() follows);
// CreditLimit and OpenHolds only the views that keep them (PostgreSQL, memory; not the
// Redis cache). Metadata, Version and Fingerprint belong to the write side and are zero
// in a view's answer. In an answer as of a past point, Posted, Held, Position and
// UpdatedAt are as of that point and the rest is the account as it is now.
type Balance struct {
	domain.Account
	Position  uint64 // the last log position that changed this account (as of the query)
	UpdatedAt time.Time
}

// EntryKind names the kind of a history line.
type EntryKind string

const (
	EntryDebit        EntryKind = "debit"
	EntryCredit       EntryKind = "credit"
	EntryHoldPlaced   EntryKind = "hold_placed"
	EntryHoldCaptured EntryKind = "hold_captured"
	EntryHoldReleased EntryKind = "hold_released"
)

// Entry is one line of an account's history: one posting or hold change, with the running
// balances after it.
type Entry struct {
	Position       uint64 // global log position of the event
	AccountID      domain.AccountID
	PaymentID      domain.PaymentID
	Kind           EntryKind
	Amount         domain.Money
	PostedAfter    int64
	AvailableAfter int64
	RecordedAt     time.Time
}

// Payment is a payment as the payments view knows it, at the log position that last
// changed it.
//
// Like Balance it is the domain's payment plus where it stands in the log: one payment
// type for a command's result and a view's answer. The view keeps every field of
// domain.Payment except Ops and Version, which only the write side needs (to recognise a
// retried capture or refund, and to append with an expected version); they are zero here.
type Payment struct {
	domain.Payment
	Position  uint64 // last log position that changed it
	CreatedAt time.Time
	UpdatedAt time.Time
}

// MaxHistoryPage bounds a history page.
const MaxHistoryPage = 1000

// Reader answers the API's queries from views. Every method that takes minPosition first
// waits, bounded by ctx, until the view has applied the log at least up to minPosition
// (read-your-writes: a client passes the position its write returned), and returns
// ErrNotCaughtUp if ctx ends first.
type Reader interface {
	Balance(ctx context.Context, id domain.AccountID, asOf AsOf, minPosition uint64) (Balance, error)
	// History returns up to limit (1..MaxHistoryPage) entries of an account with
	// Position > afterPosition, oldest first.
	History(ctx context.Context, id domain.AccountID, afterPosition uint64, limit int, minPosition uint64) ([]Entry, error)
	Payment(ctx context.Context, id domain.PaymentID, minPosition uint64) (Payment, error)
	// Position is the log position the views have applied up to.
	Position(ctx context.Context) (uint64, error)
}
