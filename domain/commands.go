package domain

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"time"
)

// Command is a request to change the ledger. The set is sealed; Decide switches over it.
type Command interface {
	// Accounts and Payments name the aggregates the caller must load before Decide.
	// Commands on an existing payment also touch that payment's accounts: load the
	// payment first, then AccountsOf(payment).
	Accounts() []AccountID
	Payments() []PaymentID
	isCommand()
}

// MaxEvents is the most events Decide can return for c, whatever the state: a batch of
// commands whose MaxEvents sum to at most the store's per-append limit always fits in one
// append. (Decide's tests check that no decision exceeds it.)
func MaxEvents(c Command) int {
	switch c := c.(type) {
	case BatchTransfer:
		return 1 + 2*len(c.Legs) // the payment event, then a debit and a credit per leg
	case Transfer, Capture, Refund:
		return 3 // the payment event and two postings
	case Authorise, Void, Expire:
		return 2 // the payment event and one hold change
	case OpenAccount, FreezeAccount, UnfreezeAccount, CloseAccount:
		return 1
	}
	return 0
}

// OpenAccount opens an account. Retrying it with the same input is a no-op.
type OpenAccount struct {
	AccountID   AccountID
	Asset       Asset
	Kind        AccountKind
	CreditLimit int64
	Metadata    Metadata
}

// FreezeAccount stops all movements on an account.
type FreezeAccount struct {
	AccountID AccountID
	Reason    string
}

// UnfreezeAccount lifts a freeze.
type UnfreezeAccount struct{ AccountID AccountID }

// CloseAccount closes an account with a zero balance and no open holds.
type CloseAccount struct{ AccountID AccountID }

// Transfer moves money at once from Source to Destination.
type Transfer struct {
	PaymentID   PaymentID
	Source      AccountID
	Destination AccountID
	Amount      Money
	Reference   string
	Metadata    Metadata
}

// BatchTransfer applies several transfers together: all of them or none.
type BatchTransfer struct {
	PaymentID PaymentID
	Legs      []Leg
	Reference string
	Metadata  Metadata
}

// Authorise places a hold on Source for a later capture to Destination, until ExpiresAt.
type Authorise struct {
	PaymentID   PaymentID
	Source      AccountID
	Destination AccountID
	Amount      Money
	ExpiresAt   time.Time
	Reference   string
	Metadata    Metadata
}

// Capture takes money from an authorisation's hold to its destination: Amount, or with
// Full everything that remains (then Amount must be the zero Money).
type Capture struct {
	PaymentID PaymentID
	CaptureID OperationID
	Amount    Money
	Full      bool
}

// Void releases what an authorisation still holds.
type Void struct{ PaymentID PaymentID }

// Expire is issued by the system for an authorisation past its deadline.
type Expire struct{ PaymentID PaymentID }

// Refund returns captured money from the destination to the source.
type Refund struct {
	PaymentID PaymentID
	RefundID  OperationID
	Amount    Money
}

func (c OpenAccount) Accounts() []AccountID     { return []AccountID{c.AccountID} }
func (c FreezeAccount) Accounts() []AccountID   { return []AccountID{c.AccountID} }
func (c UnfreezeAccount) Accounts() []AccountID { return []AccountID{c.AccountID} }
func (c CloseAccount) Accounts() []AccountID    { return []AccountID{c.AccountID} }
func (c Transfer) Accounts() []AccountID        { return []AccountID{c.Source, c.Destination} }
func (c BatchTransfer) Accounts() []AccountID {
	out := make([]AccountID, 0, 2*len(c.Legs))
	seen := make(map[AccountID]bool, 2*len(c.Legs))
	for _, l := range c.Legs {
		for _, id := range [2]AccountID{l.Source, l.Destination} {
			if !seen[id] {
				seen[id] = true
				out = append(out, id)
			}
		}
	}
	return out
}
func (c Authorise) Accounts() []AccountID { return []AccountID{c.Source, c.Destination} }
func (c Capture) Accounts() []AccountID   { return nil }
func (c Void) Accounts() []AccountID      { return nil }
func (c Expire) Accounts() []AccountID    { return nil }
func (c Refund) Accounts() []AccountID    { return nil }

func (OpenAccount) Payments() []PaymentID     { return nil }
func (FreezeAccount) Payments() []PaymentID   { return nil }
func (UnfreezeAccount) Payments() []PaymentID { return nil }
func (CloseAccount) Payments() []PaymentID    { return nil }
func (c Transfer) Payments() []PaymentID      { return []PaymentID{c.PaymentID} }
func (c BatchTransfer) Payments() []PaymentID { return []PaymentID{c.PaymentID} }
func (c Authorise) Payments() []PaymentID     { return []PaymentID{c.PaymentID} }
func (c Capture) Payments() []PaymentID       { return []PaymentID{c.PaymentID} }
func (c Void) Payments() []PaymentID          { return []PaymentID{c.PaymentID} }
func (c Expire) Payments() []PaymentID        { return []PaymentID{c.PaymentID} }
func (c Refund) Payments() []PaymentID        { return []PaymentID{c.PaymentID} }

func (OpenAccount) isCommand()     {}
func (FreezeAccount) isCommand()   {}
func (UnfreezeAccount) isCommand() {}
func (CloseAccount) isCommand()    {}
func (Transfer) isCommand()        {}
func (BatchTransfer) isCommand()   {}
func (Authorise) isCommand()       {}
func (Capture) isCommand()         {}
func (Void) isCommand()            {}
func (Expire) isCommand()          {}
func (Refund) isCommand()          {}

// AccountsOf lists the accounts a payment moves money between.
func AccountsOf(p Payment) []AccountID {
	return BatchTransfer{Legs: p.Legs}.Accounts()
}

// fingerprinter writes a canonical, length-prefixed encoding of a command's input, so that
// "the same id with the same input" is decided on exact bytes, not on Go's %v. The bytes
// are gathered in one buffer and hashed once: this runs for every payment command.
type fingerprinter struct{ buf []byte }

func newFingerprinter(kind string) *fingerprinter {
	f := &fingerprinter{buf: make([]byte, 0, 256)}
	f.str(kind)
	return f
}

func (f *fingerprinter) str(s string) {
	f.buf = binary.BigEndian.AppendUint32(f.buf, uint32(len(s)))
	f.buf = append(f.buf, s...)
}

func (f *fingerprinter) num(v int64) { f.buf = binary.BigEndian.AppendUint64(f.buf, uint64(v)) }

func (f *fingerprinter) money(m Money) {
	f.str(m.Asset.Code)
	f.num(int64(m.Asset.Scale))
	f.num(m.Minor)
}

func (f *fingerprinter) meta(m Metadata) {
	f.num(int64(len(m)))
	for _, k := range sortedKeys(m) {
		f.str(k)
		f.str(m[k])
	}
}

func (f *fingerprinter) sum() string {
	h := sha256.Sum256(f.buf)
	return hex.EncodeToString(h[:])
}

// Fingerprint is the SHA-256 of a command's canonical input (hex). Two commands with the
// same id are the same request exactly when their fingerprints are equal.
func Fingerprint(c Command) string {
	switch c := c.(type) {
	case OpenAccount:
		f := newFingerprinter("open-account")
		f.str(string(c.AccountID))
		f.str(c.Asset.Code)
		f.num(int64(c.Asset.Scale))
		f.num(int64(c.Kind))
		f.num(c.CreditLimit)
		f.meta(c.Metadata)
		return f.sum()
	case Transfer:
		f := newFingerprinter("transfer")
		f.str(string(c.PaymentID))
		f.str(string(c.Source))
		f.str(string(c.Destination))
		f.money(c.Amount)
		f.str(c.Reference)
		f.meta(c.Metadata)
		return f.sum()
	case BatchTransfer:
		f := newFingerprinter("batch-transfer")
		f.str(string(c.PaymentID))
		f.num(int64(len(c.Legs)))
		for _, l := range c.Legs {
			f.str(string(l.Source))
			f.str(string(l.Destination))
			f.money(l.Amount)
		}
		f.str(c.Reference)
		f.meta(c.Metadata)
		return f.sum()
	case Authorise:
		f := newFingerprinter("authorise")
		f.str(string(c.PaymentID))
		f.str(string(c.Source))
		f.str(string(c.Destination))
		f.money(c.Amount)
		f.num(c.ExpiresAt.UnixMicro())
		f.str(c.Reference)
		f.meta(c.Metadata)
		return f.sum()
	case Capture:
		f := newFingerprinter("capture")
		f.str(string(c.PaymentID))
		f.str(string(c.CaptureID))
		f.money(c.Amount)
		if c.Full {
			f.num(1)
		} else {
			f.num(0)
		}
		return f.sum()
	case Refund:
		f := newFingerprinter("refund")
		f.str(string(c.PaymentID))
		f.str(string(c.RefundID))
		f.money(c.Amount)
		return f.sum()
	case FreezeAccount:
		f := newFingerprinter("freeze")
		f.str(string(c.AccountID))
		f.str(c.Reason)
		return f.sum()
	case UnfreezeAccount:
		f := newFingerprinter("unfreeze")
		f.str(string(c.AccountID))
		return f.sum()
	case CloseAccount:
		f := newFingerprinter("close")
		f.str(string(c.AccountID))
		return f.sum()
	case Void:
		f := newFingerprinter("void")
		f.str(string(c.PaymentID))
		return f.sum()
	case Expire:
		f := newFingerprinter("expire")
		f.str(string(c.PaymentID))
		return f.sum()
	}
	panic("domain: Fingerprint of an unknown command type") // unreachable: the set is sealed
}
