package projections

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/securepay/securepay/eventstore"
)

// Admin is what `securepay projections list | status | rebuild NAME` calls. It reads the
// views' own records (checkpoints, errors, shadow checkpoints), so it works from any
// process, whether or not the projectors run in it.
type Admin struct {
	Store eventstore.Store
	PG    *PGViews    // may be nil (then only Redis projectors are listed)
	Redis *RedisViews // may be nil
	Clock func() time.Time
}

// StallAfter is how long a projector may be behind the head without moving its checkpoint
// before Admin.Status calls it stalled.
const StallAfter = 30 * time.Second

// ProjectorInfo describes a projector for `projections list`.
type ProjectorInfo struct {
	Name        string
	Backend     string // "postgres" or "redis"
	Views       string
	Rebuildable bool
}

// List returns the projectors this deployment has.
func (a *Admin) List() []ProjectorInfo {
	var out []ProjectorInfo
	if a.PG != nil {
		out = append(out,
			ProjectorInfo{AccountsProjector, "postgres", a.PG.schema + ".balances, " + a.PG.schema + ".history", true},
			ProjectorInfo{PaymentsProjector, "postgres", a.PG.schema + ".payments", true})
	}
	if a.Redis != nil {
		out = append(out,
			ProjectorInfo{BalanceCacheProjector, "redis", a.Redis.key("bal", "*") + " (read-aside cache)", false},
			ProjectorInfo{NotificationsProjector, "redis", a.Redis.key("notify", "*") + " (streams)", false})
	}
	return out
}

// WriteList prints List as a table.
func (a *Admin) WriteList(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tBACKEND\tREBUILD\tVIEWS")
	for _, p := range a.List() {
		rb := "no (replays itself when its checkpoint is lost)"
		if p.Rebuildable {
			rb = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, p.Backend, rb, p.Views)
	}
	return tw.Flush()
}

// Status reads every projector's status from its view.
func (a *Admin) Status(ctx context.Context) ([]Status, error) {
	if a.Store == nil {
		return nil, errors.New("projections admin: Store is required")
	}
	now := time.Now
	if a.Clock != nil {
		now = a.Clock
	}
	head, err := a.Store.Head(ctx)
	if err != nil {
		return nil, fmt.Errorf("projections status: head: %w", err)
	}
	var out []Status
	if a.PG != nil {
		for _, name := range []string{AccountsProjector, PaymentsProjector} {
			st := Status{Name: name, Head: head, State: StateRunning}
			var pos, errPos int64
			var msg string
			var updated time.Time
			err := a.PG.pool.QueryRow(ctx, `SELECT position, error, error_position, updated_at FROM `+a.PG.live.q("checkpoints")+` WHERE name = $1`, name).
				Scan(&pos, &msg, &errPos, &updated)
			switch {
			case err == nil:
				st.Checkpoint, st.Error, st.ErrorPosition = uint64(pos), msg, uint64(errPos)
				if msg != "" {
					st.State = StateStopped
				}
			case isNoRows(err):
				st.State = StateIdle
			default:
				return nil, fmt.Errorf("projections status: %s: %w", name, err)
			}
			err = a.PG.pool.QueryRow(ctx, `SELECT position FROM `+a.PG.live.q("checkpoints")+` WHERE name = $1`, name+shadowSuffix).Scan(&pos)
			switch {
			case err == nil:
				st.State, st.RebuildCheckpoint = StateRebuilding, uint64(pos)
			case !isNoRows(err):
				return nil, fmt.Errorf("projections status: %s shadow: %w", name, err)
			}
			if err := fillLag(ctx, a.Store, now(), &st); err != nil {
				return nil, err
			}
			// From another process "running" cannot be seen, only progress: a projector
			// that is behind and has not moved its checkpoint for a while is not running.
			if st.State == StateRunning && st.LagEvents > 0 && now().Sub(updated) > StallAfter {
				st.State = StateStalled
			}
			out = append(out, st)
		}
	}
	if a.Redis != nil {
		for _, name := range []string{BalanceCacheProjector, NotificationsProjector} {
			cp, err := a.Redis.checkpoint(ctx, name)
			if err != nil {
				return nil, err
			}
			st := Status{Name: name, Head: head, Checkpoint: cp, State: StateRunning}
			if err := fillLag(ctx, a.Store, now(), &st); err != nil {
				return nil, err
			}
			out = append(out, st)
		}
	}
	return out, nil
}

// WriteStatus prints statuses as a table.
func WriteStatus(w io.Writer, sts []Status) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tCHECKPOINT\tHEAD\tLAG EVENTS\tLAG SECONDS\tDETAIL")
	for _, s := range sts {
		detail := s.Error
		if s.State == StateRebuilding {
			detail = fmt.Sprintf("shadow at %d of %d", s.RebuildCheckpoint, s.Head)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%.1f\t%s\n", s.Name, s.State, s.Checkpoint, s.Head, s.LagEvents, s.LagSeconds, detail)
	}
	return tw.Flush()
}

// Rebuild rebuilds a PostgreSQL projector's view (see PGViews.Rebuild) and prints a summary
// line to w.
func (a *Admin) Rebuild(ctx context.Context, name string, w io.Writer, opts RebuildOptions) (RebuildResult, error) {
	if a.PG == nil {
		return RebuildResult{}, errors.New("projections rebuild: no PostgreSQL views configured")
	}
	if (name == BalanceCacheProjector || name == NotificationsProjector) && a.Redis != nil {
		return RebuildResult{}, fmt.Errorf("projections rebuild: %s lives in Redis and is not rebuilt into shadows: delete its checkpoint key %s and it replays the log", name, a.Redis.CheckpointKey(name))
	}
	if opts.Progress == nil {
		opts.Progress = w
	}
	res, err := a.PG.Rebuild(ctx, a.Store, name, opts)
	if err != nil {
		return res, err
	}
	if w != nil {
		fmt.Fprintf(w, "rebuilt %s: %d events folded (resumed from %d), view at position %d, took %s\n",
			res.Name, res.Events, res.ResumedFrom, res.Position, res.Elapsed.Round(time.Millisecond))
	}
	return res, nil
}
