package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/internal/pgtest"
)

// roleEnv is one test's own database with the production role set-up: an owner (not a
// superuser) that migrated it, an app role, and a serving login role granted by
// GrantServing. Role names are cluster-wide, so each carries the test's random suffix.
type roleEnv struct {
	super                   string // the cluster's superuser DSN, on this database
	db, owner, app, serving string
	schema, views           string
}

func newRoleEnv(t *testing.T) *roleEnv {
	t.Helper()
	ctx := testContext(t)
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	sfx := hex.EncodeToString(b[:])
	e := &roleEnv{db: "sp_roles_" + sfx, owner: "sp_owner_" + sfx, app: "sp_app_" + sfx, serving: "sp_serve_" + sfx,
		schema: DefaultSchema, views: "securepay_views"}
	clusterDSN := pgtest.DSN(t)
	e.super = withUser(t, clusterDSN, "", e.db)
	superExec(t, clusterDSN,
		"CREATE ROLE "+e.owner+" LOGIN CREATEROLE",
		"CREATE ROLE "+e.serving+" LOGIN",
		"CREATE DATABASE "+e.db+" OWNER "+e.owner)
	t.Cleanup(func() {
		superExecNoFail(t, clusterDSN, "DROP DATABASE IF EXISTS "+e.db+" WITH (FORCE)")
		for _, r := range []string{e.serving, e.app, e.owner} {
			superExecNoFail(t, clusterDSN, "DROP ROLE IF EXISTS "+r)
		}
	})
	owner := e.pool(t, e.owner)
	if _, err := Migrate(ctx, owner, e.schema, e.app); err != nil {
		t.Fatalf("migrate as the owner %s: %v", e.owner, err)
	}
	// A stand-in for the views' schema: derived tables the owner created.
	if _, err := owner.Exec(ctx, "CREATE SCHEMA "+e.views+"; CREATE TABLE "+e.views+".balances (id text PRIMARY KEY, posted bigint)"); err != nil {
		t.Fatal(err)
	}
	if err := GrantServing(ctx, owner, ServingGrants{Schema: e.schema, AppRole: e.app, LoginRole: e.serving, ViewSchemas: []string{e.views}}); err != nil {
		t.Fatalf("grant serving to %s: %v", e.serving, err)
	}
	// Twice: migrate runs at every upgrade, and must not fail the second time.
	if err := GrantServing(ctx, owner, ServingGrants{Schema: e.schema, AppRole: e.app, LoginRole: e.serving, ViewSchemas: []string{e.views}}); err != nil {
		t.Fatalf("grant serving again (must be idempotent): %v", err)
	}
	return e
}

// withUser returns dsn logging in as user ("" keeps the DSN's) on database db. The test
// cluster trusts loopback connections, so no password is needed.
func withUser(t testing.TB, dsn, user, db string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("parse %s: %v", pgtest.Env, err)
	}
	if user != "" {
		u.User = url.User(user)
	}
	u.Path = "/" + db
	return u.String()
}

func (e *roleEnv) dsn(t testing.TB, user string) string { return withUser(t, e.super, user, e.db) }

func (e *roleEnv) pool(t testing.TB, user string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(testContext(t), e.dsn(t, user))
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(p.Close)
	return p
}

func superExec(t testing.TB, dsn string, stmts ...string) {
	t.Helper()
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect as the superuser: %v", err)
	}
	defer conn.Close(ctx)
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

func superExecNoFail(t testing.TB, dsn, stmt string) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Logf("clean-up: connect: %v", err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, stmt); err != nil {
		t.Logf("clean-up: %s: %v", stmt, err)
	}
}

// logState is what an attack must not change: every event's bytes and hashes, and the
// triggers' state.
func logState(t testing.TB, dsn, schema string) string {
	t.Helper()
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var s string
	if err := conn.QueryRow(ctx, `SELECT
		(SELECT string_agg(position || ':' || encode(data, 'hex') || ':' || encode(prev_hash, 'hex') || ':' || encode(hash, 'hex'), ',' ORDER BY position) FROM `+schema+`.events)
		|| '|' || (SELECT string_agg(tgname || '=' || tgenabled::text, ',' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = '`+schema+`.events'::regclass)
		|| '|' || (SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = '`+schema+`.events'::regclass AND attnum > 0 AND NOT attisdropped)
		|| '|' || (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = '`+schema+`.events'::regclass)`).Scan(&s); err != nil {
		t.Fatalf("read the log's state: %v", err)
	}
	return s
}

// TestServingRoleCannotRewriteTheLog attacks the log as the serving login role, the
// credentials a compromised server holds: every way to change, hide or drop an event is
// refused by PostgreSQL, while appending through the store still works.
func TestServingRoleCannotRewriteTheLog(t *testing.T) {
	e := newRoleEnv(t)
	ctx := testContext(t)
	store, err := Open(ctx, Config{DSN: e.dsn(t, e.serving), Schema: e.schema, AppRole: e.app, MaxConns: 4})
	if err != nil {
		t.Fatalf("open the store as the serving role: %v", err)
	}
	t.Cleanup(func() { _ = store.Close() })
	if err := store.CheckServingRole(ctx); err != nil {
		t.Fatalf("CheckServingRole of a correctly granted serving role: want nil, got %v", err)
	}
	// Positive control: the role does what serving needs, so the refusals below are the
	// grants at work and not a broken connection.
	if _, err := store.Append(ctx, eventstore.StreamAppend{Stream: "account-a", Expected: eventstore.NoStream(),
		Events: []eventstore.EventData{event("e1"), event("e2")}}); err != nil {
		t.Fatalf("append as the serving role: %v", err)
	}
	if err := store.SaveSnapshot(ctx, eventstore.Snapshot{Stream: "account-a", Version: 2, Schema: "x", State: []byte("s")}); err != nil {
		t.Fatalf("save a snapshot as the serving role: %v", err)
	}
	if _, err := store.Pool().Exec(ctx, "INSERT INTO "+e.views+".balances VALUES ('a', 1) ON CONFLICT (id) DO UPDATE SET posted = 2"); err != nil {
		t.Fatalf("write a view as the serving role: %v", err)
	}
	// A table the owner creates in the views' schema later (a rebuild's new copy) is
	// writable by the server too, through the default privileges.
	if _, err := e.pool(t, e.owner).Exec(ctx, "CREATE TABLE "+e.views+".balances_shadow (LIKE "+e.views+".balances INCLUDING ALL)"); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Pool().Exec(ctx, "INSERT INTO "+e.views+".balances_shadow VALUES ('a', 1)"); err != nil {
		t.Fatalf("write a view table the owner created after migrate: %v", err)
	}
	before := logState(t, e.super, e.schema)

	ev := e.schema + ".events"
	fn := e.schema + ".events_refuse_change"
	for _, tc := range []struct {
		name  string
		setup []string // each must succeed first (a role switch the attacker is allowed)
		do    string   // must be refused
		want  string   // in the error
	}{
		{"update data", nil, "UPDATE " + ev + " SET data = '\\x00'::bytea WHERE position = 1", "permission denied"},
		{"write the chain fields", nil, "UPDATE " + ev + " SET hash = prev_hash, prev_hash = hash", "permission denied"},
		{"delete the newest event", nil, "DELETE FROM " + ev + " WHERE position = 2", "permission denied"},
		{"truncate", nil, "TRUNCATE " + ev, "permission denied"},
		{"disable the update trigger", nil, "ALTER TABLE " + ev + " DISABLE TRIGGER events_no_update_delete", "must be owner"},
		{"disable all triggers", nil, "ALTER TABLE " + ev + " DISABLE TRIGGER ALL", "must be owner"},
		{"drop the trigger", nil, "DROP TRIGGER events_no_update_delete ON " + ev, "must be owner"},
		{"replace the trigger function", nil, "CREATE OR REPLACE FUNCTION " + fn + "() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$", "permission denied"},
		{"alter table add column", nil, "ALTER TABLE " + ev + " ADD COLUMN x int", "must be owner"},
		{"alter table drop constraint", nil, "ALTER TABLE " + ev + " DROP CONSTRAINT events_hash_size", "must be owner"},
		{"take ownership", nil, "ALTER TABLE " + ev + " OWNER TO " + e.serving, "must be owner"},
		{"drop the table", nil, "DROP TABLE " + ev, "must be owner"},
		{"drop the schema", nil, "DROP SCHEMA " + e.schema + " CASCADE", "must be owner"},
		{"rename the table", nil, "ALTER TABLE " + ev + " RENAME TO events_old", "must be owner"},
		{"lock out the writers", []string{"BEGIN"}, "LOCK TABLE " + ev + " IN ACCESS EXCLUSIVE MODE", "permission denied"},
		{"create a table in the schema", nil, "CREATE TABLE " + e.schema + ".events2 (x int)", "permission denied"},
		{"create a function in the schema", nil, "CREATE FUNCTION " + e.schema + ".f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "permission denied"},
		{"row security policy", nil, "CREATE POLICY p ON " + ev + " USING (false)", "must be owner"},
		{"replication role skips triggers", nil, "SET session_replication_role = replica", "permission denied"},
		{"replication role through set_config", nil, "SELECT set_config('session_replication_role', 'replica', false)", "permission denied"},
		{"set role to the owner", nil, "SET ROLE " + e.owner, "permission denied"},
		{"set role to the superuser", nil, "SET ROLE postgres", "permission denied"},
		{"set session authorization", nil, "SET SESSION AUTHORIZATION " + e.owner, "permission denied"},
		{"set role app, then update", []string{"SET ROLE " + e.app}, "UPDATE " + ev + " SET data = data", "permission denied"},
		{"set role app, then truncate", []string{"SET ROLE " + e.app}, "TRUNCATE " + ev, "permission denied"},
		{"set role app, then disable trigger", []string{"SET ROLE " + e.app}, "ALTER TABLE " + ev + " DISABLE TRIGGER ALL", "must be owner"},
		{"reset role, then delete", []string{"SET ROLE " + e.app, "RESET ROLE"}, "DELETE FROM " + ev, "permission denied"},
		{"set local role in a transaction, then update", []string{"BEGIN", "SET LOCAL ROLE " + e.app}, "UPDATE " + ev + " SET hash = hash", "permission denied"},
		{"grant itself the owner", nil, "GRANT " + e.owner + " TO " + e.serving, "must have admin option"},
		{"become superuser", nil, "ALTER ROLE " + e.serving + " SUPERUSER", "must be superuser"},
		{"grant itself BYPASSRLS", nil, "ALTER ROLE " + e.serving + " BYPASSRLS", "must be superuser"},
		// GRANT by a non-owner only warns that nothing was granted; the UPDATE after it fails.
		{"grant itself UPDATE, then update", []string{"GRANT UPDATE ON " + ev + " TO " + e.serving}, "UPDATE " + ev + " SET data = data", "permission denied"},
		{"fake a migration", nil, "INSERT INTO " + e.schema + ".schema_migrations (version, name, checksum) VALUES (99, 'x', 'y')", "permission denied"},
		{"drop a migration", nil, "DELETE FROM " + e.schema + ".schema_migrations", "permission denied"},
		{"alter the snapshots table", nil, "ALTER TABLE " + e.schema + ".snapshots ADD COLUMN x int", "must be owner"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := pgx.Connect(ctx, e.dsn(t, e.serving))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			for _, s := range tc.setup {
				if _, err := conn.Exec(ctx, s); err != nil {
					t.Fatalf("set-up %q as the serving role: %v", s, err)
				}
			}
			_, err = conn.Exec(ctx, tc.do)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "42501" || !strings.Contains(pgErr.Message, tc.want) {
				t.Fatalf("%s as the serving role: want insufficient_privilege (42501) with %q, got %v", tc.do, tc.want, err)
			}
		})
	}
	if after := logState(t, e.super, e.schema); after != before {
		t.Fatalf("the log changed under the serving role's attacks:\nbefore %s\nafter  %s", before, after)
	}
}

// TestCheckServingRoleRefuses: serve's start-up check names every login role that could
// rewrite the log, and how to fix it.
func TestCheckServingRoleRefuses(t *testing.T) {
	e := newRoleEnv(t)
	ctx := testContext(t)
	clusterDSN := pgtest.DSN(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	sfx := hex.EncodeToString(b[:])
	for _, tc := range []struct {
		name  string
		role  string   // "" means a fresh role named after the case
		setup []string // as the superuser; {{role}} is the case's role
		want  []string
	}{
		{name: "the serving role", role: e.serving},
		{name: "superuser", role: "postgres", want: []string{"it is a superuser", "NOSUPERUSER"}},
		{name: "the owner", role: e.owner, want: []string{"owns schema securepay", "owns table securepay.events", "owns function securepay.events_refuse_change", "run migrate as another role"}},
		{name: "member of the owner", setup: []string{"GRANT " + e.app + " TO {{role}}", "GRANT " + e.owner + " TO {{role}}"},
			want: []string{"it is a member of " + e.owner + ", which owns table securepay.events", "REVOKE " + e.owner + " FROM"}},
		{name: "member of the owner without inherit", setup: []string{"ALTER ROLE {{role}} NOINHERIT", "GRANT " + e.app + " TO {{role}}", "GRANT " + e.owner + " TO {{role}}"},
			want: []string{"it is a member of " + e.owner}},
		{name: "member of a superuser role", setup: []string{"GRANT " + e.app + " TO {{role}}", "GRANT postgres TO {{role}}"},
			want: []string{"member role postgres (reachable with SET ROLE) is a superuser", "REVOKE postgres FROM"}},
		{name: "bypassrls", setup: []string{"ALTER ROLE {{role}} BYPASSRLS", "GRANT " + e.app + " TO {{role}}"}, want: []string{"BYPASSRLS", "NOBYPASSRLS"}},
		{name: "member of pg_execute_server_program", setup: []string{"GRANT " + e.app + " TO {{role}}", "GRANT pg_execute_server_program TO {{role}}"},
			want: []string{"it is a member of pg_execute_server_program", "REVOKE pg_execute_server_program FROM"}},
		{name: "member of pg_write_server_files", setup: []string{"GRANT " + e.app + " TO {{role}}", "GRANT pg_write_server_files TO {{role}}"},
			want: []string{"it is a member of pg_write_server_files"}},
		{name: "createrole", setup: []string{"ALTER ROLE {{role}} CREATEROLE", "GRANT " + e.app + " TO {{role}}"}, want: []string{"CREATEROLE", "NOCREATEROLE"}},
		{name: "update granted on events", setup: []string{"GRANT " + e.app + " TO {{role}}", "GRANT UPDATE, DELETE ON securepay.events TO {{role}}"},
			want: []string{"it may UPDATE on securepay.events", "it may DELETE on securepay.events", "REVOKE UPDATE ON securepay.events FROM"}},
		{name: "truncate and trigger through the app role", setup: []string{"GRANT " + e.app + " TO {{role}}", "GRANT TRUNCATE, TRIGGER ON securepay.events TO " + e.app},
			want: []string{"it may TRUNCATE on securepay.events (through role " + e.app + ")", "it may TRIGGER"}},
		{name: "create in the schema", setup: []string{"GRANT " + e.app + " TO {{role}}", "GRANT CREATE ON SCHEMA securepay TO {{role}}"},
			want: []string{"it may CREATE in schema securepay", "REVOKE CREATE ON SCHEMA securepay FROM"}},
		{name: "not granted the app role", want: []string{"cannot serve", "securepay migrate --serve-role"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			role := tc.role
			if role == "" {
				role = "sp_case_" + sfx + "_" + strings.NewReplacer(" ", "_").Replace(tc.name)
				superExec(t, clusterDSN, "CREATE ROLE "+role+" LOGIN")
				t.Cleanup(func() {
					// Privileges granted to the role live in the test's database.
					superExecNoFail(t, e.super, "REVOKE ALL ON ALL TABLES IN SCHEMA securepay FROM "+role)
					superExecNoFail(t, e.super, "REVOKE ALL ON SCHEMA securepay FROM "+role)
					superExecNoFail(t, e.super, "REVOKE TRUNCATE, TRIGGER ON securepay.events FROM "+e.app)
					superExecNoFail(t, clusterDSN, "DROP ROLE IF EXISTS "+role)
				})
			}
			for _, s := range tc.setup {
				superExec(t, e.super, strings.ReplaceAll(s, "{{role}}", role))
			}
			pool := e.pool(t, role)
			err := checkServingRole(ctx, pool, e.schema, e.app)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("login role %s: want it accepted, got %v", role, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("login role %s: want serve refused (%q), got nil", role, tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("login role %s: want the refusal to say %q, got:\n%v", role, w, err)
				}
			}
		})
	}
}

// TestGrantServingRefusesUnsafeLoginRoles: migrate will not hand the serving grants to a
// role that would defeat them, nor to one that does not exist.
func TestGrantServingRefusesUnsafeLoginRoles(t *testing.T) {
	e := newRoleEnv(t)
	ctx := testContext(t)
	owner := e.pool(t, e.owner)
	for _, tc := range []struct{ role, want string }{
		{"sp_nobody_here", "does not exist: create it first"},
		{e.owner, "is the role running migrate"},
		{"postgres", "is a superuser"},
		{"Bad-Name", "must match"},
	} {
		err := GrantServing(ctx, owner, ServingGrants{Schema: e.schema, AppRole: e.app, LoginRole: tc.role})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("GrantServing to %q: want an error with %q, got %v", tc.role, tc.want, err)
		}
	}
}

// TestCheckRelayRole: serve relay's start-up check accepts a role GrantRelay made and
// nothing that could write the log, and says how to fix each refusal; GrantRelay refuses
// the roles GrantServing refuses.
func TestCheckRelayRole(t *testing.T) {
	e := newRoleEnv(t)
	ctx := testContext(t)
	clusterDSN := pgtest.DSN(t)
	owner := e.pool(t, e.owner)
	var b [4]byte
	_, _ = rand.Read(b[:])
	sfx := hex.EncodeToString(b[:])
	n := 0 // the next fresh role's number
	for _, tc := range []struct {
		name  string
		role  string   // "" means a fresh role named after the case
		grant bool     // GrantRelay to it first (twice: it must be idempotent)
		setup []string // as the superuser; {{role}} is the case's role
		want  []string
	}{
		{name: "granted by GrantRelay", grant: true},
		{name: "superuser", role: "postgres", want: []string{"it is a superuser", "serve relay must log in", "securepay migrate --relay-role ROLE"}},
		{name: "the owner", role: e.owner, want: []string{"owns table securepay.events"}},
		{name: "the serving role, which may append", role: e.serving,
			want: []string{"it may INSERT on securepay.events through its member role " + e.app, "REVOKE " + e.app + " FROM " + e.serving}},
		{name: "insert granted directly", grant: true, setup: []string{"GRANT INSERT ON securepay.events TO {{role}}"},
			want: []string{"it may INSERT on securepay.events (through role sp_relay_", "REVOKE INSERT ON securepay.events FROM sp_relay_"}},
		{name: "update on the snapshots", grant: true, setup: []string{"GRANT SELECT, UPDATE ON securepay.snapshots TO {{role}}"},
			want: []string{"it may SELECT on securepay.snapshots", "it may UPDATE on securepay.snapshots"}},
		{name: "create in the schema", grant: true, setup: []string{"GRANT CREATE ON SCHEMA securepay TO {{role}}"},
			want: []string{"it may CREATE in schema securepay"}},
		{name: "nothing granted", want: []string{"cannot read the event log", "USAGE on schema securepay: false", "securepay migrate --relay-role sp_relay_"}},
		{name: "schema but not the table", setup: []string{"GRANT USAGE ON SCHEMA securepay TO {{role}}"},
			want: []string{"cannot read the event log", "USAGE on schema securepay: true", "SELECT on its events and schema_migrations: false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			role := tc.role
			if role == "" {
				role = fmt.Sprintf("sp_relay_%s_%d", sfx, n)
				n++
				superExec(t, clusterDSN, "CREATE ROLE "+role+" LOGIN")
				t.Cleanup(func() {
					superExecNoFail(t, e.super, "REVOKE ALL ON ALL TABLES IN SCHEMA securepay FROM "+role)
					superExecNoFail(t, e.super, "REVOKE ALL ON SCHEMA securepay FROM "+role)
					superExecNoFail(t, clusterDSN, "DROP ROLE IF EXISTS "+role)
				})
			}
			if tc.grant {
				for range 2 {
					if err := GrantRelay(ctx, owner, e.schema, role); err != nil {
						t.Fatalf("GrantRelay to %s: %v", role, err)
					}
				}
			}
			for _, s := range tc.setup {
				superExec(t, e.super, strings.ReplaceAll(s, "{{role}}", role))
			}
			err := checkRelayRole(ctx, e.pool(t, role), e.schema)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("relay login role %s: want it accepted, got %v", role, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("relay login role %s: want serve relay refused (%q), got nil", role, tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("relay login role %s: want the refusal to say %q, got:\n%v", role, w, err)
				}
			}
		})
	}

	// A role GrantRelay made reads the log and cannot write it.
	role := "sp_relay_" + sfx + "_reader"
	superExec(t, clusterDSN, "CREATE ROLE "+role+" LOGIN")
	t.Cleanup(func() {
		superExecNoFail(t, e.super, "REVOKE ALL ON ALL TABLES IN SCHEMA securepay FROM "+role)
		superExecNoFail(t, e.super, "REVOKE ALL ON SCHEMA securepay FROM "+role)
		superExecNoFail(t, clusterDSN, "DROP ROLE IF EXISTS "+role)
	})
	if err := GrantRelay(ctx, owner, e.schema, role); err != nil {
		t.Fatal(err)
	}
	reader := e.pool(t, role)
	var count int
	if err := reader.QueryRow(ctx, "SELECT count(*) FROM securepay.events").Scan(&count); err != nil {
		t.Fatalf("the relay role reads the log: %v", err)
	}
	for _, q := range []string{
		"DELETE FROM securepay.events",
		"INSERT INTO securepay.schema_migrations (version, checksum) VALUES (999, 'x')",
		"SET ROLE " + e.app,
	} {
		if _, err := reader.Exec(ctx, q); err == nil {
			t.Errorf("the relay role ran %q: want it refused", q)
		}
	}

	for _, tc := range []struct{ role, want string }{
		{"sp_nobody_here", "does not exist: create it first"},
		{e.owner, "is the role running migrate"},
		{"postgres", "is a superuser"},
		{"Bad-Name", "must match"},
	} {
		if err := GrantRelay(ctx, owner, e.schema, tc.role); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("GrantRelay to %q: want an error with %q, got %v", tc.role, tc.want, err)
		}
	}
}
