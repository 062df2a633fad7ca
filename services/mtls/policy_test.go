package mtls_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/securepay/securepay/services/mtls"
)

func TestNewPolicyRefusesBadTables(t *testing.T) {
	foreign := spiffeid.RequireFromString("spiffe://evil.example/gateway")
	cases := []struct {
		name  string
		td    spiffeid.TrustDomain
		rules map[string][]spiffeid.ID
		want  string
	}{
		{"no trust domain", spiffeid.TrustDomain{}, map[string][]spiffeid.ID{transferProc: {ids.Gateway}}, "trust domain is required"},
		{"empty table", td, nil, "no procedures"},
		{"no callers", td, map[string][]spiffeid.ID{transferProc: {}}, "lists no callers"},
		{"zero ID", td, map[string][]spiffeid.ID{transferProc: {{}}}, "empty SPIFFE ID"},
		{"foreign ID", td, map[string][]spiffeid.ID{transferProc: {foreign}}, "not of trust domain securepay.dev"},
		{"duplicate ID", td, map[string][]spiffeid.ID{transferProc: {ids.Gateway, ids.Gateway}}, "twice"},
		{"no leading slash", td, map[string][]spiffeid.ID{"securepay.ledger.v1.PaymentService/Transfer": {ids.Gateway}}, "must look like"},
		{"no method", td, map[string][]spiffeid.ID{"/securepay.ledger.v1.PaymentService/": {ids.Gateway}}, "must look like"},
		{"no service", td, map[string][]spiffeid.ID{"//Transfer": {ids.Gateway}}, "must look like"},
		{"extra segment", td, map[string][]spiffeid.ID{"/securepay.ledger.v1.PaymentService/Transfer/x": {ids.Gateway}}, "must look like"},
		{"unqualified service", td, map[string][]spiffeid.ID{"/PaymentService/Transfer": {ids.Gateway}}, "fully qualified"},
		{"prefix wildcard", td, map[string][]spiffeid.ID{"/securepay.ledger.v1.PaymentService/*": {ids.Gateway}}, "contains '*'"},
		{"too many callers", td, map[string][]spiffeid.ID{transferProc: manyIDs(65)}, "more than 64"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := mtls.NewPolicy(c.td, c.rules)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want an error mentioning %q, got %v", c.want, err)
			}
		})
	}
}

func manyIDs(n int) []spiffeid.ID {
	out := make([]spiffeid.ID, n)
	for i := range out {
		out[i] = spiffeid.RequireFromPathf(td, "/w%d", i)
	}
	return out
}

func TestPolicyQueries(t *testing.T) {
	p, err := mtls.NewPolicy(td, map[string][]spiffeid.ID{
		transferProc:   {ids.Relay, ids.Gateway},
		getAccountProc: {ids.Queries},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Procedures(); len(got) != 2 || got[0] != getAccountProc || got[1] != transferProc {
		t.Errorf("Procedures() = %v, want [%s %s]", got, getAccountProc, transferProc)
	}
	if got := p.Callers(transferProc); len(got) != 2 || got[0] != ids.Gateway || got[1] != ids.Relay {
		t.Errorf("Callers(Transfer) = %v, want [gateway relay] (sorted)", got)
	}
	if p.Allowed(transferProc, ids.Queries) || !p.Allowed(transferProc, ids.Gateway) || p.Allowed("/x.Y/Z", ids.Gateway) {
		t.Error("Allowed disagrees with the table")
	}
	var zero mtls.Policy
	if zero.Allowed(transferProc, ids.Gateway) {
		t.Error("the zero Policy must deny everything")
	}
}

// TestPolicyHandler drives the handler with connection states built by hand, including
// ones a real handshake cannot produce (an expired certificate on a connection opened
// while it was valid, a certificate that is not an SVID).
func TestPolicyHandler(t *testing.T) {
	ca := newDevCA(t, mtls.DefaultTrustDomain, time.Now)
	leaf := func(id spiffeid.ID) *x509.Certificate {
		return devCert(t, ca, id)
	}
	now := time.Now()
	expired := leaf(ids.Gateway)
	expired.NotBefore, expired.NotAfter = now.Add(-2*time.Hour), now.Add(-time.Hour)
	late := leaf(ids.Gateway)
	late.NotBefore, late.NotAfter = now.Add(-50*time.Minute), now.Add(10*time.Minute)
	foreign := leaf(ids.Gateway)
	foreign.URIs[0] = spiffeid.RequireFromString("spiffe://evil.example/gateway").URL()
	notSVID := leaf(ids.Gateway)
	notSVID.URIs = nil

	state := func(certs ...*x509.Certificate) *tls.ConnectionState {
		return &tls.ConnectionState{HandshakeComplete: true, PeerCertificates: certs}
	}
	cases := []struct {
		name        string
		tls         *tls.ConnectionState
		path        string
		wantCode    string // Connect code name; "" for allowed
		wantText    string
		wantRecycle bool
	}{
		{"allowed", state(leaf(ids.Gateway)), transferProc, "", "", false},
		{"allowed late in the certificate's life asks to reconnect", state(late), transferProc, "", "", true},
		{"plaintext", nil, transferProc, "unauthenticated", "plaintext", false},
		{"handshake incomplete", &tls.ConnectionState{}, transferProc, "unauthenticated", "plaintext", false},
		{"no client certificate", state(), transferProc, "unauthenticated", "no client certificate", false},
		{"not an SVID", state(notSVID), transferProc, "unauthenticated", "not an X.509-SVID", false},
		{"expired on a long-lived connection", state(expired), transferProc, "unauthenticated", "expired", true},
		{"foreign trust domain", state(foreign), transferProc, "permission_denied", "not of trust domain", false},
		{"other ID", state(leaf(ids.Queries)), transferProc, "permission_denied", "spiffe://securepay.dev/queries may not call", false},
		{"unknown procedure", state(leaf(ids.Gateway)), getAccountProc, "permission_denied", "no caller may", false},
		{"path variant", state(leaf(ids.Gateway)), transferProc + "/", "permission_denied", "no caller may", false},
		{"long hostile path is clipped", state(leaf(ids.Gateway)), "/" + strings.Repeat("a", 5000), "permission_denied", "…", false},
	}
	policy := testPolicy(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var seen spiffeid.ID
			next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen, _ = mtls.CallerID(r.Context())
				w.WriteHeader(http.StatusNoContent)
			})
			req := httptest.NewRequest(http.MethodPost, "https://payments"+c.path, strings.NewReader("{}"))
			req.Header.Set("Content-Type", "application/json")
			req.TLS = c.tls
			rec := httptest.NewRecorder()
			policy.Handler(next).ServeHTTP(rec, req)

			if got := rec.Header().Get("Connection") == "close"; got != c.wantRecycle {
				t.Errorf("asked to reconnect: %v, want %v", got, c.wantRecycle)
			}
			if c.wantCode == "" {
				if rec.Code != http.StatusNoContent || seen != ids.Gateway {
					t.Fatalf("want the call passed on with caller gateway, got status %d, caller %q: %s", rec.Code, seen, rec.Body)
				}
				return
			}
			if !seen.IsZero() {
				t.Fatal("a refused call reached the next handler")
			}
			var body struct{ Code, Message string }
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("refusal is not a Connect error: %v: %s", err, rec.Body)
			}
			if body.Code != c.wantCode || !strings.Contains(body.Message, c.wantText) {
				t.Fatalf("want %s mentioning %q, got %s %q", c.wantCode, c.wantText, body.Code, body.Message)
			}
			if len(body.Message) > 400 {
				t.Errorf("message of %d bytes: the echoed path must be bounded", len(body.Message))
			}
		})
	}
}

func TestCallerIDOutsideHandler(t *testing.T) {
	if id, ok := mtls.CallerID(context.Background()); ok || !id.IsZero() {
		t.Fatalf("CallerID of a bare context = %v, %v; want none", id, ok)
	}
}

// devCert is a copy of a fresh leaf certificate of id, safe to alter.
func devCert(t testing.TB, ca *mtls.DevCA, id spiffeid.ID) *x509.Certificate {
	t.Helper()
	svid, err := devSource(t, ca, id).GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	c := *svid.Certificates[0]
	c.URIs = append(c.URIs[:0:0], c.URIs...)
	return &c
}
