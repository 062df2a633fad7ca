package domain

import (
	"fmt"
	"sort"
	"unicode/utf8"
)

// Limits bound every input a client controls. They are part of the contract: the API's
// request validation says the same numbers.
const (
	MaxIDBytes            = 64
	MaxReferenceBytes     = 128
	MaxMetadataEntries    = 16
	MaxMetadataKeyBytes   = 64
	MaxMetadataValueBytes = 256
	MaxReasonBytes        = 256
	MaxBatchLegs          = 64
	MaxCapturesPerPayment = 100
	MaxRefundsPerPayment  = 100
)

// AccountID names an account: 1..64 bytes of letters, digits and . _ : -
type AccountID string

// PaymentID names a payment; chosen by the client, so a retry with the same id is
// recognised.
type PaymentID string

// OperationID names one capture or refund of a payment, chosen by the client for the same
// reason.
type OperationID string

// NewAccountID validates an account id.
func NewAccountID(s string) (AccountID, error) {
	if err := validID("account id", s); err != nil {
		return "", err
	}
	return AccountID(s), nil
}

// NewPaymentID validates a payment id.
func NewPaymentID(s string) (PaymentID, error) {
	if err := validID("payment id", s); err != nil {
		return "", err
	}
	return PaymentID(s), nil
}

// NewOperationID validates a capture or refund id.
func NewOperationID(s string) (OperationID, error) {
	if err := validID("operation id", s); err != nil {
		return "", err
	}
	return OperationID(s), nil
}

func validID(what, s string) error {
	if len(s) == 0 || len(s) > MaxIDBytes {
		return fmt.Errorf("%w: %s must be 1..%d characters, got %d", ErrInvalidInput, what, MaxIDBytes, len(s))
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == ':' || r == '-'
		if !ok {
			return fmt.Errorf("%w: %s %q may contain only letters, digits and . _ : -", ErrInvalidInput, what, s)
		}
	}
	return nil
}

// Stream names: one stream per aggregate.
const (
	accountStreamPrefix = "account-"
	paymentStreamPrefix = "payment-"
)

// AccountStream is the event stream of an account.
func AccountStream(id AccountID) string { return accountStreamPrefix + string(id) }

// PaymentStream is the event stream of a payment.
func PaymentStream(id PaymentID) string { return paymentStreamPrefix + string(id) }

// ParseStream tells which aggregate a stream belongs to.
func ParseStream(stream string) (accountID AccountID, paymentID PaymentID, ok bool) {
	switch {
	case len(stream) > len(accountStreamPrefix) && stream[:len(accountStreamPrefix)] == accountStreamPrefix:
		return AccountID(stream[len(accountStreamPrefix):]), "", true
	case len(stream) > len(paymentStreamPrefix) && stream[:len(paymentStreamPrefix)] == paymentStreamPrefix:
		return "", PaymentID(stream[len(paymentStreamPrefix):]), true
	}
	return "", "", false
}

// Metadata is bounded key/value data a client attaches to an account or payment.
type Metadata map[string]string

// ValidateMetadata checks the bounds: at most 16 entries, keys 1..64 bytes of lower-case
// letters, digits and . _ -, values valid UTF-8 of at most 256 bytes.
func ValidateMetadata(m Metadata) error {
	if len(m) > MaxMetadataEntries {
		return fmt.Errorf("%w: metadata has %d entries, at most %d allowed", ErrLimitExceeded, len(m), MaxMetadataEntries)
	}
	for k, v := range m {
		if len(k) == 0 || len(k) > MaxMetadataKeyBytes {
			return fmt.Errorf("%w: metadata key %q must be 1..%d bytes", ErrInvalidInput, k, MaxMetadataKeyBytes)
		}
		for _, r := range k {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
				return fmt.Errorf("%w: metadata key %q may contain only lower-case letters, digits and . _ -", ErrInvalidInput, k)
			}
		}
		if len(v) > MaxMetadataValueBytes {
			return fmt.Errorf("%w: metadata value of %q is %d bytes, at most %d allowed", ErrLimitExceeded, k, len(v), MaxMetadataValueBytes)
		}
		if !utf8.ValidString(v) {
			return fmt.Errorf("%w: metadata value of %q is not valid UTF-8", ErrInvalidInput, k)
		}
	}
	return nil
}

func validText(what, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%w: %s is %d bytes, at most %d allowed", ErrLimitExceeded, what, len(s), max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidInput, what)
	}
	return nil
}

// sortedKeys gives metadata a canonical order for fingerprints.
func sortedKeys(m Metadata) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func cloneMetadata(m Metadata) Metadata {
	if len(m) == 0 {
		return nil
	}
	out := make(Metadata, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
