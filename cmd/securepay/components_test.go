package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestSafeListenDefaults: serve refuses an address others can reach while no caller is
// authenticated, dev refuses anything but loopback, each naming the setting and the fix.
func TestSafeListenDefaults(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		env   map[string]string
		want  string // "" means the listen address is accepted
		check func(string) error
	}{
		{name: "serve default", check: func(a string) error { return checkServeListen(a, false) }, args: []string{"127.0.0.1:8443"}},
		{name: "serve on localhost", check: func(a string) error { return checkServeListen(a, false) }, args: []string{"localhost:8443"}},
		{name: "serve on ::1", check: func(a string) error { return checkServeListen(a, false) }, args: []string{"[::1]:8443"}},
		{name: "serve on every interface", check: func(a string) error { return checkServeListen(a, false) }, args: []string{":8443"},
			want: "--listen :8443 (SECUREPAY_LISTEN) would serve on every interface, and no caller is authenticated: anyone who reaches the port could move money; listen on loopback (--listen 127.0.0.1:8443)"},
		{name: "serve on 0.0.0.0", check: func(a string) error { return checkServeListen(a, false) }, args: []string{"0.0.0.0:8443"}, want: "would serve on every interface"},
		{name: "serve on [::]", check: func(a string) error { return checkServeListen(a, false) }, args: []string{"[::]:8443"}, want: "would serve on every interface"},
		{name: "serve on a LAN address", check: func(a string) error { return checkServeListen(a, false) }, args: []string{"10.0.0.5:8443"},
			want: "would serve on 10.0.0.5, which is not a loopback address, and no caller is authenticated"},
		{name: "serve on a host name", check: func(a string) error { return checkServeListen(a, false) }, args: []string{"db.internal:8443"}, want: "db.internal, which is not a loopback address"},
		{name: "serve authenticated", check: func(a string) error { return checkServeListen(a, true) }, args: []string{":8443"}},
		{name: "serve no port", check: func(a string) error { return checkServeListen(a, false) }, args: []string{"127.0.0.1"}, want: `the listen address "127.0.0.1" is not host:port`},
		{name: "dev loopback", check: checkDevListen, args: []string{"127.0.0.1:0"}},
		{name: "dev localhost", check: checkDevListen, args: []string{"localhost:8080"}},
		{name: "dev every interface", check: checkDevListen, args: []string{":8080"},
			want: "dev: --listen :8080 (SECUREPAY_DEV_LISTEN) is not a loopback address: securepay dev speaks cleartext and authenticates no one, so it listens on 127.0.0.1, [::1] or localhost only"},
		{name: "dev LAN", check: checkDevListen, args: []string{"192.168.1.2:8080"}, want: "is not a loopback address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.check(tc.args[0])
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("%s: want it accepted, got %v", tc.args[0], err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("%s: want a refusal saying %q, got %v", tc.args[0], tc.want, err)
			}
		})
	}
}

// TestSafeDefaultsThroughTheCommands: the refusals reach the user from the commands, with
// the variables they read: dev's own SECUREPAY_DEV_LISTEN, and serve's SECUREPAY_LISTEN no
// longer moves dev.
func TestSafeDefaultsThroughTheCommands(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"dev on every interface", []string{"dev", "--listen", "0.0.0.0:0"}, nil, "is not a loopback address"},
		{"dev from its variable", []string{"dev"}, map[string]string{"SECUREPAY_DEV_LISTEN": ":0"}, "--listen :0 (SECUREPAY_DEV_LISTEN) is not a loopback address"},
		{"serve on every interface", []string{"serve", "--listen", ":8443"}, nil, "would serve on every interface"},
		{"serve from its variable", []string{"serve"}, map[string]string{"SECUREPAY_LISTEN": "0.0.0.0:8443"}, "would serve on every interface"},
		{"serve an unknown component", []string{"serve", "gateway-ish"}, nil, `unknown component "gateway-ish": say one of payments, queries, audit, projector (or all, every component in one process)`},
		{"audit needs no Redis", []string{"serve", "audit"}, nil, "TLS is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string { return tc.env[k] }
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // a dev that starts ends at once
			err := run(ctx, tc.args, io.Discard, io.Discard, getenv)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("securepay %s: want a refusal saying %q, got %v", strings.Join(tc.args, " "), tc.want, err)
			}
			if tc.name == "audit needs no Redis" && strings.Contains(err.Error(), "Redis address is missing") {
				t.Fatalf("serve audit: the audit component reads the log only, yet Redis was asked for:\n%v", err)
			}
		})
	}
	// SECUREPAY_LISTEN is serve's: an address meant for a server does not move dev.
	url := startDevEnv(t, map[string]string{"SECUREPAY_LISTEN": "0.0.0.0:8443", "SECUREPAY_DEV_LISTEN": "127.0.0.1:0"})
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("dev with SECUREPAY_LISTEN set: want it on 127.0.0.1, it listens on %s", url)
	}
}

// TestDevBrowserDefaults: dev answers browsers on this machine only (CORS) and requests
// addressed to loopback names only (DNS rebinding), and serves reflection.
func TestDevBrowserDefaults(t *testing.T) {
	url := startDev(t)
	preflight := func(origin string) string {
		req, _ := http.NewRequest(http.MethodOptions, url+"/securepay.ledger.v1.PaymentService/Transfer", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.Header.Get("Access-Control-Allow-Origin")
	}
	if got := preflight("http://localhost:5173"); got != "http://localhost:5173" {
		t.Errorf("a page on this machine: want it allowed, got Access-Control-Allow-Origin %q", got)
	}
	if got := preflight("https://evil.example"); got != "" {
		t.Errorf("a page from elsewhere: want it refused, got Access-Control-Allow-Origin %q", got)
	}
	req, _ := http.NewRequest(http.MethodPost, url+"/securepay.ledger.v1.BalanceService/GetBalance", strings.NewReader(`{"accountId":"alice"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Host = "rebound.evil.example"
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "DNS rebinding") {
		t.Errorf("a request addressed to another name: want 403 naming DNS rebinding, got %d %s", res.StatusCode, body)
	}
}

// startServe runs `securepay serve ARGS...` in-process and returns its https URL once it
// logs that it serves; the test's cleanup stops it and wants a clean stop.
func startServe(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"serve"}, args...), io.Discard, pw, noEnv)
		pw.Close()
	}()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var rec struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "securepay serving" {
				addr <- rec.Addr
			}
		}
	}()
	stopped := false
	t.Cleanup(func() {
		cancel()
		if stopped {
			return
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("securepay serve %s: want a clean stop, got %v", args[0], err)
			}
		case <-time.After(40 * time.Second):
			t.Errorf("securepay serve %s did not stop within 40s", args[0])
		}
	})
	select {
	case a := <-addr:
		return "https://" + a
	case err := <-done:
		stopped = true
		t.Fatalf("securepay serve %s ended before listening: %v", args[0], err)
	case <-time.After(30 * time.Second):
		t.Fatalf("securepay serve %s did not start listening within 30s", args[0])
	}
	return ""
}

// TestServeComponentsAlone runs payments, queries, projector and audit as four servers on
// one PostgreSQL and Redis: a write on payments is read on queries once the projector has
// applied it, the log is verified on audit, and a call sent to the wrong component is
// told where to go.
func TestServeComponentsAlone(t *testing.T) {
	const redisDB = 13
	dsn := migrateForServing(t, freshDatabase(t), io.Discard)
	redisAddr := testRedisAddr(t, redisDB)
	certFile, keyFile := testCert(t)
	common := []string{"--listen", "127.0.0.1:0", "--postgres-dsn", dsn, "--tls-cert", certFile, "--tls-key", keyFile}
	withRedis := append([]string{"--redis-addr", redisAddr, "--redis-db", fmt.Sprint(redisDB)}, common...)
	payments := startServe(t, append([]string{"payments"}, withRedis...)...)
	queries := startServe(t, append([]string{"queries"}, withRedis...)...)
	startServe(t, append([]string{"projector"}, withRedis...)...)
	audit := startServe(t, append([]string{"audit"}, common...)...) // no Redis

	c := func(server string, args ...string) string {
		t.Helper()
		return mustCLI(t, server, append(args, "--ca-file", certFile)...)
	}
	c(payments, "account", "open", "world", "--kind", "external")
	c(payments, "account", "open", "bob")
	var res struct {
		Result struct {
			Position string `json:"position"`
		} `json:"result"`
	}
	out := c(payments, "transfer", "--from", "world", "--to", "bob", "--amount", "7.00", "--id", "alone-1", "--json")
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Result.Position == "" {
		t.Fatalf("transfer --json: %v\n%s", err, out)
	}
	// The projector (another process, in effect) applies the write; queries polls the view.
	if bal := c(queries, "balance", "bob", "--min-position", res.Result.Position); !strings.Contains(bal, "7.00") {
		t.Fatalf("balance on queries at the write's position: want 7.00, got:\n%s", bal)
	}
	if p := c(queries, "payment", "alone-1", "--min-position", res.Result.Position); !strings.Contains(p, "alone-1") {
		t.Fatalf("payment on queries: got:\n%s", p)
	}
	if v := c(audit, "verify"); !strings.Contains(v, "hash chain verified") {
		t.Fatalf("verify on audit: %s", v)
	}
	_, err := cli(t, payments, "balance", "bob", "--ca-file", certFile, "--min-position", "0")
	if err == nil || !strings.Contains(err.Error(), "served by the queries component") {
		t.Fatalf("balance sent to payments: want it told to call queries, got %v", err)
	}
	_, err = cli(t, queries, "transfer", "--from", "world", "--to", "bob", "--amount", "1.00", "--ca-file", certFile)
	if err == nil || !strings.Contains(err.Error(), "served by the payments component") {
		t.Fatalf("transfer sent to queries: want it told to call payments, got %v", err)
	}
}
