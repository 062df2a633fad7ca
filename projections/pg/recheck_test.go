package pg_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/internal/pgtest"
	"github.com/securepay/securepay/internal/projtest"
	"github.com/securepay/securepay/projections"
)

// Read-your-writes after the views lost commits the runner saw succeed (what a
// PostgreSQL crash does to the asynchronously committed views): a read that waited for a
// position must reflect it. (The runner's side is tested in package projections with a
// view that loses commits on demand; crash_test.go crashes a real server.)

func TestReadWaitsForCommitsTheViewLostToBeReapplied(t *testing.T) {
	store := projtest.PostgresStore(t)
	pool := pgtest.Pool(t, 8)
	v := projtest.PGViews(t, pool, pgtest.Schema(t, "sp_views"))
	l := projtest.NewLedger(23, "lost-")
	w := projtest.NewWriter(store, l)
	ctx := projtest.Context(t, 2*time.Minute)
	before, err := w.Write(ctx, 400, 20, 4)
	if err != nil {
		t.Fatalf("write log: %v", err)
	}
	r := projtest.StartRunner(t, store, v.Projectors())
	projtest.WaitAll(t, r, before, projections.AccountsProjector, projections.PaymentsProjector)
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
	projtest.WaitAll(t, r, after, projections.AccountsProjector, projections.PaymentsProjector)
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
	projtest.CheckAgainstModel(t, reader, l, after)
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
			dp, dh := projtest.EntryDelta(e.Kind, e.Amount.Minor)
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
