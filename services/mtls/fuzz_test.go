package mtls_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/securepay/securepay/services/mtls"
)

// FuzzPolicyPath: whatever path an allowed caller sends, the policy lets through exactly
// the declared procedure and nothing else (no prefix, case, encoding or trailing-slash
// variant), and never panics.
func FuzzPolicyPath(f *testing.F) {
	for _, seed := range []string{
		transferProc, transferProc + "/", strings.ToUpper(transferProc), "/" + transferProc,
		"/securepay.ledger.v1.PaymentService/Transfer%00", "/securepay.ledger.v1.PaymentService/./Transfer",
		"", "/", "//", getAccountProc, "/securepay.ledger.v1.PaymentService/Transfer?x=1",
	} {
		f.Add(seed)
	}
	ca, err := mtls.NewDevCA(spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain), time.Hour, time.Now)
	if err != nil {
		f.Fatal(err)
	}
	leaf := devCert(f, ca, ids.Gateway)
	policy := testPolicy(f)
	f.Fuzz(func(t *testing.T, path string) {
		reached := false
		h := policy.Handler(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached = true }))
		r := &http.Request{
			Method: http.MethodPost,
			URL:    &url.URL{Path: path},
			Header: http.Header{"Content-Type": {"application/proto"}},
			TLS:    &tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{leaf}},
		}
		h.ServeHTTP(httptest.NewRecorder(), r)
		if reached != (path == transferProc) {
			t.Fatalf("path %q: reached the handler = %v, want %v", path, reached, path == transferProc)
		}
	})
}
