package gateway

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// jwksServer publishes keys by kid and counts fetches; it can be taken down.
type jwksServer struct {
	srv     *httptest.Server
	mu      sync.Mutex
	kids    []string
	down    atomic.Bool
	fetches atomic.Int64
}

func newJWKSServer(t *testing.T, kids ...string) *jwksServer {
	s := &jwksServer{kids: kids}
	s.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		if s.down.Load() {
			http.Error(w, "down", http.StatusBadGateway)
			return
		}
		s.mu.Lock()
		kids := append([]string(nil), s.kids...)
		s.mu.Unlock()
		set := jwk.NewSet()
		for _, kid := range kids {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			pub, err := jwk.Import(k.Public())
			if err != nil {
				t.Error(err)
				return
			}
			_ = pub.Set(jwk.KeyIDKey, kid)
			_ = set.AddKey(pub)
		}
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *jwksServer) publish(kids ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kids = kids
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newCache(s *jwksServer, clock *fakeClock) *jwksCache {
	return &jwksCache{
		url: s.srv.URL, client: s.srv.Client(), refresh: 15 * time.Minute, minInterval: 30 * time.Second,
		fetchTimeout: 5 * time.Second, now: clock.now, log: slog.New(slog.DiscardHandler),
	}
}

// TestJWKSUnknownKidFetchesAtMostOncePerInterval: a flood of tokens with kids nobody
// published costs the issuer one fetch per interval, and a kid the issuer rotated in is
// found at the first lookup after the interval.
func TestJWKSUnknownKidFetchesAtMostOncePerInterval(t *testing.T) {
	s := newJWKSServer(t, "k1")
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	c := newCache(s, clock)
	ctx := context.Background()
	if _, ok := c.key(ctx, "k1"); !ok {
		t.Fatal("k1 not found at the first lookup")
	}
	for i := 0; i < 100; i++ {
		if _, ok := c.key(ctx, "forged"); ok {
			t.Fatal("a forged kid was found")
		}
		clock.advance(100 * time.Millisecond) // 10 s in all: less than the interval
	}
	if n := s.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches for 100 unknown kids within the interval, want 1 (the first)", n)
	}
	s.publish("k1", "k2")
	if _, ok := c.key(ctx, "k2"); ok {
		t.Fatal("k2 found before the interval allowed a fetch")
	}
	clock.advance(30 * time.Second)
	if _, ok := c.key(ctx, "k2"); !ok {
		t.Fatal("the rotated-in k2 was not found after the interval")
	}
	if n := s.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
	if _, ok := c.key(ctx, "k1"); !ok {
		t.Fatal("k1, still published, was lost")
	}
}

// TestJWKSIssuerDownKeepsKnownKeys: while the issuer is down, even past the refresh
// age, the keys already fetched keep verifying, and the issuer is asked at most once per
// interval.
func TestJWKSIssuerDownKeepsKnownKeys(t *testing.T) {
	s := newJWKSServer(t, "k1")
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	c := newCache(s, clock)
	ctx := context.Background()
	if _, ok := c.key(ctx, "k1"); !ok {
		t.Fatal("k1 not found")
	}
	s.down.Store(true)
	clock.advance(time.Hour) // well past the 15-minute refresh
	for i := 0; i < 50; i++ {
		if _, ok := c.key(ctx, "k1"); !ok {
			t.Fatalf("lookup %d: k1 lost while the issuer is down", i)
		}
	}
	waitIdle(t, c)
	if n := s.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches while down, want 2 (the first and one refresh attempt)", n)
	}
	s.down.Store(false)
	s.publish("k2")
	clock.advance(30 * time.Second)
	if _, ok := c.key(ctx, "k2"); !ok {
		t.Fatal("after the issuer came back, k2 was not fetched")
	}
	waitIdle(t, c)
	if _, ok := c.key(ctx, "k1"); ok {
		t.Fatal("k1, no longer published, is still trusted after a successful refresh")
	}
}

// TestJWKSIssuerDownAtStart: with no key ever fetched, tokens are refused (no key), and
// the gateway recovers when the issuer comes up.
func TestJWKSIssuerDownAtStart(t *testing.T) {
	s := newJWKSServer(t, "k1")
	s.down.Store(true)
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	c := newCache(s, clock)
	if _, ok := c.key(context.Background(), "k1"); ok {
		t.Fatal("a key was found while the issuer never answered")
	}
	s.down.Store(false)
	clock.advance(30 * time.Second)
	if _, ok := c.key(context.Background(), "k1"); !ok {
		t.Fatal("k1 not found once the issuer is up")
	}
}

// waitIdle waits for a background refresh to finish (a condition, not a sleep).
func waitIdle(t *testing.T, c *jwksCache) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !c.idle() {
		if time.Now().After(deadline) {
			t.Fatal("a JWKS refresh did not finish within 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}
