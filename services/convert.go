package services

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/services/ledger"
)

// Conversions shared by every service: money, balances, accounts, payments. Each
// service's own requests are converted in its convert_*.go file.

// fieldError is a refusal of one request field's value: the message names the field for
// people, and the error mapping puts its path in the ErrorInfo metadata for programs,
// as protovalidate's refusals already do.
type fieldError struct {
	field string // the field's path as the client wrote it: "amount.value", "legs[2].amount.asset"
	err   error
}

func (e *fieldError) Error() string { return e.field + ": " + e.err.Error() }
func (e *fieldError) Unwrap() error { return e.err }

// fieldOf returns the request field a refusal is about, or "".
func fieldOf(err error) string {
	var fe *fieldError
	if errors.As(err, &fe) {
		return fe.field
	}
	return ""
}

// moneyFromProto parses an exact decimal amount in a named asset. what names the field in
// the error ("amount", "legs[2].amount").
func moneyFromProto(m *ledgerv1.Money, what string) (domain.Money, error) {
	if m == nil {
		return domain.Money{}, &fieldError{what, fmt.Errorf("%w: %s is required", domain.ErrInvalidAmount, what)}
	}
	asset, err := domain.ParseAsset(m.GetAsset())
	if err != nil {
		return domain.Money{}, &fieldError{what + ".asset", err}
	}
	money, err := domain.ParseAmount(m.GetValue(), asset)
	if err != nil {
		return domain.Money{}, &fieldError{what + ".value", err}
	}
	return money, nil
}

func moneyToProto(m domain.Money) *ledgerv1.Money {
	return &ledgerv1.Money{Value: m.Decimal(), Asset: m.Asset.Code, ValueMinor: m.Minor}
}

// minorToProto writes minor units of an asset, zero included (a payment's refunded total).
func minorToProto(minor int64, a domain.Asset) *ledgerv1.Money {
	return &ledgerv1.Money{Value: domain.FormatMinor(minor, a), Asset: a.Code, ValueMinor: minor}
}

func metadataFromProto(m map[string]string) domain.Metadata {
	if len(m) == 0 {
		return nil
	}
	out := make(domain.Metadata, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func metadataToProto(m domain.Metadata) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func accountIDFromProto(s, what string) (domain.AccountID, error) {
	id, err := domain.NewAccountID(s)
	if err != nil {
		return "", &fieldError{what, err}
	}
	return id, nil
}

func paymentIDFromProto(s string) (domain.PaymentID, error) {
	id, err := domain.NewPaymentID(s)
	if err != nil {
		return "", &fieldError{"payment_id", err}
	}
	return id, nil
}

func kindToProto(k domain.AccountKind) ledgerv1.AccountKind {
	switch k {
	case domain.KindCustomer:
		return ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER
	case domain.KindMerchant:
		return ledgerv1.AccountKind_ACCOUNT_KIND_MERCHANT
	case domain.KindExternal:
		return ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL
	}
	return ledgerv1.AccountKind_ACCOUNT_KIND_UNSPECIFIED
}

func kindFromProto(k ledgerv1.AccountKind) (domain.AccountKind, error) {
	switch k {
	case ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER:
		return domain.KindCustomer, nil
	case ledgerv1.AccountKind_ACCOUNT_KIND_MERCHANT:
		return domain.KindMerchant, nil
	case ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL:
		return domain.KindExternal, nil
	}
	return domain.KindUnspecified, fmt.Errorf("%w: account kind must be customer, merchant or external", domain.ErrInvalidInput)
}

func statusToProto(s domain.AccountStatus) ledgerv1.AccountStatus {
	switch s {
	case domain.AccountStatusOpen:
		return ledgerv1.AccountStatus_ACCOUNT_STATUS_OPEN
	case domain.AccountStatusFrozen:
		return ledgerv1.AccountStatus_ACCOUNT_STATUS_FROZEN
	case domain.AccountStatusClosed:
		return ledgerv1.AccountStatus_ACCOUNT_STATUS_CLOSED
	}
	return ledgerv1.AccountStatus_ACCOUNT_STATUS_UNSPECIFIED
}

func paymentKindToProto(k domain.PaymentKind) ledgerv1.PaymentKind {
	switch k {
	case domain.PaymentKindTransfer:
		return ledgerv1.PaymentKind_PAYMENT_KIND_TRANSFER
	case domain.PaymentKindBatch:
		return ledgerv1.PaymentKind_PAYMENT_KIND_BATCH
	case domain.PaymentKindAuthorisation:
		return ledgerv1.PaymentKind_PAYMENT_KIND_AUTHORISATION
	}
	return ledgerv1.PaymentKind_PAYMENT_KIND_UNSPECIFIED
}

func paymentStatusToProto(s domain.PaymentStatus) ledgerv1.PaymentStatus {
	switch s {
	case domain.PaymentStatusCompleted:
		return ledgerv1.PaymentStatus_PAYMENT_STATUS_COMPLETED
	case domain.PaymentStatusAuthorised:
		return ledgerv1.PaymentStatus_PAYMENT_STATUS_AUTHORISED
	case domain.PaymentStatusCaptured:
		return ledgerv1.PaymentStatus_PAYMENT_STATUS_CAPTURED
	case domain.PaymentStatusVoided:
		return ledgerv1.PaymentStatus_PAYMENT_STATUS_VOIDED
	case domain.PaymentStatusExpired:
		return ledgerv1.PaymentStatus_PAYMENT_STATUS_EXPIRED
	}
	return ledgerv1.PaymentStatus_PAYMENT_STATUS_UNSPECIFIED
}

func timeToProto(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// balanceToProto converts an account's balances, from a view or from a command's result
// (wrapped with its position: projections.Balance is the one account type of both).
func balanceToProto(b projections.Balance) *ledgerv1.Balance {
	return &ledgerv1.Balance{
		AccountId:      string(b.ID),
		Asset:          b.Asset.String(),
		Kind:           kindToProto(b.Kind),
		Status:         statusToProto(b.Status),
		Posted:         domain.FormatMinor(b.Posted, b.Asset),
		Held:           domain.FormatMinor(b.Held, b.Asset),
		Available:      domain.FormatMinor(b.Available(), b.Asset),
		PostedMinor:    b.Posted,
		HeldMinor:      b.Held,
		AvailableMinor: b.Available(),
		Position:       b.Position,
		UpdatedAt:      timeToProto(b.UpdatedAt),
	}
}

func accountToProto(a domain.Account, pos uint64) *ledgerv1.Account {
	return &ledgerv1.Account{
		AccountId:   string(a.ID),
		Asset:       a.Asset.String(),
		Kind:        kindToProto(a.Kind),
		Status:      statusToProto(a.Status),
		CreditLimit: domain.FormatMinor(a.CreditLimit, a.Asset),
		Metadata:    metadataToProto(a.Metadata),
		Balance:     balanceToProto(projections.Balance{Account: a, Position: pos}),
		OpenHolds:   uint32(a.OpenHolds),
		Version:     a.Version,
	}
}

// writeResult is the part every write response shares.
// writeResult labels each balance with the position it is true at (the account's own last
// event up to the command), never with the command's position: a replay returns today's
// balances, and in a batch another command may have moved an account after this one.
func writeResult(r ledger.Result) *ledgerv1.WriteResult {
	out := &ledgerv1.WriteResult{Position: r.Position, Replayed: r.Replayed}
	for i, a := range r.Accounts {
		out.Balances = append(out.Balances, balanceToProto(projections.Balance{Account: a, Position: positionOf(r, i)}))
	}
	return out
}

// positionOf is the position r.Accounts[i] is true at.
func positionOf(r ledger.Result, i int) uint64 {
	if i < len(r.AccountPositions) {
		return r.AccountPositions[i]
	}
	return 0
}

func legsToProto(legs []domain.Leg) []*ledgerv1.Leg {
	out := make([]*ledgerv1.Leg, 0, len(legs))
	for _, l := range legs {
		out = append(out, &ledgerv1.Leg{
			SourceAccountId:      string(l.Source),
			DestinationAccountId: string(l.Destination),
			Amount:               moneyToProto(l.Amount),
		})
	}
	return out
}

// singleAsset returns the asset all legs share, or false for a batch of several assets,
// whose totals cannot be one Money.
func singleAsset(legs []domain.Leg) (domain.Asset, bool) {
	if len(legs) == 0 {
		return domain.Asset{}, false
	}
	a := legs[0].Amount.Asset
	for _, l := range legs[1:] {
		if l.Amount.Asset != a {
			return domain.Asset{}, false
		}
	}
	return a, true
}

// paymentToProto converts a payment, from a view or from a command's result (wrapped with
// its position: projections.Payment is the one payment type of both). A view does not keep
// the payment's Version, so its answer carries none, as before the types were one.
func paymentToProto(p projections.Payment) *ledgerv1.Payment {
	out := &ledgerv1.Payment{
		PaymentId: string(p.ID),
		Kind:      paymentKindToProto(p.Kind),
		Status:    paymentStatusToProto(p.Status),
		Legs:      legsToProto(p.Legs),
		Reference: p.Reference,
		Metadata:  metadataToProto(p.Metadata),
		ExpiresAt: timeToProto(p.ExpiresAt),
		Version:   p.Version,
		Position:  p.Position,
	}
	if a, ok := singleAsset(p.Legs); ok {
		out.Authorised = minorToProto(p.Authorised, a)
		out.Captured = minorToProto(p.Captured, a)
		out.Refunded = minorToProto(p.Refunded, a)
		out.Released = minorToProto(p.Released, a)
	}
	return out
}
