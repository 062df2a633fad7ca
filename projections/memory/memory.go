// Package memory keeps the accounts, history and payments views in memory, for
// `securepay dev`: the same folds as the PostgreSQL views (package projections), kept in
// maps and rebuilt from position 0 at every start (the embedded log is local, so a replay
// is a read of the disk).
//
// Memory bounds. The views hold every account and every payment: O(accounts + payments),
// which is what a development ledger has. History is the part that grows with the log, so
// it is capped per account: each account keeps its newest historyCap lines (default
// DefaultHistoryCap, about 200 bytes each, so at most ~200 KB per account). An account's
// balance never needs old lines (it is kept in the account row), but History pages and
// as-of queries that reach before the oldest kept line answer
// projections.ErrHistoryTrimmed instead of a wrong answer. `securepay serve` with
// PostgreSQL keeps the whole history.
package memory

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
)

// DefaultHistoryCap is the in-memory history lines kept per account.
const DefaultHistoryCap = 1000

// Views holds the accounts, history and payments views in memory. It is safe for
// concurrent use; its two projectors (Projectors) write it and its Reader reads it.
type Views struct {
	historyCap int

	mu       sync.RWMutex
	accounts map[domain.AccountID]*account
	payments map[domain.PaymentID]*projections.Payment
	cp       map[string]uint64 // checkpoint per projector
	failed   map[string]*projections.ApplyError
	signal   *eventstore.Signal
}

type account struct {
	row     projections.AccountRow
	lines   []projections.HistoryRow // ring buffer of the newest lines, oldest at start
	start   int
	trimmed bool // older lines were dropped
}

func (m *account) push(l projections.HistoryRow, capacity int) {
	if len(m.lines) < capacity {
		m.lines = append(m.lines, l)
		return
	}
	m.lines[m.start] = l
	m.start = (m.start + 1) % capacity
	m.trimmed = true
}

// at returns the i-th kept line, oldest first.
func (m *account) at(i int) *projections.HistoryRow { return &m.lines[(m.start+i)%len(m.lines)] }

// New returns empty views; historyCap <= 0 means DefaultHistoryCap.
func New(historyCap int) *Views {
	if historyCap <= 0 {
		historyCap = DefaultHistoryCap
	}
	return &Views{
		historyCap: historyCap,
		accounts:   map[domain.AccountID]*account{},
		payments:   map[domain.PaymentID]*projections.Payment{},
		cp:         map[string]uint64{},
		failed:     map[string]*projections.ApplyError{},
		signal:     eventstore.NewSignal(),
	}
}

// Projectors returns the accounts and payments projectors that write these views.
func (v *Views) Projectors() []projections.Projector {
	return []projections.Projector{accounts{v}, payments{v}}
}

type accounts struct{ v *Views }
type payments struct{ v *Views }

func (p accounts) Name() string { return projections.AccountsProjector }
func (p payments) Name() string { return projections.PaymentsProjector }

func (p accounts) Checkpoint(context.Context) (uint64, error) {
	return p.v.checkpoint(projections.AccountsProjector), nil
}
func (p payments) Checkpoint(context.Context) (uint64, error) {
	return p.v.checkpoint(projections.PaymentsProjector), nil
}

func (v *Views) checkpoint(name string) uint64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.cp[name]
}

// Apply folds the batch and publishes it in one critical section, so readers see a batch
// entirely or not at all.
func (p accounts) Apply(_ context.Context, batch []eventstore.RecordedEvent) error {
	v := p.v
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.expect(projections.AccountsProjector, batch); err != nil {
		return err
	}
	res, err := projections.FoldAccounts(projections.AccountsProjector, batch, func(ids []domain.AccountID) (map[domain.AccountID]projections.AccountRow, error) {
		out := make(map[domain.AccountID]projections.AccountRow, len(ids))
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
			a = &account{}
			v.accounts[row.ID] = a
		}
		a.row = row
	}
	for _, l := range res.Lines {
		v.accounts[l.AccountID].push(l, v.historyCap)
	}
	return v.advance(projections.AccountsProjector, res.Last, res.Poison)
}

func (p payments) Apply(_ context.Context, batch []eventstore.RecordedEvent) error {
	v := p.v
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.expect(projections.PaymentsProjector, batch); err != nil {
		return err
	}
	res, err := projections.FoldPayments(projections.PaymentsProjector, batch, func(ids []domain.PaymentID) (map[domain.PaymentID]projections.Payment, error) {
		out := make(map[domain.PaymentID]projections.Payment, len(ids))
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
	return v.advance(projections.PaymentsProjector, res.Last, res.Poison)
}

// expect checks that batch continues the checkpoint (caller holds mu).
func (v *Views) expect(name string, batch []eventstore.RecordedEvent) error {
	if len(batch) == 0 {
		return nil
	}
	if cp := v.cp[name]; batch[0].Position != cp+1 {
		return fmt.Errorf("%w: %s is at %d, batch starts at %d", projections.ErrCheckpointMoved, name, cp, batch[0].Position)
	}
	return nil
}

// advance moves the checkpoint (caller holds mu) and wakes waiting readers.
func (v *Views) advance(name string, last uint64, poison *projections.ApplyError) error {
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
func (v *Views) Reader() projections.Reader { return reader{v} }

type reader struct{ v *Views }

var _ projections.Reader = reader{}

// wait blocks until projector name has applied minPosition (ctx bounds it) and returns with
// v.mu read-locked.
func (v *Views) wait(ctx context.Context, name string, minPosition uint64) error {
	for {
		wake := v.signal.C()
		v.mu.RLock()
		cp, failed := v.cp[name], v.failed[name]
		if cp >= minPosition {
			return nil
		}
		v.mu.RUnlock()
		if failed != nil {
			return fmt.Errorf("%w: %s stopped at %d: %v", projections.ErrNotCaughtUp, name, cp, failed)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s is at %d, asked for %d: %v", projections.ErrNotCaughtUp, name, cp, minPosition, ctx.Err())
		case <-wake:
		}
	}
}

func (r reader) Balance(ctx context.Context, id domain.AccountID, asOf projections.AsOf, minPosition uint64) (projections.Balance, error) {
	v := r.v
	if err := v.wait(ctx, projections.AccountsProjector, minPosition); err != nil {
		return projections.Balance{}, err
	}
	defer v.mu.RUnlock()
	a := v.accounts[id]
	if a == nil {
		return projections.Balance{}, fmt.Errorf("%w: account %s", projections.ErrNotFound, id)
	}
	var line *projections.HistoryRow
	if !asOf.IsNow() {
		// Newest line at or before the point; lines are in position (and time) order.
		i := sort.Search(len(a.lines), func(i int) bool { return !asOf.Includes(a.at(i).Position, a.at(i).RecordedAt) })
		switch {
		case i > 0:
			line = a.at(i - 1)
		case a.trimmed && asOf.Includes(a.row.OpenedPosition, a.row.OpenedAt):
			// The lines that would answer were dropped; no line would mean a zero balance.
			return projections.Balance{}, fmt.Errorf("%w: account %s keeps lines from position %d", projections.ErrHistoryTrimmed, id, a.at(0).Position)
		}
	}
	return a.row.BalanceAt(asOf, line)
}

func (r reader) History(ctx context.Context, id domain.AccountID, afterPosition uint64, limit int, minPosition uint64) ([]projections.Entry, error) {
	if limit <= 0 || limit > projections.MaxHistoryPage {
		return nil, fmt.Errorf("%w: history page size %d: must be 1..%d", domain.ErrInvalidInput, limit, projections.MaxHistoryPage)
	}
	v := r.v
	if err := v.wait(ctx, projections.AccountsProjector, minPosition); err != nil {
		return nil, err
	}
	defer v.mu.RUnlock()
	a := v.accounts[id]
	if a == nil {
		return nil, fmt.Errorf("%w: account %s", projections.ErrNotFound, id)
	}
	n := len(a.lines)
	i := sort.Search(n, func(i int) bool { return a.at(i).Position > afterPosition })
	if i == 0 && a.trimmed && n > 0 && afterPosition+1 < a.at(0).Position {
		return nil, fmt.Errorf("%w: account %s keeps lines from position %d", projections.ErrHistoryTrimmed, id, a.at(0).Position)
	}
	out := make([]projections.Entry, 0, min(limit, n-i))
	for ; i < n && len(out) < limit; i++ {
		out = append(out, a.at(i).Entry)
	}
	return out, nil
}

func (r reader) Payment(ctx context.Context, id domain.PaymentID, minPosition uint64) (projections.Payment, error) {
	v := r.v
	if err := v.wait(ctx, projections.PaymentsProjector, minPosition); err != nil {
		return projections.Payment{}, err
	}
	defer v.mu.RUnlock()
	p := v.payments[id]
	if p == nil {
		return projections.Payment{}, fmt.Errorf("%w: payment %s", projections.ErrNotFound, id)
	}
	out := *p
	out.Legs = append([]domain.Leg(nil), p.Legs...)
	return out, nil
}

func (r reader) Position(context.Context) (uint64, error) {
	r.v.mu.RLock()
	defer r.v.mu.RUnlock()
	return min(r.v.cp[projections.AccountsProjector], r.v.cp[projections.PaymentsProjector]), nil
}
