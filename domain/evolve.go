package domain

import "slices"

// EvolveAccount applies one event of an account's stream. It is total over account events
// and pure: the input is not modified. Events of other streams leave the account as is.
func EvolveAccount(a Account, e Event) Account {
	switch e := e.(type) {
	case AccountOpened:
		a = Account{ID: e.AccountID, Asset: e.Asset, Kind: e.Kind, CreditLimit: e.CreditLimit,
			Metadata: e.Metadata, Status: AccountStatusOpen, Version: a.Version, Fingerprint: e.Fingerprint}
	case AccountFrozen:
		a.Status = AccountStatusFrozen
	case AccountUnfrozen:
		a.Status = AccountStatusOpen
	case AccountClosed:
		a.Status = AccountStatusClosed
	case AccountDebited:
		a.Posted -= e.Amount.Minor
	case AccountCredited:
		a.Posted += e.Amount.Minor
	case HoldPlaced:
		a.Held += e.Amount.Minor
		a.OpenHolds++
	case HoldCaptured:
		a.Posted -= e.Amount.Minor
		a.Held -= e.Amount.Minor
		if e.Closes {
			a.OpenHolds--
		}
	case HoldReleased:
		a.Held -= e.Amount.Minor
		a.OpenHolds--
	case PaymentTransferred, PaymentBatchTransferred, PaymentAuthorised, PaymentCaptured,
		PaymentVoided, PaymentExpired, PaymentRefunded:
		return a
	default:
		panic("domain: EvolveAccount: unhandled event type") // unreachable: Event is sealed
	}
	a.Version++
	return a
}

// EvolvePayment applies one event of a payment's stream. It is total over payment events
// and pure: the input (including its slices) is not modified.
func EvolvePayment(p Payment, e Event) Payment {
	switch e := e.(type) {
	case PaymentTransferred:
		p = Payment{ID: e.PaymentID, Kind: PaymentKindTransfer, Status: PaymentStatusCompleted,
			Legs:      []Leg{{Source: e.Source, Destination: e.Destination, Amount: e.Amount}},
			Reference: e.Reference, Metadata: e.Metadata, Captured: e.Amount.Minor, Version: p.Version}
		p.Ops = []Op{{Kind: OpCreate, Fingerprint: e.Fingerprint, Version: p.Version + 1}}
	case PaymentBatchTransferred:
		p = Payment{ID: e.PaymentID, Kind: PaymentKindBatch, Status: PaymentStatusCompleted,
			Legs: e.Legs, Reference: e.Reference, Metadata: e.Metadata, Version: p.Version}
		for _, l := range e.Legs {
			p.Captured += l.Amount.Minor
		}
		p.Ops = []Op{{Kind: OpCreate, Fingerprint: e.Fingerprint, Version: p.Version + 1}}
	case PaymentAuthorised:
		p = Payment{ID: e.PaymentID, Kind: PaymentKindAuthorisation, Status: PaymentStatusAuthorised,
			Legs:      []Leg{{Source: e.Source, Destination: e.Destination, Amount: e.Amount}},
			Reference: e.Reference, Metadata: e.Metadata, Authorised: e.Amount.Minor,
			ExpiresAt: e.ExpiresAt, Version: p.Version}
		p.Ops = []Op{{Kind: OpCreate, Fingerprint: e.Fingerprint, Version: p.Version + 1}}
	case PaymentCaptured:
		p.Captured += e.Amount.Minor
		if p.Captured == p.Authorised {
			p.Status = PaymentStatusCaptured
		}
		p.Ops = append(slices.Clip(p.Ops), Op{ID: e.CaptureID, Kind: OpCapture, Fingerprint: e.Fingerprint, Version: p.Version + 1})
	case PaymentVoided:
		p.Status = PaymentStatusVoided
		p.Released += e.Released.Minor
	case PaymentExpired:
		p.Status = PaymentStatusExpired
		p.Released += e.Released.Minor
	case PaymentRefunded:
		p.Refunded += e.Amount.Minor
		p.Ops = append(slices.Clip(p.Ops), Op{ID: e.RefundID, Kind: OpRefund, Fingerprint: e.Fingerprint, Version: p.Version + 1})
	case AccountOpened, AccountFrozen, AccountUnfrozen, AccountClosed, AccountDebited,
		AccountCredited, HoldPlaced, HoldCaptured, HoldReleased:
		return p
	default:
		panic("domain: EvolvePayment: unhandled event type") // unreachable: Event is sealed
	}
	p.Version++
	return p
}

// Evolve applies an event to whichever aggregate of the state it belongs to and returns the
// new state; the input state's maps are not modified.
func Evolve(s State, e Event) State {
	out := State{Accounts: make(map[AccountID]Account, len(s.Accounts)+1), Payments: make(map[PaymentID]Payment, len(s.Payments)+1)}
	for k, v := range s.Accounts {
		out.Accounts[k] = v
	}
	for k, v := range s.Payments {
		out.Payments[k] = v
	}
	switch e := e.(type) {
	case AccountEvent:
		out.Accounts[e.Account()] = EvolveAccount(out.account(e.Account()), e)
	case PaymentEvent:
		out.Payments[e.Payment()] = EvolvePayment(out.payment(e.Payment()), e)
	}
	return out
}
