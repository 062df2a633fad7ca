package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/securepay/securepay/services"
)

// action is what the test proxy does with one request.
type action int

const (
	pass action = iota
	// unavailable answers UNAVAILABLE without forwarding: nothing reaches the ledger.
	unavailable
	// dropAfter forwards the request, waits for the ledger's answer, then closes the
	// client's connection without it: the write is committed and the client never knows.
	dropAfter
	// holdAfter forwards the request, waits for the ledger's answer, then keeps it until
	// the client gives up: a deadline that passes after the commit.
	holdAfter
	// answerNotCaughtUp answers NOT_CAUGHT_UP without forwarding, as a server whose views lag.
	answerNotCaughtUp
)

// proxy stands between the CLI and a dev server and does to each request what step says,
// given the procedure ("/securepay.ledger.v1.PaymentService/Transfer") and how many
// requests for it came before (0 for the first).
type proxy struct {
	url      string
	upstream string
	client   *http.Client
	step     func(procedure string, n int, body []byte) action

	mu   sync.Mutex
	seen map[string]int
	// forwards counts forwarded requests until the ledger has answered them, so that a
	// test can wait for every commit to be done before it retries.
	forwards sync.WaitGroup
}

type connKey struct{}

func h2c() *http.Protocols {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &p
}

func startProxy(t *testing.T, upstream string, step func(procedure string, n int, body []byte) action) *proxy {
	t.Helper()
	p := &proxy{
		upstream: upstream,
		client:   &http.Client{Transport: &http.Transport{Protocols: h2c()}},
		step:     step,
		seen:     map[string]int{},
	}
	srv := httptest.NewUnstartedServer(p)
	srv.Config.Protocols = h2c()
	srv.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context { return context.WithValue(ctx, connKey{}, c) }
	srv.Start()
	t.Cleanup(srv.Close)
	p.url = srv.URL
	// The CLI behind the proxy talks to the dev server's gateway: it needs its token.
	if tok := devTokenFor(upstream); tok != "" {
		devTokens.Store(p.url, tok)
		t.Cleanup(func() { devTokens.Delete(p.url) })
	}
	return p
}

// count is how many requests for procedure the proxy has seen.
func (p *proxy) count(procedure string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[procedure]
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	p.mu.Lock()
	n := p.seen[r.URL.Path]
	p.seen[r.URL.Path]++
	p.mu.Unlock()
	act := p.step(r.URL.Path, n, body)
	switch act {
	case unavailable:
		_ = connect.NewErrorWriter().Write(w, r, connect.NewError(connect.CodeUnavailable, errors.New("test proxy: the ledger is unreachable")))
		return
	case answerNotCaughtUp:
		cerr := connect.NewError(connect.CodeDeadlineExceeded, errors.New("the view has not reached the requested min_position yet; retry later"))
		if d, err := connect.NewErrorDetail(&errdetails.ErrorInfo{Reason: string(services.ReasonNotCaughtUp), Domain: services.ErrorDomain}); err == nil {
			cerr.AddDetail(d)
		}
		_ = connect.NewErrorWriter().Write(w, r, cerr)
		return
	}
	p.forwards.Add(1)
	status, header, answer, err := p.forward(r, body)
	p.forwards.Done()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	switch act {
	case dropAfter:
		r.Context().Value(connKey{}).(net.Conn).Close()
		return
	case holdAfter:
		<-r.Context().Done()
		return
	}
	for k, v := range header {
		w.Header()[k] = v
	}
	w.WriteHeader(status)
	w.Write(answer)
}

// forward sends the request to the dev server and reads the whole answer. It does not
// stop when the client does: the ledger must get the request whatever the client does.
func (p *proxy) forward(r *http.Request, body []byte) (int, http.Header, []byte, error) {
	req, err := http.NewRequestWithContext(context.WithoutCancel(r.Context()), r.Method, p.upstream+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header = r.Header.Clone()
	res, err := p.client.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer res.Body.Close()
	answer, err := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, answer, err
}

// isWrite says whether a procedure changes the ledger.
func isWrite(procedure string) bool {
	return (strings.Contains(procedure, "PaymentService/") || strings.Contains(procedure, "AccountService/")) && !strings.Contains(procedure, "/Get")
}

// serverEnv is an environment that points the CLI at url and keeps its remembered
// positions in cache.
func serverEnv(url, cache string) func(string) string {
	return func(k string) string {
		switch k {
		case "SECUREPAY_SERVER":
			return url
		case "SECUREPAY_CACHE":
			return cache
		case "SECUREPAY_TOKEN":
			return devTokenFor(url)
		}
		return ""
	}
}

// mustRun runs a command line that must succeed and returns its output.
func mustRun(t *testing.T, getenv func(string) string, args ...string) string {
	t.Helper()
	code, out, errOut := execCLI(getenv, args...)
	if code != 0 {
		t.Fatalf("securepay %s: exit %d:\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

type balanceJSON struct {
	Posted    string `json:"posted"`
	Held      string `json:"held"`
	Available string `json:"available"`
	Status    string `json:"status"`
	Position  string `json:"position"`
}

// balanceOf is account's balance, read after the last write remembered in getenv's cache.
func balanceOf(t *testing.T, getenv func(string) string, account string) balanceJSON {
	t.Helper()
	var b struct {
		Balance balanceJSON `json:"balance"`
	}
	out := mustRun(t, getenv, "balance", account, "--json")
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatalf("balance %s --json: %v:\n%s", account, err, out)
	}
	return b.Balance
}

// shellWords splits a command line quoted as shellQuote quotes: words separated by
// spaces, single-quoted parts, and \' between them for a quote.
func shellWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted:
			if c == '\'' {
				quoted = false
			} else {
				cur.WriteByte(c)
			}
		case c == '\'':
			quoted, inWord = true, true
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case c == ' ':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// printedCommand is the retry command the error names: the last line of the text report,
// or retry_with.command under --json; with the ids it names.
func printedCommand(t *testing.T, errOut string, asJSON bool) (args []string, ids map[string]string) {
	t.Helper()
	line := ""
	if asJSON {
		var e struct {
			Error struct {
				Code      string            `json:"code"`
				RetryWith map[string]string `json:"retry_with"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(errOut), &e); err != nil || e.Error.RetryWith == nil {
			t.Fatalf("want one JSON error object with retry_with, got %v:\n%s", err, errOut)
		}
		ids = e.Error.RetryWith
		line = ids["command"]
		delete(ids, "command")
	} else {
		lines := strings.Split(strings.TrimSpace(errOut), "\n")
		line = strings.TrimSpace(lines[len(lines)-1])
		ids = map[string]string{}
		for _, m := range regexp.MustCompile(`(payment|capture|refund|account) id ([A-Za-z0-9._:-]+)`).FindAllStringSubmatch(errOut, -1) {
			ids[m[1]+"_id"] = m[2]
		}
	}
	words, err := shellWords(line)
	if err != nil || len(words) < 2 || words[0] != "securepay" {
		t.Fatalf("want a securepay command line, got %q (%v) in:\n%s", line, err, errOut)
	}
	return words[1:], ids
}

// TestLostAnswersNameTheRetry: a write whose answer is lost after the ledger committed it
// (the connection drops, or the deadline passes) ends with the ids it used and the command
// that retries it; that command, run afterwards, gives the original outcome as a replay
// and applies nothing twice. Every write command is here.
func TestLostAnswersNameTheRetry(t *testing.T) {
	dev := startDev(t)
	direct := serverEnv(dev, t.TempDir())
	mustRun(t, direct, "account", "open", "world", "--kind", "external")
	mustRun(t, direct, "account", "open", "shop", "--kind", "merchant")

	for _, tc := range []struct {
		name  string
		setup [][]string // run directly against the ledger, before the write
		write []string   // through the proxy
		mode  action
		json  bool
		// ids the error must name (a value of "*" is one the CLI generated)
		ids map[string]string
		// flags the printed command must and must not carry
		carries, omits []string
		// what running the printed command must print (under --json: a replayed result)
		replayed string
		// balances after the retry: account → posted/available
		posted, available map[string]string
	}{
		{
			name:  "transfer, connection dropped after the commit",
			setup: [][]string{{"account", "open", "a0"}},
			write: []string{"transfer", "--from", "world", "--to", "a0", "--amount", "5.00"}, mode: dropAfter,
			ids: map[string]string{"payment_id": "*"}, carries: []string{"--id"},
			replayed: "already applied earlier", posted: map[string]string{"a0": "5.00"},
		},
		{
			name:  "transfer, deadline passed after the commit",
			setup: [][]string{{"account", "open", "a1"}},
			write: []string{"transfer", "--from", "world", "--to", "a1", "--amount", "5.00", "--timeout", "700ms", "--reference", "it's a gift"}, mode: holdAfter,
			ids: map[string]string{"payment_id": "*"}, carries: []string{"--id", "--reference"}, omits: []string{"--timeout"},
			replayed: "already applied earlier", posted: map[string]string{"a1": "5.00"},
		},
		{
			name:  "transfer --json",
			setup: [][]string{{"account", "open", "a2"}},
			write: []string{"transfer", "--json", "--from", "world", "--to", "a2", "--amount", "5.00"}, mode: dropAfter, json: true,
			ids: map[string]string{"payment_id": "*"}, carries: []string{"--id", "--json"},
			posted: map[string]string{"a2": "5.00"},
		},
		{
			name:  "transfer with the user's id and Idempotency-Key",
			setup: [][]string{{"account", "open", "a3"}},
			write: []string{"transfer", "--from", "world", "--to", "a3", "--amount", "5.00", "--id", "mine-3", "--idempotency-key", "key-3"}, mode: dropAfter,
			ids: map[string]string{"payment_id": "mine-3"}, carries: []string{"--id", "--idempotency-key"},
			// The key's first answer comes back byte for byte: the commit, not a replay.
			replayed: "committed at log position", posted: map[string]string{"a3": "5.00"},
		},
		{
			name:  "batch",
			setup: [][]string{{"account", "open", "a4"}, {"account", "open", "b4"}},
			write: []string{"batch", "--leg", "world:a4:1.00", "--leg", "world:b4:2.00"}, mode: dropAfter,
			ids: map[string]string{"payment_id": "*"}, carries: []string{"--id", "--leg"},
			replayed: "already applied earlier", posted: map[string]string{"a4": "1.00", "b4": "2.00"},
		},
		{
			name:  "authorise",
			setup: [][]string{{"account", "open", "a5"}, {"transfer", "--from", "world", "--to", "a5", "--amount", "10.00"}},
			write: []string{"authorise", "--from", "a5", "--to", "shop", "--amount", "3.00", "--expires-in", "1h"}, mode: dropAfter,
			ids: map[string]string{"payment_id": "*"}, carries: []string{"--id", "--expires-at"}, omits: []string{"--expires-in"},
			replayed: "already applied earlier", posted: map[string]string{"a5": "10.00"}, available: map[string]string{"a5": "7.00"},
		},
		{
			name: "capture",
			setup: [][]string{{"account", "open", "a6"}, {"transfer", "--from", "world", "--to", "a6", "--amount", "10.00"},
				{"authorise", "--from", "a6", "--to", "shop", "--amount", "4.00", "--id", "card-6"}},
			write: []string{"capture", "card-6", "--amount", "1.00"}, mode: dropAfter,
			ids: map[string]string{"payment_id": "card-6", "capture_id": "*"}, carries: []string{"--capture-id", "--amount"},
			replayed: "already applied earlier", posted: map[string]string{"a6": "9.00"}, available: map[string]string{"a6": "6.00"},
		},
		{
			name: "refund",
			setup: [][]string{{"account", "open", "a7"}, {"transfer", "--from", "world", "--to", "a7", "--amount", "10.00"},
				{"authorise", "--from", "a7", "--to", "shop", "--amount", "4.00", "--id", "card-7"}, {"capture", "card-7", "--full"}},
			write: []string{"refund", "card-7", "--amount", "0.50"}, mode: dropAfter,
			ids: map[string]string{"payment_id": "card-7", "refund_id": "*"}, carries: []string{"--refund-id"},
			replayed: "already applied earlier", posted: map[string]string{"a7": "6.50"},
		},
		{
			name: "void",
			setup: [][]string{{"account", "open", "a8"}, {"transfer", "--from", "world", "--to", "a8", "--amount", "10.00"},
				{"authorise", "--from", "a8", "--to", "shop", "--amount", "4.00", "--id", "card-8"}},
			write: []string{"void", "card-8"}, mode: dropAfter,
			ids:      map[string]string{"payment_id": "card-8"},
			replayed: "already applied earlier", posted: map[string]string{"a8": "10.00"}, available: map[string]string{"a8": "10.00"},
		},
		{
			name:  "account open",
			write: []string{"account", "open", "a9", "--kind", "merchant"}, mode: dropAfter,
			ids: map[string]string{"account_id": "a9"}, carries: []string{"--kind"},
			replayed: "already applied earlier", posted: map[string]string{"a9": "0.00"},
		},
		{
			name:  "account freeze",
			setup: [][]string{{"account", "open", "a10"}},
			write: []string{"account", "freeze", "a10", "--reason", "under review"}, mode: holdAfter,
			ids: map[string]string{"account_id": "a10"}, carries: []string{"--reason"},
			replayed: "already applied earlier",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, s := range tc.setup {
				mustRun(t, direct, s...)
			}
			p := startProxy(t, dev, func(procedure string, _ int, _ []byte) action {
				if isWrite(procedure) {
					return tc.mode
				}
				return pass
			})
			if tc.mode == holdAfter && !slices.Contains(tc.write, "--timeout") {
				tc.write = append(tc.write, "--timeout", "700ms")
			}
			code, out, errOut := execCLI(serverEnv(p.url, t.TempDir()), tc.write...)
			if code != 1 || out != "" {
				t.Fatalf("want exit 1 and nothing on stdout, got %d:\n%s%s", code, out, errOut)
			}
			if !tc.json && !strings.Contains(errOut, "not known whether it was applied") {
				t.Errorf("want the report to say the outcome is not known, got:\n%s", errOut)
			}
			args, ids := printedCommand(t, errOut, tc.json)
			for key, want := range tc.ids {
				got := ids[key]
				if got == "" || (want != "*" && got != want) {
					t.Errorf("want the error to name %s %s, got %q in:\n%s", key, want, got, errOut)
				}
				if want == "*" && !slices.Contains(args, got) {
					t.Errorf("the printed command %q does not carry the generated %s %s", args, key, got)
				}
			}
			for _, f := range tc.carries {
				if !slices.Contains(args, f) {
					t.Errorf("want the printed command to carry %s, got %q", f, args)
				}
			}
			for _, f := range tc.omits {
				if slices.Contains(args, f) {
					t.Errorf("want the printed command without %s, got %q", f, args)
				}
			}
			// Every forwarded request has been answered by the ledger before the retry.
			p.forwards.Wait()
			retry := serverEnv(dev, t.TempDir())
			out = mustRun(t, retry, args...)
			if tc.json {
				var res struct {
					Result struct {
						Replayed bool `json:"replayed"`
					} `json:"result"`
				}
				if err := json.Unmarshal([]byte(out), &res); err != nil || !res.Result.Replayed {
					t.Fatalf("securepay %s: want a replayed result as JSON, got %v:\n%s", strings.Join(args, " "), err, out)
				}
			} else if !strings.Contains(out, tc.replayed) {
				t.Fatalf("securepay %s: want %q, got:\n%s", strings.Join(args, " "), tc.replayed, out)
			}
			// The balances show it applied once, though the ledger got it several times.
			for account, want := range tc.posted {
				if got := balanceOf(t, retry, account).Posted; got != want {
					t.Errorf("%s posted %s, want %s: applied other than once", account, got, want)
				}
			}
			for account, want := range tc.available {
				if got := balanceOf(t, retry, account).Available; got != want {
					t.Errorf("%s available %s, want %s: applied other than once", account, got, want)
				}
			}
		})
	}
}

// TestRetriesByItself: a server that answers UNAVAILABLE a few times and then serves gets
// the same write again, with the same id, until it answers, within maxAttempts; one that
// never does leaves a write that was never applied, and the printed command applies it,
// once.
func TestRetriesByItself(t *testing.T) {
	dev := startDev(t)
	direct := serverEnv(dev, t.TempDir())
	mustRun(t, direct, "account", "open", "world", "--kind", "external")
	const transfer = "/securepay.ledger.v1.PaymentService/Transfer"

	for i, tc := range []struct {
		name      string
		failures  int
		wantCode  int
		wantCalls int
	}{
		{"unavailable twice, then served", 2, 0, 3},
		{"unavailable at every attempt", maxAttempts + 5, 1, maxAttempts},
	} {
		t.Run(tc.name, func(t *testing.T) {
			account := fmt.Sprintf("r%d", i)
			mustRun(t, direct, "account", "open", account)
			var bodies [][]byte
			var mu sync.Mutex
			p := startProxy(t, dev, func(procedure string, n int, body []byte) action {
				if procedure != transfer {
					return pass
				}
				mu.Lock()
				bodies = append(bodies, body)
				mu.Unlock()
				if n < tc.failures {
					return unavailable
				}
				return pass
			})
			code, out, errOut := execCLI(serverEnv(p.url, t.TempDir()), "transfer", "--from", "world", "--to", account, "--amount", "2.50")
			if code != tc.wantCode {
				t.Fatalf("want exit %d, got %d:\n%s%s", tc.wantCode, code, out, errOut)
			}
			if got := p.count(transfer); got != tc.wantCalls {
				t.Errorf("the server got %d attempts, want %d", got, tc.wantCalls)
			}
			for _, b := range bodies[1:] {
				if !bytes.Equal(b, bodies[0]) {
					t.Errorf("a retry sent another request than the first (a new id?)")
				}
			}
			if tc.wantCode == 0 {
				if !strings.Contains(out, "committed at log position") {
					t.Errorf("want the write committed (the failed attempts never reached the ledger), got:\n%s", out)
				}
			} else {
				if !strings.Contains(errOut, fmt.Sprintf("%d attempts", maxAttempts)) {
					t.Errorf("want the report to say how many attempts were made, got:\n%s", errOut)
				}
				args, _ := printedCommand(t, errOut, false)
				out = mustRun(t, direct, args...)
				if !strings.Contains(out, "committed at log position") {
					t.Errorf("the printed command: want it to apply the write, got:\n%s", out)
				}
			}
			// The write went through the proxy, whose address the CLI remembers its last
			// write under; read at that write's position, not the direct server's.
			var b struct {
				Balance balanceJSON `json:"balance"`
			}
			js := mustRun(t, direct, "balance", account, "--json", "--min-position", strconv.FormatUint(committedPosition(t, out), 10))
			if err := json.Unmarshal([]byte(js), &b); err != nil {
				t.Fatalf("balance %s --json: %v:\n%s", account, err, js)
			}
			if got := b.Balance.Posted; got != "2.50" {
				t.Errorf("%s posted %s, want 2.50: one payment", account, got)
			}
		})
	}
}

func TestRetryDelay(t *testing.T) {
	for _, tc := range []struct {
		attempt  int
		min, max time.Duration
	}{
		{1, 50 * time.Millisecond, 100 * time.Millisecond},
		{2, 100 * time.Millisecond, 200 * time.Millisecond},
		{3, 200 * time.Millisecond, 400 * time.Millisecond},
		{5, maxRetryDelay / 2, maxRetryDelay},
		{64, maxRetryDelay / 2, maxRetryDelay},
	} {
		low, high := retryDelay(tc.attempt, func() float64 { return 0 }), retryDelay(tc.attempt, func() float64 { return 0.999999 })
		if low != tc.min || high < tc.min || high > tc.max {
			t.Errorf("attempt %d: waits %v..%v, want %v..%v", tc.attempt, low, high, tc.min, tc.max)
		}
	}
	// The sum of every wait fits the default --timeout many times over: the retries cannot
	// be what makes a command time out.
	var total time.Duration
	for a := 1; a < maxAttempts; a++ {
		total += retryDelay(a, func() float64 { return 0.999999 })
	}
	if total > 2*time.Second {
		t.Errorf("the waits of %d attempts add up to %v", maxAttempts, total)
	}
}

func TestClassify(t *testing.T) {
	notCaught := connect.NewError(connect.CodeDeadlineExceeded, errors.New("behind"))
	d, err := connect.NewErrorDetail(&errdetails.ErrorInfo{Reason: string(services.ReasonNotCaughtUp), Domain: services.ErrorDomain})
	if err != nil {
		t.Fatal(err)
	}
	notCaught.AddDetail(d)
	dial := connect.NewError(connect.CodeUnavailable, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")})
	reset := connect.NewError(connect.CodeUnavailable, &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")})
	for _, tc := range []struct {
		name  string
		err   error
		f     failure
		retry bool
	}{
		{"refusal", connect.NewError(connect.CodeFailedPrecondition, errors.New("insufficient funds")), refused, false},
		{"bad input", connect.NewError(connect.CodeInvalidArgument, errors.New("bad amount")), refused, false},
		{"no connection", dial, notSent, true},
		{"connection reset", reset, lost, true},
		{"conflict", connect.NewError(connect.CodeAborted, errors.New("conflict")), lost, true},
		{"deadline", connect.NewError(connect.CodeDeadlineExceeded, context.DeadlineExceeded), lost, true},
		{"views behind", notCaught, refused, false},
		{"internal", connect.NewError(connect.CodeInternal, errors.New("internal error")), lost, false},
		{"canceled", connect.NewError(connect.CodeCanceled, context.Canceled), lost, false},
		{"not a connect error", errors.New("?"), lost, false},
	} {
		f, retry := classify(tc.err)
		if f != tc.f || retry != tc.retry {
			t.Errorf("%s: classify = %v, %v; want %v, %v", tc.name, f, retry, tc.f, tc.retry)
		}
	}
}

// TestShellQuote: what shellQuote quotes, shellWords (and so a POSIX shell) reads back.
func TestShellQuote(t *testing.T) {
	words := []string{"plain", "pay-01a2.b:c/d", "", "two words", "it's", "'", "a'b'c", "$HOME", `back\slash`, "semi;colon", "--meta", "k=v w"}
	var quoted []string
	for _, w := range words {
		quoted = append(quoted, shellQuote(w))
	}
	got, err := shellWords(strings.Join(quoted, " "))
	if err != nil || !slices.Equal(got, words) {
		t.Fatalf("round trip of %q through %q: got %q, %v", words, strings.Join(quoted, " "), got, err)
	}
	if q := shellQuote("pay-01a2"); q != "pay-01a2" {
		t.Errorf("an id needs no quotes, got %s", q)
	}
}
