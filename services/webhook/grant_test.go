package webhook_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/securepay/securepay/internal/pgtest"
	"github.com/securepay/securepay/services/webhook"
)

// TestGrantReadIsReadOnly: a dispatcher role given GrantRead finds an account's endpoints
// (and opens their secrets with the key), and cannot add, change or delete one.
func TestGrantReadIsReadOnly(t *testing.T) {
	ctx := context.Background()
	owner := pgtest.Pool(t, 4)
	schema := pgtest.Schema(t, "webhooks_grant")
	if err := webhook.MigratePostgres(ctx, owner, schema); err != nil {
		t.Fatal(err)
	}
	var b [5]byte
	_, _ = rand.Read(b[:])
	role := "sp_dispatch_" + hex.EncodeToString(b[:])
	if err := webhook.GrantRead(ctx, owner, schema, role); err == nil || !strings.Contains(err.Error(), "CREATE ROLE") {
		t.Fatalf("a role that does not exist: %v, want a refusal saying to create it", err)
	}
	if _, err := owner.Exec(ctx, "CREATE ROLE "+role+" LOGIN"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The schema (and its grants) is dropped by pgtest.Schema's clean-up, which runs
		// after this one: revoke first, so the role can go.
		_, _ = owner.Exec(context.Background(), "DROP OWNED BY "+role)
		_, _ = owner.Exec(context.Background(), "DROP ROLE IF EXISTS "+role)
	})
	for range 2 { // idempotent: migrate runs at every deploy
		if err := webhook.GrantRead(ctx, owner, schema, role); err != nil {
			t.Fatal(err)
		}
	}
	ownerStore, err := webhook.OpenPostgres(ctx, owner, schema)
	if err != nil {
		t.Fatal(err)
	}
	key := testKey(t, keyA)
	rec, secret, err := newRegistry(t, ownerStore, key, 0).Register(ctx, "acct", "https://hooks.example/d", nil, "alice")
	if err != nil {
		t.Fatal(err)
	}

	u, err := url.Parse(pgtest.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role) // the test cluster trusts loopback
	pool, err := pgxpool.New(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	st, err := webhook.OpenPostgres(ctx, pool, schema)
	if err != nil {
		t.Fatal(err)
	}
	reg := newRegistry(t, st, key, 0)
	eps, err := reg.Endpoints(ctx, "acct")
	if err != nil || len(eps) != 1 || webhook.SecretText(eps[0].Secret) != secret {
		t.Fatalf("the dispatcher role's lookup: %+v, %v", eps, err)
	}
	if _, _, err := reg.Register(ctx, "acct", "https://hooks.example/e", nil, "mallory"); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("the dispatcher role registers: %v, want permission denied", err)
	}
	if _, _, err := reg.Rotate(ctx, rec.ID); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("the dispatcher role rotates: %v, want permission denied", err)
	}
	if _, err := reg.Delete(ctx, rec.ID); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("the dispatcher role deletes: %v, want permission denied", err)
	}
}
