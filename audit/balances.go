package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/internal/progress"
	"github.com/securepay/securepay/projections"
)

// ParseAsOf reads the --as-of argument: a log position (digits) or an RFC 3339 time.
func ParseAsOf(s string) (projections.AsOf, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return projections.AsOf{}, nil
	}
	if n, err := strconv.ParseUint(s, 10, 64); err == nil {
		if n == 0 {
			return projections.AsOf{}, errors.New("as-of position must be >= 1")
		}
		return projections.AsOf{Position: n}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return projections.AsOf{}, fmt.Errorf("as-of %q is neither a log position nor an RFC 3339 time (2026-01-02T15:04:05Z)", s)
	}
	return projections.AsOf{Time: t.UTC()}, nil
}

// BalancesOptions tune Balances.
type BalancesOptions struct {
	// AsOf is the point to recompute at; the zero value is the log's head at the start.
	AsOf projections.AsOf
	// Reader is the service's view to compare with; nil only recomputes.
	Reader projections.Reader
	// WaitTimeout bounds how long the comparison waits for the view to reach the point
	// (read-your-writes); default 30s.
	WaitTimeout time.Duration
	Progress    io.Writer
	PageSize    int
}

// Difference is one disagreement found by Balances.
type Difference struct {
	AccountID domain.AccountID
	Asset     domain.Asset
	What      string // "posted", "held", "available", "missing", "log", "total"
	Log       int64  // recomputed from the log
	View      int64  // what the view says
	Detail    string
}

// BalancesReport is what Balances found.
type BalancesReport struct {
	AsOf     projections.AsOf
	Position uint64 // the last log position included
	Events   uint64
	Accounts int
	Totals   map[domain.Asset]int64 // sum of posted balances per asset: zero by double entry
	// InsideAppend is set when the point falls between two events of one atomic append
	// (they share their record time): there the legs of a transfer may be half counted, so
	// the zero-sum check is not made.
	InsideAppend bool
	Differences  []Difference
}

// ErrDifferences is returned (wrapped) when Balances finds any difference.
var ErrDifferences = errors.New("audit: balances differ")

// Balances recomputes every account's balances from the log up to opts.AsOf with
// domain.EvolveAccount (not the projectors' code: an independent second computation),
// checks the posted-after and held-after values the events claim, checks that every
// asset's balances sum to zero, compares each account with opts.Reader as of the same
// point, and writes a report to w. Any difference makes it return an error wrapping
// ErrDifferences.
//
// A point in time includes the events recorded at or before it; the log's record times
// never decrease along the log (the stores stamp them under their append order), so the
// recomputation stops at the first event after it.
func Balances(ctx context.Context, s eventstore.Store, w io.Writer, opts BalancesOptions) (BalancesReport, error) {
	rep := BalancesReport{AsOf: opts.AsOf, Totals: map[domain.Asset]int64{}}
	head, err := s.Head(ctx)
	if err != nil {
		return rep, fmt.Errorf("audit balances: head: %w", err)
	}
	bound := head
	if opts.AsOf.Position != 0 {
		bound = min(bound, opts.AsOf.Position)
	}
	accounts := map[domain.AccountID]*domain.Account{}
	prog := progress.New(opts.Progress, "balances", progress.Options{})
	limit := pageSize(opts.PageSize)
	var after uint64
	var lastAt time.Time
read:
	for after < bound {
		page, err := s.ReadAll(ctx, after, int(min(uint64(limit), bound-after)))
		if err != nil {
			return rep, fmt.Errorf("audit balances: read after %d: %w", after, err)
		}
		if len(page) == 0 {
			break
		}
		for i := range page {
			e := &page[i]
			if !opts.AsOf.Time.IsZero() && e.RecordedAt.After(opts.AsOf.Time) {
				break read
			}
			after, lastAt = e.Position, e.RecordedAt
			rep.Events++
			acct, _, ok := domain.ParseStream(e.Stream)
			if !ok || acct == "" {
				continue
			}
			ev, err := domain.DecodeEvent(e.Type, e.Data)
			if err != nil {
				rep.Differences = append(rep.Differences, Difference{AccountID: acct, What: "log",
					Detail: fmt.Sprintf("position %d: %v", e.Position, err)})
				continue
			}
			a := accounts[acct]
			if a == nil {
				a = &domain.Account{ID: acct}
				accounts[acct] = a
			}
			*a = domain.EvolveAccount(*a, ev)
			if d, bad := claimCheck(a, ev, e.Position); bad {
				rep.Differences = append(rep.Differences, d)
			}
		}
		prog.Update(after, bound)
	}
	rep.Position = after
	prog.Finish(after, bound)
	ids := make([]domain.AccountID, 0, len(accounts))
	for id, a := range accounts {
		ids = append(ids, id)
		rep.Totals[a.Asset] += a.Posted
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	rep.Accounts = len(ids)
	if after > 0 {
		next, err := s.ReadAll(ctx, after, 1)
		if err != nil {
			return rep, fmt.Errorf("audit balances: read after %d: %w", after, err)
		}
		rep.InsideAppend = len(next) == 1 && next[0].RecordedAt.Equal(lastAt)
	}
	for asset, sum := range rep.Totals {
		if sum != 0 && !rep.InsideAppend {
			rep.Differences = append(rep.Differences, Difference{Asset: asset, What: "total", Log: sum,
				Detail: "balances of the asset do not sum to zero"})
		}
	}
	if opts.Reader != nil {
		wait := opts.WaitTimeout
		if wait <= 0 {
			wait = 30 * time.Second
		}
		asOf := projections.AsOf{Position: rep.Position}
		for _, id := range ids {
			a := accounts[id]
			if !a.Exists() {
				continue
			}
			qctx, cancel := context.WithTimeout(ctx, wait)
			b, err := opts.Reader.Balance(qctx, id, asOf, rep.Position)
			cancel()
			if err != nil {
				rep.Differences = append(rep.Differences, Difference{AccountID: id, Asset: a.Asset, What: "missing", Log: a.Posted,
					Detail: err.Error()})
				continue
			}
			rep.Differences = appendDiffs(rep.Differences, a, b, "")
			// The current balance too, whenever the account has not changed since the point:
			// then it must equal the recomputation exactly (this checks the balances table,
			// the as-of answer above checks the history).
			qctx, cancel = context.WithTimeout(ctx, wait)
			cur, err := opts.Reader.Balance(qctx, id, projections.AsOf{}, rep.Position)
			cancel()
			if err != nil {
				rep.Differences = append(rep.Differences, Difference{AccountID: id, Asset: a.Asset, What: "missing", Log: a.Posted,
					Detail: "current balance: " + err.Error()})
				continue
			}
			if cur.Position <= rep.Position {
				rep.Differences = appendDiffs(rep.Differences, a, cur, "(current balance)")
			}
		}
	}
	if err := writeBalancesReport(w, rep, accounts, ids); err != nil {
		return rep, err
	}
	if len(rep.Differences) > 0 {
		return rep, fmt.Errorf("%w: %d differences as of position %d", ErrDifferences, len(rep.Differences), rep.Position)
	}
	return rep, nil
}

// claimCheck compares the after-values an event claims with the recomputed account.
func claimCheck(a *domain.Account, ev domain.Event, position uint64) (Difference, bool) {
	check := func(what string, claimed, computed int64) (Difference, bool) {
		if claimed == computed {
			return Difference{}, false
		}
		return Difference{AccountID: a.ID, Asset: a.Asset, What: "log", Log: computed, View: claimed,
			Detail: fmt.Sprintf("position %d claims %s after %d, recomputation gives %d", position, what, claimed, computed)}, true
	}
	switch e := ev.(type) {
	case domain.AccountDebited:
		return check("posted", e.PostedAfter, a.Posted)
	case domain.AccountCredited:
		return check("posted", e.PostedAfter, a.Posted)
	case domain.HoldPlaced:
		return check("held", e.HeldAfter, a.Held)
	case domain.HoldReleased:
		return check("held", e.HeldAfter, a.Held)
	case domain.HoldCaptured:
		if d, bad := check("posted", e.PostedAfter, a.Posted); bad {
			return d, bad
		}
		return check("held", e.HeldAfter, a.Held)
	}
	return Difference{}, false
}

// writeBalancesReport prints the report; an auditor's report cut short by a full disk or a
// closed pipe must not look complete, so the first write error is returned.
func writeBalancesReport(out io.Writer, rep BalancesReport, accounts map[domain.AccountID]*domain.Account, ids []domain.AccountID) error {
	if out == nil {
		return nil
	}
	w := &stickyWriter{w: out}
	fmt.Fprintf(w, "balances as of position %d (%d events, %d accounts)\n", rep.Position, rep.Events, rep.Accounts)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "ACCOUNT\tASSET\tPOSTED\tHELD\tAVAILABLE\t")
	for _, id := range ids {
		a := accounts[id]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", id, a.Asset.Code, domain.FormatMinor(a.Posted, a.Asset),
			domain.FormatMinor(a.Held, a.Asset), domain.FormatMinor(a.Available(), a.Asset))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write the balances report: %w", err)
	}
	assets := make([]domain.Asset, 0, len(rep.Totals))
	for a := range rep.Totals {
		assets = append(assets, a)
	}
	sort.Slice(assets, func(i, j int) bool { return assets[i].String() < assets[j].String() })
	for _, a := range assets {
		fmt.Fprintf(w, "total %s: %s\n", a, domain.FormatMinor(rep.Totals[a], a))
	}
	if rep.InsideAppend {
		fmt.Fprintf(w, "note: position %d is inside an atomic append (the next event has the same record time); totals are not checked there\n", rep.Position)
	}
	if len(rep.Differences) == 0 {
		fmt.Fprintln(w, "no differences")
	} else {
		fmt.Fprintf(w, "%d DIFFERENCES:\n", len(rep.Differences))
		for _, d := range rep.Differences {
			fmt.Fprintf(w, "  %s %s %s: log %d, view %d %s\n", d.AccountID, d.Asset, d.What, d.Log, d.View, d.Detail)
		}
	}
	if w.err != nil {
		return fmt.Errorf("write the balances report: %w", w.err)
	}
	return nil
}

// stickyWriter keeps the first write error, so a report of many small writes checks once.
type stickyWriter struct {
	w   io.Writer
	err error
}

func (s *stickyWriter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.w.Write(p)
	s.err = err
	return n, err
}

func appendDiffs(out []Difference, a *domain.Account, b projections.Balance, detail string) []Difference {
	for _, c := range []struct {
		what      string
		log, view int64
	}{{"posted", a.Posted, b.Posted}, {"held", a.Held, b.Held}, {"available", a.Available(), b.Available()}} {
		if c.log != c.view {
			out = append(out, Difference{AccountID: a.ID, Asset: a.Asset, What: c.what, Log: c.log, View: c.view, Detail: detail})
		}
	}
	return out
}
