package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/internal/pgtest"
)

// The classification that decides between UNAVAILABLE (retry) and INTERNAL (our bug) for
// every store error the API sees.
func TestUnavailableClassifiesConnectionFailuresOnly(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"refused dial", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, true},
		{"reset", fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		{"eof mid-query", fmt.Errorf("append: %w", io.ErrUnexpectedEOF), true},
		{"conn closed", fmt.Errorf("append: %w", pgconn.ErrConnClosed), true},
		{"admin shutdown", &pgconn.PgError{Severity: "FATAL", Code: "57P01"}, true},
		{"crash shutdown", &pgconn.PgError{Severity: "FATAL", Code: "57P02"}, true},
		{"cannot connect now", &pgconn.PgError{Severity: "FATAL", Code: "57P03"}, true},
		{"connection exception", &pgconn.PgError{Severity: "FATAL", Code: "08006"}, true},
		{"unique violation", &pgconn.PgError{Severity: "ERROR", Code: "23505"}, false},
		{"syntax error", &pgconn.PgError{Severity: "ERROR", Code: "42601"}, false},
		{"caller canceled", fmt.Errorf("read: %w", context.Canceled), false},
		{"caller deadline", fmt.Errorf("read: %w", context.DeadlineExceeded), false},
		{"conflict", &eventstore.ConflictError{Stream: "s", Expected: eventstore.NoStream(), Actual: 1}, false},
		{"plain", errors.New("append: inserted 1 events, expected 2"), false},
	} {
		got := errors.Is(unavailable(tc.err), eventstore.ErrUnavailable)
		if got != tc.want {
			t.Errorf("%s (%v): ErrUnavailable = %v, want %v", tc.name, tc.err, got, tc.want)
		}
		if !errors.Is(unavailable(tc.err), tc.err) {
			t.Errorf("%s: the original error must stay in the chain", tc.name)
		}
	}
}

// A DSN pointing at nothing says where it tried and why, and is an outage, not a schema
// that is not migrated.
func TestOpenOnAnUnreachableServerSaysSo(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = Open(ctx, Config{DSN: "postgres://postgres@" + addr + "/postgres?sslmode=disable&connect_timeout=5"})
	if err == nil {
		t.Fatal("open on a port where nothing listens: want an error")
	}
	want := "cannot connect to PostgreSQL at " + addr + " (connection refused)"
	if !errors.Is(err, eventstore.ErrUnavailable) || errors.Is(err, ErrSchemaNotMigrated) || !strings.Contains(err.Error(), want) {
		t.Fatalf("open on a port where nothing listens: want %q wrapping ErrUnavailable, got %v", want, err)
	}
}

// A database that does not exist is named as such.
func TestOpenOnAMissingDatabaseSaysSo(t *testing.T) {
	u, err := url.Parse(pgtest.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/no_such_db_securepay"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = Open(ctx, Config{DSN: u.String()})
	if err == nil || !strings.Contains(err.Error(), `database "no_such_db_securepay" does not exist`) || errors.Is(err, ErrSchemaNotMigrated) {
		t.Fatalf("open of a missing database: want it named, got %v", err)
	}
}
