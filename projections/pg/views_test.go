package pg_test

import (
	"testing"
	"time"

	"github.com/securepay/securepay/internal/pgtest"
	"github.com/securepay/securepay/internal/projtest"
	"github.com/securepay/securepay/projections"
)

func TestViewsEqualReplayOfTheLog(t *testing.T) {
	store := projtest.PostgresStore(t)
	v := projtest.PGViews(t, pgtest.Pool(t, 8), pgtest.Schema(t, "sp_views"))
	projtest.ViewsEqualReplay(t, store, v.Reader(), v.Projectors())
}

// With a gathering window the views still equal a replay of the log: a window changes
// which events share a transaction, never which events are applied or in what order. The
// window is long against the writer's pace, so batches are gathered, and the reads that
// wait for a position are answered by cutting windows short.
func TestViewsEqualReplayOfTheLogWithAWindow(t *testing.T) {
	store := projtest.PostgresStore(t)
	v := projtest.PGViews(t, pgtest.Pool(t, 8), pgtest.Schema(t, "sp_views"))
	projtest.ViewsEqualReplay(t, store, v.Reader(), v.Projectors(), func(c *projections.RunnerConfig) {
		c.Window, c.WindowEvents = 50*time.Millisecond, 200
	})
}
