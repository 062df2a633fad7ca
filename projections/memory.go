package projections

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// In-memory views, for `securepay dev`: the same folds as the PostgreSQL views, kept in
// maps, rebuilt from position 0 at every start (the embedded log is local, so a replay is
// a read of the disk).
//
// Memory bounds. The views hold every account and every payment: O(accounts + payments),
// which is what a development ledger has. History is the part that grows with the log, so
// it is capped per account: each account keeps its newest HistoryCap lines (default 1,000,
// about 200 bytes each, so at most ~200 KB per account). An account's balance never needs
// old lines (it is kept in the account row), but History pages and as-of queries that
// reach before the oldest kept line answer ErrHistoryTrimmed instead of a wrong answer.
// `securepay serve` with PostgreSQL keeps the whole history.

// ErrHistoryTrimmed is returned by the in-memory views for a point in history they no
// longer keep.
var ErrHistoryTrimmed = errors.New("projections: history before this point was trimmed from the in-memory view")

// DefaultHistoryCap is the in-memory history lines kept per account.
const DefaultHistoryCap = 1000

// Projector names of the in-memory and PostgreSQL ledger views. Both stores use the same
// names because they run the same folds.
const (
	AccountsProjector = "accounts.v1" // balances + history
	PaymentsProjector = "payments.v1"
)

// MemoryViews holds the accounts, history and payments views in memory. It is safe for
// concurrent use; its two projectors (Projectors) write it and its Reader reads it.
type MemoryViews struct {
	historyCap int

	mu       sync.RWMutex
	accounts map[domain.AccountID]*memAccount
	payments map[domain.PaymentID]*Payment
	cp       map[string]uint64 // checkpoint per projector
	failed   map[string]*ApplyError
	signal   *eventstore.Signal
}

type memAccount struct {
	row     AccountRow
	lines   []HistoryRow // ring buffer of the newest lines, oldest at start
	start   int
	trimmed bool // older lines were dropped
}

func (m *memAccount) push(l HistoryRow, capacity int) {
	if len(m.lines) < capacity {
		m.lines = append(m.lines, l)
		return
	}
	m.lines[m.start] = l
	m.start = (m.start + 1) % capacity
	m.trimmed = true
}

// at returns the i-th kept line, oldest first.
func (m *memAccount) at(i int) *HistoryRow { return &m.lines[(m.start+i)%len(m.lines)] }

// NewMemoryViews returns empty views; historyCap <= 0 means DefaultHistoryCap.
func NewMemoryViews(historyCap int) *MemoryViews {
	if historyCap <= 0 {
		historyCap = DefaultHistoryCap
	}
	return &MemoryViews{
		historyCap: historyCap,
		accounts:   map[domain.AccountID]*memAccount{},
		payments:   map[domain.PaymentID]*Payment{},
		cp:         map[string]uint64{},
		failed:     map[string]*ApplyError{},
		signal:     eventstore.NewSignal(),
	}
}

// Projectors returns the accounts and payments projectors that write these views.
func (v *MemoryViews) Projectors() []Projector {
	return []Projector{memAccounts{v}, memPayments{v}}
}

type memAccounts struct{ v *MemoryViews }
type memPayments struct{ v *MemoryViews }

func (p memAccounts) Name() string { return AccountsProjector }
func (p memPayments) Name() string { return PaymentsProjector }

func (p memAccounts) Checkpoint(context.Context) (uint64, error) {
	return p.v.checkpoint(AccountsProjector), nil
}
func (p memPayments) Checkpoint(context.Context) (uint64, error) {
	return p.v.checkpoint(PaymentsProjector), nil
}

func (v *MemoryViews) checkpoint(name string) uint64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.cp[name]
}

// Apply folds the batch and publishes it in one critical section, so readers see a batch
// entirely or not at all.
func (p memAccounts) Apply(_ context.Context, batch []eventstore.RecordedEvent) error {
	v := p.v
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.expect(AccountsProjector, batch); err != nil {
		return err
	}
	res, err := foldAccounts(AccountsProjector, batch, func(ids []domain.AccountID) (map[domain.AccountID]AccountRow, error) {
		out := make(map[domain.AccountID]AccountRow, len(ids))
		for _, id := range ids {
			if a, ok := v.accounts[id]; ok {
				out[id] = a.row
			}
		}
		return out, nil
	})
	if err != nil {
		return err
	}
	for _, row := range res.Rows {
		a := v.accounts[row.ID]
		if a == nil {
			a = &memAccount{}
			v.accounts[row.ID] = a
		}
		a.row = row
	}
	for _, l := range res.Lines {
		v.accounts[l.AccountID].push(l, v.historyCap)
	}
	return v.advance(AccountsProjector, res.Last, res.Poison)
}

func (p memPayments) Apply(_ context.Context, batch []eventstore.RecordedEvent) error {
	v := p.v
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.expect(PaymentsProjector, batch); err != nil {
		return err
	}
	res, err := foldPayments(PaymentsProjector, batch, func(ids []domain.PaymentID) (map[domain.PaymentID]Payment, error) {
		out := make(map[domain.PaymentID]Payment, len(ids))
		for _, id := range ids {
			if p, ok := v.payments[id]; ok {
				out[id] = *p
			}
		}
		return out, nil
	})
	if err != nil {
		return err
	}
	for i := range res.Rows {
		p := res.Rows[i]
		v.payments[p.ID] = &p
	}
	return v.advance(PaymentsProjector, res.Last, res.Poison)
}

// expect checks that batch continues the checkpoint (caller holds mu).
func (v *MemoryViews) expect(name string, batch []eventstore.RecordedEvent) error {
	if len(batch) == 0 {
		return nil
	}
	if cp := v.cp[name]; batch[0].Position != cp+1 {
		return fmt.Errorf("%w: %s is at %d, batch starts at %d", ErrCheckpointMoved, name, cp, batch[0].Position)
	}
	return nil
}

// advance moves the checkpoint (caller holds mu) and wakes waiting readers.
func (v *MemoryViews) advance(name string, last uint64, poison *ApplyError) error {
	if last > v.cp[name] {
		v.cp[name] = last
	}
	if poison != nil {
		v.failed[name] = poison
	}
	v.signal.Broadcast()
	if poison != nil {
		return poison
	}
	return nil
}

// Reader returns the query side of these views.
func (v *MemoryViews) Reader() Reader { return memReader{v} }

type memReader struct{ v *MemoryViews }

var _ Reader = memReader{}

// wait blocks until projector name has applied minPosition (ctx bounds it) and returns with
// v.mu read-locked.
func (v *MemoryViews) wait(ctx context.Context, name string, minPosition uint64) error {
	for {
		wake := v.signal.C()
		v.mu.RLock()
		cp, failed := v.cp[name], v.failed[name]
		if cp >= minPosition {
			return nil
		}
		v.mu.RUnlock()
		if failed != nil {
			return fmt.Errorf("%w: %s stopped at %d: %v", ErrNotCaughtUp, name, cp, failed)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s is at %d, asked for %d: %v", ErrNotCaughtUp, name, cp, minPosition, ctx.Err())
		case <-wake:
		}
	}
}

func (r memReader) Balance(ctx context.Context, id domain.AccountID, asOf AsOf, minPosition uint64) (Balance, error) {
	v := r.v
	if err := v.wait(ctx, AccountsProjector, minPosition); err != nil {
		return Balance{}, err
	}
	defer v.mu.RUnlock()
	a := v.accounts[id]
	if a == nil {
		return Balance{}, fmt.Errorf("%w: account %s", ErrNotFound, id)
	}
	if asOf.IsNow() {
		return a.row.Balance(), nil
	}
	if !includes(asOf, a.row.OpenedPosition, a.row.OpenedAt) {
		return Balance{}, fmt.Errorf("%w: account %s was opened at position %d, after the requested point", ErrNotFound, id, a.row.OpenedPosition)
	}
	// Newest line at or before the point; lines are in position (and time) order.
	n := len(a.lines)
	i := sort.Search(n, func(i int) bool { return !includes(asOf, a.at(i).Position, a.at(i).RecordedAt) })
	b := a.row.Balance()
	if i == 0 {
		if a.trimmed {
			return Balance{}, fmt.Errorf("%w: account %s keeps lines from position %d", ErrHistoryTrimmed, id, a.at(0).Position)
		}
		b.Posted, b.Held, b.Available, b.Position, b.UpdatedAt = 0, 0, 0, a.row.OpenedPosition, a.row.OpenedAt
		return b, nil
	}
	return balanceFromLine(b, a.at(i-1)), nil
}

// includes reports whether an event at (position, at) is inside the as-of point.
func includes(asOf AsOf, position uint64, at time.Time) bool {
	if asOf.Position != 0 && position > asOf.Position {
		return false
	}
	if !asOf.Time.IsZero() && at.After(asOf.Time) {
		return false
	}
	return true
}

func balanceFromLine(b Balance, l *HistoryRow) Balance {
	b.Posted, b.Held, b.Available = l.PostedAfter, l.HeldAfter, l.AvailableAfter
	b.Position, b.UpdatedAt = l.Position, l.RecordedAt
	return b
}

func (r memReader) History(ctx context.Context, id domain.AccountID, afterPosition uint64, limit int, minPosition uint64) ([]Entry, error) {
	if limit <= 0 || limit > MaxHistoryPage {
		return nil, fmt.Errorf("%w: history page size %d: must be 1..%d", domain.ErrInvalidInput, limit, MaxHistoryPage)
	}
	v := r.v
	if err := v.wait(ctx, AccountsProjector, minPosition); err != nil {
		return nil, err
	}
	defer v.mu.RUnlock()
	a := v.accounts[id]
	if a == nil {
		return nil, fmt.Errorf("%w: account %s", ErrNotFound, id)
	}
	n := len(a.lines)
	i := sort.Search(n, func(i int) bool { return a.at(i).Position > afterPosition })
	if i == 0 && a.trimmed && n > 0 && afterPosition+1 < a.at(0).Position {
		return nil, fmt.Errorf("%w: account %s keeps lines from position %d", ErrHistoryTrimmed, id, a.at(0).Position)
	}
	out := make([]Entry, 0, min(limit, n-i))
	for ; i < n && len(out) < limit; i++ {
		out = append(out, a.at(i).Entry)
	}
	return out, nil
}

func (r memReader) Payment(ctx context.Context, id domain.PaymentID, minPosition uint64) (Payment, error) {
	v := r.v
	if err := v.wait(ctx, PaymentsProjector, minPosition); err != nil {
		return Payment{}, err
	}
	defer v.mu.RUnlock()
	p := v.payments[id]
	if p == nil {
		return Payment{}, fmt.Errorf("%w: payment %s", ErrNotFound, id)
	}
	out := *p
	out.Legs = append([]domain.Leg(nil), p.Legs...)
	return out, nil
}

func (r memReader) Position(context.Context) (uint64, error) {
	r.v.mu.RLock()
	defer r.v.mu.RUnlock()
	return min(r.v.cp[AccountsProjector], r.v.cp[PaymentsProjector]), nil
}

// Balances calls f for every account as the view holds it now, in account id order; for
// audits and tests.
func (v *MemoryViews) Balances(f func(Balance)) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	ids := make([]domain.AccountID, 0, len(v.accounts))
	for id := range v.accounts {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		f(v.accounts[id].row.Balance())
	}
}
