package projections_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/projections/projtest"
)

// Read-your-writes after a view lost commits the runner saw succeed (what a PostgreSQL crash
// does to the asynchronously committed views): the runner must not answer Wait from its
// count in memory until it has re-read the checkpoint from the view, and a read that waited
// for a position must reflect it.

// lossyView is a projector over a view in memory that can lose its last commits. Its
// Checkpoint can be held at a gate, so a test can look at Wait while the runner re-reads.
type lossyView struct {
	recheck chan struct{}
	entered chan struct{} // Checkpoint sends here when it stops at the gate

	mu       sync.Mutex
	durable  uint64
	applied  int           // events applied, re-applies included
	gate     chan struct{} // when set, Checkpoint waits until it is closed
	failNext error
}

func newLossyView() *lossyView {
	return &lossyView{recheck: make(chan struct{}, 1), entered: make(chan struct{}, 1)}
}

func (p *lossyView) Name() string             { return "lossy.v1" }
func (p *lossyView) Recheck() <-chan struct{} { return p.recheck }
func (p *lossyView) set(f func(p *lossyView)) { p.mu.Lock(); f(p); p.mu.Unlock() }
func (p *lossyView) state() (durable uint64, applied int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.durable, p.applied
}

func (p *lossyView) Checkpoint(ctx context.Context) (uint64, error) {
	p.mu.Lock()
	gate := p.gate
	p.mu.Unlock()
	if gate != nil {
		select {
		case p.entered <- struct{}{}:
		default:
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	durable, _ := p.state()
	return durable, nil
}

func (p *lossyView) Apply(ctx context.Context, batch []eventstore.RecordedEvent) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.failNext; err != nil {
		p.failNext = nil
		return err
	}
	if batch[0].Position != p.durable+1 {
		return projections.ErrCheckpointMoved
	}
	p.durable = batch[len(batch)-1].Position
	p.applied += len(batch)
	return nil
}

// waitTimesOut asserts that Wait for position does not answer within a short bound: the
// runner is held inside its checkpoint read, so nothing can confirm the position meanwhile.
func waitTimesOut(t *testing.T, r *projections.Runner, name string, position uint64, why string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := r.Wait(ctx, name, position); !errors.Is(err, projections.ErrNotCaughtUp) {
		t.Fatalf("Wait(%d) %s: err = %v; want ErrNotCaughtUp until the checkpoint is read from the view again", position, why, err)
	}
}

func TestRunnerRereadsItsCheckpointWhenAReaderFindsTheViewBehind(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	l := projtest.NewLedger(21, "rc-")
	ctx := testContext(t, time.Minute)
	last, err := projtest.NewWriter(store, l).Write(ctx, 200, 10, 4)
	if err != nil {
		t.Fatalf("write log: %v", err)
	}
	p := newLossyView()
	r := startRunner(t, store, []projections.Projector{p})
	waitAll(t, r, last, p.Name())

	// Given the view lost its last commits, which the runner saw succeed (and no new event
	// comes that would make Apply notice).
	lostTo := last / 2
	gate := make(chan struct{})
	p.set(func(p *lossyView) { p.durable, p.applied, p.gate = lostTo, 0, gate })
	if err := r.Wait(ctx, p.Name(), last); err != nil {
		t.Fatalf("Wait(%d) before anyone noticed the loss: %v", last, err) // what readers must not trust
	}
	// When a reader finds the view behind and asks for a recheck,
	p.recheck <- struct{}{}
	select {
	case <-p.entered:
	case <-ctx.Done():
		t.Fatalf("the runner did not re-read its checkpoint after a recheck request: %v", ctx.Err())
	}
	// then Wait does not answer from the old count while the runner re-reads,
	waitTimesOut(t, r, p.Name(), last, "while the runner re-reads after a recheck request")
	// and answers once the lost events are applied again, with no new event in the log.
	close(gate)
	if err := r.Wait(ctx, p.Name(), last); err != nil {
		t.Fatalf("Wait(%d) after the re-read: %v", last, err)
	}
	if durable, applied := p.state(); durable != last || applied != int(last-lostTo) {
		t.Fatalf("after the recheck the view is at %d having applied %d events; want %d and the %d lost ones", durable, applied, last, last-lostTo)
	}
}

func TestRunnerRereadsItsCheckpointAfterApplyFails(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	l := projtest.NewLedger(22, "af-")
	w := projtest.NewWriter(store, l)
	ctx := testContext(t, time.Minute)
	last, err := w.Write(ctx, 200, 10, 4)
	if err != nil {
		t.Fatalf("write log: %v", err)
	}
	p := newLossyView()
	r := startRunner(t, store, []projections.Projector{p})
	waitAll(t, r, last, p.Name())

	// Given a crash of the view's database: the last commits are gone and the next Apply
	// fails on the broken connection.
	lostTo := last - 50
	gate := make(chan struct{})
	p.set(func(p *lossyView) {
		p.durable, p.applied, p.gate, p.failNext = lostTo, 0, gate, errors.New("write: connection reset by peer")
	})
	next, err := w.Write(ctx, 1, 10, 1)
	if err != nil {
		t.Fatalf("write log: %v", err)
	}
	select {
	case <-p.entered:
	case <-ctx.Done():
		t.Fatalf("the runner did not re-read its checkpoint after Apply failed: %v", ctx.Err())
	}
	// Then no wait is answered from the count kept before the failure,
	waitTimesOut(t, r, p.Name(), last, "after Apply failed")
	// until the checkpoint is read again and the lost events re-applied.
	close(gate)
	if err := r.Wait(ctx, p.Name(), next); err != nil {
		t.Fatalf("Wait(%d) after the re-read: %v", next, err)
	}
	if durable, applied := p.state(); durable != next || applied != int(next-lostTo) {
		t.Fatalf("after the failure the view is at %d having applied %d events; want %d and %d", durable, applied, next, next-lostTo)
	}
}

func TestReadWaitsForCommitsTheViewLostToBeReapplied(t *testing.T) {
	store := projtest.PostgresStore(t)
	pool := projtest.Pool(t, 8)
	v := openPG(t, pool, projtest.Schema(t, "sp_views"))
	l := projtest.NewLedger(23, "lost-")
	w := projtest.NewWriter(store, l)
	ctx := testContext(t, 2*time.Minute)
	before, err := w.Write(ctx, 400, 20, 4)
	if err != nil {
		t.Fatalf("write log: %v", err)
	}
	r := startRunner(t, store, v.Projectors())
	waitAll(t, r, before, projections.AccountsProjector, projections.PaymentsProjector)
	q := func(name string) string { return pgx.Identifier{v.Schema(), name}.Sanitize() }
	tables := []string{"balances", "history", "payments", "checkpoints"}
	for _, table := range tables {
		if _, err := pool.Exec(ctx, `CREATE TABLE `+q("saved_"+table)+` AS TABLE `+q(table)); err != nil {
			t.Fatalf("save %s: %v", table, err)
		}
	}
	old := map[domain.AccountID]domain.Account{}
	for id, a := range l.State.Accounts {
		old[id] = a
	}

	after, err := w.Write(ctx, 200, 20, 4)
	if err != nil {
		t.Fatalf("write log: %v", err)
	}
	waitAll(t, r, after, projections.AccountsProjector, projections.PaymentsProjector)
	var changed []domain.AccountID
	for id, a := range l.State.Accounts {
		if o, ok := old[id]; !ok || o.Posted != a.Posted || o.Held != a.Held {
			changed = append(changed, id)
		}
	}
	if len(changed) == 0 {
		t.Fatal("no balance changed between the two writes: the test would prove nothing")
	}

	// Given the database lost every view commit after `before` (the checkpoint with them),
	// while the runner, which saw them succeed, still counts up to `after`.
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT 1 FROM `+q("checkpoints")+` FOR UPDATE`); err != nil {
			return err
		}
		for _, table := range tables[:3] {
			if _, err := tx.Exec(ctx, `DELETE FROM `+q(table)); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO `+q(table)+` SELECT * FROM `+q("saved_"+table)); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `UPDATE `+q("checkpoints")+` c SET position = s.position FROM `+q("saved_checkpoints")+` s WHERE c.name = s.name`)
		return err
	})
	if err != nil {
		t.Fatalf("roll the views back to %d: %v", before, err)
	}
	if cp := checkpointOf(t, pool, v.Schema(), projections.AccountsProjector); cp != before {
		t.Fatalf("the view's checkpoint after the roll-back is %d; want %d", cp, before)
	}
	if cp, _ := r.Checkpoint(projections.AccountsProjector); cp != after {
		t.Fatalf("the runner counts %d after the roll-back; want %d (it cannot know)", cp, after)
	}

	// A reader that polls the view (no Waiter) answers late, never from before `after`.
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	b, err := v.Reader().Balance(short, changed[0], projections.AsOf{}, after)
	cancel()
	if !errors.Is(err, projections.ErrNotCaughtUp) {
		t.Fatalf("balance of %s at min position %d from a view at %d: %+v, %v; want ErrNotCaughtUp", changed[0], after, before, b, err)
	}
	// A reader waiting on the runner finds the view behind, has the runner re-apply the lost
	// batches (no new event arrives), and answers every read with the state at `after`.
	reader := v.ReaderWaitingOn(r)
	checkAgainstModel(t, reader, l, after)
	for _, id := range changed {
		posted, held := historySum(t, ctx, reader, id, after)
		if want := l.State.Accounts[id]; posted != want.Posted || held != want.Held {
			t.Fatalf("history of %s at min position %d sums to posted %d held %d; the log has %d and %d", id, after, posted, held, want.Posted, want.Held)
		}
	}
	if cp := checkpointOf(t, pool, v.Schema(), projections.AccountsProjector); cp != after {
		t.Fatalf("the view's checkpoint after the reads is %d; want %d (the lost batches re-applied)", cp, after)
	}
}

// historySum pages through an account's whole history at minPosition and sums it.
func historySum(t testing.TB, ctx context.Context, rd projections.Reader, id domain.AccountID, minPosition uint64) (posted, held int64) {
	t.Helper()
	var after uint64
	for page := 0; page < 1000; page++ {
		es, err := rd.History(ctx, id, after, projections.MaxHistoryPage, minPosition)
		if err != nil {
			t.Fatalf("history of %s after %d at min position %d: %v", id, after, minPosition, err)
		}
		for _, e := range es {
			dp, dh := entryDelta(e.Kind, e.Amount.Minor)
			posted, held = posted+dp, held+dh
			after = e.Position
		}
		if len(es) < projections.MaxHistoryPage {
			return posted, held
		}
	}
	t.Fatalf("history of %s has more than 1000 pages", id)
	return 0, 0
}

// entryDelta is what one history line does to posted and held.
func entryDelta(kind projections.EntryKind, amount int64) (posted, held int64) {
	switch kind {
	case projections.EntryDebit:
		return -amount, 0
	case projections.EntryCredit:
		return amount, 0
	case projections.EntryHoldPlaced:
		return 0, amount
	case projections.EntryHoldCaptured:
		return -amount, -amount
	case projections.EntryHoldReleased:
		return 0, -amount
	}
	return 0, 0
}
