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
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/securepay/securepay/audit"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/eventstore/postgres"
	"github.com/securepay/securepay/internal/progress"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/projections/pg"
	redisviews "github.com/securepay/securepay/projections/redis"
)

// storeFlags say where the log (and the views) are: a PostgreSQL database, or the
// directory of a stopped `securepay dev --dir` ledger.
type storeFlags struct {
	dsn, eventSchema, viewSchema, redisAddr, dir string
	redisDB                                      int
}

func (f *storeFlags) register(fs *flag.FlagSet, e env, withRedis bool) {
	ef := envFlags{fs, e}
	ef.String(&f.dsn, "postgres-dsn", "SECUREPAY_POSTGRES_DSN", "", "PostgreSQL `DSN` of the event store and views")
	ef.String(&f.eventSchema, "event-schema", "SECUREPAY_EVENT_SCHEMA", postgres.DefaultSchema, "`schema` of the event store")
	ef.String(&f.viewSchema, "view-schema", "SECUREPAY_VIEW_SCHEMA", pg.DefaultSchema, "`schema` of the views")
	if withRedis {
		ef.String(&f.redisAddr, "redis-addr", "SECUREPAY_REDIS_ADDR", "", "Redis `host:port`, to include the Redis projectors")
		fs.IntVar(&f.redisDB, "redis-db", 0, "Redis database `number`")
	}
}

// registerDir offers --dir: an auditor reads a dev ledger's log as well as PostgreSQL's.
func (f *storeFlags) registerDir(fs *flag.FlagSet) {
	fs.StringVar(&f.dir, "dir", "", "instead of PostgreSQL: the `directory` of a stopped dev ledger (kept with securepay dev --dir)")
}

// opened is what a command works on; close releases everything.
type opened struct {
	store eventstore.Store
	pg    *pg.Views // nil for an embedded ledger
	redis *redisviews.Views
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
	views, err := pg.Open(ctx, pg.Config{Pool: s.Pool(), Schema: f.viewSchema})
	if err != nil {
		o.close()
		return nil, fmt.Errorf("%s: open the views in schema %s (run `securepay migrate`?): %w", cmd, f.viewSchema, err)
	}
	o.pg = views
	if f.redisAddr != "" {
		rdb := redis.NewClient(&redis.Options{Addr: f.redisAddr, DB: f.redisDB})
		closers = append(closers, func() { rdb.Close() })
		rv, err := redisviews.New(redisviews.Config{Client: rdb})
		if err != nil {
			o.close()
			return nil, fmt.Errorf("%s: redis views: %w", cmd, err)
		}
		o.redis = rv
	}
	return o, nil
}

func projectionsCommand(e env) *Command {
	list := &Command{
		UsageLine: "securepay projections list [flags]",
		Short:     "list the projectors of this deployment and the views they keep",
	}
	list.Run = newProjectionsCmd(e, list).list
	status := &Command{
		UsageLine: "securepay projections status [flags]",
		Short:     "show each projector's checkpoint, lag and state (fails if one is stopped on an error)",
	}
	status.Run = newProjectionsCmd(e, status).status
	rebuild := &Command{
		UsageLine: "securepay projections rebuild NAME [--plain] [flags]",
		Short:     "rebuild a PostgreSQL projector's view from the log, in shadow tables swapped in at the end",
		Args:      []Arg{{Name: "NAME", Missing: "name the projector to rebuild (see `securepay projections list`)"}},
	}
	rc := newProjectionsCmd(e, rebuild)
	rebuild.Flag.BoolVar(&rc.plain, "plain", false, "plain progress lines even on a terminal")
	rebuild.Run = rc.rebuild
	return &Command{
		UsageLine: "securepay projections SUBCOMMAND [NAME] [flags]",
		Short:     "operators: list | status | rebuild NAME of the PostgreSQL/Redis views",
		Long: "Operators: list the projectors, see how far behind the log each one is, and rebuild a\n" +
			"PostgreSQL view. They read the views' own records, from any process, on PostgreSQL\n" +
			"(--postgres-dsn), with the Redis projectors too when --redis-addr is given. A dev ledger\n" +
			"keeps its views in memory and rebuilds them at every start.",
		Commands: []*Command{list, status, rebuild},
	}
}

// projectionsCmd is one projections subcommand's flags.
type projectionsCmd struct {
	store storeFlags
	plain bool // rebuild
}

func newProjectionsCmd(e env, cmd *Command) *projectionsCmd {
	c := &projectionsCmd{}
	c.store.register(&cmd.Flag, e, true)
	// --dir is refused with the reason: the dev ledger's views are not on disk.
	c.store.registerDir(&cmd.Flag)
	hide(&cmd.Flag, "dir")
	return c
}

// admin opens the views; call the returned close when done.
func (c *projectionsCmd) admin(ctx context.Context, e env) (*projections.Admin, func(), error) {
	if c.store.dir != "" {
		return nil, nil, usagef("projections: the dev ledger keeps its views in memory and rebuilds them at every start; this command is for PostgreSQL views")
	}
	o, err := c.store.open(ctx, e, "projections")
	if err != nil {
		return nil, nil, err
	}
	admin := &projections.Admin{Store: o.store, Views: []projections.Views{o.pg}}
	if o.redis != nil {
		admin.Views = append(admin.Views, o.redis)
	}
	return admin, o.close, nil
}

func (c *projectionsCmd) list(ctx context.Context, e env, _ []string) error {
	admin, done, err := c.admin(ctx, e)
	if err != nil {
		return err
	}
	defer done()
	return admin.WriteList(e.stdout)
}

func (c *projectionsCmd) status(ctx context.Context, e env, _ []string) error {
	admin, done, err := c.admin(ctx, e)
	if err != nil {
		return err
	}
	defer done()
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
}

// rebuildable are the projectors `projections rebuild` rebuilds into shadow tables: the
// PostgreSQL ones, which Admin.List marks Rebuildable. The Redis projectors replay the log
// by themselves once their checkpoint key is deleted; Admin.Rebuild says so when asked.
func rebuildable() []string {
	return []string{projections.AccountsProjector, projections.PaymentsProjector}
}

func (c *projectionsCmd) rebuild(ctx context.Context, e env, args []string) error {
	name := args[0]
	known := rebuildable()
	// A misspelt name is refused before any connection, so its error cannot read like an
	// interrupted rebuild that a rerun would resume.
	resumable := slices.Contains(known, name)
	if !resumable && name != redisviews.BalanceCacheProjector && name != redisviews.NotificationsProjector {
		return usagef("projections rebuild: unknown projector %q: say %s", name, strings.Join(known, " or "))
	}
	admin, done, err := c.admin(ctx, e)
	if err != nil {
		return err
	}
	defer done()
	_, err = admin.Rebuild(ctx, name, e.stdout, projections.RebuildOptions{
		Progress: progress.New(e.stderr, "rebuild "+name, progress.Options{ForcePlain: c.plain}),
	})
	switch {
	case err != nil && resumable:
		return fmt.Errorf("projections rebuild %s: %w (run the same command again to resume)", name, err)
	case err != nil:
		return fmt.Errorf("projections rebuild %s: %w", name, err)
	}
	return nil
}

func auditCommand(e env) *Command {
	export := &Command{
		UsageLine: "securepay audit export [--from POSITION] [--to POSITION] [--stream STREAM] [flags]",
		Short:     "print the log as JSON lines with their hashes, decodable without our code (docs/EVENTS.md)",
	}
	ec := newAuditCmd(e, export)
	export.Flag.Uint64Var(&ec.from, "from", 0, "first `position` (inclusive; 0 = the start)")
	export.Flag.Uint64Var(&ec.to, "to", 0, "last `position` (inclusive; 0 = the head)")
	export.Flag.StringVar(&ec.stream, "stream", "", "only this `stream` (account-ID or payment-ID)")
	export.Run = ec.export
	verify := &Command{
		UsageLine: "securepay audit verify [flags]",
		Short:     "recompute the hash chain of the whole log and name the first bad position",
		Long: "Recompute the hash chain of the whole log and name the first bad position; with\n" +
			"--since-checkpoint, also prove that the log extends a signed checkpoint kept earlier.\n" +
			"Either way, every stored snapshot is checked against the events (the event it is bound\n" +
			"to, and its account state against the fold of the stream), without the server's\n" +
			"snapshot key; a snapshot that does not match is named and the command fails.",
	}
	vc := newAuditCmd(e, verify)
	vc.registerSince(&verify.Flag) // audit_tlog.go
	verify.Run = vc.verify
	balances := &Command{
		UsageLine: "securepay audit balances [--as-of POSITION|TIME] [flags]",
		Short:     "recompute every balance from the log and compare it with the service's view",
	}
	bc := newAuditCmd(e, balances)
	balances.Flag.StringVar(&bc.asOf, "as-of", "", "the log `position` or RFC 3339 time to recompute at (default: the head)")
	balances.Run = bc.balances
	replay := &Command{
		UsageLine: "securepay audit replay STREAM [flags]",
		Short:     "print a stream's events one by one, with the state after each",
		Args:      []Arg{{Name: "STREAM", Missing: "name the stream (account-ID or payment-ID)"}},
	}
	replay.Run = newAuditCmd(e, replay).replay
	return &Command{
		UsageLine: "securepay audit SUBCOMMAND [STREAM] [flags]",
		Short:     "auditors: export | verify | balances | replay STREAM, reading the log directly",
		Long: "Auditors: read the log directly, not through the service, and recompute what the\n" +
			"service claims: on PostgreSQL (--postgres-dsn), or in the directory of a stopped dev\n" +
			"ledger (--dir).",
		Commands: []*Command{export, verify, balances, replay,
			auditCheckpointCommand(e),
			auditProveCommand(e),
			auditCheckReceiptCommand(e),
			auditKeygenCommand(e),
		},
	}
}

// auditCmd is one audit subcommand's flags.
type auditCmd struct {
	store    storeFlags
	from, to uint64 // export
	stream   string // export
	asOf     string // balances
	since    sinceFlags
}

func newAuditCmd(e env, cmd *Command) *auditCmd {
	c := &auditCmd{}
	c.store.register(&cmd.Flag, e, false)
	c.store.registerDir(&cmd.Flag)
	return c
}

func (c *auditCmd) export(ctx context.Context, e env, _ []string) error {
	o, err := c.store.open(ctx, e, "audit")
	if err != nil {
		return err
	}
	defer o.close()
	start := time.Now()
	n, err := audit.Export(ctx, o.store, e.stdout, audit.ExportOptions{From: c.from, To: c.to, Stream: c.stream, Progress: e.stderr})
	if err != nil {
		return fmt.Errorf("audit export: %w", err)
	}
	fmt.Fprintf(e.stderr, "exported %d events in %s\n", n, time.Since(start).Round(time.Millisecond))
	return nil
}

func (c *auditCmd) verify(ctx context.Context, e env, _ []string) error {
	switch {
	case c.since.checkpoint != "":
		return c.verifySince(ctx, e)
	case c.since.publicKey != "" || c.since.tree != "":
		return usagef("audit verify: --public-key and --tree go with --since-checkpoint FILE")
	}
	o, err := c.store.open(ctx, e, "audit")
	if err != nil {
		return err
	}
	defer o.close()
	_, err = audit.Verify(ctx, o.store, e.stdout, audit.VerifyOptions{Progress: e.stderr})
	if err != nil && ctx.Err() != nil {
		return err
	}
	// The snapshots are checked even when the chain is broken: an auditor wants every
	// finding from one run.
	if serr := checkSnapshots(ctx, e, o.store); err == nil {
		err = serr
	}
	return err
}

func (c *auditCmd) balances(ctx context.Context, e env, _ []string) error {
	point := projections.AsOf{}
	if c.asOf != "" {
		p, err := audit.ParseAsOf(c.asOf)
		if err != nil {
			return usagef("audit balances: --as-of %q: %v", c.asOf, err)
		}
		point = p
	}
	o, err := c.store.open(ctx, e, "audit")
	if err != nil {
		return err
	}
	defer o.close()
	var reader projections.Reader
	if o.pg != nil {
		reader = o.pg.Reader()
	}
	_, err = audit.Balances(ctx, o.store, e.stdout, audit.BalancesOptions{AsOf: point, Reader: reader, Progress: e.stderr})
	if errors.Is(err, audit.ErrDifferences) {
		return fmt.Errorf("audit balances: the service's view differs from the log (see the report above)")
	}
	return err
}

func (c *auditCmd) replay(ctx context.Context, e env, args []string) error {
	o, err := c.store.open(ctx, e, "audit")
	if err != nil {
		return err
	}
	defer o.close()
	_, err = audit.Replay(ctx, o.store, e.stdout, args[0], audit.ReplayOptions{})
	return err
}
