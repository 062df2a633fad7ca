package webhook_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/securepay/securepay/internal/pgtest"
	"github.com/securepay/securepay/services/dispatch"
	"github.com/securepay/securepay/services/webhook"
)

func testKey(t testing.TB, material string) *webhook.Key {
	t.Helper()
	k, err := webhook.NewKey([]byte(material))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

const keyA = "webhook-test-key-A-0123456789abcdefghijklmnop"

// backend is a Store under test, and how to read its raw rows (PostgreSQL only).
type backend struct {
	name  string
	store webhook.Store
	raw   func(t *testing.T, id string) (sealed []byte, keyID string)
}

// backends are the two stores: every registry test runs against both, PostgreSQL being
// the one `securepay serve` uses (SECUREPAY_TEST_POSTGRES_DSN; missing is a failure).
func backends(t *testing.T) []backend {
	t.Helper()
	return []backend{
		{name: "memory", store: webhook.NewMemoryStore()},
		pgBackend(t),
	}
}

// pgStore is a migrated PostgreSQL store in a schema of the test's own, and its pool.
func pgStore(t testing.TB) *webhook.PostgresStore {
	st, _, _ := pgStoreSchema(t)
	return st
}

func pgStoreSchema(t testing.TB) (*webhook.PostgresStore, *pgxpool.Pool, string) {
	t.Helper()
	ctx := context.Background()
	pool := pgtest.Pool(t, 8)
	schema := pgtest.Schema(t, "webhooks")
	if err := webhook.MigratePostgres(ctx, pool, schema); err != nil {
		t.Fatal(err)
	}
	// Migrating twice changes nothing (securepay migrate runs on every deploy).
	if err := webhook.MigratePostgres(ctx, pool, schema); err != nil {
		t.Fatalf("second migration: %v", err)
	}
	st, err := webhook.OpenPostgres(ctx, pool, schema)
	if err != nil {
		t.Fatal(err)
	}
	return st, pool, schema
}

func pgBackend(t *testing.T) backend {
	t.Helper()
	ctx := context.Background()
	st, pool, schema := pgStoreSchema(t)
	return backend{name: "postgres", store: st, raw: func(t *testing.T, id string) ([]byte, string) {
		t.Helper()
		var sealed []byte
		var keyID string
		if err := pool.QueryRow(ctx, `SELECT secret_sealed, key_id FROM `+pgx.Identifier{schema, "endpoints"}.Sanitize()+` WHERE id = $1`, id).Scan(&sealed, &keyID); err != nil {
			t.Fatalf("read the raw row of %s: %v", id, err)
		}
		return sealed, keyID
	}}
}

func newRegistry(t *testing.T, st webhook.Store, key *webhook.Key, max int) *webhook.Registry {
	t.Helper()
	r, err := webhook.NewRegistry(webhook.Config{Store: st, Key: key, MaxPerAccount: max})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRegistryRoundTrip: register, list, get, rotate, delete, and what the dispatcher
// sees after each (Endpoints), on both stores.
func TestRegistryRoundTrip(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			reg := newRegistry(t, b.store, testKey(t, keyA), 3)
			rec, secret, err := reg.Register(ctx, "acct-1", "https://hooks.example/a", []string{"ledger.account.debited.v1", "ledger.account.credited.v1"}, "alice")
			if err != nil {
				t.Fatal(err)
			}
			raw, err := webhook.ParseSecret(secret)
			if err != nil {
				t.Fatalf("the secret shown, %q: %v", secret, err)
			}
			if !strings.HasPrefix(rec.ID, "we_") || rec.Owner != "alice" || rec.AccountID != "acct-1" {
				t.Fatalf("registered %+v", rec)
			}
			if want := []string{"ledger.account.credited.v1", "ledger.account.debited.v1"}; !slices.Equal(rec.EventTypes, want) {
				t.Fatalf("event types %v, want them sorted: %v", rec.EventTypes, want)
			}
			all, _, err := reg.Register(ctx, "acct-1", "http://127.0.0.1:9/all", nil, "alice")
			if err != nil {
				t.Fatal(err)
			}

			list, err := reg.List(ctx, "acct-1")
			if err != nil {
				t.Fatal(err)
			}
			if len(list) != 2 || list[0].ID != rec.ID || list[1].ID != all.ID {
				t.Fatalf("list: %+v, want %s then %s", list, rec.ID, all.ID)
			}
			got, err := reg.Get(ctx, rec.ID)
			if err != nil || got.URL != "https://hooks.example/a" || !got.CreatedAt.Equal(rec.CreatedAt) {
				t.Fatalf("get: %+v, %v", got, err)
			}
			if other, err := reg.List(ctx, "acct-2"); err != nil || len(other) != 0 {
				t.Fatalf("another account's list: %+v, %v", other, err)
			}

			eps, err := reg.Endpoints(ctx, "acct-1")
			if err != nil {
				t.Fatal(err)
			}
			if len(eps) != 2 || eps[0].ID != rec.ID || !bytes.Equal(eps[0].Secret, raw) || eps[0].URL != rec.URL || len(eps[1].EventTypes) != 0 {
				t.Fatalf("dispatcher sees %+v", eps)
			}
			if !eps[0].Wants("ledger.account.credited.v1") || eps[0].Wants("ledger.account.frozen.v1") || !eps[1].Wants("ledger.account.frozen.v1") {
				t.Fatalf("subscriptions: %+v", eps)
			}
			// The cache hands out copies: a caller scribbling on its answer changes nothing.
			eps[0].Secret[0] ^= 0xff
			if again, _ := reg.Endpoints(ctx, "acct-1"); !bytes.Equal(again[0].Secret, raw) {
				t.Fatal("a caller changed the cached secret")
			}

			// The contract with receivers: the text they were shown verifies what the
			// dispatcher signs with the secret the Directory hands it.
			body, at := []byte(`{"id":"e1"}`), time.Now()
			if err := dispatch.Verify(raw, dispatch.Sign(eps[0].Secret, at, body), body, at, time.Minute); err == nil {
				t.Fatal("a signature made with a secret the caller altered verified")
			}
			fresh, _ := reg.Endpoints(ctx, "acct-1")
			if err := dispatch.Verify(raw, dispatch.Sign(fresh[0].Secret, at, body), body, at, time.Minute); err != nil {
				t.Fatalf("the receiver's secret does not verify the dispatcher's signature: %v", err)
			}

			rotated, secret2, err := reg.Rotate(ctx, rec.ID)
			if err != nil {
				t.Fatal(err)
			}
			raw2, _ := webhook.ParseSecret(secret2)
			if secret2 == secret || bytes.Equal(raw, raw2) || rotated.RotatedAt.Before(rec.RotatedAt) {
				t.Fatalf("rotation kept the secret or went back in time: %+v", rotated)
			}
			if eps, _ := reg.Endpoints(ctx, "acct-1"); !bytes.Equal(eps[0].Secret, raw2) {
				t.Fatal("after RotateSecret the dispatcher still signs with the old secret")
			}

			del, err := reg.Delete(ctx, rec.ID)
			if err != nil || del.ID != rec.ID {
				t.Fatalf("delete: %+v, %v", del, err)
			}
			for _, op := range []func() error{
				func() error { _, err := reg.Get(ctx, rec.ID); return err },
				func() error { _, err := reg.Delete(ctx, rec.ID); return err },
				func() error { _, _, err := reg.Rotate(ctx, rec.ID); return err },
			} {
				if err := op(); !errors.Is(err, webhook.ErrNotFound) {
					t.Fatalf("after delete: %v, want ErrNotFound", err)
				}
			}
			if eps, _ := reg.Endpoints(ctx, "acct-1"); len(eps) != 1 || eps[0].ID != all.ID {
				t.Fatalf("after delete the dispatcher sees %+v", eps)
			}
		})
	}
}

// TestRegistryRefusals: each bad input is refused with what to do, and leaves the registry
// as it was.
func TestRegistryRefusals(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			reg := newRegistry(t, b.store, testKey(t, keyA), 2)
			if _, _, err := reg.Register(ctx, "acct", "https://hooks.example/1", nil, "alice"); err != nil {
				t.Fatal(err)
			}
			cases := []struct {
				name, account, url string
				types              []string
				wantErr            error
				wantMsg            string
			}{
				{"plain http to a public host", "acct", "http://hooks.example/x", nil, nil, "http is accepted only for a loopback host"},
				{"user info", "acct", "https://user:pw@hooks.example/x", nil, nil, "must not carry a user name or password"},
				{"user only", "acct", "https://user@hooks.example/x", nil, nil, "must not carry a user name or password"},
				{"ftp", "acct", "ftp://hooks.example/x", nil, nil, "must use https, not ftp"},
				{"relative", "acct", "/hooks", nil, nil, "must be an absolute URL"},
				{"no host", "acct", "https:///hooks", nil, nil, "must name a host"},
				{"fragment", "acct", "https://hooks.example/x#frag", nil, nil, "#fragment"},
				{"space", "acct", "https://hooks.example/a b", nil, nil, "spaces or control characters"},
				{"too long", "acct", "https://hooks.example/" + strings.Repeat("a", 2048), nil, nil, "at most 2048 characters"},
				{"empty", "acct", "", nil, nil, "url is required"},
				{"unknown type", "acct", "https://hooks.example/t", []string{"ledger.payment.captured.v1"}, nil, "is not a notification event type; known ones are"},
				{"repeated type", "acct", "https://hooks.example/t", []string{"ledger.account.debited.v1", "ledger.account.debited.v1"}, nil, "twice"},
				{"bad account", "acct/../x", "https://hooks.example/t", nil, nil, "account_id may contain only"},
				{"same url again", "acct", "https://hooks.example/1", nil, webhook.ErrDuplicate, ""},
			}
			for _, c := range cases {
				_, secret, err := reg.Register(ctx, c.account, c.url, c.types, "alice")
				switch {
				case err == nil:
					t.Errorf("%s: registered (secret %d chars), want a refusal", c.name, len(secret))
				case c.wantErr != nil && !errors.Is(err, c.wantErr):
					t.Errorf("%s: %v, want %v", c.name, err, c.wantErr)
				case c.wantMsg != "" && !strings.Contains(err.Error(), c.wantMsg):
					t.Errorf("%s: %q, want it to say %q", c.name, err, c.wantMsg)
				}
			}
			if _, _, err := reg.Register(ctx, "acct", "https://hooks.example/2", nil, "alice"); err != nil {
				t.Fatal(err)
			}
			if _, _, err := reg.Register(ctx, "acct", "https://hooks.example/3", nil, "alice"); !errors.Is(err, webhook.ErrLimit) {
				t.Fatalf("a third endpoint with a limit of 2: %v, want ErrLimit", err)
			}
			list, err := reg.List(ctx, "acct")
			if err != nil || len(list) != 2 {
				t.Fatalf("after the refusals the account has %d endpoints (%v), want the 2 accepted", len(list), err)
			}
			for _, id := range []string{"we_0", "../etc", "", "we_" + strings.Repeat("A", 32)} {
				if _, err := reg.Get(ctx, id); !errors.Is(err, webhook.ErrNotFound) {
					t.Errorf("Get(%q): %v, want ErrNotFound", id, err)
				}
			}
		})
	}
}

// TestRegistryLimitHoldsUnderConcurrency: registrations racing for one account never
// exceed the limit (PostgreSQL serialises them per account).
func TestRegistryLimitHoldsUnderConcurrency(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			const limit, racers = 3, 12
			reg := newRegistry(t, b.store, testKey(t, keyA), limit)
			var wg sync.WaitGroup
			errs := make([]error, racers)
			for i := range racers {
				wg.Go(func() {
					_, _, errs[i] = reg.Register(ctx, "hot", fmt.Sprintf("https://hooks.example/%d", i), nil, "alice")
				})
			}
			wg.Wait()
			ok := 0
			for _, err := range errs {
				switch {
				case err == nil:
					ok++
				case !errors.Is(err, webhook.ErrLimit):
					t.Errorf("racer: %v, want success or ErrLimit", err)
				}
			}
			list, _ := reg.List(ctx, "hot")
			if ok != limit || len(list) != limit {
				t.Fatalf("%d registrations succeeded and %d are stored, want exactly %d", ok, len(list), limit)
			}
		})
	}
}

// TestSecretsAreSealedAtRest reads the raw PostgreSQL row: neither the secret's bytes nor
// its text are there, only AES-GCM output under the key's id; a server with another key
// refuses to start (Check) and cannot hand the dispatcher a secret (Endpoints), both
// saying which key is wrong.
func TestSecretsAreSealedAtRest(t *testing.T) {
	ctx := context.Background()
	b := pgBackend(t)
	keyOne := testKey(t, keyA)
	reg := newRegistry(t, b.store, keyOne, 0)
	rec, secret, err := reg.Register(ctx, "acct", "https://hooks.example/sealed", nil, "alice")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := webhook.ParseSecret(secret)
	sealed, keyID := b.raw(t, rec.ID)
	if bytes.Contains(sealed, raw) || bytes.Contains(sealed, []byte(secret)) || bytes.Contains(sealed, []byte(strings.TrimPrefix(secret, webhook.SecretPrefix))) {
		t.Fatalf("the stored row holds the secret in clear: %x", sealed)
	}
	if keyID != keyOne.ID() || len(sealed) < len(raw)+16 {
		t.Fatalf("row: key id %q (want %q), %d sealed bytes", keyID, keyOne.ID(), len(sealed))
	}
	if err := reg.Check(ctx); err != nil {
		t.Fatalf("Check with the right key: %v", err)
	}

	other := newRegistry(t, b.store, testKey(t, "another-webhook-key-9876543210zyxwvutsrq"), 0)
	err = other.Check(ctx)
	if !errors.Is(err, webhook.ErrKeyMismatch) || !strings.Contains(err.Error(), "--webhook-key-file") {
		t.Fatalf("Check with another key: %v, want ErrKeyMismatch naming --webhook-key-file", err)
	}
	_, err = other.Endpoints(ctx, "acct")
	if !errors.Is(err, webhook.ErrKeyMismatch) || !strings.Contains(err.Error(), keyOne.ID()) || !strings.Contains(err.Error(), rec.ID) {
		t.Fatalf("Endpoints with another key: %v, want ErrKeyMismatch naming the endpoint and the key it was sealed under", err)
	}
	if strings.Contains(err.Error(), secret) {
		t.Fatal("the error shows the secret")
	}
	// Rotating under the new key moves the endpoint to it.
	if _, _, err := other.Rotate(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
	if err := other.Check(ctx); err != nil {
		t.Fatalf("after rotation under the new key: %v", err)
	}
}

// TestSealedSecretBoundToItsEndpoint: a sealed secret copied onto another endpoint's row
// (by someone with write access to the table) does not open there.
func TestSealedSecretBoundToItsEndpoint(t *testing.T) {
	ctx := context.Background()
	st := webhook.NewMemoryStore()
	key := testKey(t, keyA)
	reg := newRegistry(t, st, key, 0)
	a, _, _ := reg.Register(ctx, "acct-a", "https://hooks.example/a", nil, "alice")
	b, _, _ := reg.Register(ctx, "acct-b", "https://hooks.example/b", nil, "bob")
	if _, err := st.SetSecret(ctx, b.ID, a.Sealed, a.KeyID, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Endpoints(ctx, "acct-b"); err == nil || !strings.Contains(err.Error(), "does not open") {
		t.Fatalf("a secret moved to another endpoint: %v, want a refusal", err)
	}
}

func TestKeyNeedsEnoughMaterial(t *testing.T) {
	if _, err := webhook.NewKey([]byte("short")); err == nil || !strings.Contains(err.Error(), "/dev/urandom") {
		t.Fatalf("a 5-byte key: %v, want a refusal saying how to make one", err)
	}
	a, b := testKey(t, keyA), testKey(t, keyA)
	if a.ID() != b.ID() || a.ID() == testKey(t, keyA+"x").ID() {
		t.Fatal("key ids must be a function of the key")
	}
}

func FuzzParseSecret(f *testing.F) {
	f.Add("whsec_" + strings.Repeat("A", 43))
	f.Add("whsec_")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		raw, err := webhook.ParseSecret(s)
		if err == nil && webhook.SecretText(raw) != s {
			t.Fatalf("%q parsed to bytes that print as %q", s, webhook.SecretText(raw))
		}
	})
}
