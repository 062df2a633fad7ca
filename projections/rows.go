package projections

import (
	"fmt"
	"time"

	"github.com/securepay/securepay/domain"
)

// The rows every view of accounts keeps, whatever stores them: the fold produces them,
// and the as-of answer is read from them the same way in every view.

// AccountRow is an account as the balances view keeps it: its current balance and where
// it was opened, which bounds every as-of answer.
type AccountRow struct {
	Balance
	OpenedPosition uint64
	OpenedAt       time.Time
}

// HistoryRow is one line of the history view: an Entry plus the held balance after it, so
// the line alone gives every balance as of its position.
type HistoryRow struct {
	Entry
	HeldAfter int64
}

// BalanceAt answers a balance as of asOf from the account's row and line, the newest
// history line inside asOf (nil when the account has no line there). A view finds the
// line; what the answer is, given it, is decided here once.
func (a *AccountRow) BalanceAt(asOf AsOf, line *HistoryRow) (Balance, error) {
	b := a.Balance
	if asOf.IsNow() {
		return b, nil
	}
	if !asOf.Includes(a.OpenedPosition, a.OpenedAt) {
		return Balance{}, fmt.Errorf("%w: account %s was opened at position %d, after the requested point", ErrNotFound, a.ID, a.OpenedPosition)
	}
	if line == nil {
		// Open, and nothing posted or held yet at that point.
		b.Posted, b.Held, b.Position, b.UpdatedAt = 0, 0, a.OpenedPosition, a.OpenedAt
		return b, nil
	}
	b.Posted, b.Held, b.Position, b.UpdatedAt = line.PostedAfter, line.HeldAfter, line.Position, line.RecordedAt
	return b, nil
}

// Views store the domain's enums as their String(). The domain parses only the account
// kind, which is a command's input; the others are only ever read back from a view, so
// their parsers live with the read model.

// ParseAccountStatus reads back an AccountStatus's String().
func ParseAccountStatus(s string) (domain.AccountStatus, error) {
	for st := domain.AccountStatusNone; st <= domain.AccountStatusClosed; st++ {
		if st.String() == s {
			return st, nil
		}
	}
	return 0, fmt.Errorf("unknown account status %q", s)
}

// ParsePaymentKind reads back a PaymentKind's String().
func ParsePaymentKind(s string) (domain.PaymentKind, error) {
	for k := domain.PaymentKindTransfer; k <= domain.PaymentKindAuthorisation; k++ {
		if k.String() == s {
			return k, nil
		}
	}
	return 0, fmt.Errorf("unknown payment kind %q", s)
}

// ParsePaymentStatus reads back a PaymentStatus's String().
func ParsePaymentStatus(s string) (domain.PaymentStatus, error) {
	for st := domain.PaymentStatusNone; st <= domain.PaymentStatusExpired; st++ {
		if st.String() == s {
			return st, nil
		}
	}
	return 0, fmt.Errorf("unknown payment status %q", s)
}
