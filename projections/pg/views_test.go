package pg_test

import (
	"testing"

	"github.com/securepay/securepay/internal/pgtest"
	"github.com/securepay/securepay/internal/projtest"
)

func TestViewsEqualReplayOfTheLog(t *testing.T) {
	store := projtest.PostgresStore(t)
	v := projtest.PGViews(t, pgtest.Pool(t, 8), pgtest.Schema(t, "sp_views"))
	projtest.ViewsEqualReplay(t, store, v.Reader(), v.Projectors())
}
