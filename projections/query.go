// Package projections builds the read side of SecurePay: projectors that follow the global
// log from a checkpoint and maintain views (balances, history, payments, notifications) in
// PostgreSQL, Redis or memory, and the rebuild machinery that replaces a view without
// downtime.
//
// query.go is the contract between the views and the API: the Connect handlers depend on
// Reader only, so the same API serves views kept in PostgreSQL (`securepay serve`) or in
// memory (`securepay dev`).
package projections

import (
	"context"
	"errors"
	"time"

	"github.com/securepay/securepay/domain"
)

// ErrNotCaughtUp is returned when a view has not reached a requested log position within
// the caller's bound (read-your-writes timed out).
var ErrNotCaughtUp = errors.New("projections: view has not caught up to the requested position")

// ErrNotFound is returned for an account or payment the view does not know (at the
// requested point in time).
var ErrNotFound = errors.New("projections: not found")

// AsOf selects a point in the past. The zero value means "now". When both are set the
// earlier point wins.
type AsOf struct {
	Position uint64    // include events up to and including this log position
	Time     time.Time // include events recorded at or before this time
}

// IsNow reports whether a is the zero AsOf.
func (a AsOf) IsNow() bool { return a.Position == 0 && a.Time.IsZero() }

// Balance is an account's balances as a view knows them.
type Balance struct {
	AccountID domain.AccountID
	Asset     domain.Asset
	Kind      domain.AccountKind
	Status    domain.AccountStatus
	Posted    int64 // minor units
	Held      int64
	Available int64  // Posted - Held
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

// Payment is a payment as the payments view knows it.
type Payment struct {
	ID         domain.PaymentID
	Kind       domain.PaymentKind
	Status     domain.PaymentStatus
	Legs       []domain.Leg
	Reference  string
	Metadata   domain.Metadata
	Authorised int64
	Captured   int64
	Refunded   int64
	Released   int64
	ExpiresAt  time.Time
	Position   uint64 // last log position that changed it
	CreatedAt  time.Time
	UpdatedAt  time.Time
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
