package mtls

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The per-connection ID cache must answer, for every certificate, exactly what parsing
// that certificate answers: never the ID of another certificate, never an ID for a
// certificate that is not an SVID, and the same after it forgot everything.
func TestPeerCacheAnswersWhatTheCertificateSays(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("securepay.dev")
	ca, err := NewDevCA(td, time.Hour, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(path string) *x509.Certificate {
		t.Helper()
		svid, err := ca.issue(spiffeid.RequireFromPath(td, path), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return svid.Certificates[0]
	}
	gateway, relay := leaf("/gateway"), leaf("/relay")
	var c peerCache
	for round := range 3 {
		for _, tc := range []struct {
			cert *x509.Certificate
			want string
		}{{gateway, "spiffe://securepay.dev/gateway"}, {relay, "spiffe://securepay.dev/relay"}} {
			got, err := c.lookup(tc.cert)
			if err != nil {
				t.Fatalf("round %d: lookup(%s): %v", round, tc.want, err)
			}
			if got.id.String() != tc.want {
				t.Fatalf("round %d: lookup gave %s, want %s", round, got.id, tc.want)
			}
			if boxed, ok := got.boxed.(spiffeid.ID); !ok || boxed != got.id {
				t.Fatalf("round %d: the boxed context value is %v, want %s", round, got.boxed, tc.want)
			}
		}
	}
	// A certificate without a SPIFFE URI SAN is refused, every time, and never cached.
	plain := *gateway
	plain.URIs = nil
	for range 2 {
		if _, err := c.lookup(&plain); err == nil {
			t.Fatal("a certificate without a SPIFFE ID was accepted")
		}
	}
	if _, cached := c.entries[&plain]; cached {
		t.Fatal("a refused certificate was cached")
	}
	// Full: it starts over and still answers right.
	for range maxPeerEntries {
		cp := *relay
		if _, err := c.lookup(&cp); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(c.entries); n > maxPeerEntries {
		t.Fatalf("the cache holds %d entries, more than its bound %d", n, maxPeerEntries)
	}
	if got, err := c.lookup(gateway); err != nil || got.id.String() != "spiffe://securepay.dev/gateway" {
		t.Fatalf("after a reset lookup(gateway) = %v, %v", got.id, err)
	}
}
