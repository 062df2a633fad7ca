package domain

import "errors"

// The closed set of reasons a command is refused. Decide wraps one of them with %w and a
// message a person can act on; callers test with errors.Is. The API maps each to a Connect
// code in one place (services), and ReasonOf gives the machine-readable reason.
var (
	ErrInsufficientFunds = errors.New("insufficient funds")
	ErrAccountUnknown    = errors.New("account unknown")
	ErrAccountFrozen     = errors.New("account frozen")
	ErrAccountClosed     = errors.New("account closed")
	ErrAccountNotEmpty   = errors.New("account not empty")
	ErrAssetMismatch     = errors.New("asset mismatch")
	ErrInvalidAmount     = errors.New("invalid amount")
	ErrInvalidInput      = errors.New("invalid input")
	ErrPaymentUnknown    = errors.New("payment unknown")
	ErrPaymentState      = errors.New("payment not in a state that allows this")
	ErrDuplicateID       = errors.New("duplicate id with different input")
	ErrLimitExceeded     = errors.New("limit exceeded")
)

// reasons pairs each sentinel with its stable machine-readable reason.
var reasons = []struct {
	err    error
	reason string
}{
	{ErrInsufficientFunds, "INSUFFICIENT_FUNDS"},
	{ErrAccountUnknown, "ACCOUNT_UNKNOWN"},
	{ErrAccountFrozen, "ACCOUNT_FROZEN"},
	{ErrAccountClosed, "ACCOUNT_CLOSED"},
	{ErrAccountNotEmpty, "ACCOUNT_NOT_EMPTY"},
	{ErrAssetMismatch, "ASSET_MISMATCH"},
	{ErrInvalidAmount, "INVALID_AMOUNT"},
	{ErrInvalidInput, "INVALID_INPUT"},
	{ErrPaymentUnknown, "PAYMENT_UNKNOWN"},
	{ErrPaymentState, "PAYMENT_STATE"},
	{ErrDuplicateID, "DUPLICATE_ID"},
	{ErrLimitExceeded, "LIMIT_EXCEEDED"},
}

// ReasonOf returns the machine-readable reason of a domain error, or "" if err is not one.
func ReasonOf(err error) string {
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return ""
}

// IsDomainError reports whether err is one of the refusals above (a business outcome, not
// a failure of the system).
func IsDomainError(err error) bool { return ReasonOf(err) != "" }
