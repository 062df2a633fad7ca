package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/securepay/securepay/loadtest"
)

// loadtestCmd is `securepay loadtest`'s flags; the load itself is package loadtest.
type loadtestCmd struct {
	cfg        loadtest.Config
	http       string
	rpc        string
	processes  multi
	json       bool
	svg        string
	gcPercent  int
	cpuProfile string
}

func loadtestCommand(e env) *Command {
	c := &loadtestCmd{}
	cmd := &Command{
		UsageLine: "securepay loadtest [--server URL] [--scenario NAME] [--concurrency N | --rate RATE] [flags]",
		Short:     "drive a running server through its public API and measure it (throughput, latency, CPU, memory)",
		Long: "Drive a running server (serve over TLS, or dev over cleartext HTTP/2) through its public\n" +
			"API from this process: it opens and funds accounts of its own, warms up, then measures\n" +
			"for --duration. Closed loop with --concurrency callers, or open loop at --rate iterations\n" +
			"a second with latency measured from each request's scheduled start, so stalls are not\n" +
			"hidden. Scenarios (--seed repeats one): uniform transfers among --accounts payers; hot\n" +
			"(--hot-share of payments to one merchant); card (authorise, two partial captures, a\n" +
			"refund); read (balances, history, watches, a fifth of transfers); mix.\n\n" +
			"--process PID|NAME (repeatable) reports the CPU per write and peak memory of a process\n" +
			"and its descendants (a PostgreSQL postmaster's PID covers its backends), or of every\n" +
			"process of that name. Loopback servers only. The in-process benchmark of the command\n" +
			"processor is a separate tool: go run ./loadtest/inprocess.",
		Run: c.run,
	}
	fs := &cmd.Flag
	ef := envFlags{fs, e}
	ef.String(&c.cfg.Server, "server", "SECUREPAY_SERVER", "http://127.0.0.1:8080", "server `URL`: https:// (serve) or http:// (dev, cleartext HTTP/2); loopback only")
	ef.String(&c.cfg.CAFile, "ca-file", "SECUREPAY_CA_FILE", "", "`file` of PEM CA certificates to trust for https://")
	fs.StringVar(&c.cfg.TokenFile, "token-file", "", "`file` holding a bearer token sent with every request (a server behind the gateway)")
	fs.StringVar(&c.http, "http", "2", "HTTP `version`: 2 (HTTP/2 over TLS, or h2c over http://) or 1.1, for comparison")
	fs.StringVar(&c.rpc, "rpc", "connect", "RPC `protocol`: connect or grpc")
	fs.IntVar(&c.cfg.Conns, "conns", 4, "HTTP/2 `connections` the callers share")
	fs.StringVar(&c.cfg.Scenario, "scenario", loadtest.ScenarioUniform, "`name`: "+strings.Join(loadtest.Scenarios, ", "))
	fs.IntVar(&c.cfg.Accounts, "accounts", 1000, "payer `accounts` the run opens and funds")
	fs.Float64Var(&c.cfg.HotShare, "hot-share", 0.5, "`share` (0..1) of the hot scenario's payments that go to one merchant")
	fs.Uint64Var(&c.cfg.Seed, "seed", 1, "`seed` of the callers' random choices")
	fs.IntVar(&c.cfg.Concurrency, "concurrency", 16, "closed loop: concurrent `callers`")
	fs.Float64Var(&c.cfg.Rate, "rate", 0, "open loop: scenario iterations a second (`rate`; 0: closed loop)")
	fs.IntVar(&c.cfg.MaxInFlight, "max-in-flight", 2048, "open loop: most `requests` outstanding at once")
	fs.DurationVar(&c.cfg.Warmup, "warmup", 5*time.Second, "unmeasured load first")
	fs.DurationVar(&c.cfg.Duration, "duration", 30*time.Second, "measured window")
	fs.StringVar(&c.cfg.RunID, "run-id", "", "`prefix` of the run's account and payment ids (default: from the clock)")
	fs.Var(&c.processes, "process", "`process` (a PID, which covers its descendants, or a command name) to report CPU and memory of; repeatable")
	fs.BoolVar(&c.json, "json", false, "print the result as one JSON object (every number, the per-second timeline)")
	// The generator's live heap is a few MB and it allocates per request, so at GOGC 100
	// it collects very often, on the cores the server under test needs.
	fs.IntVar(&c.gcPercent, "gc-percent", 800, "this generator's GOGC: heap growth between collections, in `percent` (1..10000; GOGC in the environment wins)")
	fs.StringVar(&c.cpuProfile, "cpu-profile", "", "write the generator's own CPU profile of the whole run to this `file` (go tool pprof): what the client costs is part of what a run on one machine measures")
	fs.StringVar(&c.svg, "svg", "", "write a latency-and-throughput-over-time plot to this SVG `file`")
	return cmd
}

func (c *loadtestCmd) run(ctx context.Context, e env, _ []string) error {
	cfg := c.cfg
	switch c.http {
	case "2":
	case "1.1", "1":
		cfg.HTTP1 = true
	default:
		return usagef("loadtest: --http must be 2 or 1.1, got %q", c.http)
	}
	switch c.rpc {
	case "connect":
	case "grpc":
		cfg.GRPC = true
	default:
		return usagef("loadtest: --rpc must be connect or grpc, got %q", c.rpc)
	}
	for _, p := range c.processes {
		spec, err := loadtest.ParseProcessSpec(p)
		if err != nil {
			return usagef("loadtest: --process: %v", err)
		}
		cfg.Processes = append(cfg.Processes, spec)
	}
	if err := cfg.Validate(); err != nil {
		return usagef("loadtest: %v", err)
	}
	if c.gcPercent < 1 || c.gcPercent > 10_000 {
		return usagef("loadtest: --gc-percent must be in 1..10000, got %d", c.gcPercent)
	}
	if e.getenv("GOGC") == "" {
		defer debug.SetGCPercent(debug.SetGCPercent(c.gcPercent))
	}
	// Live progress only for a person watching: never into a pipe or a file.
	if f, ok := e.stdout.(*os.File); ok && !c.json && term.IsTerminal(int(f.Fd())) {
		cfg.Progress = f
	}
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return fmt.Errorf("loadtest: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("loadtest: CPU profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	res, err := loadtest.Run(ctx, cfg)
	if err != nil {
		return fmt.Errorf("loadtest: %w", err)
	}
	if c.svg != "" {
		f, err := os.Create(c.svg)
		if err != nil {
			return fmt.Errorf("loadtest: %w", err)
		}
		err = res.WriteSVG(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("loadtest: write %s: %w", c.svg, err)
		}
	}
	if c.json {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	return res.WriteText(e.stdout)
}
