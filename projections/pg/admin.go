package pg

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/securepay/securepay/projections"
)

// What operators see of these views (projections.Views): the checkpoint rows hold each
// projector's position, the error it stopped on and when it last moved, and a rebuild's
// shadow checkpoint row says how far the rebuild is.

var _ projections.Views = (*Views)(nil)

// Describe lists the accounts and payments projectors and the tables they keep.
func (v *Views) Describe() []projections.ProjectorInfo {
	return []projections.ProjectorInfo{
		{Name: projections.AccountsProjector, Backend: "postgres", Views: v.schema + ".balances, " + v.schema + ".history", Rebuildable: true},
		{Name: projections.PaymentsProjector, Backend: "postgres", Views: v.schema + ".payments", Rebuildable: true},
	}
}

// Records reads both projectors' checkpoint rows, and their shadows' if a rebuild left one.
func (v *Views) Records(ctx context.Context) ([]projections.Record, error) {
	var out []projections.Record
	for _, p := range v.Describe() {
		r := projections.Record{Name: p.Name}
		var pos, errPos int64
		err := v.pool.QueryRow(ctx, `SELECT position, error, error_position, updated_at FROM `+v.live.q("checkpoints")+` WHERE name = $1`, p.Name).
			Scan(&pos, &r.Error, &errPos, &r.UpdatedAt)
		switch {
		case err == nil:
			r.Checkpoint, r.ErrorPosition = uint64(pos), uint64(errPos)
		case errors.Is(err, pgx.ErrNoRows):
			r.NoCheckpoint = true
		default:
			return nil, fmt.Errorf("%s: %w", p.Name, err)
		}
		err = v.pool.QueryRow(ctx, `SELECT position FROM `+v.live.q("checkpoints")+` WHERE name = $1`, p.Name+shadowSuffix).Scan(&pos)
		switch {
		case err == nil:
			r.Rebuilding, r.RebuildCheckpoint = true, uint64(pos)
		case !errors.Is(err, pgx.ErrNoRows):
			return nil, fmt.Errorf("%s shadow: %w", p.Name, err)
		}
		out = append(out, r)
	}
	return out, nil
}
