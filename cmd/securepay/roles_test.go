package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// servingRole creates a login role that owns nothing, as the README's operator set-up does,
// in the cluster of ownerDSN (a superuser DSN in tests), and returns its name and ownerDSN
// rewritten to log in as it. `securepay migrate --serve-role NAME` grants it the rest.
func servingRole(t *testing.T, ownerDSN string) (role, dsn string) {
	t.Helper()
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	role = "sp_serve_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, ownerDSN)
	if err != nil {
		t.Fatalf("connect to create the serving role: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE ROLE "+role+" LOGIN"); err != nil {
		t.Fatalf("create the serving role: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, ownerDSN)
		if err != nil {
			return
		}
		defer c.Close(ctx)
		// Its membership of the app role goes with it; it owns and holds nothing else.
		_, _ = c.Exec(ctx, "DROP ROLE IF EXISTS "+role)
	})
	u, err := url.Parse(ownerDSN)
	if err != nil {
		t.Fatalf("parse the DSN: %v", err)
	}
	u.User = url.User(role) // the test clusters trust loopback: no password
	return role, u.String()
}

// migrateForServing runs `securepay migrate` as the owner (ownerDSN) with --serve-role and
// returns the DSN serve logs in with.
func migrateForServing(t *testing.T, ownerDSN string, out io.Writer) string {
	t.Helper()
	role, dsn := servingRole(t, ownerDSN)
	if err := run(context.Background(), []string{"migrate", "--postgres-dsn", ownerDSN, "--serve-role", role}, out, io.Discard, noEnv); err != nil {
		t.Fatalf("securepay migrate --serve-role %s: %v", role, err)
	}
	return dsn
}

// TestServeRefusesALoginRoleThatCanRewriteTheLog: serve started with the migrating
// (superuser) DSN stops before it listens, and says how to fix it; migrate refuses to make
// the owner its own serving role. The full table of refused roles is in
// eventstore/postgres (TestCheckServingRoleRefuses).
func TestServeRefusesALoginRoleThatCanRewriteTheLog(t *testing.T) {
	owner := freshDatabase(t)
	var migrated strings.Builder
	_ = migrateForServing(t, owner, &migrated)
	if !strings.Contains(migrated.String(), "serve role sp_serve_") {
		t.Fatalf("migrate --serve-role: want the grant reported, got:\n%s", migrated.String())
	}
	certFile, keyFile := testCert(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, []string{"serve", "--listen", "127.0.0.1:0", "--postgres-dsn", owner, "--redis-addr", "127.0.0.1:1",
		"--tls-cert", certFile, "--tls-key", keyFile}, io.Discard, io.Discard, noEnv)
	for _, want := range []string{"could rewrite the event log", "login role postgres", "is a superuser", "securepay migrate --serve-role"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("serve as the superuser: want a refusal saying %q, got %v", want, err)
		}
	}
	u, _ := url.Parse(owner)
	err = run(ctx, []string{"migrate", "--postgres-dsn", owner, "--serve-role", u.User.Username()}, io.Discard, io.Discard, noEnv)
	if err == nil || !strings.Contains(err.Error(), "is the role running migrate") {
		t.Fatalf("migrate --serve-role <the migrating role>: want it refused, got %v", err)
	}
}
