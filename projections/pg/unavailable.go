package pg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
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

// unavailable and connectionLost are the event store's own classification
// (eventstore/postgres/unavailable.go), repeated because the import rules keep each
// backend package apart; change both together.
func unavailable(err error) error {
	if err == nil || errors.Is(err, eventstore.ErrUnavailable) || !connectionLost(err) {
		return err
	}
	return fmt.Errorf("%w: %w", eventstore.ErrUnavailable, err)
}

func connectionLost(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		code := pgErr.Code
		return strings.HasPrefix(code, "08") || code == "57P01" || code == "57P02" || code == "57P03"
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &connectErr), errors.As(err, &netErr),
		errors.Is(err, pgconn.ErrConnClosed), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return true
	}
	return pgconn.SafeToRetry(err) || strings.Contains(err.Error(), "conn closed")
}
