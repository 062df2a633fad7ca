package mtls_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services/mtls"
	"github.com/securepay/securepay/services/mtls/mtlstest"
)

func newDevCA(t testing.TB, trustDomain string, clock func() time.Time) *mtls.DevCA {
	t.Helper()
	ca, err := mtls.NewDevCA(spiffeid.RequireTrustDomainFromString(trustDomain), time.Hour, clock)
	if err != nil {
		t.Fatalf("NewDevCA(%s): %v", trustDomain, err)
	}
	return ca
}

func devSource(t testing.TB, ca *mtls.DevCA, id spiffeid.ID) mtls.Source {
	t.Helper()
	src, err := ca.Source(id)
	if err != nil {
		t.Fatalf("Source(%s): %v", id, err)
	}
	return src
}

// call makes one call of proc (Transfer or GetAccount) and returns its code and the
// caller ID the handler saw.
func call(ctx context.Context, hc connect.HTTPClient, url, proc string, opts []connect.ClientOption) (connect.Code, string, error) {
	switch proc {
	case transferProc:
		return transfer(ctx, hc, url, opts...)
	case getAccountProc:
		c := ledgerv1connect.NewAccountServiceClient(hc, url, opts...)
		res, err := c.GetAccount(ctx, connect.NewRequest(&ledgerv1.GetAccountRequest{AccountId: "a"}))
		if err != nil {
			return connect.CodeOf(err), "", err
		}
		return 0, res.Header().Get("Test-Caller"), nil
	}
	panic("unknown procedure " + proc)
}

// TestAuthorisationMatrix_DevCA runs every well-known caller against every procedure of
// a component over real mTLS, in each protocol, and compares the outcome with what the
// declared policy says; then the hostile callers that must never reach a handler.
func TestAuthorisationMatrix_DevCA(t *testing.T) {
	ca := newDevCA(t, mtls.DefaultTrustDomain, time.Now)
	policy := testPolicy(t)
	ts := startServer(t, devSource(t, ca, ids.Payments), policy)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	for _, caller := range ids.All() {
		hc := mtls.HTTPClient(devSource(t, ca, caller), ids.Payments)
		for _, proc := range []string{transferProc, getAccountProc} {
			want := connect.CodePermissionDenied
			if policy.Allowed(proc, caller) {
				want = 0
			}
			for _, p := range mtlstest.Protocols() {
				t.Run(fmt.Sprintf("%s/%s/%s", caller.Path(), proc, p.Name), func(t *testing.T) {
					before := ts.Svc.handled()
					code, seen, err := call(ctx, hc, ts.URL, proc, p.Options)
					if code != want {
						t.Fatalf("policy says %v, got %v (%v)", codeName(want), codeName(code), err)
					}
					if want != 0 {
						if n := ts.Svc.handled(); n != before {
							t.Fatalf("a refused call reached the handler (%d calls, was %d)", n, before)
						}
						if !strings.Contains(err.Error(), caller.String()) {
							t.Errorf("refusal should name the caller %s: %v", caller, err)
						}
						return
					}
					if seen != caller.String() {
						t.Fatalf("handler saw caller %q, want %q", seen, caller)
					}
				})
			}
		}
	}

	// Hostile callers: refused before any handler runs, either at the handshake (no
	// Connect code of the server's choosing: the connection never carried a request) or
	// with the code named.
	foreign := newDevCA(t, "evil.example", time.Now)
	impostor := newDevCA(t, mtls.DefaultTrustDomain, time.Now) // our name, another key
	gatewaySrc := devSource(t, ca, ids.Gateway)
	hostile := []struct {
		name      string
		client    *http.Client
		url       string
		handshake bool         // refused at the TLS handshake
		want      connect.Code // otherwise, this code
		wantText  string
	}{
		{
			name:      "foreign trust domain",
			client:    foreignClient(devSource(t, foreign, spiffeid.RequireFromString("spiffe://evil.example/gateway")), ca),
			url:       ts.URL,
			handshake: true,
		},
		{
			name:      "impostor CA of our trust domain",
			client:    foreignClient(devSource(t, impostor, ids.Gateway), ca),
			url:       ts.URL,
			handshake: true,
		},
		{
			name:     "no client certificate",
			client:   h2Client(tlsconfig.TLSClientConfig(gatewaySrc, tlsconfig.AuthorizeID(ids.Payments))),
			url:      ts.URL,
			want:     connect.CodeUnauthenticated,
			wantText: "no client certificate",
		},
		{
			name:      "server is not the one the client asked for",
			client:    mtls.HTTPClient(gatewaySrc, ids.Queries),
			url:       ts.URL,
			handshake: true,
		},
		{
			name:      "plaintext HTTP/2 to the TLS port",
			client:    h2cClient(),
			url:       strings.Replace(ts.URL, "https://", "http://", 1),
			handshake: true,
		},
		{
			name:      "plaintext HTTP/1.1 to the TLS port",
			client:    &http.Client{},
			url:       strings.Replace(ts.URL, "https://", "http://", 1),
			handshake: true,
		},
		{
			name:      "HTTPClient refuses a plaintext URL",
			client:    mtls.HTTPClient(gatewaySrc, ids.Payments),
			url:       strings.Replace(ts.URL, "https://", "http://", 1),
			handshake: true,
		},
	}
	for _, h := range hostile {
		for _, p := range mtlstest.Protocols() {
			t.Run(h.name+"/"+p.Name, func(t *testing.T) {
				before := ts.Svc.handled()
				code, _, err := transfer(ctx, h.client, h.url, p.Options...)
				if err == nil {
					t.Fatal("the call succeeded; it must be refused")
				}
				if n := ts.Svc.handled(); n != before {
					t.Fatalf("a refused call reached the handler (%d calls, was %d)", n, before)
				}
				if h.handshake {
					// The handler cannot have spoken: a Connect code from the server
					// would mean a request was read.
					if code == connect.CodePermissionDenied || code == connect.CodeUnauthenticated {
						t.Fatalf("want a refused connection, got a server answer %v: %v", code, err)
					}
					return
				}
				if code != h.want || !strings.Contains(err.Error(), h.wantText) {
					t.Fatalf("want %v mentioning %q, got %v: %v", h.want, h.wantText, code, err)
				}
			})
		}
	}
}

// foreignClient presents src's SVID and trusts ca's bundle for the server, so that only
// the server's verification of the client can refuse it.
func foreignClient(src mtls.Source, ca *mtls.DevCA) *http.Client {
	cfg := tlsconfig.MTLSClientConfig(src, ca.Bundle(), tlsconfig.AuthorizeID(ids.Payments))
	return h2Client(cfg)
}

func h2cClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}}
}

func codeName(c connect.Code) string {
	if c == 0 {
		return "ok"
	}
	return c.String()
}

// TestServerTLSRefusesHandshakes checks the handshake itself, below HTTP: a client
// certificate from another trust domain or CA never completes it.
func TestServerTLSRefusesHandshakes(t *testing.T) {
	ca := newDevCA(t, mtls.DefaultTrustDomain, time.Now)
	serverCfg := mtls.ServerTLS(devSource(t, ca, ids.Payments))
	cases := []struct {
		name   string
		client mtls.Source
		ok     bool
	}{
		{"same CA", devSource(t, ca, ids.Gateway), true},
		{"foreign trust domain", devSource(t, newDevCA(t, "evil.example", time.Now), spiffeid.RequireFromString("spiffe://evil.example/gateway")), false},
		{"impostor CA", devSource(t, newDevCA(t, mtls.DefaultTrustDomain, time.Now), ids.Gateway), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			clientCfg := tlsconfig.MTLSClientConfig(c.client, ca.Bundle(), tlsconfig.AuthorizeID(ids.Payments))
			err := handshake(t, serverCfg, clientCfg)
			if c.ok && err != nil {
				t.Fatalf("handshake refused: %v", err)
			}
			if !c.ok && err == nil {
				t.Fatal("handshake completed; it must be refused")
			}
		})
	}
}

// handshake runs a TLS handshake over an in-memory pipe and returns the server's error.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, s := net.Pipe()
	done := make(chan error, 1)
	go func() {
		cli := tls.Client(c, clientCfg)
		err := cli.HandshakeContext(ctx)
		if err == nil {
			// TLS 1.3: the client learns of a refused certificate at its first read.
			_, err = cli.Read(make([]byte, 1))
		}
		_ = cli.Close()
		done <- err
	}()
	srv := tls.Server(s, serverCfg)
	err := srv.HandshakeContext(ctx)
	_ = srv.Close()
	<-done
	return err
}
