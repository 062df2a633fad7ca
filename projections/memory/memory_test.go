package memory_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/securepay/securepay/internal/projtest"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/projections/memory"
)

func TestViewsEqualReplayOfTheLog(t *testing.T) {
	v := memory.New(0)
	projtest.ViewsEqualReplay(t, projtest.EmbeddedStore(t), v.Reader(), v.Projectors())
}

func TestReadYourWritesTimesOut(t *testing.T) {
	v := memory.New(0)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := v.Reader().Balance(ctx, "a", projections.AsOf{}, 10)
	if !errors.Is(err, projections.ErrNotCaughtUp) {
		t.Fatalf("balance at min position 10 of an empty view: err = %v, want ErrNotCaughtUp", err)
	}
}

func TestMemoryHistoryCap(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	l := projtest.NewLedger(7, "cap-")
	w := projtest.NewWriter(store, l)
	ctx := projtest.Context(t, time.Minute)
	last, err := w.Write(ctx, 400, 3, 1)
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	v := memory.New(5)
	r := projtest.StartRunner(t, store, v.Projectors())
	projtest.WaitAll(t, r, last, projections.AccountsProjector)
	id := l.Accounts()[0]
	es, err := v.Reader().History(ctx, id, 0, 100, last)
	if !errors.Is(err, projections.ErrHistoryTrimmed) {
		t.Fatalf("history from the start with a cap of 5: %d lines, err %v; want ErrHistoryTrimmed", len(es), err)
	}
	b, err := v.Reader().Balance(ctx, id, projections.AsOf{Position: 3}, 0)
	if !errors.Is(err, projections.ErrHistoryTrimmed) && !errors.Is(err, projections.ErrNotFound) {
		t.Fatalf("balance as of position 3 with a cap of 5: %+v, %v; want ErrHistoryTrimmed", b, err)
	}
	now, err := v.Reader().Balance(ctx, id, projections.AsOf{}, 0)
	if err != nil || now.Posted != l.State.Accounts[id].Posted {
		t.Fatalf("current balance %+v, %v; want posted %d", now, err, l.State.Accounts[id].Posted)
	}
}
