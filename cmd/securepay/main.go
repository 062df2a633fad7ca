// Command securepay is SecurePay in one binary: the servers (dev, serve), the schema
// migration, and a command-line client for people.
//
//	securepay dev                      everything in one process, no external service
//	securepay serve                    the production server (PostgreSQL, Redis, TLS)
//	securepay migrate                  create or upgrade the PostgreSQL schemas
//	securepay account open alice --asset USD
//	securepay transfer --from world --to alice --amount 100.00 --asset USD
//	securepay balance alice
//
// Run `securepay help` for every command.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "securepay:", err)
		var u usageError
		if errors.As(err, &u) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// env is what every command gets: where to print and how to read the environment. Commands
// never read os.Args, os.Getenv or os.Stdout themselves, so tests run them in-process.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
}

// usageError marks a mistake in the command line (exit status 2).
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

type command struct {
	summary string
	run     func(ctx context.Context, e env, args []string) error
}

func commands() map[string]command {
	return map[string]command{
		"dev":         {"run everything in one process on the embedded store (no external service)", runDev},
		"serve":       {"run the production server (PostgreSQL, Redis, TLS)", runServe},
		"migrate":     {"create or upgrade the PostgreSQL schemas of the event store and the views", runMigrate},
		"account":     {"open | get | freeze | unfreeze | close an account", runAccount},
		"transfer":    {"move money from one account to another", runTransfer},
		"batch":       {"apply several transfers together, all or none (--leg FROM:TO:AMOUNT ...)", runBatch},
		"authorise":   {"hold money on an account for a later capture", runAuthorise},
		"capture":     {"capture part or all of an authorisation", runCapture},
		"void":        {"release what an authorisation still holds", runVoid},
		"refund":      {"return captured money to the payer", runRefund},
		"payment":     {"show a payment", runPayment},
		"balance":     {"show an account's balance, now or in the past", runBalance},
		"history":     {"show an account's history, page by page", runHistory},
		"verify":      {"verify the hash chain of the whole log on the server", runVerify},
		"watch":       {"print an account's balance live, a line per change", runWatch},
		"projections": {"operators: list | status | rebuild NAME of the PostgreSQL/Redis views", runProjections},
		"audit":       {"auditors: export | verify | balances | replay STREAM, reading the log directly", runAudit},
	}
}

// run executes one command line.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	e := env{stdout: stdout, stderr: stderr, getenv: getenv}
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printUsage(stdout)
		if len(args) == 0 {
			return usagef("no command given")
		}
		return nil
	}
	cmd, ok := commands()[args[0]]
	if !ok {
		printUsage(stderr)
		return usagef("unknown command %q", args[0])
	}
	return cmd.run(ctx, e, args[1:])
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: securepay COMMAND [flags] [args]")
	fmt.Fprintln(w)
	cmds := commands()
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, n := range names {
		fmt.Fprintf(tw, "  %s\t%s\n", n, cmds[n].summary)
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run `securepay COMMAND -h` for a command's flags. Client commands talk to")
	fmt.Fprintln(w, "--server (default $SECUREPAY_SERVER or http://127.0.0.1:8080) and print tables;")
	fmt.Fprintln(w, "add --json for machine-readable output.")
}

// parseInterleaved parses flags that may come before, between or after positional
// arguments (`account open alice --asset USD`), which flag.FlagSet alone does not allow.
// maxArgs bounds the positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string, maxArgs int) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageError{err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		if len(positional) == maxArgs {
			return nil, usagef("unexpected argument %q", args[0])
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
	return positional, nil
}

// envOr is a flag default taken from the environment.
func envOr(e env, name, def string) string {
	if v := e.getenv(name); v != "" {
		return v
	}
	return def
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
