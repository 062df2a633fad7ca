package pg

import (
	"context"
	"embed"
	"fmt"
	"hash/fnv"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// migrate applies the embedded migrations not yet recorded in the schema's
// view_migrations table, in their numbered order, under an advisory lock.
func (v *Views) migrate(ctx context.Context) error {
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return fmt.Errorf("postgres views: list migrations: %w", err)
	}
	sort.Strings(names)
	schema := pgx.Identifier{v.schema}.Sanitize()
	h := fnv.New64a()
	h.Write([]byte("securepay/projections/migrate/" + v.schema))
	lock := int64(h.Sum64())
	return pgx.BeginFunc(ctx, v.pool, func(tx pgx.Tx) error {
		// One migrator at a time per schema, across processes.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lock); err != nil {
			return fmt.Errorf("postgres views: migrate lock: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+schema); err != nil {
			return fmt.Errorf("postgres views: create schema %s: %w", v.schema, err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+schema+`.view_migrations (
			version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return fmt.Errorf("postgres views: create migrations table: %w", err)
		}
		for _, name := range names {
			base := strings.TrimPrefix(name, "migrations/")
			num, _, _ := strings.Cut(base, "_")
			version, err := strconv.Atoi(num)
			if err != nil {
				return fmt.Errorf("postgres views: migration %s has no number", base)
			}
			var done bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+schema+`.view_migrations WHERE version = $1)`, version).Scan(&done); err != nil {
				return fmt.Errorf("postgres views: migration %d: %w", version, err)
			}
			if done {
				continue
			}
			body, err := migrationFS.ReadFile(name)
			if err != nil {
				return fmt.Errorf("postgres views: read %s: %w", base, err)
			}
			if _, err := tx.Exec(ctx, strings.ReplaceAll(string(body), "{{schema}}", schema)); err != nil {
				return fmt.Errorf("postgres views: apply %s: %w", base, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO `+schema+`.view_migrations (version) VALUES ($1)`, version); err != nil {
				return fmt.Errorf("postgres views: record %s: %w", base, err)
			}
		}
		return nil
	})
}
