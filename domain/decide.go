package domain

import (
	"fmt"
	"time"
)

// MaxAuthorisationTTL bounds how far in the future an authorisation may expire (card
// networks allow about a month).
const MaxAuthorisationTTL = 31 * 24 * time.Hour

// Decide validates a command against the current state of the aggregates it touches and
// returns the events that record its effect, or a refusal wrapping one of the Err*
// sentinels. It is pure: now is an input, nothing is read or written.
//
// An empty, nil-error result means the command was already applied with the same input (a
// retry) or changes nothing (freezing a frozen account): the caller appends nothing and
// answers with the original outcome.
//
// Every event that moves money is produced together with its counterpart in the same
// result, so the postings of one Decide always balance per asset (checked by
// CheckBalanced, which callers run before appending).
func Decide(s State, c Command, now time.Time) ([]Event, error) {
	switch c := c.(type) {
	case OpenAccount:
		return decideOpen(s, c)
	case FreezeAccount:
		return decideFreeze(s, c)
	case UnfreezeAccount:
		return decideUnfreeze(s, c)
	case CloseAccount:
		return decideClose(s, c)
	case Transfer:
		return decideTransfer(s, c)
	case BatchTransfer:
		return decideBatch(s, c)
	case Authorise:
		return decideAuthorise(s, c, now)
	case Capture:
		return decideCapture(s, c, now)
	case Void:
		return decideVoid(s, c)
	case Expire:
		return decideExpire(s, c, now)
	case Refund:
		return decideRefund(s, c)
	}
	return nil, fmt.Errorf("%w: unknown command %T", ErrInvalidInput, c)
}

func decideOpen(s State, c OpenAccount) ([]Event, error) {
	if _, err := NewAccountID(string(c.AccountID)); err != nil {
		return nil, err
	}
	if _, err := NewAsset(c.Asset.Code, int(c.Asset.Scale)); err != nil {
		return nil, err
	}
	switch c.Kind {
	case KindCustomer, KindMerchant:
		if c.CreditLimit < 0 {
			return nil, fmt.Errorf("%w: credit limit %d: must be zero or more", ErrInvalidAmount, c.CreditLimit)
		}
	case KindExternal:
		if c.CreditLimit != 0 {
			return nil, fmt.Errorf("%w: external accounts have no credit limit (they may go negative without one)", ErrInvalidInput)
		}
	default:
		return nil, fmt.Errorf("%w: account kind must be customer, merchant or external", ErrInvalidInput)
	}
	if err := ValidateMetadata(c.Metadata); err != nil {
		return nil, err
	}
	fp := Fingerprint(c)
	if a := s.account(c.AccountID); a.Exists() {
		if a.Fingerprint == fp {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: account %s already exists with other settings", ErrDuplicateID, c.AccountID)
	}
	// After the replay check: an account opened before the ceiling was lowered is still
	// recognised when its open is retried.
	if c.Kind != KindExternal {
		if err := checkCreditCeiling(s.Limits, c.CreditLimit, c.Asset); err != nil {
			return nil, err
		}
	}
	return []Event{AccountOpened{
		AccountID: c.AccountID, Asset: c.Asset, Kind: c.Kind, CreditLimit: c.CreditLimit,
		Metadata: cloneMetadata(c.Metadata), Fingerprint: fp,
	}}, nil
}

func existing(s State, id AccountID) (Account, error) {
	if _, err := NewAccountID(string(id)); err != nil {
		return Account{}, err
	}
	a := s.account(id)
	if !a.Exists() {
		return a, fmt.Errorf("%w: account %s does not exist", ErrAccountUnknown, id)
	}
	return a, nil
}

func decideFreeze(s State, c FreezeAccount) ([]Event, error) {
	a, err := existing(s, c.AccountID)
	if err != nil {
		return nil, err
	}
	if err := validText("freeze reason", c.Reason, MaxReasonBytes); err != nil {
		return nil, err
	}
	switch a.Status {
	case AccountStatusClosed:
		return nil, fmt.Errorf("%w: account %s is closed", ErrAccountClosed, a.ID)
	case AccountStatusFrozen:
		return nil, nil
	}
	return []Event{AccountFrozen{AccountID: a.ID, Reason: c.Reason}}, nil
}

func decideUnfreeze(s State, c UnfreezeAccount) ([]Event, error) {
	a, err := existing(s, c.AccountID)
	if err != nil {
		return nil, err
	}
	switch a.Status {
	case AccountStatusClosed:
		return nil, fmt.Errorf("%w: account %s is closed", ErrAccountClosed, a.ID)
	case AccountStatusOpen:
		return nil, nil
	}
	return []Event{AccountUnfrozen{AccountID: a.ID}}, nil
}

func decideClose(s State, c CloseAccount) ([]Event, error) {
	a, err := existing(s, c.AccountID)
	if err != nil {
		return nil, err
	}
	switch {
	case a.Status == AccountStatusClosed:
		return nil, nil
	case a.OpenHolds > 0:
		return nil, fmt.Errorf("%w: account %s has %d open authorisation holds; capture, void or let them expire first", ErrAccountNotEmpty, a.ID, a.OpenHolds)
	case a.Posted != 0:
		return nil, fmt.Errorf("%w: account %s has a balance of %s; move it out first", ErrAccountNotEmpty, a.ID, FormatMinor(a.Posted, a.Asset))
	}
	return []Event{AccountClosed{AccountID: a.ID}}, nil
}

// usable checks that money of asset may move through account a.
func usable(a Account, asset Asset, role string) error {
	switch a.Status {
	case AccountStatusNone:
		return fmt.Errorf("%w: %s account %s does not exist", ErrAccountUnknown, role, a.ID)
	case AccountStatusFrozen:
		return fmt.Errorf("%w: %s account %s is frozen", ErrAccountFrozen, role, a.ID)
	case AccountStatusClosed:
		return fmt.Errorf("%w: %s account %s is closed", ErrAccountClosed, role, a.ID)
	}
	if a.Asset != asset {
		return fmt.Errorf("%w: %s account %s holds %s, the amount is in %s", ErrAssetMismatch, role, a.ID, a.Asset, asset)
	}
	return nil
}

// debit returns the account after taking amount from its posted balance, refusing to go
// below its floor (available balance, i.e. net of holds).
func debit(a Account, amount int64) (Account, error) {
	posted, err := subChecked(a.Posted, amount, a.Asset)
	if err != nil {
		return a, err
	}
	if belowFloor(a, posted, a.Held) {
		return a, insufficientFunds(a, amount, "payment")
	}
	a.Posted = posted
	return a, nil
}

// insufficientFunds refuses a debit of a. The message never states a's balance: the
// account debited is not always the caller's (a refund debits the payee), and a
// refusal must not tell one party what another holds. The owner reads it with
// GetBalance, which authorises the reader.
func insufficientFunds(a Account, amount int64, what string) error {
	return fmt.Errorf("%w: account %s does not have %s %s available for the %s; read its balance, then pay less or fund it first",
		ErrInsufficientFunds, a.ID, FormatMinor(amount, a.Asset), a.Asset.Code, what)
}

// belowFloor reports whether an available balance of posted minus held would be below a's
// floor. The subtraction is checked: with a credit limit near the int64 range, posted-held
// can fall below MinInt64, and a wrapped-around result would look like a large balance.
// Such a result is below every floor (floors are >= -MaxInt64).
func belowFloor(a Account, posted, held int64) bool {
	floor, limited := a.Floor()
	if !limited {
		return false
	}
	available, err := subChecked(posted, held, a.Asset)
	return err != nil || available < floor
}

func credit(a Account, amount int64) (Account, error) {
	posted, err := addChecked(a.Posted, amount, a.Asset)
	if err != nil {
		return a, err
	}
	a.Posted = posted
	return a, nil
}

func validAmount(m Money, what string) error {
	if m.Asset.IsZero() {
		return fmt.Errorf("%w: %s has no asset", ErrInvalidAmount, what)
	}
	if m.Minor <= 0 {
		return fmt.Errorf("%w: %s must be greater than zero, got %d minor units", ErrInvalidAmount, what, m.Minor)
	}
	return nil
}

func validPaymentInput(id PaymentID, reference string, meta Metadata) error {
	if _, err := NewPaymentID(string(id)); err != nil {
		return err
	}
	if err := validText("reference", reference, MaxReferenceBytes); err != nil {
		return err
	}
	return ValidateMetadata(meta)
}

// replayOrConflict handles a payment id that already exists.
func replayOrConflict(p Payment, fp string) error {
	if op, ok := p.FindOp(OpCreate, ""); ok && op.Fingerprint == fp {
		return nil
	}
	return fmt.Errorf("%w: payment %s already exists with a different request", ErrDuplicateID, p.ID)
}

func decideTransfer(s State, c Transfer) ([]Event, error) {
	if err := validPaymentInput(c.PaymentID, c.Reference, c.Metadata); err != nil {
		return nil, err
	}
	fp := Fingerprint(c)
	if p := s.payment(c.PaymentID); p.Exists() {
		return nil, replayOrConflict(p, fp)
	}
	legs, err := applyLegs(s, c.PaymentID, []Leg{{Source: c.Source, Destination: c.Destination, Amount: c.Amount}})
	if err != nil {
		return nil, err
	}
	out := make([]Event, 0, 3)
	out = append(out, PaymentTransferred{
		PaymentID: c.PaymentID, Source: c.Source, Destination: c.Destination, Amount: c.Amount,
		Reference: c.Reference, Metadata: cloneMetadata(c.Metadata), Fingerprint: fp,
	})
	return append(out, legs...), nil
}

func decideBatch(s State, c BatchTransfer) ([]Event, error) {
	if err := validPaymentInput(c.PaymentID, c.Reference, c.Metadata); err != nil {
		return nil, err
	}
	if len(c.Legs) == 0 {
		return nil, fmt.Errorf("%w: a batch needs at least one transfer", ErrInvalidInput)
	}
	if len(c.Legs) > MaxBatchLegs {
		return nil, fmt.Errorf("%w: a batch has %d transfers, at most %d allowed", ErrLimitExceeded, len(c.Legs), MaxBatchLegs)
	}
	fp := Fingerprint(c)
	if p := s.payment(c.PaymentID); p.Exists() {
		return nil, replayOrConflict(p, fp)
	}
	legs, err := applyLegs(s, c.PaymentID, c.Legs)
	if err != nil {
		return nil, err
	}
	out := make([]Event, 0, 1+len(legs))
	out = append(out, PaymentBatchTransferred{
		PaymentID: c.PaymentID, Legs: append([]Leg(nil), c.Legs...), Reference: c.Reference,
		Metadata: cloneMetadata(c.Metadata), Fingerprint: fp,
	})
	return append(out, legs...), nil
}

// applyLegs checks each leg in order against a working copy of the accounts (so two legs
// through one account see each other) and returns the debit and credit postings of
// payment id.
func applyLegs(s State, id PaymentID, legs []Leg) ([]Event, error) {
	work := make(map[AccountID]Account, 2*len(legs))
	get := func(id AccountID) Account {
		if a, ok := work[id]; ok {
			return a
		}
		return s.account(id)
	}
	out := make([]Event, 0, 2*len(legs))
	for i, l := range legs {
		what := "amount"
		if len(legs) > 1 {
			what = fmt.Sprintf("transfer %d amount", i+1)
		}
		if err := validAmount(l.Amount, what); err != nil {
			return nil, err
		}
		if err := checkAmountCeiling(s.Limits, l.Amount, what); err != nil {
			return nil, err
		}
		for _, id := range [2]AccountID{l.Source, l.Destination} {
			if _, err := NewAccountID(string(id)); err != nil {
				return nil, err
			}
		}
		if l.Source == l.Destination {
			return nil, fmt.Errorf("%w: source and destination are the same account %s", ErrInvalidInput, l.Source)
		}
		src, dst := get(l.Source), get(l.Destination)
		if err := usable(src, l.Amount.Asset, "source"); err != nil {
			return nil, err
		}
		if err := usable(dst, l.Amount.Asset, "destination"); err != nil {
			return nil, err
		}
		src, err := debit(src, l.Amount.Minor)
		if err != nil {
			return nil, err
		}
		dst, err = credit(dst, l.Amount.Minor)
		if err != nil {
			return nil, err
		}
		work[src.ID], work[dst.ID] = src, dst
		out = append(out,
			AccountDebited{AccountID: src.ID, PaymentID: id, Amount: l.Amount, PostedAfter: src.Posted},
			AccountCredited{AccountID: dst.ID, PaymentID: id, Amount: l.Amount, PostedAfter: dst.Posted})
	}
	return out, nil
}

func decideAuthorise(s State, c Authorise, now time.Time) ([]Event, error) {
	if err := validPaymentInput(c.PaymentID, c.Reference, c.Metadata); err != nil {
		return nil, err
	}
	if err := validAmount(c.Amount, "amount"); err != nil {
		return nil, err
	}
	if c.Source == c.Destination {
		return nil, fmt.Errorf("%w: source and destination are the same account %s", ErrInvalidInput, c.Source)
	}
	expires := c.ExpiresAt.UTC().Truncate(time.Microsecond)
	fp := Fingerprint(Authorise{PaymentID: c.PaymentID, Source: c.Source, Destination: c.Destination,
		Amount: c.Amount, ExpiresAt: expires, Reference: c.Reference, Metadata: c.Metadata})
	if p := s.payment(c.PaymentID); p.Exists() {
		return nil, replayOrConflict(p, fp)
	}
	// Only money entering a new payment meets the ceiling: captures and refunds are bounded
	// by the authorisation and the captured total, which met it when they were created.
	if err := checkAmountCeiling(s.Limits, c.Amount, "amount"); err != nil {
		return nil, err
	}
	if !expires.After(now) {
		return nil, fmt.Errorf("%w: expiry %s is not in the future", ErrInvalidInput, expires.Format(time.RFC3339))
	}
	if expires.Sub(now) > MaxAuthorisationTTL {
		return nil, fmt.Errorf("%w: expiry %s is more than %s away", ErrLimitExceeded, expires.Format(time.RFC3339), MaxAuthorisationTTL)
	}
	src, err := existing(s, c.Source)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	if err := usable(src, c.Amount.Asset, "source"); err != nil {
		return nil, err
	}
	dst, err := existing(s, c.Destination)
	if err != nil {
		return nil, fmt.Errorf("destination: %w", err)
	}
	if err := usable(dst, c.Amount.Asset, "destination"); err != nil {
		return nil, err
	}
	held, err := addChecked(src.Held, c.Amount.Minor, src.Asset)
	if err != nil {
		return nil, err
	}
	if belowFloor(src, src.Posted, held) {
		return nil, insufficientFunds(src, c.Amount.Minor, "authorisation")
	}
	return []Event{
		PaymentAuthorised{PaymentID: c.PaymentID, Source: c.Source, Destination: c.Destination, Amount: c.Amount,
			ExpiresAt: expires, Reference: c.Reference, Metadata: cloneMetadata(c.Metadata), Fingerprint: fp},
		HoldPlaced{AccountID: src.ID, PaymentID: c.PaymentID, Amount: c.Amount, HeldAfter: held},
	}, nil
}

// authorisation loads an existing authorisation payment.
func authorisation(s State, id PaymentID) (Payment, error) {
	if _, err := NewPaymentID(string(id)); err != nil {
		return Payment{}, err
	}
	p := s.payment(id)
	if !p.Exists() {
		return p, fmt.Errorf("%w: payment %s does not exist", ErrPaymentUnknown, id)
	}
	if p.Kind != PaymentKindAuthorisation {
		return p, fmt.Errorf("%w: payment %s is a %s, not an authorisation", ErrPaymentState, id, p.Kind)
	}
	return p, nil
}

func decideCapture(s State, c Capture, now time.Time) ([]Event, error) {
	p, err := authorisation(s, c.PaymentID)
	if err != nil {
		return nil, err
	}
	if _, err := NewOperationID(string(c.CaptureID)); err != nil {
		return nil, err
	}
	fp := Fingerprint(c)
	if op, ok := p.FindOp(OpCapture, c.CaptureID); ok {
		if op.Fingerprint == fp {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: capture %s of payment %s was already made with a different request", ErrDuplicateID, c.CaptureID, p.ID)
	}
	if p.Status != PaymentStatusAuthorised {
		return nil, fmt.Errorf("%w: payment %s is %s and can no longer be captured", ErrPaymentState, p.ID, p.Status)
	}
	if !now.Before(p.ExpiresAt) {
		return nil, fmt.Errorf("%w: authorisation %s expired at %s", ErrPaymentState, p.ID, p.ExpiresAt.Format(time.RFC3339))
	}
	if n := countOps(p, OpCapture); n >= MaxCapturesPerPayment {
		return nil, fmt.Errorf("%w: payment %s already has %d captures", ErrLimitExceeded, p.ID, n)
	}
	asset := p.Asset()
	amount := c.Amount
	switch {
	case c.Full && (amount.Minor != 0 || !amount.Asset.IsZero()):
		return nil, fmt.Errorf("%w: a full capture takes no amount", ErrInvalidInput)
	case c.Full:
		amount = Money{Asset: asset, Minor: p.Remaining()}
	default:
		if err := validAmount(amount, "capture amount"); err != nil {
			return nil, err
		}
		if amount.Asset != asset {
			return nil, fmt.Errorf("%w: payment %s is in %s, the capture is in %s", ErrAssetMismatch, p.ID, asset, amount.Asset)
		}
		if amount.Minor > p.Remaining() {
			return nil, fmt.Errorf("%w: capture of %s exceeds the %s still authorised", ErrInvalidAmount,
				amount, Money{Asset: asset, Minor: p.Remaining()})
		}
	}
	leg := p.Legs[0]
	src, dst := s.account(leg.Source), s.account(leg.Destination)
	if src.Status == AccountStatusFrozen {
		return nil, fmt.Errorf("%w: source account %s is frozen", ErrAccountFrozen, src.ID)
	}
	if err := usable(dst, asset, "destination"); err != nil {
		return nil, err
	}
	posted, err := subChecked(src.Posted, amount.Minor, src.Asset)
	if err != nil {
		return nil, err
	}
	held := src.Held - amount.Minor
	dst, err = credit(dst, amount.Minor)
	if err != nil {
		return nil, err
	}
	total := p.Captured + amount.Minor
	return []Event{
		PaymentCaptured{PaymentID: p.ID, CaptureID: c.CaptureID, Amount: amount, CapturedTotal: total, Fingerprint: fp},
		HoldCaptured{AccountID: src.ID, PaymentID: p.ID, Amount: amount, PostedAfter: posted, HeldAfter: held,
			Closes: total == p.Authorised},
		AccountCredited{AccountID: dst.ID, PaymentID: p.ID, Amount: amount, PostedAfter: dst.Posted},
	}, nil
}

func countOps(p Payment, kind OpKind) int {
	n := 0
	for _, op := range p.Ops {
		if op.Kind == kind {
			n++
		}
	}
	return n
}

func decideVoid(s State, c Void) ([]Event, error) {
	p, err := authorisation(s, c.PaymentID)
	if err != nil {
		return nil, err
	}
	switch p.Status {
	case PaymentStatusVoided:
		return nil, nil
	case PaymentStatusAuthorised:
	default:
		return nil, fmt.Errorf("%w: payment %s is %s and can no longer be voided", ErrPaymentState, p.ID, p.Status)
	}
	return release(s, p, ReleaseVoided), nil
}

func decideExpire(s State, c Expire, now time.Time) ([]Event, error) {
	p, err := authorisation(s, c.PaymentID)
	if err != nil {
		return nil, err
	}
	switch p.Status {
	case PaymentStatusExpired:
		return nil, nil
	case PaymentStatusAuthorised:
	default:
		return nil, fmt.Errorf("%w: payment %s is %s, nothing to expire", ErrPaymentState, p.ID, p.Status)
	}
	if now.Before(p.ExpiresAt) {
		return nil, fmt.Errorf("%w: authorisation %s expires at %s, not yet", ErrPaymentState, p.ID, p.ExpiresAt.Format(time.RFC3339))
	}
	return release(s, p, ReleaseExpired), nil
}

func release(s State, p Payment, reason string) []Event {
	rest := Money{Asset: p.Asset(), Minor: p.Remaining()}
	src := s.account(p.Legs[0].Source)
	var payEvent Event = PaymentVoided{PaymentID: p.ID, Released: rest}
	if reason == ReleaseExpired {
		payEvent = PaymentExpired{PaymentID: p.ID, Released: rest}
	}
	return []Event{payEvent,
		HoldReleased{AccountID: src.ID, PaymentID: p.ID, Amount: rest, HeldAfter: src.Held - rest.Minor, Reason: reason}}
}

func decideRefund(s State, c Refund) ([]Event, error) {
	if _, err := NewPaymentID(string(c.PaymentID)); err != nil {
		return nil, err
	}
	p := s.payment(c.PaymentID)
	if !p.Exists() {
		return nil, fmt.Errorf("%w: payment %s does not exist", ErrPaymentUnknown, c.PaymentID)
	}
	if _, err := NewOperationID(string(c.RefundID)); err != nil {
		return nil, err
	}
	fp := Fingerprint(c)
	if op, ok := p.FindOp(OpRefund, c.RefundID); ok {
		if op.Fingerprint == fp {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: refund %s of payment %s was already made with a different request", ErrDuplicateID, c.RefundID, p.ID)
	}
	if p.Kind == PaymentKindBatch {
		return nil, fmt.Errorf("%w: payment %s is a batch; refund it with a transfer per leg", ErrPaymentState, p.ID)
	}
	if err := validAmount(c.Amount, "refund amount"); err != nil {
		return nil, err
	}
	asset := p.Asset()
	if c.Amount.Asset != asset {
		return nil, fmt.Errorf("%w: payment %s is in %s, the refund is in %s", ErrAssetMismatch, p.ID, asset, c.Amount.Asset)
	}
	if c.Amount.Minor > p.Refundable() {
		return nil, fmt.Errorf("%w: refund of %s exceeds the %s captured and not yet refunded", ErrInvalidAmount,
			c.Amount, Money{Asset: asset, Minor: p.Refundable()})
	}
	if n := countOps(p, OpRefund); n >= MaxRefundsPerPayment {
		return nil, fmt.Errorf("%w: payment %s already has %d refunds", ErrLimitExceeded, p.ID, n)
	}
	leg := p.Legs[0]
	// Money flows back: the original destination pays the original source.
	payer, payee := s.account(leg.Destination), s.account(leg.Source)
	if err := usable(payer, asset, "refunding"); err != nil {
		return nil, err
	}
	if err := usable(payee, asset, "refunded"); err != nil {
		return nil, err
	}
	payer, err := debit(payer, c.Amount.Minor)
	if err != nil {
		return nil, err
	}
	payee, err = credit(payee, c.Amount.Minor)
	if err != nil {
		return nil, err
	}
	return []Event{
		PaymentRefunded{PaymentID: p.ID, RefundID: c.RefundID, Amount: c.Amount, RefundedTotal: p.Refunded + c.Amount.Minor, Fingerprint: fp},
		AccountDebited{AccountID: payer.ID, PaymentID: p.ID, Amount: c.Amount, PostedAfter: payer.Posted},
		AccountCredited{AccountID: payee.ID, PaymentID: p.ID, Amount: c.Amount, PostedAfter: payee.Posted},
	}, nil
}

// CheckBalanced is the double-entry rule as code: across the events of one decision, the
// posted changes of every asset sum to zero (a debit for every credit), and holds only
// move money that stays in the ledger. The command processor runs it on every decision
// before appending; the projectors check the same rule when they apply the events.
func CheckBalanced(events []Event) error {
	sums := make(map[Asset]int64, 1)
	for _, e := range events {
		switch e := e.(type) {
		case AccountDebited:
			sums[e.Amount.Asset] -= e.Amount.Minor
		case AccountCredited:
			sums[e.Amount.Asset] += e.Amount.Minor
		case HoldCaptured:
			sums[e.Amount.Asset] -= e.Amount.Minor
		}
	}
	for asset, sum := range sums {
		if sum != 0 {
			return fmt.Errorf("domain: postings of %s do not balance: they sum to %d minor units", asset, sum)
		}
	}
	return nil
}
