package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is an io.Writer read while another goroutine writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func noEnv(string) string { return "" }

// startDev runs `securepay dev` in-process on a free port and returns its URL.
func startDev(t *testing.T, flags ...string) string {
	t.Helper()
	return startDevEnv(t, nil, flags...)
}

// startDevEnv is startDev with variables in its environment.
func startDevEnv(t *testing.T, environ map[string]string, flags ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	var stderr syncBuffer
	keyFile := filepath.Join(t.TempDir(), "dev-token-key.pem")
	go func() {
		listen := []string{"--listen", "127.0.0.1:0"}
		if environ != nil {
			listen = nil // the environment's, or the default
		}
		done <- run(ctx, append(append([]string{"dev", "--dir", t.TempDir(), "--token-key-file", keyFile}, listen...), flags...), pw, &stderr, func(k string) string { return environ[k] })
		pw.Close()
	}()
	var ended error
	var endedEarly bool
	t.Cleanup(func() {
		cancel()
		if !endedEarly {
			ended = <-done
		}
		if ended != nil {
			t.Errorf("securepay dev ended with %v (stderr: %s)", ended, stderr.String())
		}
	})
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // the test only needs the first lines
			}
		}
	}()
	deadline := time.After(20 * time.Second)
	var printed []string
	for {
		select {
		case l := <-lines:
			printed = append(printed, l)
			if url, ok := strings.CutPrefix(l, "SecurePay dev is listening on "); ok {
				// Read the rest of the banner: it must offer a token and a first transfer
				// to paste.
				const first = "securepay transfer --from world --to alice --amount 100.00 --asset USD"
				for !strings.Contains(printed[len(printed)-1], first) && len(printed) < 30 {
					select {
					case l := <-lines:
						printed = append(printed, l)
					case <-deadline:
						t.Fatalf("dev banner incomplete: %q", printed)
					}
				}
				banner := strings.Join(printed, "\n")
				if !strings.Contains(banner, first) || !strings.Contains(banner, "export SECUREPAY_TOKEN=$(securepay dev token") {
					t.Fatalf("dev banner: want a ready-to-paste token and first transfer, got:\n%s", banner)
				}
				registerDevToken(t, url, keyFile)
				return url
			}
		case err := <-done:
			ended, endedEarly = err, true
			t.Fatalf("securepay dev ended before listening: %v", err)
		case <-deadline:
			t.Fatalf("securepay dev did not say where it listens within 20s; printed %q, stderr %s", printed, stderr.String())
		}
	}
}

// cli runs one client command against url and returns its output.
func cli(t *testing.T, url string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	getenv := func(k string) string {
		switch k {
		case "SECUREPAY_SERVER":
			return url
		case "SECUREPAY_TOKEN":
			return devTokenFor(url)
		}
		return ""
	}
	err := run(context.Background(), args, &out, &errOut, getenv)
	return out.String(), err
}

func mustCLI(t *testing.T, url string, args ...string) string {
	t.Helper()
	out, err := cli(t, url, args...)
	if err != nil {
		t.Fatalf("securepay %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// TestNewcomerTour is the README's five minutes: start dev, paste the first transfer, look
// at the balance and history, try the card flow, and see a refusal explained.
func TestNewcomerTour(t *testing.T) {
	url := startDev(t)
	mustCLI(t, url, "account", "open", "world", "--asset", "USD", "--kind", "external")
	out := mustCLI(t, url, "account", "open", "alice", "--asset", "USD", "--meta", "owner=alice")
	if !strings.Contains(out, "committed at log position 2") || !strings.Contains(out, "owner=alice") {
		t.Fatalf("account open: want the account and its position, got:\n%s", out)
	}
	mustCLI(t, url, "account", "open", "shop", "--kind", "merchant")
	out = mustCLI(t, url, "transfer", "--from", "world", "--to", "alice", "--amount", "100.00", "--asset", "USD", "--id", "first")
	if !strings.Contains(out, "alice") || !strings.Contains(out, "100.00") || !strings.Contains(out, "completed") {
		t.Fatalf("transfer: want a completed payment and alice at 100.00, got:\n%s", out)
	}
	again := mustCLI(t, url, "transfer", "--from", "world", "--to", "alice", "--amount", "100.00", "--asset", "USD", "--id", "first")
	if !strings.Contains(again, "already applied") {
		t.Fatalf("retried transfer: want it reported as already applied, got:\n%s", again)
	}

	js := mustCLI(t, url, "authorise", "--from", "alice", "--to", "shop", "--amount", "30.00", "--id", "card-1", "--json")
	var auth struct {
		Result struct {
			Position string `json:"position"`
		} `json:"result"`
	}
	if err := json.Unmarshal([]byte(js), &auth); err != nil || auth.Result.Position == "" {
		t.Fatalf("authorise --json: want JSON with result.position, got %v:\n%s", err, js)
	}
	mustCLI(t, url, "capture", "card-1", "--amount", "10.00", "--capture-id", "c1")
	mustCLI(t, url, "refund", "card-1", "--amount", "2.50", "--refund-id", "r1")
	out = mustCLI(t, url, "void", "card-1")
	if !strings.Contains(out, "voided") {
		t.Fatalf("void: want the payment voided, got:\n%s", out)
	}
	mustCLI(t, url, "batch", "--leg", "alice:shop:1.00", "--leg", "shop:world:0.50", "--id", "b1")

	out = mustCLI(t, url, "balance", "alice") // reads at the CLI's own last write (read-your-writes)
	// 100 - 10 captured + 2.50 refunded - 1 batch
	if !strings.Contains(out, "91.50") {
		t.Fatalf("balance alice: want 91.50, got:\n%s", out)
	}
	out = mustCLI(t, url, "history", "alice", "--limit", "2")
	if !strings.Contains(out, "credit") || !strings.Contains(out, "more: securepay history alice --after") {
		t.Fatalf("history: want the first page and how to get the next, got:\n%s", out)
	}
	out = mustCLI(t, url, "payment", "card-1")
	if !strings.Contains(out, "10.00 USD") || !strings.Contains(out, "2.50 USD") {
		t.Fatalf("payment card-1: want captured 10.00 and refunded 2.50, got:\n%s", out)
	}
	out = mustCLI(t, url, "account", "freeze", "shop", "--reason", "review")
	if !strings.Contains(out, "frozen") {
		t.Fatalf("freeze: want frozen, got:\n%s", out)
	}
	mustCLI(t, url, "account", "unfreeze", "shop")
	out = mustCLI(t, url, "verify")
	if !strings.Contains(out, "hash chain verified") {
		t.Fatalf("verify: want the chain verified, got:\n%s", out)
	}

	// A live watch sees the next payment.
	watched := make(chan string, 1)
	go func() {
		out, err := cli(t, url, "watch", "alice", "--max-updates", "1")
		if err != nil {
			out = "error: " + err.Error()
		}
		watched <- out
	}()
	deadline := time.Now().Add(20 * time.Second)
	var w string
	for w == "" && time.Now().Before(deadline) {
		// Keep paying until the watch has started and seen one (it may start after the first).
		mustCLI(t, url, "transfer", "--from", "alice", "--to", "shop", "--amount", "0.01")
		select {
		case w = <-watched:
		case <-time.After(200 * time.Millisecond):
		}
	}
	if !strings.Contains(w, "ledger.account.debited.v1 by pay-") {
		t.Fatalf("watch alice --max-updates 1: want the balance now and the debit of the next payment, got:\n%s", w)
	}

	_, err := cli(t, url, "transfer", "--from", "alice", "--to", "world", "--amount", "1000.00")
	if err == nil || !strings.Contains(err.Error(), "INSUFFICIENT_FUNDS") || !strings.Contains(err.Error(), "available") {
		t.Fatalf("overdraft: want a refusal naming INSUFFICIENT_FUNDS and what is available, got %v", err)
	}
	_, err = cli(t, url, "transfer", "--from", "alice", "--to", "world", "--amount", "1.001")
	if err == nil || !strings.Contains(err.Error(), "INVALID_AMOUNT") {
		t.Fatalf("3 decimals in USD: want INVALID_AMOUNT, got %v", err)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no command given"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"transfer", "--from", "a"}, "--from, --to and --amount are required"},
		{[]string{"capture", "p1"}, "exactly one of --amount and --full"},
		{[]string{"account", "open"}, "missing ACCOUNT_ID"},
		{[]string{"balance", "a", "--server", "ftp://x"}, "--server must start with http:// or https://"},
		{[]string{"dev", "--gc-percent", "0"}, "--gc-percent in 1..10000"},
		{[]string{"dev", "--memory-limit-mb", "-1"}, "--memory-limit-mb must be >= 0"},
		{[]string{"dev", "--rate-limit", "0"}, "--rate-limit and --rate-burst must be >= 1"},
		{[]string{"dev", "--rate-burst", "-5"}, "--rate-limit and --rate-burst must be >= 1"},
	} {
		err := run(context.Background(), tc.args, io.Discard, io.Discard, noEnv)
		var u usageError
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errorsAs(err, &u) {
			t.Errorf("securepay %v: want a usage error with %q, got %v", tc.args, tc.want, err)
		}
	}
}

func errorsAs(err error, u *usageError) bool {
	v, ok := err.(usageError)
	if ok {
		*u = v
	}
	return ok
}

// TestServeConfigValidation: `securepay serve` refuses to start on a bad configuration and
// says what to set, every problem at once.
func TestServeConfigValidation(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "cert.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{"nothing set", nil, nil, []string{"--postgres-dsn or SECUREPAY_POSTGRES_DSN", "--redis-addr or SECUREPAY_REDIS_ADDR", "TLS is required"}},
		{"from the environment", nil, map[string]string{"SECUREPAY_POSTGRES_DSN": "postgres://u@127.0.0.1:1/db", "SECUREPAY_REDIS_ADDR": "127.0.0.1:1"}, []string{"TLS is required"}},
		{"bad redis address", []string{"--postgres-dsn", "postgres://u@127.0.0.1:1/db", "--redis-addr", "localhost"}, nil, []string{`Redis address "localhost" is not host:port`}},
		{"unreadable TLS pair", []string{"--postgres-dsn", "postgres://u@127.0.0.1:1/db", "--redis-addr", "127.0.0.1:1", "--tls-cert", notPEM, "--tls-key", notPEM}, nil, []string{"do not load as a pair"}},
		{"bad DSN", []string{"--postgres-dsn", "postgres://u:secret@[bad/db", "--redis-addr", "127.0.0.1:1"}, nil, []string{"DSN does not parse"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string { return tc.env[k] }
			err := run(context.Background(), append([]string{"serve"}, tc.args...), io.Discard, io.Discard, getenv)
			if err == nil {
				t.Fatalf("want serve to refuse the configuration, it started")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("want the error to say %q, got:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("the error leaks the DSN's password:\n%v", err)
			}
		})
	}
}
