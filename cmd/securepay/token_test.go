package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/securepay/securepay/services/gateway"
)

// devTokenEnv is an environment whose cache (and so the development key) is dir.
func devTokenEnv(dir string, extra map[string]string) func(string) string {
	return func(k string) string {
		if k == "SECUREPAY_CACHE" {
			return dir
		}
		return extra[k]
	}
}

func devToken(t *testing.T, cache string, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if err := run(context.Background(), append([]string{"dev", "token"}, args...), &out, &errOut, devTokenEnv(cache, nil)); err != nil {
		t.Fatalf("securepay dev token %s: %v (%s)", strings.Join(args, " "), err, errOut.String())
	}
	if !strings.Contains(errOut.String(), "development token") {
		t.Errorf("dev token's note on stderr does not say it is a development token: %q", errOut.String())
	}
	return strings.TrimSpace(out.String())
}

// startTokenGateway serves a gateway that trusts the development key in cache, with its
// components unreachable: a call it lets through fails UNAVAILABLE, one it refuses is
// refused before that, so the CLI's token handling is seen whole without a ledger.
func startTokenGateway(t *testing.T, cache string) string {
	t.Helper()
	path, err := devKeyPath(env{getenv: devTokenEnv(cache, nil)}, "")
	if err != nil {
		t.Fatal(err)
	}
	s, err := loadOrCreateDevKey(path)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := s.gatewayAuth()
	if err != nil {
		t.Fatal(err)
	}
	down := gateway.Upstream{URL: "http://127.0.0.1:1", Client: &http.Client{}}
	gw, err := gateway.New(gateway.Config{Payments: down, Queries: down, Audit: down, Auth: auth, AllowH2C: true})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: gw.Handler(), Protocols: &p}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

func TestDevTokenIsAcceptedByTheDevGateway(t *testing.T) {
	cache := t.TempDir()
	url := startTokenGateway(t, cache)
	alice := devToken(t, cache, "--role", "customer", "--account", "alice")
	call := func(extra map[string]string, args ...string) error {
		extra["SECUREPAY_SERVER"] = url
		var out, errOut bytes.Buffer
		return run(context.Background(), append(args, "--json"), &out, &errOut, devTokenEnv(cache, extra))
	}
	code := func(err error) string {
		if err == nil {
			return "ok"
		}
		for _, c := range []string{"unauthenticated", "not_found", "unavailable", "permission_denied", "internal"} {
			if strings.Contains(err.Error(), `"code":"`+c+`"`) || strings.Contains(err.Error(), "("+c) {
				return c
			}
		}
		return err.Error()
	}
	if got := code(call(map[string]string{}, "balance", "alice", "--min-position", "0")); got != "unauthenticated" {
		t.Errorf("without a token: %s, want unauthenticated", got)
	}
	if got := code(call(map[string]string{"SECUREPAY_TOKEN": alice}, "balance", "alice", "--min-position", "0")); got != "unavailable" {
		t.Errorf("alice's token for her balance: %s, want unavailable (let through to the unreachable ledger)", got)
	}
	if got := code(call(map[string]string{"SECUREPAY_TOKEN": alice}, "balance", "bob", "--min-position", "0")); got != "not_found" {
		t.Errorf("alice's token for bob's balance: %s, want not_found (refused at the gateway)", got)
	}
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(alice+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := code(call(map[string]string{"SECUREPAY_TOKEN_FILE": file}, "balance", "alice", "--min-position", "0")); got != "unavailable" {
		t.Errorf("the token from a file: %s, want unavailable (accepted)", got)
	}
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := call(map[string]string{"SECUREPAY_TOKEN_FILE": file}, "balance", "alice"); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a token file others can read: %v, want a refusal naming chmod 600", err)
	}
	// A token of another key (another developer's cache) is not trusted.
	other := devToken(t, t.TempDir(), "--role", "operator")
	if got := code(call(map[string]string{"SECUREPAY_TOKEN": other}, "account", "get", "alice")); got != "unauthenticated" {
		t.Errorf("a token signed by another dev key: %s, want unauthenticated", got)
	}
}

func TestDevTokenRefusesBadRequests(t *testing.T) {
	cache := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--role"},
		{[]string{"--role", "admin"}, "unknown role"},
		{[]string{"--role", "customer"}, "at least one --account"},
		{[]string{"--role", "auditor", "--ttl", "0s"}, "--ttl"},
		{[]string{"--role", "auditor", "--ttl", "1000h"}, "--ttl"},
		{[]string{"--role", "customer", "--account", "bad id"}, "not an account id"},
	} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), append([]string{"dev", "token"}, tc.args...), &out, &errOut, devTokenEnv(cache, nil))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("dev token %v: %v, want an error saying %q", tc.args, err, tc.want)
		}
		if out.Len() != 0 {
			t.Errorf("dev token %v printed %q despite refusing", tc.args, out.String())
		}
	}
}

// TestDevKeyIsPrivate: the key is made private and a key file others can read is refused.
func TestDevKeyIsPrivate(t *testing.T) {
	cache := t.TempDir()
	devToken(t, cache, "--role", "auditor")
	path := filepath.Join(cache, "dev", "token-signing-key.pem")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	err = run(context.Background(), []string{"dev", "token", "--role", "auditor"}, &out, &errOut, devTokenEnv(cache, nil))
	if err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a key file others can read: %v, want a refusal naming chmod 600", err)
	}
}

// devTokens holds the token of each dev server a test started (startDevEnv), by URL, so
// that the CLI environments of the tests send it.
var devTokens sync.Map

// testAccounts are every account id the command tests use: the test token owns them all.
var testAccounts = []string{"world", "usd-world", "alice", "anna", "bert", "bill", "bob", "carol", "dave", "shop",
	"a", "a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "a10", "b4"}

// registerDevToken mints a token of every role, owning testAccounts, with the dev server's
// key, for the tests that talk to it.
func registerDevToken(t *testing.T, url, keyFile string) {
	t.Helper()
	s, err := loadOrCreateDevKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := s.sign("dev-test", []string{"customer", "operator", "auditor"}, testAccounts, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	devTokens.Store(url, tok)
	t.Cleanup(func() { devTokens.Delete(url) })
}

// devTokenFor is the token of the dev server at url (a proxy in front of it is found by
// the dev URL the test gave it; "" for any other server).
func devTokenFor(url string) string {
	if v, ok := devTokens.Load(url); ok {
		return v.(string)
	}
	return ""
}
