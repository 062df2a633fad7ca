// Command inprocess (the in-process benchmark; `securepay loadtest` measures over the wire)
// drives the ledger's command processing in-process with many concurrent
// payers, then checks the ledger's invariants on the resulting log, and reports throughput,
// latency percentiles and the process's peak resident memory.
//
//	go run ./loadtest/inprocess -transfers 1000000 -concurrency 64 -hot 0.5
//	go run ./loadtest/inprocess -store postgres -dsn postgres://... -transfers 200000
//
// It only ever talks to a store on this machine: a pebble directory, or a PostgreSQL DSN
// that must point at loopback.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/eventstore/postgres"
	"github.com/securepay/securepay/loadtest"
	"github.com/securepay/securepay/loadtest/invariant"
	"github.com/securepay/securepay/services/ledger"
)

type config struct {
	store       string
	dir         string
	dsn         string
	transfers   int
	concurrency int
	accounts    int
	hot         float64
	cacheSize   int
	check       bool
	timeout     time.Duration
}

func main() {
	var c config
	flag.StringVar(&c.store, "store", "embedded", "embedded or postgres")
	flag.StringVar(&c.dir, "dir", "", "embedded store directory (default: a new temporary one, removed afterwards)")
	flag.StringVar(&c.dsn, "dsn", "", "PostgreSQL DSN (loopback only); a fresh schema is created in it")
	flag.IntVar(&c.transfers, "transfers", 100_000, "transfers to commit")
	flag.IntVar(&c.concurrency, "concurrency", 64, "concurrent callers")
	flag.IntVar(&c.accounts, "accounts", 10_000, "payer accounts")
	flag.Float64Var(&c.hot, "hot", 0, "share of transfers (0..1) that pay one hot merchant")
	flag.IntVar(&c.cacheSize, "cache", 100_000, "aggregates the processor keeps in memory")
	flag.BoolVar(&c.check, "check", true, "fold the whole log afterwards and check the invariants")
	flag.DurationVar(&c.timeout, "timeout", 30*time.Minute, "give up after this long")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, c config) error {
	if c.transfers <= 0 || c.concurrency <= 0 || c.accounts < 2 || c.hot < 0 || c.hot > 1 {
		return errors.New("need -transfers > 0, -concurrency > 0, -accounts >= 2 and 0 <= -hot <= 1")
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	store, cleanup, err := openStore(ctx, c)
	if err != nil {
		return err
	}
	defer cleanup()
	var snaps eventstore.SnapshotStore
	if s, ok := store.(eventstore.SnapshotStore); ok {
		snaps = s
	}
	proc, err := ledger.New(store, ledger.Config{SharedStore: c.store == "postgres", CacheSize: c.cacheSize, Snapshots: snaps})
	if err != nil {
		return err
	}
	defer proc.Close()

	usd := domain.Asset{Code: "USD", Scale: 2}
	setup := []domain.Command{
		domain.OpenAccount{AccountID: "world", Asset: usd, Kind: domain.KindExternal},
		domain.OpenAccount{AccountID: "merchant-hot", Asset: usd, Kind: domain.KindMerchant},
	}
	for i := range c.accounts {
		setup = append(setup, domain.OpenAccount{AccountID: payer(i), Asset: usd, Kind: domain.KindCustomer})
	}
	if err := runConcurrently(ctx, proc, setup, c.concurrency); err != nil {
		return fmt.Errorf("open accounts: %w", err)
	}
	funding := make([]domain.Command, 0, c.accounts)
	for i := range c.accounts {
		funding = append(funding, domain.Transfer{PaymentID: domain.PaymentID("fund-" + strconv.Itoa(i)), Source: "world",
			Destination: payer(i), Amount: domain.Money{Asset: usd, Minor: 1 << 40}})
	}
	if err := runConcurrently(ctx, proc, funding, c.concurrency); err != nil {
		return fmt.Errorf("fund payers: %w", err)
	}
	headBefore, err := store.Head(ctx)
	if err != nil {
		return err
	}

	fmt.Printf("store=%s transfers=%d concurrency=%d accounts=%d hot=%.2f GOMAXPROCS=%d\n",
		c.store, c.transfers, c.concurrency, c.accounts, c.hot, runtime.GOMAXPROCS(0))
	var next, done atomic.Int64
	lat := make([][]time.Duration, c.concurrency)
	errs := make(chan error, c.concurrency)
	hotEvery := 0
	if c.hot > 0 {
		hotEvery = int(1 / c.hot)
	}
	start := time.Now()
	progressDone := make(chan struct{})
	go progress(&done, c.transfers, start, progressDone)
	var wg sync.WaitGroup
	for w := range c.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat[w] = make([]time.Duration, 0, c.transfers/c.concurrency+1)
			for {
				i := int(next.Add(1) - 1)
				if i >= c.transfers || ctx.Err() != nil {
					return
				}
				src := payer(i % c.accounts)
				dst := payer((i*7919 + 1) % c.accounts)
				if dst == src || (hotEvery > 0 && i%hotEvery == 0) {
					dst = "merchant-hot"
				}
				t0 := time.Now()
				_, err := proc.Execute(ctx, ledger.Request{
					Command: domain.Transfer{PaymentID: domain.PaymentID("t-" + strconv.Itoa(i)), Source: src, Destination: dst,
						Amount: domain.Money{Asset: usd, Minor: int64(1 + i%1000)}},
					Meta: eventstore.Metadata{Actor: "loadtest"},
				})
				lat[w] = append(lat[w], time.Since(t0))
				if err != nil {
					errs <- fmt.Errorf("transfer %d: %w", i, err)
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(progressDone)
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	fmt.Printf("committed %d transfers in %s: %.0f transfers/s, p50 %s, p99 %s, max %s\n",
		len(all), elapsed.Round(time.Millisecond), float64(len(all))/elapsed.Seconds(),
		pct(all, 50), pct(all, 99), all[len(all)-1])
	fmt.Printf("peak RSS during the load: %s\n", peakRSS())
	headAfter, err := store.Head(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("log: %d events appended by the load (head %d)\n", headAfter-headBefore, headAfter)
	if !c.check {
		return nil
	}
	t0 := time.Now()
	m, err := invariant.Fold(ctx, store, eventstore.MaxReadLimit)
	if err == nil {
		err = m.CheckFinal()
	}
	if err != nil {
		return fmt.Errorf("INVARIANT VIOLATED: %w", err)
	}
	n := m.Events
	fmt.Printf("invariants hold over %d events (sum per asset is zero, no account below its floor, each payment once, hash chain verifies) in %s\n",
		n, time.Since(t0).Round(time.Millisecond))
	fmt.Printf("peak RSS including the check: %s\n", peakRSS())
	return nil
}

func payer(i int) domain.AccountID { return domain.AccountID("payer-" + strconv.Itoa(i)) }

func pct(sorted []time.Duration, p int) time.Duration {
	return sorted[min(len(sorted)-1, len(sorted)*p/100)].Round(time.Microsecond)
}

func progress(done *atomic.Int64, total int, start time.Time, stop <-chan struct{}) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			n := done.Load()
			fmt.Printf("  %d/%d transfers, %.0f/s, RSS high-water %s\n", n, total, float64(n)/time.Since(start).Seconds(), peakRSS())
		}
	}
}

func runConcurrently(ctx context.Context, p *ledger.Processor, cmds []domain.Command, conc int) error {
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(cmds) {
					return
				}
				if _, err := p.Execute(ctx, ledger.Request{Command: cmds[i]}); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}

// peakRSS reads the process's resident-set high-water mark from /proc (Linux).
func peakRSS() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			if err != nil {
				return strings.TrimSpace(rest)
			}
			return fmt.Sprintf("%.0f MB", float64(kb)/1024)
		}
	}
	return "unknown"
}

func openStore(ctx context.Context, c config) (eventstore.Store, func(), error) {
	switch c.store {
	case "embedded":
		dir, remove := c.dir, false
		if dir == "" {
			d, err := os.MkdirTemp("", "securepay-loadtest-")
			if err != nil {
				return nil, nil, err
			}
			dir, remove = d, true
		}
		s, err := embedded.Open(dir, embedded.Options{})
		if err != nil {
			return nil, nil, err
		}
		return s, func() {
			s.Close()
			if remove {
				os.RemoveAll(dir)
			}
		}, nil
	case "postgres":
		if err := loopbackOnly(c.dsn); err != nil {
			return nil, nil, err
		}
		schema := fmt.Sprintf("loadtest_%d", time.Now().UnixNano())
		s, err := postgres.Open(ctx, postgres.Config{DSN: c.dsn, Schema: schema, Migrate: true})
		if err != nil {
			return nil, nil, err
		}
		fmt.Printf("PostgreSQL schema %s (left in place for inspection)\n", schema)
		return s, func() { s.Close() }, nil
	}
	return nil, nil, fmt.Errorf("-store must be embedded or postgres, got %q", c.store)
}

// loopbackOnly refuses a DSN that points anywhere but this machine: load tests never send
// traffic elsewhere.
func loopbackOnly(dsn string) error {
	u, err := url.Parse(dsn)
	if err != nil || u.Hostname() == "" {
		return errors.New("-dsn must be a postgres:// URL with a loopback host (127.0.0.1, ::1 or localhost)")
	}
	if host := u.Hostname(); !loadtest.IsLoopbackHost(host) {
		return fmt.Errorf("-dsn host %q is not loopback: load tests only run against this machine", host)
	}
	return nil
}
