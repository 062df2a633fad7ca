package projections

import (
	"errors"
	"fmt"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// The fold is the one piece of logic every view shares: it turns a recorded event into the
// new state of the account or payment it touches, and re-checks what the write side
// asserted (the second half of the assertion pairs with Decide). The PostgreSQL, in-memory
// and rebuild paths all call it, so a view can only differ from a replay of the log by
// storage, never by arithmetic.

// ErrPoison marks an event a projector cannot apply: it does not decode, names an unknown
// aggregate, or contradicts the projector's running state (a posted-after that does not
// match). Such an event stops its projector; it is never skipped.
var ErrPoison = errors.New("projections: event cannot be applied")

// ApplyError names the event a projector could not apply.
type ApplyError struct {
	Projector string
	Position  uint64
	Type      string
	Stream    string
	Err       error
}

func (e *ApplyError) Error() string {
	return fmt.Sprintf("projector %s: event at position %d (%s on %s): %v", e.Projector, e.Position, e.Type, e.Stream, e.Err)
}

func (e *ApplyError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrPoison) true for every *ApplyError.
func (e *ApplyError) Is(target error) bool { return target == ErrPoison }

// Projector names of the accounts and payments views. The PostgreSQL and the in-memory
// views use the same names because they run the same folds; a change of the fold is a new
// version in the name, and the views built by the old one are rebuilt.
const (
	AccountsProjector = "accounts.v1" // balances + history
	PaymentsProjector = "payments.v1"
)

// Poison names rec as the event projector cannot apply, for err.
func Poison(projector string, rec *eventstore.RecordedEvent, err error) *ApplyError {
	return &ApplyError{Projector: projector, Position: rec.Position, Type: rec.Type, Stream: rec.Stream, Err: err}
}

// addChecked and subChecked are the fold's own overflow checks, written apart from the
// domain's on purpose. The fold is the second half of an assertion pair (STYLE 12): it
// recomputes from the amounts what Decide claimed in each event (posted after, held after,
// captured total) and stops on a difference, and a recomputation that borrowed the write
// side's arithmetic would repeat a mistake there instead of catching it. An overflow also
// means something else here: for Decide a refused command, for the fold a poison event.
// fold_internal_test.go pins both against math/big.
func addChecked(a, b int64) (int64, bool) {
	s := a + b
	// Overflow iff both operands have the same sign and the sum's sign differs.
	return s, !((a >= 0) == (b >= 0) && (s >= 0) != (a >= 0))
}

func subChecked(a, b int64) (int64, bool) {
	d := a - b
	// Overflow iff the operands have different signs and the difference's sign is not a's.
	return d, !((a >= 0) != (b >= 0) && (d >= 0) != (a >= 0))
}

// Decode decodes a recorded event and checks that it belongs to the stream it was stored
// in; a mismatch means the log is not what the domain wrote. Every projector decodes
// through it, so none applies an event the others would refuse.
func Decode(rec *eventstore.RecordedEvent) (domain.Event, error) {
	ev, err := domain.DecodeEvent(rec.Type, rec.Data)
	if err != nil {
		return nil, err
	}
	if ev.Stream() != rec.Stream {
		return nil, fmt.Errorf("event belongs to stream %s but is stored in %s", ev.Stream(), rec.Stream)
	}
	return ev, nil
}

// foldAccount applies one account event to row (which is the zero row with exists=false for
// an account the view does not have) and returns the history line it produces, if any.
func foldAccount(row *AccountRow, exists bool, rec *eventstore.RecordedEvent, ev domain.Event) (line *HistoryRow, err error) {
	acct := ev.(domain.AccountEvent).Account()
	if opened, ok := ev.(domain.AccountOpened); ok {
		if exists {
			return nil, fmt.Errorf("account %s opened twice (first at position %d)", acct, row.OpenedPosition)
		}
		*row = AccountRow{
			Balance: Balance{
				Account: domain.Account{ID: opened.AccountID, Asset: opened.Asset, Kind: opened.Kind,
					Status: domain.AccountStatusOpen, CreditLimit: opened.CreditLimit},
				Position: rec.Position, UpdatedAt: rec.RecordedAt,
			},
			OpenedPosition: rec.Position, OpenedAt: rec.RecordedAt,
		}
		return nil, nil
	}
	if !exists {
		return nil, fmt.Errorf("account %s was never opened", acct)
	}
	if rec.Position <= row.Position {
		return nil, fmt.Errorf("account %s already includes position %d; got position %d again", acct, row.Position, rec.Position)
	}
	checkAsset := func(m domain.Money) error {
		if m.Asset != row.Asset {
			return fmt.Errorf("account %s holds %s, event amount is in %s", acct, row.Asset, m.Asset)
		}
		if m.Minor <= 0 {
			return fmt.Errorf("amount %d minor units is not positive", m.Minor)
		}
		return nil
	}
	mismatch := func(what string, claimed, computed int64) error {
		return fmt.Errorf("account %s: event says %s after is %d, the view computes %d", acct, what, claimed, computed)
	}
	entry := func(kind EntryKind, pay domain.PaymentID, amount domain.Money) *HistoryRow {
		return &HistoryRow{Entry: Entry{Position: rec.Position, AccountID: acct, PaymentID: pay, Kind: kind, Amount: amount,
			PostedAfter: row.Posted, AvailableAfter: row.Posted - row.Held, RecordedAt: rec.RecordedAt}, HeldAfter: row.Held}
	}
	var ok bool
	switch e := ev.(type) {
	case domain.AccountFrozen:
		row.Status = domain.AccountStatusFrozen
	case domain.AccountUnfrozen:
		row.Status = domain.AccountStatusOpen
	case domain.AccountClosed:
		if row.Posted != 0 || row.Held != 0 {
			return nil, fmt.Errorf("account %s closed with posted %d and held %d", acct, row.Posted, row.Held)
		}
		row.Status = domain.AccountStatusClosed
	case domain.AccountDebited:
		if err := checkAsset(e.Amount); err != nil {
			return nil, err
		}
		if row.Posted, ok = subChecked(row.Posted, e.Amount.Minor); !ok || row.Posted != e.PostedAfter {
			return nil, mismatch("posted", e.PostedAfter, row.Posted)
		}
		line = entry(EntryDebit, e.PaymentID, e.Amount)
	case domain.AccountCredited:
		if err := checkAsset(e.Amount); err != nil {
			return nil, err
		}
		if row.Posted, ok = addChecked(row.Posted, e.Amount.Minor); !ok || row.Posted != e.PostedAfter {
			return nil, mismatch("posted", e.PostedAfter, row.Posted)
		}
		line = entry(EntryCredit, e.PaymentID, e.Amount)
	case domain.HoldPlaced:
		if err := checkAsset(e.Amount); err != nil {
			return nil, err
		}
		if row.Held, ok = addChecked(row.Held, e.Amount.Minor); !ok || row.Held != e.HeldAfter {
			return nil, mismatch("held", e.HeldAfter, row.Held)
		}
		row.OpenHolds++
		line = entry(EntryHoldPlaced, e.PaymentID, e.Amount)
	case domain.HoldCaptured:
		if err := checkAsset(e.Amount); err != nil {
			return nil, err
		}
		if row.Posted, ok = subChecked(row.Posted, e.Amount.Minor); !ok || row.Posted != e.PostedAfter {
			return nil, mismatch("posted", e.PostedAfter, row.Posted)
		}
		if row.Held, ok = subChecked(row.Held, e.Amount.Minor); !ok || row.Held != e.HeldAfter || row.Held < 0 {
			return nil, mismatch("held", e.HeldAfter, row.Held)
		}
		if e.Closes {
			row.OpenHolds--
		}
		line = entry(EntryHoldCaptured, e.PaymentID, e.Amount)
	case domain.HoldReleased:
		// A void or expiry of a fully captured remainder releases zero; the amount may be 0.
		if e.Amount.Asset != row.Asset || e.Amount.Minor < 0 {
			return nil, fmt.Errorf("account %s: release of %s is not a non-negative %s amount", acct, e.Amount, row.Asset)
		}
		if row.Held, ok = subChecked(row.Held, e.Amount.Minor); !ok || row.Held != e.HeldAfter || row.Held < 0 {
			return nil, mismatch("held", e.HeldAfter, row.Held)
		}
		row.OpenHolds--
		line = entry(EntryHoldReleased, e.PaymentID, e.Amount)
	default:
		return nil, fmt.Errorf("unexpected event %s in an account stream", ev.Name())
	}
	if row.OpenHolds < 0 {
		return nil, fmt.Errorf("account %s: more holds closed than placed", acct)
	}
	row.Position = rec.Position
	row.UpdatedAt = rec.RecordedAt
	return line, nil
}

// foldPayment applies one payment event to p (exists=false for an unknown payment).
func foldPayment(p *Payment, exists bool, rec *eventstore.RecordedEvent, ev domain.Event) error {
	id := ev.(domain.PaymentEvent).Payment()
	create := func(np domain.Payment) error {
		if exists {
			return fmt.Errorf("payment %s created twice", id)
		}
		*p = Payment{Payment: np, CreatedAt: rec.RecordedAt}
		return nil
	}
	if !exists {
		switch ev.(type) {
		case domain.PaymentTransferred, domain.PaymentBatchTransferred, domain.PaymentAuthorised:
		default:
			return fmt.Errorf("payment %s does not exist", id)
		}
	}
	if exists && rec.Position <= p.Position {
		return fmt.Errorf("payment %s already includes position %d; got position %d again", id, p.Position, rec.Position)
	}
	switch e := ev.(type) {
	case domain.PaymentTransferred:
		if err := create(domain.Payment{ID: id, Kind: domain.PaymentKindTransfer, Status: domain.PaymentStatusCompleted,
			Legs:      []domain.Leg{{Source: e.Source, Destination: e.Destination, Amount: e.Amount}},
			Reference: e.Reference, Metadata: e.Metadata, Captured: e.Amount.Minor}); err != nil {
			return err
		}
	case domain.PaymentBatchTransferred:
		np := domain.Payment{ID: id, Kind: domain.PaymentKindBatch, Status: domain.PaymentStatusCompleted,
			Legs: append([]domain.Leg(nil), e.Legs...), Reference: e.Reference, Metadata: e.Metadata}
		for _, l := range e.Legs {
			var ok bool
			if np.Captured, ok = addChecked(np.Captured, l.Amount.Minor); !ok {
				return fmt.Errorf("payment %s: batch total overflows", id)
			}
		}
		if err := create(np); err != nil {
			return err
		}
	case domain.PaymentAuthorised:
		if err := create(domain.Payment{ID: id, Kind: domain.PaymentKindAuthorisation, Status: domain.PaymentStatusAuthorised,
			Legs:      []domain.Leg{{Source: e.Source, Destination: e.Destination, Amount: e.Amount}},
			Reference: e.Reference, Metadata: e.Metadata, Authorised: e.Amount.Minor, ExpiresAt: e.ExpiresAt}); err != nil {
			return err
		}
	case domain.PaymentCaptured:
		if p.Kind != domain.PaymentKindAuthorisation || p.Status != domain.PaymentStatusAuthorised {
			return fmt.Errorf("payment %s is a %s in state %s and cannot be captured", id, p.Kind, p.Status)
		}
		var ok bool
		if p.Captured, ok = addChecked(p.Captured, e.Amount.Minor); !ok || p.Captured != e.CapturedTotal || p.Captured > p.Authorised {
			return fmt.Errorf("payment %s: event says captured total %d, the view computes %d of %d authorised", id, e.CapturedTotal, p.Captured, p.Authorised)
		}
		if p.Captured == p.Authorised {
			p.Status = domain.PaymentStatusCaptured
		}
	case domain.PaymentVoided, domain.PaymentExpired:
		if p.Kind != domain.PaymentKindAuthorisation || p.Status != domain.PaymentStatusAuthorised {
			return fmt.Errorf("payment %s is a %s in state %s and cannot be released", id, p.Kind, p.Status)
		}
		released := domain.Money{}
		p.Status = domain.PaymentStatusVoided
		if v, ok := e.(domain.PaymentVoided); ok {
			released = v.Released
		} else {
			released = e.(domain.PaymentExpired).Released
			p.Status = domain.PaymentStatusExpired
		}
		if released.Minor != p.Authorised-p.Captured {
			return fmt.Errorf("payment %s: event releases %d, the view has %d still authorised", id, released.Minor, p.Authorised-p.Captured)
		}
		p.Released += released.Minor
	case domain.PaymentRefunded:
		var ok bool
		if p.Refunded, ok = addChecked(p.Refunded, e.Amount.Minor); !ok || p.Refunded != e.RefundedTotal || p.Refunded > p.Captured {
			return fmt.Errorf("payment %s: event says refunded total %d, the view computes %d of %d captured", id, e.RefundedTotal, p.Refunded, p.Captured)
		}
	default:
		return fmt.Errorf("unexpected event %s in a payment stream", ev.Name())
	}
	p.Position = rec.Position
	p.UpdatedAt = rec.RecordedAt
	return nil
}

// streamKind classifies a stream by its aggregate.
type streamKind uint8

const (
	streamOther streamKind = iota
	streamAccount
	streamPayment
)

func kindOf(stream string) streamKind {
	acct, pay, ok := domain.ParseStream(stream)
	switch {
	case !ok:
		return streamOther
	case acct != "":
		return streamAccount
	case pay != "":
		return streamPayment
	}
	return streamOther
}

// AccountsResult is what folding a batch into the account views produced: the final rows
// of the accounts that changed (in first-touched order) and the history lines in log order.
// Last is the position of the last event applied (0 if none); Poison is set when an event
// could not be applied, and everything before it is in the result.
type AccountsResult struct {
	Rows   []AccountRow
	Lines  []HistoryRow
	Last   uint64
	Poison *ApplyError
}

// FoldAccounts folds the account events of batch. load returns the current rows of the
// given accounts (absent ones are missing from the map); it is called once per batch with
// every account the batch touches, so a database view needs one query.
func FoldAccounts(projector string, batch []eventstore.RecordedEvent, load func([]domain.AccountID) (map[domain.AccountID]AccountRow, error)) (AccountsResult, error) {
	var ids []domain.AccountID
	seen := make(map[domain.AccountID]struct{})
	for i := range batch {
		if acct, _, ok := domain.ParseStream(batch[i].Stream); ok && acct != "" {
			if _, dup := seen[acct]; !dup {
				seen[acct] = struct{}{}
				ids = append(ids, acct)
			}
		}
	}
	var res AccountsResult
	current := map[domain.AccountID]AccountRow{}
	if len(ids) > 0 {
		var err error
		if current, err = load(ids); err != nil {
			return res, err
		}
	}
	type state struct {
		row    AccountRow
		exists bool
		dirty  bool
	}
	states := make(map[domain.AccountID]*state, len(ids))
	var order []domain.AccountID // accounts in the order the batch first changed them
	finish := func() AccountsResult {
		for _, id := range order {
			res.Rows = append(res.Rows, states[id].row)
		}
		return res
	}
	for i := range batch {
		rec := &batch[i]
		if kindOf(rec.Stream) != streamAccount {
			res.Last = rec.Position
			continue
		}
		poison := func(err error) (AccountsResult, error) {
			res.Poison = Poison(projector, rec, err)
			return finish(), nil
		}
		ev, err := Decode(rec)
		if err != nil {
			return poison(err)
		}
		acct := ev.(domain.AccountEvent).Account()
		st := states[acct]
		if st == nil {
			row, found := current[acct]
			st = &state{row: row, exists: found}
			states[acct] = st
		}
		next := st.row
		line, err := foldAccount(&next, st.exists, rec, ev)
		if err != nil {
			return poison(err)
		}
		if !st.dirty {
			order = append(order, acct)
		}
		st.row, st.exists, st.dirty = next, true, true
		if line != nil {
			res.Lines = append(res.Lines, *line)
		}
		res.Last = rec.Position
	}
	return finish(), nil
}

// PaymentsResult is the payments counterpart of AccountsResult.
type PaymentsResult struct {
	Rows   []Payment
	Last   uint64
	Poison *ApplyError
}

// FoldPayments folds the payment events of batch; load works as in FoldAccounts.
func FoldPayments(projector string, batch []eventstore.RecordedEvent, load func([]domain.PaymentID) (map[domain.PaymentID]Payment, error)) (PaymentsResult, error) {
	var ids []domain.PaymentID
	seen := make(map[domain.PaymentID]struct{})
	for i := range batch {
		if _, pay, ok := domain.ParseStream(batch[i].Stream); ok && pay != "" {
			if _, dup := seen[pay]; !dup {
				seen[pay] = struct{}{}
				ids = append(ids, pay)
			}
		}
	}
	var res PaymentsResult
	current := map[domain.PaymentID]Payment{}
	if len(ids) > 0 {
		var err error
		if current, err = load(ids); err != nil {
			return res, err
		}
	}
	type state struct {
		p      Payment
		exists bool
		dirty  bool
	}
	states := make(map[domain.PaymentID]*state, len(ids))
	var order []domain.PaymentID
	finish := func() PaymentsResult {
		for _, id := range order {
			res.Rows = append(res.Rows, states[id].p)
		}
		return res
	}
	for i := range batch {
		rec := &batch[i]
		if kindOf(rec.Stream) != streamPayment {
			res.Last = rec.Position
			continue
		}
		ev, err := Decode(rec)
		if err == nil {
			id := ev.(domain.PaymentEvent).Payment()
			st := states[id]
			if st == nil {
				p, found := current[id]
				st = &state{p: p, exists: found}
				states[id] = st
			}
			next := st.p
			next.Legs = append([]domain.Leg(nil), st.p.Legs...)
			if err = foldPayment(&next, st.exists, rec, ev); err == nil {
				if !st.dirty {
					order = append(order, id)
				}
				st.p, st.exists, st.dirty = next, true, true
				res.Last = rec.Position
				continue
			}
		}
		res.Poison = Poison(projector, rec, err)
		return finish(), nil
	}
	return finish(), nil
}
