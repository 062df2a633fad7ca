// Package pgerr classifies PostgreSQL driver errors for every package that talks to
// PostgreSQL (the event store, the views), so that one rule decides what an outage is.
package pgerr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/securepay/securepay/eventstore"
)

// Unavailable wraps err with eventstore.ErrUnavailable when it says the database could not
// be reached (refused or broken connection, a server shutting down), so that callers above
// the store test one sentinel instead of pgx's types. Other errors, and errors that are
// already classified, pass as they are. A context that ended is the caller's doing, not
// the store's, and is never reported as an outage.
func Unavailable(err error) error {
	if err == nil || errors.Is(err, eventstore.ErrUnavailable) || !ConnectionLost(err) {
		return err
	}
	return fmt.Errorf("%w: %w", eventstore.ErrUnavailable, err)
}

// ConnectionLost reports whether err is a connection-level failure. PostgreSQL's own
// errors count only in class 08 (connection exception) and 57P01..57P03 (admin or crash
// shutdown, cannot connect now); a constraint or syntax error is a bug or a refusal, and a
// retry would fail the same way.
func ConnectionLost(err error) bool {
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
