package postgres

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrationLockKey serialises every migration of every schema in a database. Migrations
// are rare and short, and one key for all schemas also serialises the creation of the
// cluster-wide application role, which two schemas' first migrations would otherwise race
// to create.
const migrationLockKey int64 = 0x5345_4355_5245_4d47 // "SECUREMG"

// maxMigrations bounds the embedded set; more would mean a packaging mistake.
const maxMigrations = 1000

// migration is one numbered SQL file, its text already bound to a schema and role.
type migration struct {
	Version  int
	Name     string
	SQL      string
	Checksum string // SHA-256 of the file as embedded, before binding
}

var migrationName = regexp.MustCompile(`^([0-9]{4})_([a-z0-9_]+)\.sql$`)

// loadMigrations reads the embedded files in version order and binds the placeholders
// {{schema}}, {{app_role}} and {{app_role_literal}} to quoted names.
func loadMigrations(schema, appRole string) ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	if len(entries) > maxMigrations {
		return nil, fmt.Errorf("%d embedded migrations, limit %d", len(entries), maxMigrations)
	}
	bind := strings.NewReplacer(
		"{{schema}}", pgx.Identifier{schema}.Sanitize(),
		"{{app_role}}", pgx.Identifier{appRole}.Sanitize(),
		"{{app_role_literal}}", "'"+appRole+"'", // appRole is validated to [a-z_][a-z0-9_]*
	)
	out := make([]migration, 0, len(entries))
	for _, e := range entries {
		m := migrationName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("embedded migration %q: name must be NNNN_words.sql", e.Name())
		}
		v, _ := strconv.Atoi(m[1]) // four digits always parse
		body, err := migrationFiles.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		sum := sha256.Sum256(body)
		out = append(out, migration{Version: v, Name: m[2], SQL: bind.Replace(string(body)), Checksum: hex.EncodeToString(sum[:])})
	}
	slices.SortFunc(out, func(a, b migration) int { return a.Version - b.Version })
	for i, m := range out {
		if m.Version != i+1 {
			return nil, fmt.Errorf("embedded migrations must be numbered 1..%d without gaps; found %04d at place %d", len(out), m.Version, i+1)
		}
	}
	return out, nil
}

// ErrSchemaNotMigrated is returned by Open (without Config.Migrate) when the schema lacks
// migrations this binary needs; run `securepay migrate` first.
var ErrSchemaNotMigrated = errors.New("postgres event store: schema is not migrated to this binary's version")

// Migrate applies, in order, every embedded migration not yet applied to schema, each in
// its own transaction, and returns the versions it applied (none when up to date).
//
// It is safe to run from several processes at once: each migration's transaction first
// takes a database-wide advisory lock and then re-reads schema_migrations, so a migration
// another process applied meanwhile is skipped rather than applied twice. The connecting
// role needs CREATE on the database and, the first time, CREATEROLE (to create appRole).
// Empty schema and appRole mean DefaultSchema and DefaultAppRole.
func Migrate(ctx context.Context, pool *pgxpool.Pool, schema, appRole string) ([]int, error) {
	if schema == "" {
		schema = DefaultSchema
	}
	if appRole == "" {
		appRole = DefaultAppRole
	}
	if err := validIdentifier("schema", schema); err != nil {
		return nil, err
	}
	if err := validIdentifier("app role", appRole); err != nil {
		return nil, err
	}
	migs, err := loadMigrations(schema, appRole)
	if err != nil {
		return nil, err
	}
	qs := pgx.Identifier{schema}.Sanitize()
	var applied []int
	for _, m := range migs {
		done, err := applyMigration(ctx, pool, qs, m)
		if err != nil {
			return applied, fmt.Errorf("migrate schema %s to %04d_%s: %w", schema, m.Version, m.Name, err)
		}
		if done {
			applied = append(applied, m.Version)
		}
	}
	return applied, nil
}

// applyMigration runs one migration unless it is already recorded; it reports whether it ran.
func applyMigration(ctx context.Context, pool *pgxpool.Pool, qs string, m migration) (ran bool, err error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx)) // the original error matters more
		}
	}()
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLockKey); err != nil {
		return false, fmt.Errorf("take migration lock: %w", err)
	}
	// Under the lock, so two first-time migrators cannot both try to create these.
	if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+qs); err != nil {
		return false, fmt.Errorf("create schema: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+qs+`.schema_migrations (
		version    integer     NOT NULL PRIMARY KEY,
		name       text        NOT NULL,
		checksum   text        NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return false, fmt.Errorf("create schema_migrations: %w", err)
	}
	var checksum string
	err = tx.QueryRow(ctx, "SELECT checksum FROM "+qs+".schema_migrations WHERE version = $1", m.Version).Scan(&checksum)
	switch {
	case err == nil:
		if checksum != m.Checksum {
			return false, fmt.Errorf("already applied with checksum %s, but this binary embeds %s: a released migration was edited", checksum, m.Checksum)
		}
		return false, tx.Rollback(ctx)
	case !errors.Is(err, pgx.ErrNoRows):
		return false, fmt.Errorf("read schema_migrations: %w", err)
	}
	if _, err := tx.Exec(ctx, m.SQL); err != nil {
		return false, fmt.Errorf("apply: %w", err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO "+qs+".schema_migrations (version, name, checksum) VALUES ($1, $2, $3)", m.Version, m.Name, m.Checksum); err != nil {
		return false, fmt.Errorf("record: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("commit: %w", err)
	}
	return true, nil
}

// checkMigrated confirms that every embedded migration is applied, with the same text.
func checkMigrated(ctx context.Context, pool *pgxpool.Pool, schema, appRole string) error {
	migs, err := loadMigrations(schema, appRole)
	if err != nil {
		return err
	}
	rows, err := pool.Query(ctx, "SELECT version, checksum FROM "+pgx.Identifier{schema}.Sanitize()+".schema_migrations ORDER BY version")
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000"):
		// undefined_table, invalid_schema_name: nobody has migrated this schema.
		return fmt.Errorf("%w: schema %s has no schema_migrations table", ErrSchemaNotMigrated, schema)
	case err != nil:
		return unavailable(fmt.Errorf("schema %s: read schema_migrations: %w", schema, err))
	}
	got := map[int]string{}
	for rows.Next() {
		var v int
		var sum string
		if err := rows.Scan(&v, &sum); err != nil {
			rows.Close()
			return fmt.Errorf("read schema_migrations: %w", err)
		}
		got[v] = sum
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read schema_migrations: %w", err)
	}
	for _, m := range migs {
		sum, ok := got[m.Version]
		switch {
		case !ok:
			return fmt.Errorf("%w: schema %s lacks %04d_%s", ErrSchemaNotMigrated, schema, m.Version, m.Name)
		case sum != m.Checksum:
			return fmt.Errorf("schema %s: migration %04d_%s was applied with checksum %s, this binary embeds %s", schema, m.Version, m.Name, sum, m.Checksum)
		}
	}
	return nil
}

var identifierPattern = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// maxIdentifierBytes keeps "<schema>_appended" within PostgreSQL's 63-byte names.
const maxIdentifierBytes = 48

// validIdentifier admits only plain lower-case names, so that the schema and role can be
// written into SQL, notification channel names and string literals without any quoting
// surprises.
func validIdentifier(what, s string) error {
	if len(s) > maxIdentifierBytes || !identifierPattern.MatchString(s) {
		return fmt.Errorf("postgres event store: %s %q must match %s and be at most %d bytes", what, s, identifierPattern, maxIdentifierBytes)
	}
	return nil
}
