package services_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
)

func TestIsLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost": true, "LOCALHOST": true, "localhost.": true, "app.localhost": true,
		"127.0.0.1": true, "127.8.9.10": true, "::1": true, "[::1]": true,
		"": false, "evil.example": false, "localhost.evil.example": false, "evillocalhost": false,
		"10.0.0.1": false, "0.0.0.0": false, "::": false, "[::ffff:10.0.0.1]": false, "127.0.0.1.nip.io": false,
	} {
		if got := services.IsLoopbackHost(host); got != want {
			t.Errorf("IsLoopbackHost(%q): want %v, got %v", host, want, got)
		}
	}
}

// TestLoopbackOrigins: with CORSOrigins = [loopback] (dev's default) a browser app on
// this machine may call, any other page may not.
func TestLoopbackOrigins(t *testing.T) {
	n := startNode(t, nodeOptions{corsOrigins: []string{services.LoopbackOrigins}})
	for _, tc := range []struct {
		origin  string
		allowed bool
	}{
		{"http://localhost:3000", true},
		{"http://127.0.0.1:5173", true},
		{"https://[::1]:8443", true},
		{"http://localhost", true},
		{"https://evil.example", false},
		{"http://localhost.evil.example", false},
		{"http://127.0.0.1.nip.io:3000", false},
		{"null", false}, // sandboxed iframes and file:// pages
		{"file://", false},
		{"chrome-extension://abc", false},
		{"http://user@localhost:3000", false},
	} {
		req, _ := http.NewRequest(http.MethodOptions, n.url+ledgerv1connect.PaymentServiceTransferProcedure, nil)
		req.Header.Set("Origin", tc.origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "connect-protocol-version,content-type")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("preflight from %s: %v", tc.origin, err)
		}
		res.Body.Close()
		got := res.Header.Get("Access-Control-Allow-Origin")
		if (got == tc.origin) != tc.allowed || (!tc.allowed && got != "") {
			t.Errorf("preflight from %s: allowed %v, got Access-Control-Allow-Origin %q", tc.origin, tc.allowed, got)
		}
	}
}

// TestLoopbackHostsOnly: a request addressed to another name (a DNS-rebinding page) is
// refused with a message that says why and what to use; loopback names pass.
func TestLoopbackHostsOnly(t *testing.T) {
	n := startNode(t, nodeOptions{loopbackHostsOnly: true})
	for _, tc := range []struct {
		host  string
		ctype string // a Connect call is application/json; text/plain is no RPC at all
		want  int    // 0: answered
	}{
		{"", "application/json", 0}, // the listener's own 127.0.0.1:port
		{"localhost:8080", "application/json", 0},
		{"[::1]:8080", "application/json", 0},
		{"evil.example:8080", "application/json", http.StatusForbidden}, // Connect's permission_denied
		{"10.1.2.3", "application/json", http.StatusForbidden},
		{"evil.example", "text/plain", http.StatusMisdirectedRequest},
	} {
		req, _ := http.NewRequest(http.MethodPost, n.url+ledgerv1connect.BalanceServiceGetBalanceProcedure, strings.NewReader(`{"accountId":"x"}`))
		req.Header.Set("Content-Type", tc.ctype)
		if tc.host != "" {
			req.Host = tc.host
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("host %q: %v", tc.host, err)
		}
		body := readAll(t, res)
		if tc.want == 0 {
			if res.StatusCode == http.StatusMisdirectedRequest || strings.Contains(body, "DNS rebinding") {
				t.Errorf("host %q: want it answered, got %d %s", tc.host, res.StatusCode, body)
			}
			continue
		}
		if res.StatusCode != tc.want || !strings.Contains(body, "not a loopback name") || !strings.Contains(body, "DNS rebinding") || !strings.Contains(body, "http://127.0.0.1:PORT") {
			t.Errorf("host %q: want %d saying why and what to use, got %d %s", tc.host, tc.want, res.StatusCode, body)
		}
		if tc.want == http.StatusForbidden && !strings.Contains(body, `"code":"permission_denied"`) {
			t.Errorf("host %q: want a Connect permission_denied error, got %s", tc.host, body)
		}
	}
}

func readAll(t *testing.T, res *http.Response) string {
	t.Helper()
	defer res.Body.Close()
	var b strings.Builder
	if _, err := io.Copy(&b, res.Body); err != nil {
		t.Fatalf("read the answer: %v", err)
	}
	return b.String()
}
