package webhook

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/securepay/securepay/internal/pgerr"
)

// DefaultSchema holds the endpoints table. A schema of its own, apart from the log and the
// views: the registry is edited through the API (rows are updated and deleted), which no
// table of the log may be, and the views' schema is rebuilt from the log, which this table
// is not derived from.
const DefaultSchema = "securepay_webhooks"

// lockClass is the first key of the advisory locks this package takes (an arbitrary
// constant, "wh"): the second is the account's hash, so registrations for one account are
// serialised (the per-account limit holds) and other accounts do not wait.
const lockClass = 0x7768

// migrationLockKey serialises concurrent migrations of the schema.
const migrationLockKey = 0x77686d6967 // "whmig"

// MigratePostgres creates the schema and its table if they do not exist. `securepay
// migrate` runs it as the owner role; the serving role gets SELECT, INSERT, UPDATE and
// DELETE on the table through postgres.GrantServing's RegistrySchemas, nothing more.
func MigratePostgres(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	if schema == "" {
		schema = DefaultSchema
	}
	s := pgx.Identifier{schema}.Sanitize()
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLockKey); err != nil {
			return fmt.Errorf("webhook registry: take migration lock: %w", err)
		}
		for _, stmt := range []string{
			"CREATE SCHEMA IF NOT EXISTS " + s,
			// secret_sealed is AES-GCM of the signing secret under the key named key_id
			// (--webhook-key-file), never the secret itself.
			`CREATE TABLE IF NOT EXISTS ` + s + `.endpoints (
				id            text PRIMARY KEY CHECK (id ~ '^we_[0-9a-f]{32}$'),
				account_id    text NOT NULL CHECK (length(account_id) BETWEEN 1 AND 64),
				url           text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
				event_types   text[] NOT NULL DEFAULT '{}',
				owner         text NOT NULL,
				secret_sealed bytea NOT NULL,
				key_id        text NOT NULL,
				created_at    timestamptz NOT NULL,
				rotated_at    timestamptz NOT NULL,
				UNIQUE (account_id, url)
			)`,
		} {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("webhook registry: migrate schema %s: %w", schema, err)
			}
		}
		return nil
	})
}

// PostgresStore is a Store in PostgreSQL, in a schema MigratePostgres created.
type PostgresStore struct {
	pool  *pgxpool.Pool
	table string // schema-qualified, sanitised
}

// OpenPostgres returns a store on pool's schema, after checking that the table exists (a
// serving role cannot create it: run `securepay migrate`).
func OpenPostgres(ctx context.Context, pool *pgxpool.Pool, schema string) (*PostgresStore, error) {
	if schema == "" {
		schema = DefaultSchema
	}
	var ok bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = $1 AND tablename = 'endpoints')`, schema).Scan(&ok); err != nil {
		return nil, fmt.Errorf("webhook registry: check schema %s: %w", schema, pgerr.Unavailable(err))
	}
	if !ok {
		return nil, fmt.Errorf("webhook registry: schema %s has no endpoints table: run securepay migrate (--webhook-schema %s)", schema, schema)
	}
	return &PostgresStore{pool: pool, table: pgx.Identifier{schema, "endpoints"}.Sanitize()}, nil
}

const columns = `id, account_id, url, event_types, owner, secret_sealed, key_id, created_at, rotated_at`

func scanRecord(row pgx.Row) (Record, error) {
	var r Record
	err := row.Scan(&r.ID, &r.AccountID, &r.URL, &r.EventTypes, &r.Owner, &r.Sealed, &r.KeyID, &r.CreatedAt, &r.RotatedAt)
	if len(r.EventTypes) == 0 {
		r.EventTypes = nil
	}
	return r, err
}

func (s *PostgresStore) Insert(ctx context.Context, r Record, maxPerAccount int) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, lockClass, r.AccountID); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+s.table+` WHERE account_id = $1`, r.AccountID).Scan(&n); err != nil {
			return err
		}
		if n >= maxPerAccount {
			return ErrLimit
		}
		types := r.EventTypes
		if types == nil {
			types = []string{}
		}
		_, err := tx.Exec(ctx, `INSERT INTO `+s.table+` (`+columns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
			r.ID, r.AccountID, r.URL, types, r.Owner, r.Sealed, r.KeyID, r.CreatedAt, r.RotatedAt)
		return err
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" { // unique_violation: (account_id, url) or id
		return ErrDuplicate
	}
	if err != nil && !errors.Is(err, ErrLimit) {
		return fmt.Errorf("webhook registry: insert %s: %w", r.ID, pgerr.Unavailable(err))
	}
	return err
}

func (s *PostgresStore) List(ctx context.Context, accountID string) ([]Record, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+columns+` FROM `+s.table+` WHERE account_id = $1 ORDER BY created_at, id`, accountID)
	if err != nil {
		return nil, fmt.Errorf("webhook registry: list %s: %w", accountID, pgerr.Unavailable(err))
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return nil, fmt.Errorf("webhook registry: list %s: %w", accountID, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("webhook registry: list %s: %w", accountID, pgerr.Unavailable(err))
	}
	return out, nil
}

func (s *PostgresStore) one(ctx context.Context, what, id, query string, args ...any) (Record, error) {
	r, err := scanRecord(s.pool.QueryRow(ctx, query, args...))
	if errors.Is(err, pgx.ErrNoRows) {
		return Record{}, ErrNotFound
	}
	if err != nil {
		return Record{}, fmt.Errorf("webhook registry: %s %s: %w", what, id, pgerr.Unavailable(err))
	}
	return r, nil
}

func (s *PostgresStore) Get(ctx context.Context, id string) (Record, error) {
	return s.one(ctx, "get", id, `SELECT `+columns+` FROM `+s.table+` WHERE id = $1`, id)
}

func (s *PostgresStore) Delete(ctx context.Context, id string) (Record, error) {
	return s.one(ctx, "delete", id, `DELETE FROM `+s.table+` WHERE id = $1 RETURNING `+columns, id)
}

func (s *PostgresStore) SetSecret(ctx context.Context, id string, sealed []byte, keyID string, at time.Time) (Record, error) {
	return s.one(ctx, "rotate", id, `UPDATE `+s.table+` SET secret_sealed = $2, key_id = $3, rotated_at = $4 WHERE id = $1 RETURNING `+columns,
		id, sealed, keyID, at)
}

func (s *PostgresStore) CountOtherKeys(ctx context.Context, keyID string) (int, error) {
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM `+s.table+` WHERE key_id <> $1`, keyID).Scan(&n); err != nil {
		return 0, fmt.Errorf("webhook registry: count keys: %w", pgerr.Unavailable(err))
	}
	return n, nil
}

// GrantRead lets loginRole read the endpoints and nothing else (SELECT on the table,
// USAGE on its schema): what a dispatcher running under a role of its own needs to look
// up an account's endpoints. The secrets stay sealed; it must hold the key file to open
// them. Run by `securepay migrate --dispatcher-role`, as the owner; idempotent.
func GrantRead(ctx context.Context, pool *pgxpool.Pool, schema, loginRole string) error {
	if schema == "" {
		schema = DefaultSchema
	}
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)`, loginRole).Scan(&exists); err != nil {
		return fmt.Errorf("webhook registry: look up role %s: %w", loginRole, err)
	}
	if !exists {
		return fmt.Errorf("webhook registry: the role %s does not exist: create it first (CREATE ROLE %s LOGIN PASSWORD '…'), then run migrate again", loginRole, loginRole)
	}
	role, s := pgx.Identifier{loginRole}.Sanitize(), pgx.Identifier{schema}.Sanitize()
	for _, stmt := range []string{
		"GRANT USAGE ON SCHEMA " + s + " TO " + role,
		"GRANT SELECT ON " + pgx.Identifier{schema, "endpoints"}.Sanitize() + " TO " + role,
	} {
		if _, err := pool.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("webhook registry: %s: %w", stmt, err)
		}
	}
	return nil
}
