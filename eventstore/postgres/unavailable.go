package postgres

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/internal/pgerr"
)

// unavailable and connectionLost are the one classification of pgx errors, shared with the
// PostgreSQL views (internal/pgerr).
func unavailable(err error) error { return pgerr.Unavailable(err) }

func connectionLost(err error) bool { return pgerr.ConnectionLost(err) }

// Ping checks that the database answers, within ctx. Its error wraps
// eventstore.ErrUnavailable when the database cannot be reached, and says where it tried
// and why (see CheckConnection). Health checks call it.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return eventstore.ErrClosed
	}
	return CheckConnection(ctx, s.pool)
}

// CheckConnection makes sure pool can reach its database and, if not, says what happened
// in words an operator can act on: the server at host:port cannot be reached (and why),
// the database does not exist, or the server refused the login. Open calls it before
// looking at the schema, so a wrong DSN is never reported as a schema that is not migrated.
func CheckConnection(ctx context.Context, pool *pgxpool.Pool) error {
	err := pool.Ping(ctx)
	if err == nil {
		return nil
	}
	cc := pool.Config().ConnConfig
	addr := net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port)))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "3D000":
			return fmt.Errorf("database %q does not exist on PostgreSQL at %s: create it, then run `securepay migrate`", cc.Database, addr)
		case !connectionLost(err):
			return fmt.Errorf("PostgreSQL at %s refused the connection as user %q: %s (SQLSTATE %s)", addr, cc.User, pgErr.Message, pgErr.Code)
		}
	}
	if !connectionLost(err) {
		return fmt.Errorf("PostgreSQL at %s: %w", addr, err)
	}
	return &connectFailure{addr: addr, err: err}
}

// connectFailure is an unreachable database, named by address with the innermost cause
// (connection refused, no such host, a timeout) rather than pgx's whole chain, which
// repeats the user and database.
type connectFailure struct {
	addr string
	err  error
}

func (e *connectFailure) Error() string {
	var errno syscall.Errno
	var dnsErr *net.DNSError
	var netErr net.Error
	var reason string
	switch {
	case errors.As(e.err, &errno): // connection refused, no route to host
		reason = errno.Error()
	case errors.As(e.err, &dnsErr):
		reason = dnsErr.Error()
	case errors.As(e.err, &netErr) && netErr.Timeout():
		reason = "timed out"
	default:
		reason = e.err.Error()
	}
	return fmt.Sprintf("cannot connect to PostgreSQL at %s (%s)", e.addr, reason)
}

func (e *connectFailure) Unwrap() []error { return []error{eventstore.ErrUnavailable, e.err} }
