package domain

import "time"

// Event is a fact recorded in the log. The set is sealed: only this package defines events,
// and EvolveAccount/EvolvePayment switch over all of them.
//
// Each event names its stream (Stream) and its versioned type name (Name); the codec in
// codec.go holds the one table of names. Amounts are minor units with their asset.
type Event interface {
	Name() string
	Stream() string
	isEvent()
}

// AccountEvent is an event of an account stream.
type AccountEvent interface {
	Event
	Account() AccountID
}

// PaymentEvent is an event of a payment stream.
type PaymentEvent interface {
	Event
	Payment() PaymentID
}

// Event names, one per schema version. A new schema gets a new name; old names stay
// decodable through an upcaster (codec.go).
const (
	NameAccountOpened    = "ledger.account.opened.v2"
	NameAccountOpenedV1  = "ledger.account.opened.v1"
	NameAccountFrozen    = "ledger.account.frozen.v1"
	NameAccountUnfrozen  = "ledger.account.unfrozen.v1"
	NameAccountClosed    = "ledger.account.closed.v1"
	NameAccountDebited   = "ledger.account.debited.v1"
	NameAccountCredited  = "ledger.account.credited.v1"
	NameHoldPlaced       = "ledger.account.hold_placed.v1"
	NameHoldCaptured     = "ledger.account.hold_captured.v1"
	NameHoldReleased     = "ledger.account.hold_released.v1"
	NamePaymentTransfer  = "ledger.payment.transferred.v1"
	NamePaymentBatch     = "ledger.payment.batch_transferred.v1"
	NamePaymentAuthorise = "ledger.payment.authorised.v1"
	NamePaymentCaptured  = "ledger.payment.captured.v1"
	NamePaymentVoided    = "ledger.payment.voided.v1"
	NamePaymentExpired   = "ledger.payment.expired.v1"
	NamePaymentRefunded  = "ledger.payment.refunded.v1"
)

// AccountOpened (v2) records a new account. v1 named the asset by code only; see the
// upcaster in codec.go.
type AccountOpened struct {
	AccountID   AccountID
	Asset       Asset
	Kind        AccountKind
	CreditLimit int64
	Metadata    Metadata
	Fingerprint string
}

// AccountFrozen stops all debits and credits until AccountUnfrozen.
type AccountFrozen struct {
	AccountID AccountID
	Reason    string
}

// AccountUnfrozen lifts a freeze.
type AccountUnfrozen struct{ AccountID AccountID }

// AccountClosed ends an account for good; it had a zero balance and no holds.
type AccountClosed struct{ AccountID AccountID }

// AccountDebited takes money out of an account's posted balance for a payment.
// PostedAfter is the posted balance after the debit: the projector checks it against its
// own running balance (an assertion in pairs with Decide).
type AccountDebited struct {
	AccountID   AccountID
	PaymentID   PaymentID
	Amount      Money
	PostedAfter int64
}

// AccountCredited puts money into an account's posted balance for a payment.
type AccountCredited struct {
	AccountID   AccountID
	PaymentID   PaymentID
	Amount      Money
	PostedAfter int64
}

// HoldPlaced reserves money for an authorisation: available drops, posted does not.
type HoldPlaced struct {
	AccountID AccountID
	PaymentID PaymentID
	Amount    Money
	HeldAfter int64
}

// HoldCaptured turns part (or the rest) of a hold into a debit: held and posted both drop.
// Closes is true when the authorisation holds nothing any more.
type HoldCaptured struct {
	AccountID   AccountID
	PaymentID   PaymentID
	Amount      Money
	PostedAfter int64
	HeldAfter   int64
	Closes      bool
}

// Hold release reasons.
const (
	ReleaseVoided  = "voided"
	ReleaseExpired = "expired"
)

// HoldReleased gives back what an authorisation still held (void or expiry).
type HoldReleased struct {
	AccountID AccountID
	PaymentID PaymentID
	Amount    Money
	HeldAfter int64
	Reason    string
}

// PaymentTransferred records a completed one-step transfer.
type PaymentTransferred struct {
	PaymentID   PaymentID
	Source      AccountID
	Destination AccountID
	Amount      Money
	Reference   string
	Metadata    Metadata
	Fingerprint string
}

// PaymentBatchTransferred records a linked batch of transfers, all applied together.
type PaymentBatchTransferred struct {
	PaymentID   PaymentID
	Legs        []Leg
	Reference   string
	Metadata    Metadata
	Fingerprint string
}

// PaymentAuthorised records an authorisation and its deadline.
type PaymentAuthorised struct {
	PaymentID   PaymentID
	Source      AccountID
	Destination AccountID
	Amount      Money
	ExpiresAt   time.Time
	Reference   string
	Metadata    Metadata
	Fingerprint string
}

// PaymentCaptured records one capture; CapturedTotal is the running total.
type PaymentCaptured struct {
	PaymentID     PaymentID
	CaptureID     OperationID
	Amount        Money
	CapturedTotal int64
	Fingerprint   string
}

// PaymentVoided records a void; Released is what the hold still had.
type PaymentVoided struct {
	PaymentID PaymentID
	Released  Money
}

// PaymentExpired records the system's release of an authorisation past its deadline.
type PaymentExpired struct {
	PaymentID PaymentID
	Released  Money
}

// PaymentRefunded records one refund; RefundedTotal is the running total.
type PaymentRefunded struct {
	PaymentID     PaymentID
	RefundID      OperationID
	Amount        Money
	RefundedTotal int64
	Fingerprint   string
}

func (AccountOpened) Name() string           { return NameAccountOpened }
func (AccountFrozen) Name() string           { return NameAccountFrozen }
func (AccountUnfrozen) Name() string         { return NameAccountUnfrozen }
func (AccountClosed) Name() string           { return NameAccountClosed }
func (AccountDebited) Name() string          { return NameAccountDebited }
func (AccountCredited) Name() string         { return NameAccountCredited }
func (HoldPlaced) Name() string              { return NameHoldPlaced }
func (HoldCaptured) Name() string            { return NameHoldCaptured }
func (HoldReleased) Name() string            { return NameHoldReleased }
func (PaymentTransferred) Name() string      { return NamePaymentTransfer }
func (PaymentBatchTransferred) Name() string { return NamePaymentBatch }
func (PaymentAuthorised) Name() string       { return NamePaymentAuthorise }
func (PaymentCaptured) Name() string         { return NamePaymentCaptured }
func (PaymentVoided) Name() string           { return NamePaymentVoided }
func (PaymentExpired) Name() string          { return NamePaymentExpired }
func (PaymentRefunded) Name() string         { return NamePaymentRefunded }

func (e AccountOpened) Account() AccountID   { return e.AccountID }
func (e AccountFrozen) Account() AccountID   { return e.AccountID }
func (e AccountUnfrozen) Account() AccountID { return e.AccountID }
func (e AccountClosed) Account() AccountID   { return e.AccountID }
func (e AccountDebited) Account() AccountID  { return e.AccountID }
func (e AccountCredited) Account() AccountID { return e.AccountID }
func (e HoldPlaced) Account() AccountID      { return e.AccountID }
func (e HoldCaptured) Account() AccountID    { return e.AccountID }
func (e HoldReleased) Account() AccountID    { return e.AccountID }

func (e PaymentTransferred) Payment() PaymentID      { return e.PaymentID }
func (e PaymentBatchTransferred) Payment() PaymentID { return e.PaymentID }
func (e PaymentAuthorised) Payment() PaymentID       { return e.PaymentID }
func (e PaymentCaptured) Payment() PaymentID         { return e.PaymentID }
func (e PaymentVoided) Payment() PaymentID           { return e.PaymentID }
func (e PaymentExpired) Payment() PaymentID          { return e.PaymentID }
func (e PaymentRefunded) Payment() PaymentID         { return e.PaymentID }

func (e AccountOpened) Stream() string           { return AccountStream(e.AccountID) }
func (e AccountFrozen) Stream() string           { return AccountStream(e.AccountID) }
func (e AccountUnfrozen) Stream() string         { return AccountStream(e.AccountID) }
func (e AccountClosed) Stream() string           { return AccountStream(e.AccountID) }
func (e AccountDebited) Stream() string          { return AccountStream(e.AccountID) }
func (e AccountCredited) Stream() string         { return AccountStream(e.AccountID) }
func (e HoldPlaced) Stream() string              { return AccountStream(e.AccountID) }
func (e HoldCaptured) Stream() string            { return AccountStream(e.AccountID) }
func (e HoldReleased) Stream() string            { return AccountStream(e.AccountID) }
func (e PaymentTransferred) Stream() string      { return PaymentStream(e.PaymentID) }
func (e PaymentBatchTransferred) Stream() string { return PaymentStream(e.PaymentID) }
func (e PaymentAuthorised) Stream() string       { return PaymentStream(e.PaymentID) }
func (e PaymentCaptured) Stream() string         { return PaymentStream(e.PaymentID) }
func (e PaymentVoided) Stream() string           { return PaymentStream(e.PaymentID) }
func (e PaymentExpired) Stream() string          { return PaymentStream(e.PaymentID) }
func (e PaymentRefunded) Stream() string         { return PaymentStream(e.PaymentID) }

func (AccountOpened) isEvent()           {}
func (AccountFrozen) isEvent()           {}
func (AccountUnfrozen) isEvent()         {}
func (AccountClosed) isEvent()           {}
func (AccountDebited) isEvent()          {}
func (AccountCredited) isEvent()         {}
func (HoldPlaced) isEvent()              {}
func (HoldCaptured) isEvent()            {}
func (HoldReleased) isEvent()            {}
func (PaymentTransferred) isEvent()      {}
func (PaymentBatchTransferred) isEvent() {}
func (PaymentAuthorised) isEvent()       {}
func (PaymentCaptured) isEvent()         {}
func (PaymentVoided) isEvent()           {}
func (PaymentExpired) isEvent()          {}
func (PaymentRefunded) isEvent()         {}
