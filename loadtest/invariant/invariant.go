// Package invariant is the reference invariant checker: it folds the event log by the
// simplest possible rules, independently of domain.Evolve and of the processor's cache,
// and reports the first event after which the ledger's invariants do not hold. The load
// generator runs it after a load, the ledger's simulation and fault tests after theirs.
//
// Its fold is deliberately a second computation: it shares the event decoder with the
// domain (auditors decode the same bytes) but no arithmetic, so a bug in Evolve or in the
// processor cannot hide itself here.
package invariant

import (
	"context"
	"fmt"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// Account is an account as the log says it is.
type Account struct {
	Asset   domain.Asset
	Kind    domain.AccountKind
	Limit   int64 // credit limit: the balance may go down to -Limit
	Posted  int64
	Held    int64
	Version uint64 // the stream version of its last event
}

// Model is the log folded up to Events.
type Model struct {
	Accounts map[string]*Account // by stream name
	// Creations counts the events that create each payment, Ops the captures and refunds
	// of each operation id ("payment/capture/id", "payment/refund/id"): in a correct log
	// every count is 1.
	Creations map[domain.PaymentID]int
	Ops       map[string]int
	Events    uint64

	chain *eventstore.ChainVerifier
}

// New returns an empty model that expects the log from position 1.
func New() *Model {
	return &Model{
		Accounts: map[string]*Account{}, Creations: map[domain.PaymentID]int{}, Ops: map[string]int{},
		chain: eventstore.NewChainVerifier(0, eventstore.Hash{}),
	}
}

// Fold reads the whole log in pages of pageSize and applies every event. It stops at the
// first event that breaks the chain or an invariant that must hold after every event
// (no account below its floor, no negative hold, no payment created twice).
func Fold(ctx context.Context, store eventstore.Store, pageSize int) (*Model, error) {
	m := New()
	pageSize = eventstore.ClampLimit(pageSize)
	var after uint64
	for {
		page, err := store.ReadAll(ctx, after, pageSize)
		if err != nil {
			return m, fmt.Errorf("read the log after %d: %w", after, err)
		}
		for i := range page {
			if err := m.Apply(&page[i]); err != nil {
				return m, err
			}
		}
		if len(page) < pageSize {
			return m, nil
		}
		after = page[len(page)-1].Position
	}
}

// Apply folds one recorded event, the next one of the log.
func (m *Model) Apply(rec *eventstore.RecordedEvent) error {
	if err := m.chain.Check(rec); err != nil {
		return err
	}
	ev, err := domain.DecodeEvent(rec.Type, rec.Data)
	if err != nil {
		return fmt.Errorf("position %d: %w", rec.Position, err)
	}
	m.Events++
	acc := m.Accounts[rec.Stream]
	switch e := ev.(type) {
	case domain.AccountOpened:
		acc = &Account{Asset: e.Asset, Kind: e.Kind, Limit: e.CreditLimit}
		m.Accounts[rec.Stream] = acc
	case domain.AccountDebited:
		acc.Posted -= e.Amount.Minor
	case domain.AccountCredited:
		acc.Posted += e.Amount.Minor
	case domain.HoldPlaced:
		acc.Held += e.Amount.Minor
	case domain.HoldCaptured:
		acc.Posted -= e.Amount.Minor
		acc.Held -= e.Amount.Minor
	case domain.HoldReleased:
		acc.Held -= e.Amount.Minor
	case domain.PaymentTransferred, domain.PaymentBatchTransferred, domain.PaymentAuthorised:
		id := ev.(domain.PaymentEvent).Payment()
		if m.Creations[id]++; m.Creations[id] > 1 {
			return fmt.Errorf("position %d: payment %s created twice", rec.Position, id)
		}
	case domain.PaymentCaptured:
		m.Ops[string(e.PaymentID)+"/capture/"+string(e.CaptureID)]++
	case domain.PaymentRefunded:
		m.Ops[string(e.PaymentID)+"/refund/"+string(e.RefundID)]++
	}
	if acc == nil {
		return nil
	}
	acc.Version = rec.StreamVersion
	if acc.Kind != domain.KindExternal && acc.Posted-acc.Held < -acc.Limit {
		return fmt.Errorf("position %d: %s is below its floor: posted %d, held %d, credit limit %d", rec.Position, rec.Stream, acc.Posted, acc.Held, acc.Limit)
	}
	if acc.Held < 0 {
		return fmt.Errorf("position %d: %s holds a negative amount %d", rec.Position, rec.Stream, acc.Held)
	}
	return nil
}

// CheckFinal checks what holds of the whole log: per asset the posted balances of all
// accounts sum to zero (double entry), and no operation id was applied twice.
func (m *Model) CheckFinal() error {
	sums := map[domain.Asset]int64{}
	for _, a := range m.Accounts {
		sums[a.Asset] += a.Posted
	}
	for asset, sum := range sums {
		if sum != 0 {
			return fmt.Errorf("balances of %s sum to %d, not zero", asset, sum)
		}
	}
	for op, n := range m.Ops {
		if n != 1 {
			return fmt.Errorf("operation %s recorded %d times", op, n)
		}
	}
	return nil
}
