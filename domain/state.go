package domain

import (
	"fmt"
	"time"
)

// AccountKind says whose money an account holds.
type AccountKind uint8

const (
	KindUnspecified AccountKind = iota
	KindCustomer
	KindMerchant
	// KindExternal represents the outside world (a bank, a card network): money enters and
	// leaves the ledger through it, so it may go negative without limit. The sum of all
	// balances of an asset, external accounts included, is always zero.
	KindExternal
)

var kindNames = [...]string{"", "customer", "merchant", "external"}

func (k AccountKind) String() string {
	if int(k) < len(kindNames) && k != KindUnspecified {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", k)
}

// ParseAccountKind accepts "customer", "merchant" or "external".
func ParseAccountKind(s string) (AccountKind, error) {
	for i, n := range kindNames {
		if i > 0 && n == s {
			return AccountKind(i), nil
		}
	}
	return KindUnspecified, fmt.Errorf("%w: account kind %q: must be customer, merchant or external", ErrInvalidInput, s)
}

// AccountStatus is an account's life-cycle state.
type AccountStatus uint8

const (
	AccountStatusNone AccountStatus = iota // never opened
	AccountStatusOpen
	AccountStatusFrozen
	AccountStatusClosed
)

var accountStatusNames = [...]string{"none", "open", "frozen", "closed"}

func (s AccountStatus) String() string {
	if int(s) < len(accountStatusNames) {
		return accountStatusNames[s]
	}
	return fmt.Sprintf("status(%d)", s)
}

// Account is the state of one account, folded from its stream by EvolveAccount.
type Account struct {
	ID          AccountID
	Asset       Asset
	Kind        AccountKind
	CreditLimit int64 // minor units the balance may go below zero; ignored for external accounts
	Metadata    Metadata
	Status      AccountStatus
	Posted      int64 // settled balance, minor units
	Held        int64 // sum of open authorisation holds, minor units
	OpenHolds   int   // number of authorisations holding money
	Version     uint64
	Fingerprint string // of the OpenAccount command, to recognise a retried open
}

// Exists reports whether the account was ever opened.
func (a Account) Exists() bool { return a.Status != AccountStatusNone }

// Available is what can be spent now: posted minus holds.
func (a Account) Available() int64 { return a.Posted - a.Held }

// Floor is the lowest available balance the account may reach; external accounts have
// none (the bool is false).
func (a Account) Floor() (int64, bool) {
	if a.Kind == KindExternal {
		return 0, false
	}
	return -a.CreditLimit, true
}

// PaymentKind says which flow a payment follows.
type PaymentKind uint8

const (
	PaymentKindUnspecified   PaymentKind = iota
	PaymentKindTransfer                  // one step: debit and credit at once
	PaymentKindBatch                     // several linked transfers, all or nothing
	PaymentKindAuthorisation             // two phase: hold, then capture or void or expire
)

var paymentKindNames = [...]string{"", "transfer", "batch", "authorisation"}

func (k PaymentKind) String() string {
	if int(k) < len(paymentKindNames) && k != PaymentKindUnspecified {
		return paymentKindNames[k]
	}
	return fmt.Sprintf("payment-kind(%d)", k)
}

// PaymentStatus is a payment's state in its state machine:
//
//	transfer, batch:  none -> completed
//	authorisation:    none -> authorised -> (captured partially ...) -> captured
//	                                     \-> voided | expired (what is left is released)
//
// Refunds do not change the status; they are counted in Refunded.
type PaymentStatus uint8

const (
	PaymentStatusNone PaymentStatus = iota
	PaymentStatusCompleted
	PaymentStatusAuthorised
	PaymentStatusCaptured // fully captured: nothing left on hold
	PaymentStatusVoided
	PaymentStatusExpired
)

var paymentStatusNames = [...]string{"none", "completed", "authorised", "captured", "voided", "expired"}

func (s PaymentStatus) String() string {
	if int(s) < len(paymentStatusNames) {
		return paymentStatusNames[s]
	}
	return fmt.Sprintf("payment-status(%d)", s)
}

// Leg is one movement of money: Amount leaves Source and reaches Destination.
type Leg struct {
	Source      AccountID
	Destination AccountID
	Amount      Money
}

// OpKind names the operations on a payment that carry their own client-chosen id.
type OpKind uint8

const (
	OpCreate OpKind = iota + 1
	OpCapture
	OpRefund
)

// Op remembers an applied operation so that a retry is recognised: the same id with the
// same fingerprint returns the original outcome; with another fingerprint it is refused.
type Op struct {
	ID          OperationID // "" for the creating command, whose id is the payment id
	Kind        OpKind
	Fingerprint string
	Version     uint64 // the payment stream version of the event that recorded it
}

// Payment is the state of one payment, folded from its stream by EvolvePayment.
type Payment struct {
	ID         PaymentID
	Kind       PaymentKind
	Status     PaymentStatus
	Legs       []Leg // one for transfers and authorisations
	Reference  string
	Metadata   Metadata
	Authorised int64 // minor units held at authorisation
	Captured   int64 // total captured (for a transfer: its amount)
	Refunded   int64 // total refunded
	Released   int64 // released by void or expiry
	ExpiresAt  time.Time
	Ops        []Op
	Version    uint64
}

// Exists reports whether the payment was ever created.
func (p Payment) Exists() bool { return p.Status != PaymentStatusNone }

// Asset is the asset of a single-leg payment (the first leg's asset).
func (p Payment) Asset() Asset {
	if len(p.Legs) == 0 {
		return Asset{}
	}
	return p.Legs[0].Amount.Asset
}

// Remaining is what an authorisation still holds.
func (p Payment) Remaining() int64 {
	if p.Status != PaymentStatusAuthorised {
		return 0
	}
	return p.Authorised - p.Captured
}

// Refundable is captured minus already refunded.
func (p Payment) Refundable() int64 { return p.Captured - p.Refunded }

// FindOp returns the recorded operation with this id and kind.
func (p Payment) FindOp(kind OpKind, id OperationID) (Op, bool) {
	for _, op := range p.Ops {
		if op.Kind == kind && op.ID == id {
			return op, true
		}
	}
	return Op{}, false
}

// State holds the aggregates a command touches, as loaded by the caller. An id missing from
// a map, or mapped to a zero value, is an aggregate that does not exist.
type State struct {
	Accounts map[AccountID]Account
	Payments map[PaymentID]Payment
	// Limits are the operator's ceilings on amounts and credit limits; the zero value is
	// DefaultLimits.
	Limits Limits
}

func (s State) account(id AccountID) Account {
	a := s.Accounts[id]
	if a.ID == "" {
		a.ID = id
	}
	return a
}

func (s State) payment(id PaymentID) Payment {
	p := s.Payments[id]
	if p.ID == "" {
		p.ID = id
	}
	return p
}
