package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
)

// testTable is the command table a run in an empty environment builds.
func testTable() *Command {
	var discard bytes.Buffer
	return commandTable(env{stdout: &discard, stderr: &discard, getenv: noEnv})
}

// eachCommand calls f with every command below c and the words that name it.
func eachCommand(c *Command, f func(words []string, c *Command)) {
	var walk func(words []string, c *Command)
	walk = func(words []string, c *Command) {
		for _, s := range c.Commands {
			w := append(slices.Clone(words), s.Name())
			f(w, s)
			walk(w, s)
		}
	}
	walk(nil, c)
}

// execCLI runs a command line as main does: exit status, stdout and stderr.
func execCLI(getenv func(string) string, args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = execute(context.Background(), args, &out, &errOut, getenv)
	return code, out.String(), errOut.String()
}

// TestHelpForEveryCommand: `help CMD`, `CMD -h` and `CMD --help` print the command's usage
// on stdout and exit 0, for every command in the table; a group's help lists its
// subcommands with their usage lines.
func TestHelpForEveryCommand(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		code, out, _ := execCLI(noEnv, args...)
		if code != 0 || !strings.HasPrefix(out, "usage: securepay COMMAND") {
			t.Errorf("securepay %s: want the list of commands and exit 0, got %d:\n%s", args[0], code, out)
		}
	}
	n := 0
	eachCommand(testTable(), func(words []string, c *Command) {
		n++
		for _, args := range [][]string{
			append([]string{"help"}, words...),
			append(slices.Clone(words), "-h"),
			append(slices.Clone(words), "--help"),
		} {
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				code, out, errOut := execCLI(noEnv, args...)
				if code != 0 || errOut != "" {
					t.Fatalf("want exit 0 and nothing on stderr, got %d and:\n%s", code, errOut)
				}
				if want := "usage: " + c.UsageLine + "\n"; !strings.HasPrefix(out, want) {
					t.Fatalf("want the output to start with %q, got:\n%s", want, out)
				}
				for _, s := range c.Commands {
					if !strings.Contains(out, s.UsageLine) {
						t.Errorf("want the subcommand %q listed, got:\n%s", s.UsageLine, out)
					}
				}
			})
		}
	})
	if n < 30 {
		t.Fatalf("walked %d commands: the table lost some", n)
	}
}

var positionalToken = regexp.MustCompile(`^\[?[A-Z][A-Z_]*\]?$`)

// TestUsageLinesNameTheArguments: every usage line names the command's positional
// arguments right after its name, and names no others; the commands that take one say so.
func TestUsageLinesNameTheArguments(t *testing.T) {
	wantArgs := map[string][]string{
		"account open":        {"ACCOUNT_ID"},
		"account get":         {"ACCOUNT_ID"},
		"account freeze":      {"ACCOUNT_ID"},
		"account unfreeze":    {"ACCOUNT_ID"},
		"account close":       {"ACCOUNT_ID"},
		"capture":             {"PAYMENT_ID"},
		"void":                {"PAYMENT_ID"},
		"refund":              {"PAYMENT_ID"},
		"payment":             {"PAYMENT_ID"},
		"payment get":         {"PAYMENT_ID"},
		"balance":             {"ACCOUNT_ID"},
		"history":             {"ACCOUNT_ID"},
		"watch":               {"ACCOUNT_ID"},
		"audit replay":        {"STREAM"},
		"audit prove":         {"PAYMENT_ID"},
		"audit check-receipt": {"FILE"},
		"projections rebuild": {"NAME"},
		"help":                {"COMMAND", "SUBCOMMAND"},
		"serve":               {"COMPONENT"},
	}
	eachCommand(testTable(), func(words []string, c *Command) {
		if c.Run == nil {
			return
		}
		name := strings.Join(words, " ")
		if c.LongName() != name {
			t.Errorf("%s: the usage line %q names it %q", name, c.UsageLine, c.LongName())
		}
		var names []string
		want := "securepay " + name
		for _, a := range c.Args {
			names = append(names, a.Name)
			if a.Optional {
				want += " [" + a.Name + "]"
			} else {
				want += " " + a.Name
			}
		}
		if !slices.Equal(names, wantArgs[name]) {
			t.Errorf("%s: declares arguments %q, want %q", name, names, wantArgs[name])
		}
		rest, ok := strings.CutPrefix(c.UsageLine, want)
		if !ok {
			t.Errorf("%s: usage line %q, want it to start with %q", name, c.UsageLine, want)
			return
		}
		if next := strings.Fields(rest); len(next) > 0 && positionalToken.MatchString(next[0]) {
			t.Errorf("%s: usage line %q names an argument %s the command does not declare", name, c.UsageLine, next[0])
		}
	})
}

// TestOnlyWritesOfferAnIdempotencyKey: a retry of a read is always safe, so only the
// commands that change the ledger offer --idempotency-key. A new client command must be
// classified here.
func TestOnlyWritesOfferAnIdempotencyKey(t *testing.T) {
	writes := map[string]bool{
		"account open": true, "account freeze": true, "account unfreeze": true, "account close": true,
		"transfer": true, "batch": true, "authorise": true, "capture": true, "void": true, "refund": true,
		"account get": false, "payment": false, "payment get": false, "balance": false, "history": false,
		"verify": false, "watch": false, "audit checkpoint": false, "audit prove": false,
		// loadtest writes, with ids of its own made unique per run: a key would only repeat them.
		"loadtest": false,
	}
	seen := map[string]bool{}
	eachCommand(testTable(), func(words []string, c *Command) {
		if c.Flag.Lookup("server") == nil {
			return
		}
		name := strings.Join(words, " ")
		seen[name] = true
		want, ok := writes[name]
		if !ok {
			t.Errorf("client command %q: say in this test whether it writes", name)
			return
		}
		if got := c.Flag.Lookup("idempotency-key") != nil; got != want {
			t.Errorf("%s: offers --idempotency-key: %v, want %v", name, got, want)
		}
	})
	for name := range writes {
		if !seen[name] {
			t.Errorf("%s is listed here but is not a client command", name)
		}
	}
}

// TestHelpOffersOnlyWhatWorks: a flag that every subcommand would refuse or ignore is not
// in the help (it is still accepted, for the answer it gets); values are named, never a
// stray phrase from the usage string.
func TestHelpOffersOnlyWhatWorks(t *testing.T) {
	for _, tc := range []struct {
		command []string
		flag    string
		offered bool
	}{
		{[]string{"projections", "list"}, "--dir", false},
		{[]string{"projections", "status"}, "--dir", false},
		{[]string{"projections", "rebuild"}, "--dir", false},
		{[]string{"audit", "verify"}, "--dir DIRECTORY\n", true},
		{[]string{"audit", "export"}, "--from POSITION\n", true},
		{[]string{"audit", "verify"}, "--from", false},
		{[]string{"watch"}, "--timeout", false},
		{[]string{"balance"}, "--timeout DURATION\n", true},
		{[]string{"balance"}, "--idempotency-key", false},
		{[]string{"capture"}, "--idempotency-key KEY\n", true},
		{[]string{"serve"}, "--postgres-dsn DSN\n", true},
	} {
		_, out, _ := execCLI(noEnv, append(tc.command, "-h")...)
		if got := strings.Contains(out, "  "+tc.flag); got != tc.offered {
			t.Errorf("securepay %s -h: offers %q: %v, want %v:\n%s", strings.Join(tc.command, " "), tc.flag, got, tc.offered, out)
		}
	}
	eachCommand(testTable(), func(words []string, c *Command) {
		c.Flag.VisitAll(func(f *flag.Flag) {
			if name, usage := flag.UnquoteUsage(f); strings.Contains(name, " ") || strings.Contains(usage, "`") {
				t.Errorf("%s --%s: value named %q in %q: a usage string backquotes only the value's name", strings.Join(words, " "), f.Name, name, f.Usage)
			}
		})
	})
}

// TestHelpNeverShowsTheEnvironment: defaults read from the environment are used, but help
// shows the built-in default, so a DSN's password never reaches the terminal.
func TestHelpNeverShowsTheEnvironment(t *testing.T) {
	getenv := func(k string) string {
		if k == "SECUREPAY_POSTGRES_DSN" {
			return "postgres://u:hunter2@db/x"
		}
		return ""
	}
	for _, args := range [][]string{{"serve", "-h"}, {"migrate", "-h"}, {"help", "audit", "verify"}} {
		_, out, _ := execCLI(getenv, args...)
		if strings.Contains(out, "hunter2") || !strings.Contains(out, "[$SECUREPAY_POSTGRES_DSN]") {
			t.Errorf("securepay %s: want the variable named and its value not shown, got:\n%s", strings.Join(args, " "), out)
		}
	}
}

// TestUsageErrorsShowTheUsageLine: a mistake exits 2 and repeats the usage line of the
// command it was made in.
func TestUsageErrorsShowTheUsageLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"capture"}, []string{"capture: missing PAYMENT_ID", "usage: securepay capture PAYMENT_ID"}},
		{[]string{"transfer", "--bogus"}, []string{"flag provided but not defined: -bogus", "usage: securepay transfer --from ACCOUNT"}},
		{[]string{"account", "frobnicate"}, []string{`unknown verb "frobnicate"`, "say open, get, freeze, unfreeze or close", "usage: securepay account SUBCOMMAND"}},
		{[]string{"version", "extra"}, []string{`version takes no argument, got "extra"`}},
		{[]string{"help", "nosuch"}, []string{`help: unknown command "nosuch"`}},
	} {
		code, out, errOut := execCLI(noEnv, tc.args...)
		if code != 2 || out != "" {
			t.Errorf("securepay %s: want exit 2 and nothing on stdout, got %d:\n%s", strings.Join(tc.args, " "), code, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("securepay %s: want %q on stderr, got:\n%s", strings.Join(tc.args, " "), w, errOut)
			}
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := execCLI(noEnv, "version")
	if code != 0 || !strings.HasPrefix(out, "securepay ") || !strings.Contains(out, runtime.Version()) {
		t.Fatalf("securepay version: want the version and %s, exit 0; got %d:\n%s", runtime.Version(), code, out)
	}
	for _, tc := range []struct {
		name   string
		bi     debug.BuildInfo
		want   []string
		absent []string
	}{
		{
			name: "built from a dirty checkout",
			bi: debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v0.0.0-20261128015043-1f4eb21e0728+dirty"}, Settings: []debug.BuildSetting{
				{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "1f4eb21e0728"}, {Key: "vcs.time", Value: "2026-11-28T01:50:43Z"}, {Key: "vcs.modified", Value: "true"},
			}},
			want: []string{"securepay     v0.0.0-20261128015043-1f4eb21e0728+dirty\n", "vcs.revision  1f4eb21e0728\n", "vcs.time      2026-11-28T01:50:43Z\n", "vcs.modified  true\n", "go            go1.26.0\n"},
		},
		{
			name:   "built without VCS information",
			bi:     debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}},
			want:   []string{"securepay  (devel)\n", "go         go1.26.0\n"},
			absent: []string{"vcs"},
		},
		{
			name: "no module version",
			bi:   debug.BuildInfo{GoVersion: "go1.26.0"},
			want: []string{"securepay  (unknown)\n"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := writeVersion(&b, &tc.bi); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("want %q in:\n%s", w, b.String())
				}
			}
			for _, a := range tc.absent {
				if strings.Contains(b.String(), a) {
					t.Errorf("want no %q in:\n%s", a, b.String())
				}
			}
		})
	}
}

// TestJSONErrors: under --json an error is one JSON object on stderr with the API's code
// and reason, and the exit status is the one the same error has without --json.
func TestJSONErrors(t *testing.T) {
	url := startDev(t)
	mustCLI(t, url, "account", "open", "world", "--kind", "external")
	mustCLI(t, url, "account", "open", "alice")
	mustCLI(t, url, "transfer", "--from", "world", "--to", "alice", "--amount", "10.00")
	getenv := func(k string) string {
		switch k {
		case "SECUREPAY_SERVER":
			return url
		case "SECUREPAY_TOKEN":
			return devTokenFor(url)
		}
		return ""
	}
	for _, tc := range []struct {
		name   string
		args   []string
		exit   int
		code   string
		reason string
	}{
		{"refused", []string{"transfer", "--from", "alice", "--to", "world", "--amount", "1000.00"}, 1, "failed_precondition", "INSUFFICIENT_FUNDS"},
		{"bad amount", []string{"transfer", "--from", "alice", "--to", "world", "--amount", "1.001"}, 1, "invalid_argument", "INVALID_AMOUNT"},
		{"read of an unknown payment", []string{"payment", "no-such-payment"}, 1, "not_found", ""},
		{"mistake in the command line", []string{"transfer", "--from", "alice"}, 2, "invalid_argument", ""},
		{"unknown flag", []string{"balance", "alice", "--bogus"}, 2, "invalid_argument", ""},
		{"no server", []string{"balance", "alice", "--server", "http://127.0.0.1:1"}, 1, "unavailable", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			textExit, _, text := execCLI(getenv, tc.args...)
			if textExit != tc.exit || !strings.HasPrefix(text, "securepay: ") {
				t.Fatalf("without --json: want exit %d and a line for a person, got %d:\n%s", tc.exit, textExit, text)
			}
			// --json first, so that it is parsed before any flag mistake after it.
			args := append([]string{tc.args[0], "--json"}, tc.args[1:]...)
			code, out, errOut := execCLI(getenv, args...)
			if code != tc.exit || out != "" {
				t.Fatalf("want exit %d and nothing on stdout, got %d:\n%s", tc.exit, code, out)
			}
			if strings.Count(errOut, "\n") != 1 {
				t.Fatalf("want one line on stderr, got:\n%s", errOut)
			}
			var got map[string]struct {
				Code    string `json:"code"`
				Reason  string `json:"reason"`
				Message string `json:"message"`
			}
			dec := json.NewDecoder(strings.NewReader(errOut))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&got); err != nil || len(got) != 1 {
				t.Fatalf("want one JSON object {\"error\":{...}}, got %v:\n%s", err, errOut)
			}
			e, ok := got["error"]
			if !ok || e.Code != tc.code || (tc.reason != "" && e.Reason != tc.reason) || e.Message == "" {
				t.Fatalf("want code %q, reason %q and a message, got %+v", tc.code, tc.reason, e)
			}
		})
	}
}

// TestUnknownProjectorIsRefused: a misspelt projector is refused before any connection,
// with the names that would work and no advice to resume a rebuild that never started.
func TestUnknownProjectorIsRefused(t *testing.T) {
	for _, name := range []string{"nosuch", "accounts.v2"} {
		code, _, errOut := execCLI(noEnv, "projections", "rebuild", name)
		if code != 2 || !strings.Contains(errOut, `unknown projector "`+name+`"`) ||
			!strings.Contains(errOut, "accounts.v1") || !strings.Contains(errOut, "payments.v1") || strings.Contains(errOut, "resume") {
			t.Errorf("projections rebuild %s: want exit 2 naming accounts.v1 and payments.v1, no resume hint; got %d:\n%s", name, code, errOut)
		}
	}
	// A known name goes on to ask where the database is.
	if code, _, errOut := execCLI(noEnv, "projections", "rebuild", "accounts.v1"); code != 2 || !strings.Contains(errOut, "say where the log is") {
		t.Errorf("projections rebuild accounts.v1 without a database: want to be asked for one, got %d:\n%s", code, errOut)
	}
}

// TestFlagsBeforeTheSubcommand: flags may come before a subcommand's name, as they could
// before subcommands had their own flags.
func TestFlagsBeforeTheSubcommand(t *testing.T) {
	dir := devLedger(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"audit", "--dir", dir, "verify"}, "hash chain intact"},
		{[]string{"audit", "--dir=" + dir, "replay", "account-alice"}, "ledger.account.credited.v1"},
	} {
		code, out, errOut := execCLI(noEnv, tc.args...)
		if code != 0 || !strings.Contains(out, tc.want) {
			t.Errorf("securepay %s: want %q, got %d:\n%s%s", strings.Join(tc.args, " "), tc.want, code, out, errOut)
		}
	}
}
