package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/securepay/securepay/eventstore"
)

// unavailable wraps err with eventstore.ErrUnavailable when it says the database could not
// be reached (refused or broken connection, a server shutting down), so that callers above
// the store test one sentinel instead of pgx's types. Other errors, and errors that are
// already classified, pass as they are. A context that ended is the caller's doing, not
// the store's, and is never reported as an outage.
func unavailable(err error) error {
	if err == nil || errors.Is(err, eventstore.ErrUnavailable) || !connectionLost(err) {
		return err
	}
	return fmt.Errorf("%w: %w", eventstore.ErrUnavailable, err)
}

// connectionLost reports whether err is a connection-level failure. PostgreSQL's own
// errors count only in class 08 (connection exception) and 57P01..57P03 (admin or crash
// shutdown, cannot connect now); a constraint or syntax error is a bug or a refusal, and a
// retry would fail the same way.
func connectionLost(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch code := pgErr.Code; {
		case strings.HasPrefix(code, "08"), code == "57P01", code == "57P02", code == "57P03":
			return true
		default:
			return false
		}
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &connectErr), errors.As(err, &netErr),
		errors.Is(err, pgconn.ErrConnClosed), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return true
	}
	// pgx says a statement is safe to retry when it never reached the server, which, once
	// the context is ruled out above, means the connection was not usable. Its pool's
	// "closed pool" is our own Close and stays an ordinary error.
	return pgconn.SafeToRetry(err) || strings.Contains(err.Error(), "conn closed")
}

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
