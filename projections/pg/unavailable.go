package pg

import (
	"context"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/internal/pgerr"
	"github.com/securepay/securepay/projections"
)

// reachableReader gives every read error that means "the database cannot be reached" the
// store's sentinel, eventstore.ErrUnavailable, so the API answers UNAVAILABLE (retry)
// instead of INTERNAL (our bug) while PostgreSQL is down.
type reachableReader struct{ r *pgReader }

func (rr reachableReader) Balance(ctx context.Context, id domain.AccountID, asOf projections.AsOf, minPosition uint64) (projections.Balance, error) {
	b, err := rr.r.Balance(ctx, id, asOf, minPosition)
	return b, unavailable(err)
}

func (rr reachableReader) History(ctx context.Context, id domain.AccountID, afterPosition uint64, limit int, minPosition uint64) ([]projections.Entry, error) {
	es, err := rr.r.History(ctx, id, afterPosition, limit, minPosition)
	return es, unavailable(err)
}

func (rr reachableReader) Payment(ctx context.Context, id domain.PaymentID, minPosition uint64) (projections.Payment, error) {
	p, err := rr.r.Payment(ctx, id, minPosition)
	return p, unavailable(err)
}

func (rr reachableReader) Position(ctx context.Context) (uint64, error) {
	pos, err := rr.r.Position(ctx)
	return pos, unavailable(err)
}

// unavailable is the one classification of pgx errors, shared with the event store.
func unavailable(err error) error { return pgerr.Unavailable(err) }
