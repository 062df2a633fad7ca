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
// Run `securepay help` for every command, `securepay help COMMAND` for one. The commands
// are declared in one table (commandTable); command.go runs it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"connectrpc.com/connect"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/services"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := execute(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// execute runs one command line, reports its error on stderr and returns the exit status:
// 0, 2 for a mistake in the command line, 1 for any other failure.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	return report(stderr, run(ctx, args, stdout, stderr, getenv))
}

// env is what every command gets: where to print and how to read the environment. Commands
// never read os.Args, os.Getenv or os.Stdout themselves, so tests run them in-process.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
}

// usageError marks a mistake in the command line (exit status 2).
type usageError struct {
	msg string
	// cmd is the command the mistake was made in, whose usage line the report repeats.
	// nil or the root when there is no line to repeat: the command name itself was wrong
	// and the list of commands was printed, or the message says where to look.
	cmd *Command
}

func (u usageError) Error() string { return u.msg }

func usagef(format string, args ...any) error { return usageError{msg: fmt.Sprintf(format, args...)} }

// jsonError is the error of a command run with --json: a script that reads the answers as
// JSON reads the failures the same way.
type jsonError struct{ err error }

func (j jsonError) Error() string { return j.err.Error() }
func (j jsonError) Unwrap() error { return j.err }

// commandTable is every command of securepay, in the order `securepay help` lists them.
// It is built for each command line: the flag variables belong to that run, and some
// defaults come from its environment.
func commandTable(e env) *Command {
	root := &Command{
		UsageLine: "securepay COMMAND [flags] [args]",
		Long: "Run `securepay help COMMAND` (or `securepay COMMAND -h`) for a command's arguments and\n" +
			"flags. Client commands talk to --server (default $SECUREPAY_SERVER or\n" +
			"http://127.0.0.1:8080) and print tables; add --json for machine-readable output,\n" +
			"errors included.",
		Commands: []*Command{
			devCommand(e),
			serveCommand(e),
			migrateCommand(e),
			accountCommand(e),
			transferCommand(e),
			batchCommand(e),
			authoriseCommand(e),
			captureCommand(e),
			voidCommand(e),
			refundCommand(e),
			paymentCommand(e),
			balanceCommand(e),
			historyCommand(e),
			verifyCommand(e),
			watchCommand(e),
			projectionsCommand(e),
			auditCommand(e),
			loadtestCommand(e),
			versionCommand(),
		},
	}
	root.Commands = append(root.Commands, helpCommand(root))
	return root
}

// run executes one command line.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	e := env{stdout: stdout, stderr: stderr, getenv: getenv}
	root := commandTable(e)
	if len(args) == 0 {
		root.printUsage(stdout)
		return usagef("no command given")
	}
	if isHelpFlag(args[0]) {
		root.printUsage(stdout)
		return nil
	}
	cmd := root.lookup(args[0])
	if cmd == nil {
		root.printUsage(stderr)
		return usagef("unknown command %q", args[0])
	}
	return cmd.execute(ctx, e, args[1:])
}

// report prints err for a person, or as one JSON object when the command ran with --json,
// and returns the exit status.
func report(stderr io.Writer, err error) int {
	if err == nil {
		return 0
	}
	var j jsonError
	if errors.As(err, &j) {
		writeErrorJSON(stderr, j.err)
	} else {
		fmt.Fprintln(stderr, "securepay:", err)
		var u usageError
		if errors.As(err, &u) && u.cmd != nil && u.cmd.LongName() != "" {
			fmt.Fprintf(stderr, "usage: %s\nRun `securepay help %s` for details.\n", u.cmd.UsageLine, u.cmd.LongName())
		}
	}
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}

// writeErrorJSON prints {"error":{"code":...,"reason":...,"message":...}} on one line. The
// code is the API's (connect's code names); a mistake in the command line is
// invalid_argument, and a failure that is neither is unknown. A write whose outcome is
// unknown adds "retry_with": the ids it used and the command that retries it safely.
func writeErrorJSON(w io.Writer, err error) {
	type body struct {
		Code      string            `json:"code"`
		Reason    string            `json:"reason,omitempty"`
		Message   string            `json:"message"`
		RetryWith map[string]string `json:"retry_with,omitempty"`
	}
	b := body{Code: connect.CodeUnknown.String(), Message: err.Error()}
	var cerr *connect.Error
	var u usageError
	switch {
	case errors.As(err, &cerr):
		b.Code, b.Reason, b.Message = cerr.Code().String(), string(services.ReasonOf(cerr)), cerr.Message()
	case errors.As(err, &u):
		b.Code = connect.CodeInvalidArgument.String()
	}
	var uo *unknownOutcome
	if errors.As(err, &uo) {
		b.RetryWith = uo.retryWith()
	}
	out, mErr := json.Marshal(struct {
		Error body `json:"error"`
	}{b})
	if mErr != nil {
		// Strings always encode; this keeps the promise of one object if that ever changes.
		out = []byte(`{"error":{"code":"unknown","message":"cannot encode the error as JSON"}}`)
	}
	fmt.Fprintln(w, string(out))
}

// envFlags registers flags whose default a variable of the environment overrides. Help
// shows the built-in default and names the variable, never its value: a DSN's password
// must not reach a terminal because someone typed -h.
type envFlags struct {
	fs *flag.FlagSet
	e  env
}

func (f envFlags) String(p *string, name, variable, def, usage string) {
	f.fs.StringVar(p, name, def, usage+" [$"+variable+"]")
	if v := f.e.getenv(variable); v != "" {
		*p = v
	}
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

// limitFlags registers the ceilings of dev and serve. They are in major units of every
// asset (dollars, yen), scaled by each asset's decimals and capped far below the int64
// edge by domain.Limits; 0 means the default and the ledger config refuses negative values.
func limitFlags(fs *flag.FlagSet, l *domain.Limits) {
	fs.Int64Var(&l.MaxAmountMajor, "max-amount", domain.DefaultMaxAmountMajor,
		"largest amount of one payment or authorisation, in major `units` of its asset")
	fs.Int64Var(&l.MaxCreditLimitMajor, "max-credit-limit", domain.DefaultMaxCreditLimitMajor,
		"largest credit limit an account may be opened with, in major `units` of its asset")
	fs.Func("asset-limits", "exact ceilings of some assets, comma-separated `ASSET=AMOUNT[:CREDIT]` "+
		"in the asset's units (USD=5000000.00:1000.00, POINTS/0=100000); CREDIT defaults to AMOUNT", func(v string) error {
		assets, err := parseAssetLimits(v)
		if err != nil {
			return err
		}
		l.Assets = assets
		return nil
	})
}

// parseAssetLimits reads --asset-limits. Amounts are exact decimals of each asset, parsed
// as the API parses amounts, so a ceiling cannot carry more decimals than its asset has.
func parseAssetLimits(v string) (map[domain.Asset]domain.Ceilings, error) {
	items := splitList(v)
	out := make(map[domain.Asset]domain.Ceilings, len(items))
	for _, item := range items {
		name, amounts, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want ASSET=AMOUNT[:CREDIT], e.g. USD=5000000.00:1000.00", item)
		}
		asset, err := domain.ParseAsset(name)
		if err != nil {
			return nil, err
		}
		amountText, creditText, hasCredit := strings.Cut(amounts, ":")
		amount, err := domain.ParseAmount(amountText, asset)
		if err != nil {
			return nil, err
		}
		c := domain.Ceilings{MaxAmount: amount.Minor, MaxCreditLimit: amount.Minor}
		switch {
		case !hasCredit:
		case creditText == "0":
			c.MaxCreditLimit = 0 // no account of this asset may go below zero
		default:
			credit, err := domain.ParseAmount(creditText, asset)
			if err != nil {
				return nil, err
			}
			c.MaxCreditLimit = credit.Minor
		}
		if _, dup := out[asset]; dup {
			return nil, fmt.Errorf("%s is given twice", asset)
		}
		out[asset] = c
	}
	return out, nil
}
