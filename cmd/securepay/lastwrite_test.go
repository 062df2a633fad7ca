package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
)

const getPayment = "/securepay.ledger.v1.PaymentService/GetPayment"

var committedAt = regexp.MustCompile(`committed at log position (\d+)`)

// committedPosition is the position a write's output says it committed at.
func committedPosition(t *testing.T, out string) uint64 {
	t.Helper()
	m := committedAt.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("want the write's position in its output, got:\n%s", out)
	}
	p, err := strconv.ParseUint(m[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// remembered is the position the CLI remembers for server in getenv's cache.
func remembered(getenv func(string) string, server string) (uint64, bool) {
	return lastWriteFile(env{getenv: getenv}, server).load()
}

// TestReadYourWrites: a payment read right after the transfer that made it is never
// unknown, 50 times in a row, without the user passing any position.
func TestReadYourWrites(t *testing.T) {
	dev := startDev(t)
	getenv := serverEnv(dev, t.TempDir())
	mustRun(t, getenv, "account", "open", "world", "--kind", "external")
	mustRun(t, getenv, "account", "open", "alice")
	for i := range 50 {
		id := fmt.Sprintf("ryw-%d", i)
		mustRun(t, getenv, "transfer", "--from", "world", "--to", "alice", "--amount", "0.01", "--id", id)
		code, out, errOut := execCLI(getenv, "payment", id)
		if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "completed") {
			t.Fatalf("payment %s right after its transfer (round %d): exit %d:\n%s%s", id, i, code, out, errOut)
		}
	}
	if got := balanceOf(t, getenv, "alice").Posted; got != "0.50" {
		t.Fatalf("alice posted %s after 50 transfers of 0.01, want 0.50", got)
	}
}

// TestReadsPassTheLastWritePosition: a read sends the position of the last write to the
// same server, unless --min-position says otherwise.
func TestReadsPassTheLastWritePosition(t *testing.T) {
	dev := startDev(t)
	var mu sync.Mutex
	var sent []uint64
	p := startProxy(t, dev, func(procedure string, _ int, body []byte) action {
		if procedure == getPayment {
			var req ledgerv1.GetPaymentRequest
			if err := proto.Unmarshal(body, &req); err != nil {
				t.Errorf("GetPayment body: %v", err)
			}
			mu.Lock()
			sent = append(sent, req.GetMinPosition())
			mu.Unlock()
		}
		return pass
	})
	getenv := serverEnv(p.url, t.TempDir())
	mustRun(t, getenv, "account", "open", "world", "--kind", "external")
	mustRun(t, getenv, "account", "open", "alice")
	pos := committedPosition(t, mustRun(t, getenv, "transfer", "--from", "world", "--to", "alice", "--amount", "1.00", "--id", "p1"))
	mustRun(t, getenv, "account", "open", "bob") // the last write now
	last, ok := remembered(getenv, p.url)
	if !ok || last <= pos {
		t.Fatalf("remembered %d, %v after a write later than %d", last, ok, pos)
	}

	for _, tc := range []struct {
		name   string
		getenv func(string) string
		args   []string
		want   uint64
	}{
		{"the last write's position", getenv, nil, last},
		{"--min-position given", getenv, []string{"--min-position", fmt.Sprint(pos)}, pos},
		{"--min-position 0: no wait", getenv, []string{"--min-position", "0"}, 0},
		{"no write remembered", serverEnv(p.url, t.TempDir()), nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			sent = nil
			mu.Unlock()
			mustRun(t, tc.getenv, append([]string{"payment", "p1"}, tc.args...)...)
			mu.Lock()
			defer mu.Unlock()
			if len(sent) != 1 || sent[0] != tc.want {
				t.Fatalf("GetPayment sent min_position %v, want [%d]", sent, tc.want)
			}
		})
	}
}

// TestViewsBehindTheLastWrite: when the views cannot reach the last write's position, the
// read says NOT_CAUGHT_UP and which position, never that the payment is unknown; a
// remembered position the server's log does not hold (a dev server restarted with a fresh
// ledger) is forgotten and the read answered without it.
func TestViewsBehindTheLastWrite(t *testing.T) {
	dev := startDev(t)
	p := startProxy(t, dev, func(procedure string, _ int, body []byte) action {
		var req ledgerv1.GetPaymentRequest
		if procedure == getPayment && proto.Unmarshal(body, &req) == nil && req.GetMinPosition() > 0 {
			return answerNotCaughtUp // views that never catch up
		}
		return pass
	})
	setup := serverEnv(dev, t.TempDir())
	mustRun(t, setup, "account", "open", "world", "--kind", "external")
	mustRun(t, setup, "account", "open", "alice")
	pos := committedPosition(t, mustRun(t, setup, "transfer", "--from", "world", "--to", "alice", "--amount", "1.00", "--id", "p1"))

	for _, tc := range []struct {
		name     string
		position uint64 // remembered for the proxy's URL
		json     bool
		wantCode int
		want     []string // on stderr, or stdout when it succeeds
		forgets  bool
	}{
		{"the views lag", pos, false, 1, []string{fmt.Sprintf("have not yet applied log position %d", pos), "NOT_CAUGHT_UP", "it is in the log"}, false},
		{"the views lag, --json", pos, true, 1, []string{`"code":"deadline_exceeded"`, `"reason":"NOT_CAUGHT_UP"`}, false},
		{"a position from another ledger", 1_000_000, false, 0, []string{"p1", "completed"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			getenv := serverEnv(p.url, t.TempDir())
			if err := lastWriteFile(env{getenv: getenv}, p.url).save(tc.position); err != nil {
				t.Fatal(err)
			}
			args := []string{"payment", "p1"}
			if tc.json {
				args = append(args, "--json")
			}
			code, out, errOut := execCLI(getenv, args...)
			if code != tc.wantCode {
				t.Fatalf("want exit %d, got %d:\n%s%s", tc.wantCode, code, out, errOut)
			}
			shown := errOut
			if code == 0 {
				shown = out
			}
			for _, w := range tc.want {
				if !strings.Contains(shown, w) {
					t.Errorf("want %q in:\n%s", w, shown)
				}
			}
			if strings.Contains(errOut, "PAYMENT_UNKNOWN") {
				t.Errorf("a read that could not wait for the write says the payment is unknown:\n%s", errOut)
			}
			if _, ok := remembered(getenv, p.url); ok == tc.forgets {
				t.Errorf("position %d remembered: %v, want %v", tc.position, ok, !tc.forgets)
			}
		})
	}
}

// TestRememberTheLastWrite: a write replaces the remembered position, except by an older
// one while the server's log holds the newer (another write made meanwhile, which reads
// must wait for too).
func TestRememberTheLastWrite(t *testing.T) {
	dev := startDev(t)
	setup := serverEnv(dev, t.TempDir())
	mustRun(t, setup, "account", "open", "world", "--kind", "external")
	mustRun(t, setup, "account", "open", "alice")
	first := committedPosition(t, mustRun(t, setup, "transfer", "--from", "world", "--to", "alice", "--amount", "1.00", "--id", "first"))
	later := committedPosition(t, mustRun(t, setup, "transfer", "--from", "world", "--to", "alice", "--amount", "1.00", "--id", "later"))

	for _, tc := range []struct {
		name   string
		before uint64 // remembered before the write; 0: nothing
		write  []string
		want   uint64
	}{
		{"nothing remembered", 0, []string{"transfer", "--from", "world", "--to", "alice", "--amount", "1.00", "--id", "first"}, first},
		{"a replay keeps a later write", later, []string{"transfer", "--from", "world", "--to", "alice", "--amount", "1.00", "--id", "first"}, later},
		{"a replay replaces an earlier write", first - 1, []string{"transfer", "--from", "world", "--to", "alice", "--amount", "1.00", "--id", "later"}, later},
		{"a position the log does not hold is replaced", 1_000_000, []string{"transfer", "--from", "world", "--to", "alice", "--amount", "1.00", "--id", "first"}, first},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache := t.TempDir()
			getenv := serverEnv(dev, cache)
			if tc.before != 0 {
				if err := lastWriteFile(env{getenv: getenv}, dev).save(tc.before); err != nil {
					t.Fatal(err)
				}
			}
			mustRun(t, getenv, tc.write...)
			if got, _ := remembered(getenv, dev); got != tc.want {
				t.Fatalf("remembered %d, want %d", got, tc.want)
			}
			files, err := filepath.Glob(filepath.Join(cache, "client", "*"))
			if err != nil || len(files) != 1 {
				t.Fatalf("want one file in the cache, got %q (%v)", files, err)
			}
			if fi, err := os.Stat(files[0]); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("want the file readable by its owner only, got %v (%v)", fi.Mode(), err)
			}
			var rec map[string]any
			if b, err := os.ReadFile(files[0]); err != nil || json.Unmarshal(b, &rec) != nil || rec["server"] != dev {
				t.Errorf("want the file to name its server %s, got %s (%v)", dev, b, err)
			}
		})
	}
}

// TestNoCacheDirectoryNoMemory: without a cache directory in the environment, the CLI
// remembers nothing and reads wait for nothing; it never falls back to the process's own
// environment.
func TestNoCacheDirectoryNoMemory(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string // "" for no file
	}{
		{"nothing set", nil, ""},
		{"relative HOME", map[string]string{"HOME": "rel"}, ""},
		{"SECUREPAY_CACHE", map[string]string{"SECUREPAY_CACHE": "/c", "HOME": "/h"}, "/c/client/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := lastWriteFile(env{getenv: func(k string) string { return tc.env[k] }}, "http://x")
			if !strings.HasPrefix(l.path, tc.want) || (tc.want == "") != (l.path == "") {
				t.Fatalf("path %q, want it under %q", l.path, tc.want)
			}
		})
	}
}
