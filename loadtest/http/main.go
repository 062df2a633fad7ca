// Command http drives a running SecurePay server (`securepay dev`) over the network with
// the generated Connect client, one transfer per request, and reports requests/s, latency
// percentiles, and the server's resident memory and CPU time per request read from
// /proc/PID (Linux), so that the server can be measured in a process of its own.
//
//	securepay dev --listen 127.0.0.1:8080 &
//	go run ./loadtest/http -server http://127.0.0.1:8080 -pid $! -transfers 100000 -concurrency 64
//
// It talks to loopback only, and stops after -transfers requests or -duration, whichever
// comes first.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
)

type config struct {
	server      string
	pid         int
	transfers   int
	concurrency int
	conns       int
	duration    time.Duration
	warmup      int
	gcPercent   int
}

func main() {
	var c config
	flag.StringVar(&c.server, "server", "http://127.0.0.1:8080", "server URL (cleartext HTTP/2, loopback only)")
	flag.IntVar(&c.pid, "pid", 0, "server process id, to report its RSS and CPU time from /proc (0: not reported)")
	flag.IntVar(&c.transfers, "transfers", 100_000, "transfers to send (at most 10,000,000)")
	flag.IntVar(&c.concurrency, "concurrency", 64, "concurrent callers (at most 4096)")
	flag.IntVar(&c.conns, "conns", 4, "HTTP/2 connections the callers share")
	flag.DurationVar(&c.duration, "duration", 2*time.Minute, "stop sending after this long")
	flag.IntVar(&c.warmup, "warmup", 2_000, "transfers sent before measuring (connections, caches, GC)")
	// The generator's live heap is a few MB, so at GOGC 100 it collects very often: about
	// 40% of its CPU per request, taken from the server it shares the machine with.
	flag.IntVar(&c.gcPercent, "gc-percent", 800, "this generator's GOGC (1..10000)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest/http:", err)
		os.Exit(1)
	}
}

func (c config) validate() error {
	u, err := url.Parse(c.server)
	if err != nil || u.Scheme != "http" {
		return fmt.Errorf("-server must be an http:// URL, got %q", c.server)
	}
	host := u.Hostname()
	if host != "localhost" {
		ip := net.ParseIP(host)
		if ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("-server %s is not on loopback: this tool only loads this machine", c.server)
		}
	}
	switch {
	case c.transfers < 1 || c.transfers > 10_000_000:
		return errors.New("-transfers must be in 1..10,000,000")
	case c.concurrency < 1 || c.concurrency > 4096:
		return errors.New("-concurrency must be in 1..4096")
	case c.conns < 1 || c.conns > c.concurrency:
		return errors.New("-conns must be in 1..concurrency")
	case c.duration <= 0:
		return errors.New("-duration must be positive")
	case c.warmup < 0 || c.warmup > c.transfers:
		return errors.New("-warmup must be in 0..transfers")
	case c.gcPercent < 1 || c.gcPercent > 10_000:
		return errors.New("-gc-percent must be in 1..10,000")
	}
	return nil
}

func run(ctx context.Context, c config) error {
	if err := c.validate(); err != nil {
		return err
	}
	debug.SetGCPercent(c.gcPercent)
	base := strings.TrimRight(c.server, "/")
	// One transport per connection: an http.Transport multiplexes all its callers over a
	// single HTTP/2 connection, and one connection serialises every frame through one writer.
	payments := make([]ledgerv1connect.PaymentServiceClient, c.conns)
	for i := range payments {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		payments[i] = ledgerv1connect.NewPaymentServiceClient(&http.Client{Transport: &http.Transport{Protocols: &p}}, base)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	accounts := ledgerv1connect.NewAccountServiceClient(&http.Client{Transport: &http.Transport{Protocols: &p}}, base)

	// Account and payment ids are unique to this run, so runs against one server add up.
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	source := "lt-" + run + "-world"
	if _, err := accounts.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{AccountId: source, Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL})); err != nil {
		return fmt.Errorf("open %s: %w", source, err)
	}
	dests := make([]string, c.concurrency)
	for i := range dests {
		dests[i] = fmt.Sprintf("lt-%s-dest-%d", run, i)
		if _, err := accounts.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{AccountId: dests[i], Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER})); err != nil {
			return fmt.Errorf("open %s: %w", dests[i], err)
		}
	}

	send := func(ctx context.Context, n int, prefix string, latencies []time.Duration) (int, error) {
		var next, failed atomic.Int64
		var firstErr error
		var once sync.Once
		var wg sync.WaitGroup
		for w := range c.concurrency {
			wg.Go(func() {
				for ctx.Err() == nil {
					i := next.Add(1) - 1
					if i >= int64(n) {
						return
					}
					t0 := time.Now()
					_, err := payments[w%c.conns].Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{
						PaymentId: prefix + strconv.FormatInt(i, 10), SourceAccountId: source, DestinationAccountId: dests[w],
						Amount: &ledgerv1.Money{Value: "1.00", Asset: "USD"},
					}))
					if latencies != nil {
						latencies[i] = time.Since(t0)
					}
					if err != nil && ctx.Err() == nil {
						failed.Add(1)
						once.Do(func() { firstErr = err })
					}
				}
			})
		}
		wg.Wait()
		done := int(min(next.Load(), int64(n)))
		if f := failed.Load(); f > 0 {
			return done, fmt.Errorf("%d of %d transfers failed; first: %w", f, done, firstErr)
		}
		return done, nil
	}

	if c.warmup > 0 {
		if _, err := send(ctx, c.warmup, "lt-"+run+"-w-", nil); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	before, err := readProc(c.pid)
	if err != nil {
		return err
	}
	mctx, cancel := context.WithTimeout(ctx, c.duration)
	defer cancel()
	latencies := make([]time.Duration, c.transfers)
	var peak atomic.Int64
	sampled := make(chan struct{})
	go func() {
		// RSS is sampled while the load runs: the peak is what a laptop must hold.
		defer close(sampled)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-mctx.Done():
				return
			case <-t.C:
				if s, err := readProc(c.pid); err == nil && s.rssKB > peak.Load() {
					peak.Store(s.rssKB)
				}
			}
		}
	}()
	start := time.Now()
	self0, err := selfCPU()
	if err != nil {
		return err
	}
	done, sendErr := send(mctx, c.transfers, "lt-"+run+"-", latencies)
	elapsed := time.Since(start)
	self1, err := selfCPU()
	if err != nil {
		return err
	}
	cancel()
	<-sampled
	after, err := readProc(c.pid)
	if err != nil {
		return err
	}
	if sendErr != nil {
		return sendErr
	}
	if done == 0 {
		return errors.New("no transfer completed in time")
	}
	lat := latencies[:done]
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	fmt.Printf("transfers:   %d in %.2fs, concurrency %d over %d connections\n", done, elapsed.Seconds(), c.concurrency, c.conns)
	fmt.Printf("throughput:  %.0f transfers/s\n", float64(done)/elapsed.Seconds())
	fmt.Printf("latency:     p50 %.2fms  p99 %.2fms  max %.2fms\n", ms(pct(0.50)), ms(pct(0.99)), ms(lat[len(lat)-1]))
	fmt.Printf("client CPU:  %.1fµs per transfer (this load generator)\n", float64((self1-self0).Microseconds())/float64(done))
	if c.pid > 0 {
		cpu := after.cpu - before.cpu
		fmt.Printf("server CPU:  %.1fµs per transfer (%.2f cores busy)\n", float64(cpu.Microseconds())/float64(done), cpu.Seconds()/elapsed.Seconds())
		fmt.Printf("server RSS:  %d MB before, %d MB peak, %d MB after (VmHWM %d MB)\n", before.rssKB/1024, max(peak.Load(), after.rssKB)/1024, after.rssKB/1024, after.hwmKB/1024)
	}
	return nil
}

// selfCPU is the user and system CPU time this process has used so far.
func selfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

type procSample struct {
	rssKB, hwmKB int64
	cpu          time.Duration // user + system
}

// readProc reads the server's resident memory and CPU time; pid 0 reads nothing.
func readProc(pid int) (procSample, error) {
	var s procSample
	if pid == 0 {
		return s, nil
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("server status: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			s.rssKB = kb
		case "VmHWM":
			s.hwmKB = kb
		}
	}
	if err := sc.Err(); err != nil {
		return s, fmt.Errorf("server status: %w", err)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, fmt.Errorf("server stat: %w", err)
	}
	// The command name (field 2) may hold spaces; fields are counted after its ')'.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return s, fmt.Errorf("server stat: unexpected format %q", stat)
	}
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 13 {
		return s, fmt.Errorf("server stat: %d fields after the name, want at least 13", len(fields))
	}
	// utime and stime (fields 14 and 15 of the line) are in clock ticks, 100 per second on Linux.
	ut, err1 := strconv.ParseInt(fields[11], 10, 64)
	st, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return s, fmt.Errorf("server stat: %w", err)
	}
	s.cpu = time.Duration(ut+st) * 10 * time.Millisecond
	return s, nil
}
