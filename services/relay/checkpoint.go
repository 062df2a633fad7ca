package relay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Checkpoints keeps the relay's position in the log: every event up to it was
// acknowledged by the broker. Save must be durable when it returns (a crash after it
// never re-publishes what it covers) and must never move the checkpoint back.
type Checkpoints interface {
	Load(ctx context.Context) (uint64, error)
	Save(ctx context.Context, position uint64) error
}

// ErrCheckpointAhead means the stored checkpoint is past the one being saved: another
// relay runs under the same name. Two relays publish everything twice (consumers dedupe by
// event id), but their checkpoints would fight, so the one that notices stops.
var ErrCheckpointAhead = errors.New("relay: the stored checkpoint is ahead of this relay (another relay runs under the same name?)")

// PGCheckpoints keeps checkpoints in PostgreSQL, one row per relay name, in a table of its
// own schema, beside the event store.
type PGCheckpoints struct {
	pool *pgxpool.Pool
	name string
	load string
	save string
}

// DefaultCheckpointSchema holds the relay's table unless told otherwise.
const DefaultCheckpointSchema = "securepay_relay"

var identifier = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// OpenPGCheckpoints creates the schema and table when missing and returns the checkpoints
// of relay name. The login role needs CREATE on the database the first time only, unless
// the owner prepared them (GrantCheckpoints, run by `securepay migrate --relay-role`).
func OpenPGCheckpoints(ctx context.Context, pool *pgxpool.Pool, schema, name string) (*PGCheckpoints, error) {
	if name == "" || len(name) > 200 {
		return nil, fmt.Errorf("relay checkpoints: name must be 1..200 bytes, got %d", len(name))
	}
	table, err := createCheckpointTable(ctx, pool, schema)
	if err != nil {
		return nil, err
	}
	return &PGCheckpoints{
		pool: pool,
		name: name,
		load: "SELECT position FROM " + table + " WHERE name = $1",
		// The WHERE keeps the checkpoint from moving back; no row means it was ahead.
		save: "INSERT INTO " + table + " AS c (name, position) VALUES ($1, $2) " +
			"ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now() " +
			"WHERE c.position <= excluded.position",
	}, nil
}

// createCheckpointTable creates the checkpoint schema and table when missing and returns
// the table's quoted name.
func createCheckpointTable(ctx context.Context, pool *pgxpool.Pool, schema string) (string, error) {
	if !identifier.MatchString(schema) {
		return "", fmt.Errorf("relay checkpoints: schema %q must be a lower-case identifier", schema)
	}
	table := pgx.Identifier{schema, "checkpoints"}.Sanitize()
	ddl := []string{
		"CREATE SCHEMA IF NOT EXISTS " + pgx.Identifier{schema}.Sanitize(),
		"CREATE TABLE IF NOT EXISTS " + table + ` (
			name       text PRIMARY KEY,
			position   bigint NOT NULL CHECK (position >= 0),
			updated_at timestamptz NOT NULL DEFAULT now())`,
	}
	for _, q := range ddl {
		if _, err := pool.Exec(ctx, q); err != nil {
			// Two relays starting together race on CREATE ... IF NOT EXISTS, and a relay
			// role without CREATE on the database fails it even when the owner made the
			// table: the error is harmless if the table is there and readable now.
			if _, err2 := pool.Exec(ctx, "SELECT 1 FROM "+table+" LIMIT 0"); err2 != nil {
				return "", fmt.Errorf("relay checkpoints: create %s: %w (as the owner, run `securepay migrate --relay-role ROLE`, which creates it and grants the relay's role its rows)", table, err)
			}
		}
	}
	return table, nil
}

// GrantCheckpoints creates the checkpoint schema and table when missing, as the role of
// pool (the owner, in `securepay migrate --relay-role`), and lets role read and write the
// checkpoints in it, and nothing more: the relay then needs no CREATE on the database.
func GrantCheckpoints(ctx context.Context, pool *pgxpool.Pool, schema, role string) error {
	if !identifier.MatchString(role) {
		return fmt.Errorf("relay checkpoints: role %q must be a lower-case identifier", role)
	}
	table, err := createCheckpointTable(ctx, pool, schema)
	if err != nil {
		return err
	}
	r := pgx.Identifier{role}.Sanitize()
	for _, q := range []string{
		"GRANT USAGE ON SCHEMA " + pgx.Identifier{schema}.Sanitize() + " TO " + r,
		"GRANT SELECT, INSERT, UPDATE ON " + table + " TO " + r,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			return fmt.Errorf("relay checkpoints: %s: %w", q, err)
		}
	}
	return nil
}

// Load returns the checkpoint, 0 when the relay never saved one.
func (p *PGCheckpoints) Load(ctx context.Context) (uint64, error) {
	var pos int64
	err := p.pool.QueryRow(ctx, p.load, p.name).Scan(&pos)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("relay checkpoint %s: load: %w", p.name, err)
	}
	return uint64(pos), nil
}

// Save stores position; it is durable when Save returns (synchronous commit).
func (p *PGCheckpoints) Save(ctx context.Context, position uint64) error {
	tag, err := p.pool.Exec(ctx, p.save, p.name, int64(position))
	if err != nil {
		return fmt.Errorf("relay checkpoint %s: save %d: %w", p.name, position, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("relay checkpoint %s: save %d: %w", p.name, position, ErrCheckpointAhead)
	}
	return nil
}

// FileCheckpoints keeps the checkpoint in a file (securepay dev, whose embedded store is a
// directory). Each save writes a new file, syncs it and renames it over the old one, so a
// crash leaves the old checkpoint or the new one, never a torn one.
type FileCheckpoints struct {
	Path string
}

// Load returns the checkpoint, 0 when the file does not exist.
func (f FileCheckpoints) Load(_ context.Context) (uint64, error) {
	b, err := os.ReadFile(f.Path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("relay checkpoint: %w", err)
	}
	pos, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("relay checkpoint %s: not a position: %w", f.Path, err)
	}
	return pos, nil
}

// Save replaces the file with position.
func (f FileCheckpoints) Save(ctx context.Context, position uint64) error {
	old, err := f.Load(ctx)
	if err != nil {
		return err
	}
	if old > position {
		return fmt.Errorf("relay checkpoint %s: save %d over %d: %w", f.Path, position, old, ErrCheckpointAhead)
	}
	dir := filepath.Dir(f.Path)
	tmp, err := os.CreateTemp(dir, filepath.Base(f.Path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("relay checkpoint: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing to remove
	_, err = tmp.WriteString(strconv.FormatUint(position, 10) + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), f.Path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("relay checkpoint %s: save %d: %w", f.Path, position, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
