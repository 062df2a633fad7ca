package mtls_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/securepay/securepay/services/mtls"
)

// fakeClock is a settable clock for the dev CA.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func TestNewDevCARefusesBadInput(t *testing.T) {
	cases := []struct {
		name  string
		td    spiffeid.TrustDomain
		ttl   time.Duration
		clock func() time.Time
		want  string
	}{
		{"no trust domain", spiffeid.TrustDomain{}, time.Hour, time.Now, "trust domain is required"},
		{"ttl too short", td, time.Second, time.Now, "outside"},
		{"ttl too long", td, 48 * time.Hour, time.Now, "outside"},
		{"no clock", td, time.Hour, nil, "clock is required"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := mtls.NewDevCA(c.td, c.ttl, c.clock)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want an error mentioning %q, got %v", c.want, err)
			}
		})
	}
	ca := newDevCA(t, mtls.DefaultTrustDomain, time.Now)
	for _, id := range []spiffeid.ID{{}, spiffeid.RequireFromString("spiffe://evil.example/payments")} {
		if _, err := ca.Source(id); err == nil {
			t.Errorf("Source(%q) issued; want a refusal outside trust domain %s", id, td)
		}
	}
	src := devSource(t, ca, ids.Payments)
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("evil.example")); err == nil {
		t.Error("a dev source returned a bundle for a foreign trust domain")
	}
}

// TestDevCAIssuesVerifiableSVIDs checks what a peer checks: the SVID names the workload,
// is a leaf, chains to the bundle, and lives ttl.
func TestDevCAIssuesVerifiableSVIDs(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	ca, err := mtls.NewDevCA(td, time.Hour, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	src := devSource(t, ca, ids.Audit)
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	leaf := svid.Certificates[0]
	if svid.ID != ids.Audit || leaf.IsCA {
		t.Fatalf("SVID %s (CA %v), want a leaf for %s", svid.ID, leaf.IsCA, ids.Audit)
	}
	if got := leaf.NotAfter.Sub(clock.Now()); got != time.Hour {
		t.Errorf("SVID lives %s from issuance, want 1h", got)
	}
	id, _, err := x509svid.Verify(svid.Certificates, src, x509svid.WithTime(clock.Now()))
	if err != nil || id != ids.Audit {
		t.Fatalf("Verify = %s, %v; want %s", id, err, ids.Audit)
	}
	// The raw DER round-trips through the SVID parser a Workload API client would use.
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x509svid.Parse(certPEM, keyPEM); err != nil {
		t.Fatalf("the SVID does not parse as an X.509-SVID: %v", err)
	}
}

// TestDevCARotation drives rotation with the injected clock, over real connections: the
// SVID is re-issued at half its ttl (not before), a connection opened before the rotation
// keeps working after it, and a new connection presents the new SVID.
//
// The clock starts half an hour in the past, so that the SVIDs issued "then" and "now" are
// both valid for the real-time verification of the TLS handshakes.
func TestDevCARotation(t *testing.T) {
	const ttl = time.Hour
	realNow := time.Now()
	clock := &fakeClock{now: realNow.Add(-ttl / 2)}
	ca, err := mtls.NewDevCA(td, ttl, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	serverSrc, clientSrc := devSource(t, ca, ids.Payments), devSource(t, ca, ids.Gateway)
	ts := startServer(t, serverSrc, testPolicy(t))
	rec := &serialRecorder{}
	hc := h2Client(rec.wrap(mtls.ClientTLS(clientSrc, ids.Payments)))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mustCall := func(step string) {
		t.Helper()
		if code, _, err := transfer(ctx, hc, ts.URL); code != 0 {
			t.Fatalf("%s: call failed: %v", step, err)
		}
	}

	first := serialOf(t, serverSrc)
	mustCall("before rotation")
	if !rec.saw(first) {
		t.Fatalf("the client did not see the server's SVID %s", first)
	}

	clock.Set(realNow.Add(-time.Nanosecond))
	if got := serialOf(t, serverSrc); got != first {
		t.Fatalf("SVID re-issued before half its ttl (serial %s, was %s)", got, first)
	}
	clock.Set(realNow)
	second := serialOf(t, serverSrc)
	if second == first {
		t.Fatal("SVID not re-issued at half its ttl")
	}
	if again := serialOf(t, serverSrc); again != second {
		t.Fatalf("SVID re-issued twice in one rotation (%s, then %s)", second, again)
	}

	mustCall("after rotation, on the connection opened before it")
	if n := ts.connections(); n != 1 {
		t.Fatalf("%d connections; the call after rotation should have reused the first", n)
	}
	hc.CloseIdleConnections()
	mustCall("after rotation, on a new connection")
	if n := ts.connections(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
	if !rec.saw(second) {
		t.Fatalf("the new connection did not present the rotated SVID %s", second)
	}
}

// TestLateCertificateReconnects: a client whose certificate is past three quarters of its
// life is asked (GOAWAY) to reconnect, and its next call arrives on a new connection
// with its current SVID — without a failed call.
func TestLateCertificateReconnects(t *testing.T) {
	const ttl = time.Hour
	realNow := time.Now()
	clock := &fakeClock{now: realNow.Add(-ttl * 8 / 10)}
	ca, err := mtls.NewDevCA(td, ttl, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	serverSrc, clientSrc := devSource(t, ca, ids.Payments), devSource(t, ca, ids.Gateway)
	serialOf(t, serverSrc)
	oldClient := serialOf(t, clientSrc) // issued 48 minutes ago: late in its life
	ts := startServer(t, serverSrc, testPolicy(t))
	hc := mtls.HTTPClient(clientSrc, ids.Payments)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	if code, _, err := transfer(ctx, hc, ts.URL); code != 0 {
		t.Fatalf("first call: %v", err)
	}
	clock.Set(realNow) // the client's source rotates at its next use
	for i := range 5 {
		if code, _, err := transfer(ctx, hc, ts.URL); code != 0 {
			t.Fatalf("call %d after the GOAWAY failed: %v", i, err)
		}
	}
	if n := ts.connections(); n != 2 {
		t.Fatalf("%d connections; want exactly one reconnection", n)
	}
	if serialOf(t, clientSrc) == oldClient {
		t.Fatal("the client's SVID did not rotate")
	}
}
