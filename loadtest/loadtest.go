// Package loadtest drives a running SecurePay server through its public API, from a
// process of its own, with the generated Connect clients: the numbers users compare
// (`securepay loadtest`). The in-process benchmark of the command processor is a separate
// tool, loadtest/inprocess; the bank checker under faults is loadtest/bank.
//
// A run opens its own accounts (ids unique to the run, so runs against one server add
// up), funds them, warms up, then measures for a fixed time:
//
//   - closed loop: Concurrency callers each send the next request when the last one is
//     answered;
//   - open loop (Rate > 0): requests are scheduled at a fixed rate whatever the server
//     does, and each latency is measured from the request's scheduled start, so a stall
//     counts against every request that should have been sent during it (no coordinated
//     omission). At most MaxInFlight requests are outstanding; requests still unsent when
//     the window ends are reported as missed.
//
// Latencies go into HDR histograms, per kind of request and overall; a per-second
// timeline feeds the progress line and the SVG plot.
package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
)

// Config is one load run.
type Config struct {
	Target
	Scenario string
	// Accounts is how many payers transfers move money between (2..100,000).
	Accounts int
	// HotShare is the share of the hot scenario's payments that go to the one merchant.
	HotShare float64
	// Seed makes the run's choices repeatable: callers draw from PCG(Seed, caller index).
	Seed uint64
	// Concurrency is the closed loop's callers (1..4096).
	Concurrency int
	// Rate, when positive, runs the open loop at this many iterations a second.
	Rate float64
	// MaxInFlight bounds the open loop's outstanding requests (1..100,000).
	MaxInFlight int
	// Warmup runs the load unmeasured first (connections, caches, the server's GC).
	Warmup   time.Duration
	Duration time.Duration
	// RunID prefixes every account and payment id; "" picks one from the clock.
	RunID string
	// Processes are watched for CPU and memory during the measured window.
	Processes []ProcessSpec
	// Progress, when set, gets a line a second, each starting with "\r" (a terminal).
	Progress io.Writer
}

// Validate names every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if err := CheckLoopback(c.Server); err != nil {
		errs = append(errs, err)
	}
	if c.Conns < 1 || c.Conns > 256 {
		errs = append(errs, fmt.Errorf("--conns must be in 1..256, got %d", c.Conns))
	}
	found := false
	for _, s := range Scenarios {
		found = found || s == c.Scenario
	}
	if !found {
		errs = append(errs, fmt.Errorf("--scenario must be one of %v, got %q", Scenarios, c.Scenario))
	}
	if c.Accounts < 2 || c.Accounts > 100_000 {
		errs = append(errs, fmt.Errorf("--accounts must be in 2..100000, got %d", c.Accounts))
	}
	if c.HotShare < 0 || c.HotShare > 1 {
		errs = append(errs, fmt.Errorf("--hot-share must be in 0..1, got %g", c.HotShare))
	}
	if c.Concurrency < 1 || c.Concurrency > 4096 {
		errs = append(errs, fmt.Errorf("--concurrency must be in 1..4096, got %d", c.Concurrency))
	}
	if c.Rate < 0 || c.Rate > 1_000_000 {
		errs = append(errs, fmt.Errorf("--rate must be in 0..1000000 a second, got %g", c.Rate))
	}
	if c.MaxInFlight < 1 || c.MaxInFlight > 100_000 {
		errs = append(errs, fmt.Errorf("--max-in-flight must be in 1..100000, got %d", c.MaxInFlight))
	}
	if c.Duration <= 0 || c.Duration > 24*time.Hour || c.Warmup < 0 || c.Warmup > time.Hour {
		errs = append(errs, fmt.Errorf("--duration must be in (0, 24h] and --warmup in [0, 1h], got %s and %s", c.Duration, c.Warmup))
	}
	if len(c.RunID) > 24 {
		errs = append(errs, fmt.Errorf("--run-id must be at most 24 characters (ids are at most 64), got %d", len(c.RunID)))
	}
	for _, r := range c.RunID {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_') {
			errs = append(errs, fmt.Errorf("--run-id may hold letters, digits, '-', '.' and '_' only, got %q", c.RunID))
			break
		}
	}
	return errors.Join(errs...)
}

// Result is a run's outcome, as the JSON output prints it.
type Result struct {
	Scenario    string  `json:"scenario"`
	Server      string  `json:"server"`
	HTTP        string  `json:"http"`
	RPC         string  `json:"rpc"`
	Mode        string  `json:"mode"` // "closed" or "open"
	Concurrency int     `json:"concurrency,omitempty"`
	Rate        float64 `json:"rate,omitempty"`
	Accounts    int     `json:"accounts"`
	Seed        uint64  `json:"seed"`
	RunID       string  `json:"run_id"`
	Seconds     float64 `json:"seconds"`
	// Writes are the money-moving requests answered OK (transfers, authorisations,
	// captures, refunds); Requests all requests answered OK.
	Writes         int64   `json:"writes"`
	WritesPerSec   float64 `json:"writes_per_second"`
	Requests       int64   `json:"requests"`
	RequestsPerSec float64 `json:"requests_per_second"`
	// Missed counts open-loop iterations scheduled in the window but never sent.
	Missed       int64              `json:"missed,omitempty"`
	Latency      Latency            `json:"latency"`
	ByKind       map[string]Latency `json:"by_kind"`
	Errors       map[string]int64   `json:"errors"`
	ErrorSamples map[string]string  `json:"error_samples,omitempty"`
	// ClientCPUSeconds is this load generator's own CPU during the window.
	ClientCPUSeconds float64        `json:"client_cpu_seconds"`
	Processes        []ProcessUsage `json:"processes,omitempty"`
	Timeline         []Second       `json:"timeline"`
}

// CPUPerWrite is a group's CPU per money-moving write answered OK, in microseconds.
func (r *Result) CPUPerWrite(cpuSeconds float64) float64 {
	if r.Writes == 0 {
		return 0
	}
	return cpuSeconds * 1e6 / float64(r.Writes)
}

// Run sets up the run's accounts, warms up and measures.
func Run(ctx context.Context, c Config) (*Result, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	clients, err := c.Target.Dial()
	if err != nil {
		return nil, err
	}
	if c.RunID == "" {
		c.RunID = "lt" + strconv.FormatInt(time.Now().UnixNano()/1e6, 36)
	}
	w := newWorld(c.RunID, c.Accounts)
	if err := setUp(ctx, clients, w, min(c.Concurrency, 32)); err != nil {
		return nil, err
	}
	rec := newRecorder()
	callers := c.Concurrency
	if c.Rate > 0 {
		callers = c.MaxInFlight
	}
	cs := make([]*caller, callers)
	steps := make([]func(context.Context, time.Time), callers)
	for i := range cs {
		cs[i] = &caller{
			index: i, rng: rand.New(rand.NewPCG(c.Seed, uint64(i))), w: w, rec: rec, hotShare: c.HotShare,
			payments: clients.Payments[i%len(clients.Payments)], balances: clients.Balances[i%len(clients.Balances)],
		}
		if steps[i], err = cs[i].iteration(c.Scenario); err != nil {
			return nil, err
		}
	}
	watcher := NewProcWatcher("/proc", c.Processes)

	start := time.Now()
	measureAt := start.Add(c.Warmup)
	end := measureAt.Add(c.Duration)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()

	// The window opens at measureAt: process CPU and this process's CPU are read then.
	var cpu0 time.Duration
	var beginErr error
	opened := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() {
		defer close(opened)
		if !sleepUntil(loadCtx, measureAt) {
			return
		}
		rec.begin(measureAt)
		cpu0, beginErr = selfCPU()
		if beginErr == nil {
			beginErr = watcher.Begin()
		}
		if beginErr == nil {
			bg.Go(func() { watcher.Run(loadCtx, memorySampleInterval) })
		}
		if c.Progress != nil {
			bg.Go(func() { showProgress(loadCtx, c.Progress, rec, c.Duration) })
		}
	})

	var missed int64
	if c.Rate > 0 {
		missed = openLoop(loadCtx, steps, start, end, c.Rate)
	} else {
		closedLoop(loadCtx, steps, end)
	}
	finished := time.Now()
	<-opened
	if beginErr != nil {
		stopLoad()
		bg.Wait()
		return nil, beginErr
	}
	if err := ctx.Err(); err != nil {
		stopLoad()
		bg.Wait()
		return nil, err
	}
	procs, procErr := watcher.End()
	cpu1, cpuErr := selfCPU()
	stopLoad()
	bg.Wait()
	if c.Progress != nil {
		fmt.Fprint(c.Progress, "\r\033[K")
	}
	if err := errors.Join(procErr, cpuErr); err != nil {
		return nil, err
	}

	s := rec.snapshot()
	secs := finished.Sub(measureAt).Seconds()
	// The last second of the timeline is cut short by the window's end: drawn, it would
	// look like a drop in throughput that never happened.
	if whole := int(secs); whole >= 1 && len(s.timeline) > whole {
		s.timeline = s.timeline[:whole]
	}
	r := &Result{
		Scenario: c.Scenario, Server: c.Server, HTTP: "2", RPC: "connect", Mode: "closed", Concurrency: c.Concurrency,
		Accounts: c.Accounts, Seed: c.Seed, RunID: c.RunID, Seconds: secs,
		Writes: s.writes, Requests: s.all.Count, Missed: missed,
		Latency: s.all, ByKind: s.kinds, Errors: s.errs, ErrorSamples: s.samples,
		ClientCPUSeconds: (cpu1 - cpu0).Seconds(), Processes: procs, Timeline: s.timeline,
	}
	if c.HTTP1 {
		r.HTTP = "1.1"
	}
	if c.GRPC {
		r.RPC = "grpc"
	}
	if c.Rate > 0 {
		r.Mode, r.Rate, r.Concurrency = "open", c.Rate, 0
	}
	r.WritesPerSec = float64(r.Writes) / secs
	r.RequestsPerSec = float64(r.Requests) / secs
	return r, nil
}

// closedLoop runs each caller's step back to back until end.
func closedLoop(ctx context.Context, steps []func(context.Context, time.Time), end time.Time) {
	var wg sync.WaitGroup
	for _, step := range steps {
		wg.Go(func() {
			for ctx.Err() == nil {
				now := time.Now()
				if !now.Before(end) {
					return
				}
				step(ctx, now)
			}
		})
	}
	wg.Wait()
}

// openLoop schedules iterations at rate from start until end and returns how many of
// them were never sent because every caller was busy until the window closed.
func openLoop(ctx context.Context, steps []func(context.Context, time.Time), start, end time.Time, rate float64) (missed int64) {
	interval := time.Duration(float64(time.Second) / rate)
	total := int64(end.Sub(start) / interval)
	// The queue holds at most one second of schedule: when every caller is busy the
	// scheduler waits, but each iteration keeps its scheduled time, so the wait is
	// charged to the latencies.
	queue := make(chan time.Time, min(max(int(rate), 1), 100_000))
	var sent atomic.Int64
	var wg sync.WaitGroup
	for _, step := range steps {
		wg.Go(func() {
			for at := range queue {
				if ctx.Err() != nil || !time.Now().Before(end) {
					continue // drain: past the window, the rest are missed
				}
				sent.Add(1)
				step(ctx, at)
			}
		})
	}
	// Timers on a loaded machine wake late: each wake-up sends everything due by then,
	// so the schedule holds on average even at tens of thousands a second.
	for i := int64(0); i < total && ctx.Err() == nil; {
		now := time.Now()
		for ; i < total; i++ {
			at := start.Add(time.Duration(i) * interval)
			if at.After(now) {
				break
			}
			select {
			case queue <- at:
			case <-ctx.Done():
				i = total
			}
		}
		if i < total {
			sleepUntil(ctx, start.Add(time.Duration(i)*interval))
		}
	}
	close(queue)
	wg.Wait()
	return total - sent.Load()
}

// sleepUntil waits for t or ctx; it reports whether t came.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// setUp opens the run's accounts and funds every payer from the external source.
func setUp(ctx context.Context, c *Clients, w *world, workers int) error {
	open := func(id string, kind ledgerv1.AccountKind) error {
		_, err := c.Accounts.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{AccountId: id, Asset: asset, Kind: kind}))
		if connect.CodeOf(err) == connect.CodeUnauthenticated {
			return fmt.Errorf("open account %s: %w (%v)", id, errNoToken, err)
		}
		if err != nil {
			return fmt.Errorf("open account %s: %w", id, err)
		}
		return nil
	}
	if err := open(w.source, ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL); err != nil {
		return err
	}
	if err := open(w.merchant, ledgerv1.AccountKind_ACCOUNT_KIND_MERCHANT); err != nil {
		return err
	}
	return forEach(ctx, len(w.payers), workers, func(i int) error {
		if err := open(w.payers[i], ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER); err != nil {
			return err
		}
		_, err := c.Payments[i%len(c.Payments)].Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{
			PaymentId: w.run + "-fund" + strconv.Itoa(i), SourceAccountId: w.source, DestinationAccountId: w.payers[i],
			Amount: &ledgerv1.Money{Value: cents(fundingMinor), Asset: asset},
		}))
		if err != nil {
			return fmt.Errorf("fund %s: %w", w.payers[i], err)
		}
		return nil
	})
}

// forEach runs fn(0..n-1) on workers goroutines and returns the first error.
func forEach(ctx context.Context, n, workers int, fn func(int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range max(workers, 1) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}
