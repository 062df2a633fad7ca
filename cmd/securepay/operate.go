package main

// Operator and auditor commands. They work on the stores directly, not through the API:
// an auditor who does not trust the service reads the log itself, and an operator rebuilds
// views in the database the service reads.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/securepay/securepay/audit"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/eventstore/postgres"
	"github.com/securepay/securepay/projections"
)

// storeFlags say where the log (and the views) are: a PostgreSQL database, or the
// directory of a stopped `securepay dev --dir` ledger.
type storeFlags struct {
	dsn, eventSchema, viewSchema, redisAddr, dir string
	redisDB                                      int
}

func (f *storeFlags) register(fs *flag.FlagSet, e env, withRedis bool) {
	fs.StringVar(&f.dsn, "postgres-dsn", envOr(e, "SECUREPAY_POSTGRES_DSN", ""), "PostgreSQL DSN of the event store and views [$SECUREPAY_POSTGRES_DSN]")
	fs.StringVar(&f.eventSchema, "event-schema", envOr(e, "SECUREPAY_EVENT_SCHEMA", postgres.DefaultSchema), "schema of the event store [$SECUREPAY_EVENT_SCHEMA]")
	fs.StringVar(&f.viewSchema, "view-schema", envOr(e, "SECUREPAY_VIEW_SCHEMA", projections.DefaultViewSchema), "schema of the views [$SECUREPAY_VIEW_SCHEMA]")
	fs.StringVar(&f.dir, "dir", "", "instead of PostgreSQL: the directory of a stopped `securepay dev --dir` ledger")
	if withRedis {
		fs.StringVar(&f.redisAddr, "redis-addr", envOr(e, "SECUREPAY_REDIS_ADDR", ""), "Redis host:port, to include the Redis projectors [$SECUREPAY_REDIS_ADDR]")
		fs.IntVar(&f.redisDB, "redis-db", 0, "Redis database number")
	}
}

// opened is what a command works on; close releases everything.
type opened struct {
	store eventstore.Store
	pg    *projections.PGViews // nil for an embedded ledger
	redis *projections.RedisViews
	close func()
}

func (f *storeFlags) open(ctx context.Context, e env, cmd string) (*opened, error) {
	switch {
	case f.dir != "" && f.dsn != "":
		return nil, usagef("%s: give --dir or --postgres-dsn, not both", cmd)
	case f.dir != "":
		s, err := embedded.Open(f.dir, embedded.Options{Logger: quietPebble{log: slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}})
		if err != nil {
			return nil, fmt.Errorf("%s: open the ledger in %s (stop `securepay dev` first: one process at a time): %w", cmd, f.dir, err)
		}
		return &opened{store: s, close: func() { s.Close() }}, nil
	case f.dsn == "":
		return nil, usagef("%s: say where the log is: --postgres-dsn (or SECUREPAY_POSTGRES_DSN), or --dir for a dev ledger", cmd)
	}
	s, err := postgres.Open(ctx, postgres.Config{DSN: f.dsn, Schema: f.eventSchema})
	if err != nil {
		return nil, fmt.Errorf("%s: open the event store: %v", cmd, redactDSNError(err))
	}
	o := &opened{store: s}
	closers := []func(){func() { s.Close() }}
	o.close = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	pg, err := projections.OpenPG(ctx, projections.PGConfig{Pool: s.Pool(), Schema: f.viewSchema})
	if err != nil {
		o.close()
		return nil, fmt.Errorf("%s: open the views in schema %s (run `securepay migrate`?): %w", cmd, f.viewSchema, err)
	}
	o.pg = pg
	if f.redisAddr != "" {
		rdb := redis.NewClient(&redis.Options{Addr: f.redisAddr, DB: f.redisDB})
		closers = append(closers, func() { rdb.Close() })
		rv, err := projections.NewRedisViews(projections.RedisConfig{Client: rdb})
		if err != nil {
			o.close()
			return nil, fmt.Errorf("%s: redis views: %w", cmd, err)
		}
		o.redis = rv
	}
	return o, nil
}

// runProjections: securepay projections list | status | rebuild NAME
func runProjections(ctx context.Context, e env, args []string) error {
	fs := flag.NewFlagSet("projections", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	var sf storeFlags
	sf.register(fs, e, true)
	plain := fs.Bool("plain", false, "rebuild: plain progress lines even on a terminal")
	pos, err := parseInterleaved(fs, args, 2)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("projections: say list, status or rebuild NAME")
	}
	verb := pos[0]
	switch {
	case verb == "rebuild" && len(pos) != 2:
		return usagef("projections rebuild: name the projector to rebuild (see `securepay projections list`)")
	case verb != "rebuild" && len(pos) != 1:
		return usagef("projections %s takes no argument", verb)
	case verb != "list" && verb != "status" && verb != "rebuild":
		return usagef("projections: unknown verb %q: say list, status or rebuild NAME", verb)
	}
	if sf.dir != "" {
		return usagef("projections: the dev ledger keeps its views in memory and rebuilds them at every start; this command is for PostgreSQL views")
	}
	o, err := sf.open(ctx, e, "projections")
	if err != nil {
		return err
	}
	defer o.close()
	admin := &projections.Admin{Store: o.store, PG: o.pg, Redis: o.redis}
	switch verb {
	case "list":
		return admin.WriteList(e.stdout)
	case "status":
		sts, err := admin.Status(ctx)
		if err != nil {
			return fmt.Errorf("projections status: %w", err)
		}
		if err := projections.WriteStatus(e.stdout, sts); err != nil {
			return err
		}
		for _, s := range sts {
			if s.State == projections.StateStopped {
				return fmt.Errorf("projections status: %s is stopped on an error", s.Name)
			}
		}
		return nil
	default:
		_, err := admin.Rebuild(ctx, pos[1], e.stdout, projections.RebuildOptions{
			Progress: e.stderr, ProgressOptions: projections.ProgressOptions{ForcePlain: *plain},
		})
		if err != nil {
			return fmt.Errorf("projections rebuild %s: %w (run the same command again to resume)", pos[1], err)
		}
		return nil
	}
}

// runAudit: securepay audit export | verify | balances | replay STREAM
func runAudit(ctx context.Context, e env, args []string) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	var sf storeFlags
	sf.register(fs, e, false)
	from := fs.Uint64("from", 0, "export: first position (inclusive; 0 = the start)")
	to := fs.Uint64("to", 0, "export: last position (inclusive; 0 = the head)")
	stream := fs.String("stream", "", "export: only this stream")
	asOf := fs.String("as-of", "", "balances: a log position or an RFC 3339 time (default: the head)")
	pos, err := parseInterleaved(fs, args, 2)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("audit: say export, verify, balances or replay STREAM")
	}
	verb := pos[0]
	if (verb == "replay") != (len(pos) == 2) {
		if verb == "replay" {
			return usagef("audit replay: name the stream (account-ID or payment-ID)")
		}
		return usagef("audit %s takes no argument", verb)
	}
	o, err := sf.open(ctx, e, "audit")
	if err != nil {
		return err
	}
	defer o.close()
	start := time.Now()
	switch verb {
	case "export":
		n, err := audit.Export(ctx, o.store, e.stdout, audit.ExportOptions{From: *from, To: *to, Stream: *stream, Progress: e.stderr})
		if err != nil {
			return fmt.Errorf("audit export: %w", err)
		}
		fmt.Fprintf(e.stderr, "exported %d events in %s\n", n, time.Since(start).Round(time.Millisecond))
		return nil
	case "verify":
		_, err := audit.Verify(ctx, o.store, e.stdout, audit.VerifyOptions{Progress: e.stderr})
		return err
	case "balances":
		point, err := audit.ParseAsOf(*asOf)
		if *asOf == "" {
			point, err = projections.AsOf{}, nil
		}
		if err != nil {
			return usagef("audit balances: --as-of %q: %v", *asOf, err)
		}
		var reader projections.Reader
		if o.pg != nil {
			reader = o.pg.Reader()
		}
		_, err = audit.Balances(ctx, o.store, e.stdout, audit.BalancesOptions{AsOf: point, Reader: reader, Progress: e.stderr})
		if errors.Is(err, audit.ErrDifferences) {
			return fmt.Errorf("audit balances: the service's view differs from the log (see the report above)")
		}
		return err
	case "replay":
		_, err := audit.Replay(ctx, o.store, e.stdout, pos[1], audit.ReplayOptions{})
		return err
	}
	return usagef("audit: unknown verb %q: say export, verify, balances or replay STREAM", verb)
}
