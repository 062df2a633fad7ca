package bank

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/loadtest"
	"github.com/securepay/securepay/loadtest/internal/devserver"
)

func quickConfig(server, run string) Config {
	return Config{
		Target: loadtest.Target{Server: server, Conns: 1}, RunID: run, Seed: 3,
		Accounts: 4, FundEach: 100_00, Writers: 4, Readers: 1, Duration: 700 * time.Millisecond,
		RequestTimeout: 5 * time.Second, Settle: 10 * time.Second,
	}
}

// Without faults, against a correct server, the checker finds nothing, and the run
// exercised every path it reports on.
func TestCheckerPassesAHealthyServer(t *testing.T) {
	rep, err := Run(context.Background(), quickConfig(devserver.Start(t), "healthy"))
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(rep.Violations) != 0 {
		t.Fatalf("violations on a healthy server:\n%s", rep)
	}
	if rep.Acknowledged == 0 || rep.Refused == 0 || rep.Reads == 0 || rep.Attempted != rep.Acknowledged+rep.Refused+rep.Unknown {
		t.Fatalf("want acknowledged, refused and reads above zero and the outcomes to add up: %s", rep)
	}
}

// The checker catches each lie a server could tell: each case runs a short load, then
// falsifies what the clients recorded (as if the server had answered that way), and the
// check must name the violation.
func TestCheckerCatchesEachLie(t *testing.T) {
	server := devserver.Start(t)
	cases := []struct {
		name   string
		forge  func(t *testing.T, k *checker)
		want   string
		noneOK bool // the forged history is truthful: no violation expected
	}{
		{"acknowledged but never applied", func(t *testing.T, k *checker) {
			k.ops = append(k.ops, &op{id: k.cfg.RunID + "-w99.1", src: k.accts[0], dst: k.accts[1], minor: 5, outcome: OK, attempts: 1})
		}, "is not in the log", false},
		{"refused but applied", func(t *testing.T, k *checker) {
			o := sendDirect(t, k, "-w98.1", 7)
			o.outcome = Refused
			k.ops = append(k.ops, o)
		}, "refused transfer", false},
		{"applied with another amount", func(t *testing.T, k *checker) {
			o := sendDirect(t, k, "-w97.1", 7)
			o.minor = 8
			k.ops = append(k.ops, o)
		}, "it was sent as 8", false},
		{"a payment no client sent", func(t *testing.T, k *checker) {
			sendDirect(t, k, "-w96.1", 7)
		}, "no client sent it", false},
		{"a read that does not add up", func(t *testing.T, k *checker) {
			k.reads = append(k.reads, read{position: 1, sum: k.total - 1})
		}, "want the funded total", false},
		{"a read below the limit", func(t *testing.T, k *checker) {
			k.reads = append(k.reads, read{position: 1, sum: k.total, lowest: -1, at: k.accts[0]})
		}, "below its limit", false},
		{"unknown outcome, applied once", func(t *testing.T, k *checker) {
			o := sendDirect(t, k, "-w95.1", 7)
			o.outcome = Unknown
			k.ops = append(k.ops, o)
		}, "", true},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, err := newChecker(quickConfig(server, "lie"+string(rune('a'+i))))
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if err := k.setUp(ctx); err != nil {
				t.Fatal(err)
			}
			k.load(ctx)
			c.forge(t, k)
			if err := k.check(ctx); err != nil {
				t.Fatalf("check: %v", err)
			}
			got := strings.Join(k.rep.Violations, "\n")
			if c.noneOK {
				if got != "" {
					t.Fatalf("violations for a truthful history:\n%s", got)
				}
				if k.rep.UnknownApplied != 1 {
					t.Fatalf("unknown outcomes applied: %d, want 1 (%s)", k.rep.UnknownApplied, k.rep)
				}
				return
			}
			if !strings.Contains(got, c.want) {
				t.Fatalf("violations %q, want one saying %q", got, c.want)
			}
		})
	}
}

// sendDirect applies a transfer of minor from the first account to the second behind the
// recorder's back, and returns it as a client would have recorded it had it been told OK.
func sendDirect(t *testing.T, k *checker, suffix string, minor int64) *op {
	t.Helper()
	o := &op{id: k.cfg.RunID + suffix, src: k.accts[0], dst: k.accts[1], minor: minor, outcome: OK, attempts: 1}
	_, err := k.c.Payments[0].Transfer(context.Background(), connect.NewRequest(&ledgerv1.TransferRequest{
		PaymentId: o.id, SourceAccountId: o.src, DestinationAccountId: o.dst, Amount: money(minor),
	}))
	if err != nil {
		t.Fatalf("transfer %s: %v", o.id, err)
	}
	return o
}

func TestClassify(t *testing.T) {
	for code, want := range map[connect.Code]Outcome{
		connect.CodeFailedPrecondition: Refused, connect.CodeInvalidArgument: Refused, connect.CodeNotFound: Refused,
		connect.CodeUnavailable: Unknown, connect.CodeDeadlineExceeded: Unknown, connect.CodeInternal: Unknown,
		connect.CodeAborted: Unknown, connect.CodeUnknown: Unknown, connect.CodeCanceled: Unknown,
	} {
		if got := classify(connect.NewError(code, nil)); got != want {
			t.Errorf("classify(%v) = %v, want %v", code, got, want)
		}
	}
	if classify(nil) != OK {
		t.Error("classify(nil) is not OK")
	}
}

func TestConfigRefusesBadSettings(t *testing.T) {
	good := quickConfig("http://127.0.0.1:1", "x")
	for name, change := range map[string]func(*Config){
		"one account":     func(c *Config) { c.Accounts = 1 },
		"no writers":      func(c *Config) { c.Writers = 0 },
		"tiny funding":    func(c *Config) { c.FundEach = 2 },
		"no duration":     func(c *Config) { c.Duration = 0 },
		"faults no pause": func(c *Config) { c.Faults = []Fault{{Name: "x"}} },
		"no run id":       func(c *Config) { c.RunID = "" },
		"remote server":   func(c *Config) { c.Target.Server = "https://10.1.1.1" },
	} {
		c := good
		change(&c)
		if _, err := newChecker(c); err == nil {
			t.Errorf("%s: accepted, want an error", name)
		}
	}
}
