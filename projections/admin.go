package projections

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/securepay/securepay/eventstore"
)

// What operators see of the projectors, whatever backend keeps their views:
// `securepay projections list | status | rebuild NAME`. Each backend reads its own records
// (checkpoint rows, checkpoint keys), so this works from any process, whether or not the
// projectors run in it; Admin adds what every backend shares (the head, the lag, stalls).

// Views are one backend's views as an operator sees them.
type Views interface {
	// Describe lists the projectors that write these views.
	Describe() []ProjectorInfo
	// Records reads what the views keep of each projector, in Describe's order.
	Records(ctx context.Context) ([]Record, error)
}

// ProjectorInfo describes a projector for `projections list`.
type ProjectorInfo struct {
	Name        string
	Backend     string // "postgres" or "redis"
	Views       string
	Rebuildable bool
	// NotRebuilt, when not Rebuildable, says how the view is restored instead.
	NotRebuilt string
}

// Record is what a backend keeps of one projector.
type Record struct {
	Name       string
	Checkpoint uint64
	// NoCheckpoint: the views hold no checkpoint for it; it never ran against them.
	NoCheckpoint  bool
	Error         string // why it stopped, if it did
	ErrorPosition uint64
	// UpdatedAt is when the checkpoint last moved; zero when the backend does not keep it
	// (then the projector is never called stalled).
	UpdatedAt time.Time
	// Rebuilding: a rebuild's shadow copy exists, at RebuildCheckpoint.
	Rebuilding        bool
	RebuildCheckpoint uint64
}

// Rebuilder is implemented by views that rebuild a projector's view from the log without
// downtime: a shadow copy is built beside the live view, which keeps serving and being
// updated, and swapped in at the end.
type Rebuilder interface {
	Rebuild(ctx context.Context, store eventstore.Store, name string, opts RebuildOptions) (RebuildResult, error)
}

// RebuildOptions tune a rebuild.
type RebuildOptions struct {
	// Progress is told how far the rebuild is; nil reports nothing.
	Progress Progress
	// BatchSize is the events per shadow transaction; default 5,000.
	BatchSize int
	// SwapLag is how close to the head the shadow must be before the swap transaction;
	// default 5,000 events. The swap holds the live view's locks while it applies at most
	// this many events (plus what arrives meanwhile), so it bounds the pause of writers.
	SwapLag uint64
	// StopAfter, when > 0, stops the rebuild (without swapping) once the shadow checkpoint
	// reaches it: for tests of a killed rebuild, and for throttled rebuilds.
	StopAfter uint64
}

// Progress is told how far a long run has come (internal/progress draws it). It lets a
// rebuild report without knowing whether a terminal or a log file reads it.
type Progress interface {
	// Begin says where the run starts (a resumed run starts past 0).
	Begin(done uint64)
	Update(done, total uint64)
	Finish(done, total uint64)
}

// ErrRebuildStopped is returned when RebuildOptions.StopAfter stopped a rebuild early; run
// it again to resume.
var ErrRebuildStopped = errors.New("projections: rebuild stopped before the swap (resume by running it again)")

// RebuildResult says what a rebuild did.
type RebuildResult struct {
	Name        string
	ResumedFrom uint64 // shadow checkpoint found at start (0 for a fresh rebuild)
	Position    uint64 // checkpoint of the swapped-in view
	Events      uint64 // events folded by this run
	Elapsed     time.Duration
}

// Admin is what `securepay projections list | status | rebuild NAME` calls.
type Admin struct {
	Store eventstore.Store
	// Views are the backends' views, in the order List and Status report them.
	Views []Views
	Clock func() time.Time
}

// StallAfter is how long a projector may be behind the head without moving its checkpoint
// before Admin.Status calls it stalled.
const StallAfter = 30 * time.Second

// List returns the projectors this deployment has.
func (a *Admin) List() []ProjectorInfo {
	var out []ProjectorInfo
	for _, v := range a.Views {
		out = append(out, v.Describe()...)
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

// Status reads every projector's status from its views' records.
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
	for _, v := range a.Views {
		recs, err := v.Records(ctx)
		if err != nil {
			return nil, fmt.Errorf("projections status: %w", err)
		}
		for _, r := range recs {
			st := Status{Name: r.Name, Head: head, State: StateRunning, Checkpoint: r.Checkpoint, Error: r.Error, ErrorPosition: r.ErrorPosition}
			switch {
			case r.NoCheckpoint:
				st.State = StateIdle
			case r.Error != "":
				st.State = StateStopped
			}
			if r.Rebuilding {
				st.State, st.RebuildCheckpoint = StateRebuilding, r.RebuildCheckpoint
			}
			if err := fillLag(ctx, a.Store, now(), &st); err != nil {
				return nil, err
			}
			// From another process "running" cannot be seen, only progress: a projector
			// that is behind and has not moved its checkpoint for a while is not running.
			if st.State == StateRunning && st.LagEvents > 0 && !r.UpdatedAt.IsZero() && now().Sub(r.UpdatedAt) > StallAfter {
				st.State = StateStalled
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

// Rebuild rebuilds projector name's view (see Rebuilder) and prints a summary line to w.
func (a *Admin) Rebuild(ctx context.Context, name string, w io.Writer, opts RebuildOptions) (RebuildResult, error) {
	var known []string
	for _, v := range a.Views {
		for _, p := range v.Describe() {
			known = append(known, p.Name)
			if p.Name != name {
				continue
			}
			rb, ok := v.(Rebuilder)
			if !p.Rebuildable || !ok {
				return RebuildResult{}, fmt.Errorf("projections rebuild: %s lives in %s and is not rebuilt into shadows: %s", name, p.Backend, p.NotRebuilt)
			}
			res, err := rb.Rebuild(ctx, a.Store, name, opts)
			if err != nil {
				return res, err
			}
			if w != nil {
				fmt.Fprintf(w, "rebuilt %s: %d events folded (resumed from %d), view at position %d, took %s\n",
					res.Name, res.Events, res.ResumedFrom, res.Position, res.Elapsed.Round(time.Millisecond))
			}
			return res, nil
		}
	}
	return RebuildResult{}, fmt.Errorf("projections rebuild: no projector named %q (known: %s)", name, strings.Join(known, ", "))
}
