package pgtest_test

import (
	"context"
	"strings"
	"testing"

	"github.com/securepay/securepay/internal/pgtest"
)

// recorder is a testing.TB that notes a fatal failure instead of ending the test.
type recorder struct {
	testing.TB
	fatal string
}

func (r *recorder) Helper()                           {}
func (r *recorder) Fatalf(format string, args ...any) { r.fatal = format }

// Without the variable a test fails, it does not skip: a backend that was not tested must
// not look green.
func TestDSNFailsWhenTheVariableIsUnset(t *testing.T) {
	t.Setenv(pgtest.Env, "")
	r := &recorder{}
	pgtest.DSN(r)
	if !strings.Contains(r.fatal, "is not set") {
		t.Fatalf("DSN with %s unset: fatal %q; want a failure that says so", pgtest.Env, r.fatal)
	}
}

func TestSchemaIsDroppedAtCleanup(t *testing.T) {
	pool := pgtest.Pool(t, 2)
	ctx := context.Background()
	var schema string
	t.Run("user", func(t *testing.T) {
		schema = pgtest.Schema(t, "pgtest")
		if _, err := pool.Exec(ctx, `CREATE SCHEMA `+schema+`; CREATE TABLE `+schema+`.t (x int)`); err != nil {
			t.Fatal(err)
		}
	})
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname = $1`, schema).Scan(&n); err != nil || n != 0 {
		t.Fatalf("schema %s after the test that used it: %d left, %v; want it dropped", schema, n, err)
	}
}
