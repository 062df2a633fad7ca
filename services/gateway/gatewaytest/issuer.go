// Package gatewaytest is an OIDC issuer for tests that run the gateway as a process of
// its own (`securepay serve gateway`): its JWKS over loopback TLS, and RS256 access tokens
// with the roles and accounts claims the gateway reads.
package gatewaytest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Issuer serves its key set at URL()+"/jwks" until the test ends.
type Issuer struct {
	url      string
	caFile   string
	audience string
	key      *rsa.PrivateKey
	kid      string
}

// NewIssuer starts an issuer whose tokens name audience; its TLS certificate is written
// to dir as a PEM file (CAFile) for the gateway to trust, e.g. with SSL_CERT_FILE.
func NewIssuer(t testing.TB, dir, audience string) *Issuer {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	is := &Issuer{key: key, kid: "test-1", audience: audience}
	jwks, err := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "use": "sig", "alg": "RS256", "kid": is.kid,
		"n": base64.RawURLEncoding.EncodeToString(key.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(key.E)).Bytes()),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(jwks)
	}))
	t.Cleanup(srv.Close)
	is.url = srv.URL
	is.caFile = filepath.Join(dir, "issuer-ca.pem")
	if err := os.WriteFile(is.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return is
}

// URL is the issuer (the tokens' iss); its key set is at URL()+"/jwks".
func (is *Issuer) URL() string { return is.url }

// JWKSURL is where the gateway fetches the keys.
func (is *Issuer) JWKSURL() string { return is.url + "/jwks" }

// CAFile is the PEM file of the issuer's TLS certificate.
func (is *Issuer) CAFile() string { return is.caFile }

// Audience is the aud of the issuer's tokens.
func (is *Issuer) Audience() string { return is.audience }

// GatewayFlags are the `serve gateway` flags that trust this issuer.
func (is *Issuer) GatewayFlags() []string {
	return []string{"--oidc-issuer", is.url, "--oidc-audience", is.audience, "--oidc-jwks-url", is.JWKSURL()}
}

// Token signs an access token for subject with roles and owned accounts, valid for an
// hour (a long bank run outlives the gateway's default 10 minutes of nothing).
func (is *Issuer) Token(subject string, roles []string, accounts []string) (string, error) {
	now := time.Now()
	header, err := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": is.kid})
	if err != nil {
		return "", err
	}
	claims, err := json.Marshal(map[string]any{
		"iss": is.url, "aud": is.audience, "sub": subject, "iat": now.Unix(), "nbf": now.Unix(),
		"exp": now.Add(time.Hour).Unix(), "roles": roles, "accounts": accounts,
	})
	if err != nil {
		return "", err
	}
	input := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(claims)
	sum := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, is.key, crypto.SHA256, sum[:])
	if err != nil {
		return "", fmt.Errorf("sign a token for %s: %w", subject, err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// MustToken is Token that fails the test on error.
func (is *Issuer) MustToken(t testing.TB, subject string, roles []string, accounts ...string) string {
	t.Helper()
	tok, err := is.Token(subject, roles, accounts)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
