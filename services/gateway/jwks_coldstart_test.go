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
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// TestJWKSLookupsWaitForTheFetchUnderWay: a gateway just (re)started under load has no
// keys; the first lookup fetches them, and every lookup that arrives meanwhile waits for
// that fetch instead of refusing its token as signed by an unknown key (the bank test
// through a gateway killed and restarted found transfers refused so). They cost the
// issuer no further fetch; a lookup whose context ends first gives up.
func TestJWKSLookupsWaitForTheFetchUnderWay(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	var fetches atomic.Int64
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if fetches.Add(1) == 1 {
			close(started)
		}
		<-release // the issuer is slow: every lookup below arrives during this fetch
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		pub, err := jwk.Import(k.Public())
		if err != nil {
			t.Error(err)
			return
		}
		_ = pub.Set(jwk.KeyIDKey, "k1")
		set := jwk.NewSet()
		_ = set.AddKey(pub)
		_ = json.NewEncoder(w).Encode(set)
	}))
	defer srv.Close()
	c := &jwksCache{url: srv.URL, client: srv.Client(), refresh: 15 * time.Minute, minInterval: 30 * time.Second,
		fetchTimeout: 5 * time.Second, now: time.Now, log: slog.New(slog.DiscardHandler)}

	const waiters = 8
	found := make(chan bool, waiters+1)
	go func() { _, ok := c.key(context.Background(), "k1"); found <- ok }() // fetches
	<-started
	for range waiters {
		go func() { _, ok := c.key(context.Background(), "k1"); found <- ok }()
	}
	// One more lookup whose caller gives up while the fetch is under way.
	gone, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, ok := c.key(gone, "k1"); ok {
		t.Fatal("a lookup whose context ended before the fetch did found a key")
	}
	close(release)
	for i := range waiters + 1 {
		select {
		case ok := <-found:
			if !ok {
				t.Fatalf("lookup %d of %d during the first fetch: k1 not found, want it found once the fetch ends", i+1, waiters+1)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("lookups still waiting 10 s after the fetch was released")
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("the issuer was asked %d times, want once", n)
	}
}
