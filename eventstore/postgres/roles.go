package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Roles. A deployment uses three PostgreSQL roles, and the log is safe from the server only
// if they stay apart:
//
//   - the owner runs `securepay migrate`: it owns the schemas, the tables, the append-only
//     triggers and their function. Only an owner (or a superuser) can disable a trigger,
//     alter or drop a table, so the owner's credentials never reach a server.
//   - the app role (Config.AppRole, NOLOGIN) holds the serving privileges: SELECT and INSERT
//     on events, SELECT on schema_migrations, SELECT/INSERT/UPDATE on snapshots (a cache the
//     ledger authenticates itself, see services/ledger/snapshot.go), and SELECT/INSERT/UPDATE
//     on the views' tables (derived data, rebuilt from the log by the owner; no write
//     decision reads them), and SELECT/INSERT/UPDATE/DELETE on the registries' tables
//     (webhook endpoints: edited through the API, never part of the log).
//   - the login role `securepay serve` connects as: a member of the app role and nothing
//     else. It owns nothing, so it can neither change nor hide a change to the log.
//
// GrantServing (run by migrate) builds the last two; CheckServingRole (run by serve at
// start) refuses a login role that could rewrite the log.

// ServingGrants says what GrantServing grants.
type ServingGrants struct {
	// Schema is the event store's schema; "" means DefaultSchema.
	Schema string
	// AppRole is the role the grants go to; "" means DefaultAppRole.
	AppRole string
	// LoginRole is the role `securepay serve` logs in as. It must exist (its password is
	// the operator's business, not migrate's) and must not be the role running migrate.
	LoginRole string
	// ViewSchemas hold derived tables the server writes (the projections' views): the app
	// role may read, insert and update their tables, and tables the migrating role creates
	// there later (a rebuild's new copy) get the same grants by default.
	ViewSchemas []string
	// RegistrySchemas hold registries the API edits (services/webhook's endpoints): the
	// app role may read, insert, update and delete the rows of their tables, which are
	// not derived from the log and are not part of it.
	RegistrySchemas []string
}

// GrantServing makes LoginRole able to serve and nothing more: it grants the app role the
// serving privileges on the view schemas and grants the app role to LoginRole. It is
// idempotent (GRANT of what is granted changes nothing), and runs in one transaction under
// the migration lock. The event store schema must already be migrated (its migrations
// create the app role and its grants on the log).
func GrantServing(ctx context.Context, pool *pgxpool.Pool, g ServingGrants) error {
	if g.Schema == "" {
		g.Schema = DefaultSchema
	}
	if g.AppRole == "" {
		g.AppRole = DefaultAppRole
	}
	if err := validIdentifier("schema", g.Schema); err != nil {
		return err
	}
	if err := validIdentifier("app role", g.AppRole); err != nil {
		return err
	}
	if err := validIdentifier("serving login role", g.LoginRole); err != nil {
		return err
	}
	for _, v := range g.ViewSchemas {
		if err := validIdentifier("view schema", v); err != nil {
			return err
		}
	}
	for _, r := range g.RegistrySchemas {
		if err := validIdentifier("registry schema", r); err != nil {
			return err
		}
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLockKey); err != nil {
			return fmt.Errorf("take migration lock: %w", err)
		}
		var me string
		var exists, super bool
		if err := tx.QueryRow(ctx, `SELECT current_user, EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1),
			COALESCE((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = $1), false)`, g.LoginRole).Scan(&me, &exists, &super); err != nil {
			return fmt.Errorf("look up role %s: %w", g.LoginRole, err)
		}
		switch {
		case !exists:
			return fmt.Errorf("the serving login role %s does not exist: create it first (as a role with CREATEROLE), with a password and no other attribute: CREATE ROLE %s LOGIN PASSWORD '…'; then run migrate again", g.LoginRole, g.LoginRole)
		case g.LoginRole == me:
			return fmt.Errorf("the serving login role %s is the role running migrate, which owns the tables: serve must log in as another role (CREATE ROLE securepay_serve LOGIN PASSWORD '…', then --serve-role securepay_serve)", g.LoginRole)
		case super:
			return fmt.Errorf("the serving login role %s is a superuser, which bypasses every grant: create a plain login role for serve instead (CREATE ROLE securepay_serve LOGIN PASSWORD '…')", g.LoginRole)
		}
		var appExists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)`, g.AppRole).Scan(&appExists); err != nil {
			return fmt.Errorf("look up role %s: %w", g.AppRole, err)
		}
		if !appExists {
			return fmt.Errorf("the app role %s does not exist: migrate the event store schema %s first", g.AppRole, g.Schema)
		}
		app := pgx.Identifier{g.AppRole}.Sanitize()
		var stmts []string
		for _, v := range g.ViewSchemas {
			vs := pgx.Identifier{v}.Sanitize()
			stmts = append(stmts,
				"GRANT USAGE ON SCHEMA "+vs+" TO "+app,
				"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA "+vs+" TO "+app,
				// A rebuild run by this (owner) role creates new tables and swaps them in:
				// they must carry the same grants, or the server's projectors stop there.
				"ALTER DEFAULT PRIVILEGES IN SCHEMA "+vs+" GRANT SELECT, INSERT, UPDATE ON TABLES TO "+app,
			)
		}
		for _, r := range g.RegistrySchemas {
			rs := pgx.Identifier{r}.Sanitize()
			stmts = append(stmts,
				"GRANT USAGE ON SCHEMA "+rs+" TO "+app,
				"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "+rs+" TO "+app,
			)
		}
		stmts = append(stmts, "GRANT "+app+" TO "+pgx.Identifier{g.LoginRole}.Sanitize())
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
		}
		return nil
	})
}

// GrantRelay makes LoginRole able to read the log and nothing more: USAGE on the event
// schema and SELECT on its events and schema_migrations, granted to the role itself (it
// is a member of no role, so CheckRelayRole finds nothing to refuse). Like GrantServing
// it is idempotent, runs under the migration lock, and refuses a role that does not
// exist, is the migrating role or is a superuser. The relay's checkpoint table is
// granted by its own package (relay.GrantCheckpoints).
func GrantRelay(ctx context.Context, pool *pgxpool.Pool, schema, loginRole string) error {
	if schema == "" {
		schema = DefaultSchema
	}
	if err := validIdentifier("schema", schema); err != nil {
		return err
	}
	if err := validIdentifier("relay login role", loginRole); err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLockKey); err != nil {
			return fmt.Errorf("take migration lock: %w", err)
		}
		var me string
		var exists, super bool
		if err := tx.QueryRow(ctx, `SELECT current_user, EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1),
			COALESCE((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = $1), false)`, loginRole).Scan(&me, &exists, &super); err != nil {
			return fmt.Errorf("look up role %s: %w", loginRole, err)
		}
		switch {
		case !exists:
			return fmt.Errorf("the relay login role %s does not exist: create it first (as a role with CREATEROLE), with a password and no other attribute: CREATE ROLE %s LOGIN PASSWORD '…'; then run migrate again", loginRole, loginRole)
		case loginRole == me:
			return fmt.Errorf("the relay login role %s is the role running migrate, which owns the tables: serve relay must log in as another role (CREATE ROLE securepay_relay LOGIN PASSWORD '…', then --relay-role securepay_relay)", loginRole)
		case super:
			return fmt.Errorf("the relay login role %s is a superuser, which bypasses every grant: create a plain login role for the relay instead (CREATE ROLE securepay_relay LOGIN PASSWORD '…')", loginRole)
		}
		s, role := pgx.Identifier{schema}.Sanitize(), pgx.Identifier{loginRole}.Sanitize()
		for _, q := range []string{
			"GRANT USAGE ON SCHEMA " + s + " TO " + role,
			"GRANT SELECT ON " + s + ".events, " + s + ".schema_migrations TO " + role,
		} {
			if _, err := tx.Exec(ctx, q); err != nil {
				return fmt.Errorf("%s: %w", q, err)
			}
		}
		return nil
	})
}

// ErrUnsafeServingRole is returned by CheckServingRole when the login role could change
// the log: serve must not start with it.
var ErrUnsafeServingRole = errors.New("the PostgreSQL login role could rewrite the event log")

// logPrivileges are the only table privileges a serving role may hold in the event schema;
// anything else (UPDATE or DELETE on events, TRUNCATE, TRIGGER, REFERENCES, writing
// schema_migrations) is a way to change or lock the log.
var logPrivileges = map[string][]string{
	"events":            {"SELECT", "INSERT"},
	"schema_migrations": {"SELECT"},
	"snapshots":         {"SELECT", "INSERT", "UPDATE"},
}

// tablePrivileges are the privileges CheckServingRole looks at on every table of the schema.
var tablePrivileges = []string{"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"}

// CheckServingRole refuses (ErrUnsafeServingRole, every reason listed with its fix) a login
// role that could rewrite or hide a rewrite of the log: a superuser; a role (or one it can
// become through membership, SET ROLE included) with SUPERUSER, BYPASSRLS or CREATEROLE (a
// CREATEROLE role can grant itself the owner's role), or a member of pg_execute_server_program
// or pg_write_server_files (the server's OS user); one that owns, or is a member of the
// owner of, the schema or anything in it (owners disable triggers, alter and drop
// tables); one holding more than logPrivileges or CREATE in the schema. It also refuses a
// role that cannot serve (not a member of the app role), naming the migrate command that
// fixes it.
func (s *Store) CheckServingRole(ctx context.Context) error {
	return checkServingRole(ctx, s.pool, s.cfg.Schema, s.cfg.AppRole)
}

// loginUse is what a login role is checked for: the table privileges it may hold in the
// event schema, and how the refusal tells the operator to fix a role.
type loginUse struct {
	command string              // "serve", "serve relay"
	allowed map[string][]string // table → privileges it may hold
	grant   string              // the migrate command that grants the role what it needs
	// viaMember: a privilege beyond allowed held through another role is fixed by revoking
	// that membership (the relay, whose role should be a member of nothing) rather than
	// the privilege from the role (serve, whose app role must keep its own).
	viaMember bool
}

var serveUse = loginUse{command: "serve", allowed: logPrivileges, grant: "securepay migrate --serve-role ROLE"}

func checkServingRole(ctx context.Context, pool *pgxpool.Pool, schema, appRole string) error {
	me, err := checkLoginRole(ctx, pool, schema, serveUse)
	if err != nil {
		return err
	}
	// Safe; now make sure it can serve at all, with a message better than the first
	// append's "permission denied to set role".
	var member, canRead, canInsert bool
	// By oid: a name lookup would fail with "permission denied for schema" first.
	if err := pool.QueryRow(ctx, `SELECT
			EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $2 AND pg_has_role(current_user, oid, 'MEMBER')),
			COALESCE(bool_and(has_table_privilege(current_user, c.oid, 'SELECT')), false),
			COALESCE(bool_and(has_table_privilege(current_user, c.oid, 'INSERT')), false)
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = 'events'`,
		schema, appRole).Scan(&member, &canRead, &canInsert); err != nil {
		return unavailable(fmt.Errorf("check the login role: %w", err))
	}
	if !member || !canRead || !canInsert {
		return fmt.Errorf("login role %s cannot serve: it is not a member of the app role %s with its privileges (member: %t, SELECT on events: %t, INSERT: %t); as the owner, run `securepay migrate --serve-role %s` (and give the role INHERIT)",
			me, appRole, member, canRead, canInsert, me)
	}
	return nil
}

// relayPrivileges are the only table privileges the relay's login role may hold in the
// event schema: it reads the log, and writes nothing there (its checkpoint lives in a
// schema of its own).
var relayPrivileges = map[string][]string{
	"events":            {"SELECT"},
	"schema_migrations": {"SELECT"},
}

// CheckRelayRole is CheckServingRole for `securepay serve relay`, which only reads the log:
// it refuses, with the same reasons, a login role that could rewrite the log, and also one
// that could write to it at all (INSERT on events, the serving role's app role, the
// snapshots): a relay that can append could publish an event the ledger never decided.
// It also refuses a role that cannot read the log, naming the migrate command that fixes it.
func (s *Store) CheckRelayRole(ctx context.Context) error {
	return checkRelayRole(ctx, s.pool, s.cfg.Schema)
}

func checkRelayRole(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	me, err := checkLoginRole(ctx, pool, schema, loginUse{command: "serve relay", allowed: relayPrivileges,
		grant: "securepay migrate --relay-role ROLE", viaMember: true})
	if err != nil {
		return err
	}
	var canUse, canRead bool
	if err := pool.QueryRow(ctx, `SELECT
			COALESCE(bool_and(has_schema_privilege(current_user, n.oid, 'USAGE')), false),
			COALESCE(bool_and(has_table_privilege(current_user, c.oid, 'SELECT')), false)
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname IN ('events', 'schema_migrations')`,
		schema).Scan(&canUse, &canRead); err != nil {
		return unavailable(fmt.Errorf("check the login role: %w", err))
	}
	if !canUse || !canRead {
		return fmt.Errorf("login role %s cannot read the event log (USAGE on schema %s: %t, SELECT on its events and schema_migrations: %t); as the owner, run `securepay migrate --relay-role %s`",
			me, schema, canUse, canRead, me)
	}
	return nil
}

// checkLoginRole refuses a login role that could change the log beyond what use allows,
// and returns its name.
func checkLoginRole(ctx context.Context, pool *pgxpool.Pool, schema string, use loginUse) (string, error) {
	var me string
	if err := pool.QueryRow(ctx, `SELECT current_user`).Scan(&me); err != nil {
		return "", unavailable(fmt.Errorf("check the login role: %w", err))
	}
	var problems []string
	anySuper := false
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	// Every role the login role is, or can SET ROLE to (membership with or without INHERIT).
	rows, err := pool.Query(ctx, `SELECT rolname, rolsuper, rolbypassrls, rolcreaterole
		FROM pg_catalog.pg_roles WHERE pg_has_role(current_user, oid, 'MEMBER') ORDER BY rolname`)
	if err != nil {
		return "", unavailable(fmt.Errorf("check the login role: %w", err))
	}
	for rows.Next() {
		var name string
		var super, bypass, createRole bool
		if err := rows.Scan(&name, &super, &bypass, &createRole); err != nil {
			rows.Close()
			return "", fmt.Errorf("check the login role: %w", err)
		}
		who, fix := "it", func(attr string) string { return "ALTER ROLE " + name + " " + attr }
		if name != me {
			who = fmt.Sprintf("its member role %s (reachable with SET ROLE)", name)
			fix = func(string) string { return "REVOKE " + name + " FROM " + me }
		}
		if super {
			anySuper = true
			add("%s is a superuser, which bypasses grants and can switch the append-only triggers off (fix: %s, or log in as another role)", who, fix("NOSUPERUSER"))
		}
		if bypass {
			add("%s has BYPASSRLS (fix: %s)", who, fix("NOBYPASSRLS"))
		}
		if createRole {
			add("%s has CREATEROLE and can grant itself the tables' owner (fix: %s)", who, fix("NOCREATEROLE"))
		}
		if name == "pg_execute_server_program" || name == "pg_write_server_files" {
			// COPY ... PROGRAM / TO a file runs as the server's operating-system user, which
			// can rewrite the data files or connect as a superuser over the local socket.
			add("it is a member of %s, which acts as the database server's operating-system user (fix: REVOKE %s FROM %s)", name, name, me)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return "", unavailable(fmt.Errorf("check the login role: %w", err))
	}
	if anySuper {
		// A superuser is a member of every role and holds every privilege: listing all of
		// that would bury the one line that matters.
		return "", unsafeRole(me, problems, use)
	}

	// Owners of the schema and of everything in it: tables, indexes, the trigger function.
	rows, err = pool.Query(ctx, `
		SELECT 'schema ' || n.nspname, pg_get_userbyid(n.nspowner)
			FROM pg_catalog.pg_namespace n
			WHERE n.nspname = $1 AND pg_has_role(current_user, n.nspowner, 'MEMBER')
		UNION ALL
		SELECT 'table ' || n.nspname || '.' || c.relname, pg_get_userbyid(c.relowner)
			FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
				AND pg_has_role(current_user, c.relowner, 'MEMBER')
		UNION ALL
		SELECT 'function ' || n.nspname || '.' || p.proname, pg_get_userbyid(p.proowner)
			FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
			WHERE n.nspname = $1 AND pg_has_role(current_user, p.proowner, 'MEMBER')
		ORDER BY 1`, schema)
	if err != nil {
		return "", unavailable(fmt.Errorf("check the login role: %w", err))
	}
	for rows.Next() {
		var object, owner string
		if err := rows.Scan(&object, &owner); err != nil {
			rows.Close()
			return "", fmt.Errorf("check the login role: %w", err)
		}
		if owner == me {
			add("it owns %s, and an owner can disable the append-only triggers, alter and drop (fix: run migrate as another role, the owner, and give serve a role that owns nothing)", object)
		} else {
			add("it is a member of %s, which owns %s (fix: REVOKE %s FROM %s)", owner, object, owner, me)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return "", unavailable(fmt.Errorf("check the login role: %w", err))
	}
	if len(problems) > 0 {
		return "", unsafeRole(me, problems, use) // an owner holds every privilege; ownership says it all
	}

	// Privileges, through any role it can become.
	rows, err = pool.Query(ctx, `
		SELECT c.relname, p.priv, r.rolname
		FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		CROSS JOIN unnest($2::text[]) AS p(priv)
		JOIN pg_catalog.pg_roles r ON pg_has_role(current_user, r.oid, 'MEMBER')
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND has_table_privilege(r.oid, c.oid, p.priv)
		ORDER BY 1, 2, 3`, schema, tablePrivileges)
	if err != nil {
		return "", unavailable(fmt.Errorf("check the login role: %w", err))
	}
	for rows.Next() {
		var table, priv, role string
		if err := rows.Scan(&table, &priv, &role); err != nil {
			rows.Close()
			return "", fmt.Errorf("check the login role: %w", err)
		}
		switch {
		case slices.Contains(use.allowed[table], priv):
		case use.viaMember && role != me:
			add("it may %s on %s.%s through its member role %s (fix: REVOKE %s FROM %s)", priv, schema, table, role, role, me)
		default:
			add("it may %s on %s.%s (through role %s) (fix: REVOKE %s ON %s.%s FROM %s)", priv, schema, table, role, priv, schema, table, role)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return "", unavailable(fmt.Errorf("check the login role: %w", err))
	}
	var createInSchema string
	if err := pool.QueryRow(ctx, `SELECT COALESCE(string_agg(r.rolname, ', ' ORDER BY r.rolname), '')
		FROM pg_catalog.pg_roles r, pg_catalog.pg_namespace n
		WHERE n.nspname = $1 AND pg_has_role(current_user, r.oid, 'MEMBER') AND has_schema_privilege(r.oid, n.oid, 'CREATE')`,
		schema).Scan(&createInSchema); err != nil {
		return "", unavailable(fmt.Errorf("check the login role: %w", err))
	}
	if createInSchema != "" {
		add("it may CREATE in schema %s (through %s) (fix: REVOKE CREATE ON SCHEMA %s FROM %s)", schema, createInSchema, schema, createInSchema)
	}
	if len(problems) > 0 {
		return "", unsafeRole(me, problems, use)
	}

	return me, nil
}

func unsafeRole(me string, problems []string, use loginUse) error {
	return fmt.Errorf("%w: login role %s:\n  - %s\n%s must log in as a role that owns nothing and holds only what `%s` grants it (see README, operator set-up)",
		ErrUnsafeServingRole, me, strings.Join(problems, "\n  - "), use.command, use.grant)
}
