package domain

import "errors"

// Reason is the machine-readable cause of a refusal. Its value is what clients receive on
// the wire (google.rpc.ErrorInfo.reason) and switch on, so a released value never changes:
// a new kind of refusal gets a new reason. The set is closed: Reasons lists every one, and
// each belongs to exactly one sentinel error below.
type Reason string

// The reasons, one per sentinel, in the order Reasons lists them.
const (
	ReasonInsufficientFunds Reason = "INSUFFICIENT_FUNDS"
	ReasonAccountUnknown    Reason = "ACCOUNT_UNKNOWN"
	ReasonAccountFrozen     Reason = "ACCOUNT_FROZEN"
	ReasonAccountClosed     Reason = "ACCOUNT_CLOSED"
	ReasonAccountNotEmpty   Reason = "ACCOUNT_NOT_EMPTY"
	ReasonAssetMismatch     Reason = "ASSET_MISMATCH"
	ReasonInvalidAmount     Reason = "INVALID_AMOUNT"
	ReasonInvalidInput      Reason = "INVALID_INPUT"
	ReasonPaymentUnknown    Reason = "PAYMENT_UNKNOWN"
	ReasonPaymentState      Reason = "PAYMENT_STATE"
	ReasonDuplicateID       Reason = "DUPLICATE_ID"
	ReasonLimitExceeded     Reason = "LIMIT_EXCEEDED"
)

// The closed set of refusals. Decide wraps one of them with %w and a message a person can
// act on; callers test with errors.Is. Each carries its reason, so ReasonOf needs no table
// that could fall out of step with them. The API maps each reason to a Connect code in one
// place (services).
var (
	ErrInsufficientFunds error = &refusal{ReasonInsufficientFunds, "insufficient funds"}
	ErrAccountUnknown    error = &refusal{ReasonAccountUnknown, "account unknown"}
	ErrAccountFrozen     error = &refusal{ReasonAccountFrozen, "account frozen"}
	ErrAccountClosed     error = &refusal{ReasonAccountClosed, "account closed"}
	ErrAccountNotEmpty   error = &refusal{ReasonAccountNotEmpty, "account not empty"}
	ErrAssetMismatch     error = &refusal{ReasonAssetMismatch, "asset mismatch"}
	ErrInvalidAmount     error = &refusal{ReasonInvalidAmount, "invalid amount"}
	ErrInvalidInput      error = &refusal{ReasonInvalidInput, "invalid input"}
	ErrPaymentUnknown    error = &refusal{ReasonPaymentUnknown, "payment unknown"}
	ErrPaymentState      error = &refusal{ReasonPaymentState, "payment not in a state that allows this"}
	ErrDuplicateID       error = &refusal{ReasonDuplicateID, "duplicate id with different input"}
	ErrLimitExceeded     error = &refusal{ReasonLimitExceeded, "limit exceeded"}
)

// refusals is the closed set as one list. TestReasonsAreClosed (errors_test.go) reads this
// package's source and fails when a sentinel or a Reason constant is declared but missing
// here, so the services' test, which walks Reasons, sees every refusal Decide can return.
var refusals = [...]error{
	ErrInsufficientFunds, ErrAccountUnknown, ErrAccountFrozen, ErrAccountClosed,
	ErrAccountNotEmpty, ErrAssetMismatch, ErrInvalidAmount, ErrInvalidInput,
	ErrPaymentUnknown, ErrPaymentState, ErrDuplicateID, ErrLimitExceeded,
}

// refusal is the type of every sentinel. It is unexported so that no other package can
// make a refusal with a reason outside the set.
type refusal struct {
	reason  Reason
	message string
}

func (e *refusal) Error() string { return e.message }

// Reasons returns every reason, in a fixed order. The slice is the caller's own.
func Reasons() []Reason {
	out := make([]Reason, len(refusals))
	for i, err := range refusals {
		out[i] = ReasonOf(err)
	}
	return out
}

// Err returns the sentinel error of r, or nil if r is not one of Reasons.
func (r Reason) Err() error {
	for _, err := range refusals {
		if ReasonOf(err) == r {
			return err
		}
	}
	return nil
}

// ReasonOf returns the reason of the refusal err wraps, or "" if it wraps none.
func ReasonOf(err error) Reason {
	if r, ok := errors.AsType[*refusal](err); ok {
		return r.reason
	}
	return ""
}

// IsDomainError reports whether err is one of the refusals above (a business outcome, not
// a failure of the system).
func IsDomainError(err error) bool { return ReasonOf(err) != "" }
