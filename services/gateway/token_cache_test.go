package gateway

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// TestVerifiedTokensExpire: a token served from the cache of verified tokens is still
// refused once it expires (beyond the leeway), and no later than verifiedTTL after it
// was verified the signature is checked again (a withdrawn key stops working).
func TestVerifiedTokensExpire(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := jwk.Import(key.Public())
	_ = pub.Set(jwk.KeyIDKey, "k1")
	set := jwk.NewSet()
	_ = set.AddKey(pub)
	algs, _ := parseAlgorithms([]string{"RS256"})
	now := time.Unix(1_800_000_000, 0)
	v := &verifier{
		keys: staticKeys{set: set}, issuer: "iss", audience: "aud", algorithms: algs, leeway: 30 * time.Second,
		maxBytes: 8 << 10, rolesClaim: "roles", accountsClaim: "accounts", now: func() time.Time { return now },
	}
	enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	sign := func(exp time.Time) string {
		in := enc(map[string]any{"alg": "RS256", "kid": "k1"}) + "." + enc(map[string]any{"iss": "iss", "aud": "aud", "sub": "alice", "exp": exp.Unix()})
		sum := sha256.Sum256([]byte(in))
		sig, _ := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
		return in + "." + base64.RawURLEncoding.EncodeToString(sig)
	}
	ctx := context.Background()
	short := sign(now.Add(10 * time.Second))
	if _, err := v.verify(ctx, short); err != nil {
		t.Fatal(err)
	}
	now = now.Add(20 * time.Second) // expired, within the leeway: still good
	if _, err := v.verify(ctx, short); err != nil {
		t.Fatalf("within the leeway: %v", err)
	}
	now = now.Add(30 * time.Second) // 40 s past exp
	if _, err := v.verify(ctx, short); err == nil {
		t.Fatal("an expired token was accepted from the cache")
	}
	long := sign(now.Add(time.Hour))
	if _, err := v.verify(ctx, long); err != nil {
		t.Fatal(err)
	}
	v.keys = staticKeys{set: jwk.NewSet()} // the issuer withdrew the key
	if _, err := v.verify(ctx, long); err != nil {
		t.Fatalf("within verifiedTTL the cached verification stands: %v", err)
	}
	now = now.Add(verifiedTTL)
	if _, err := v.verify(ctx, long); err == nil {
		t.Fatal("a token whose key was withdrawn was accepted more than verifiedTTL after its verification")
	}
}

// BenchmarkVerifyCached is the token check of every call after a client's first: a hit
// in the verified-token cache. Reported with -benchmem: what it allocates per call.
//
//	go test -run '^$' -bench VerifyCached -benchmem ./services/gateway
func BenchmarkVerifyCached(b *testing.B) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	pub, _ := jwk.Import(key.Public())
	_ = pub.Set(jwk.KeyIDKey, "k1")
	set := jwk.NewSet()
	_ = set.AddKey(pub)
	algs, _ := parseAlgorithms([]string{"RS256"})
	v := &verifier{
		keys: staticKeys{set: set}, issuer: "iss", audience: "aud", algorithms: algs, leeway: 30 * time.Second,
		maxBytes: 8 << 10, rolesClaim: "roles", accountsClaim: "accounts", now: time.Now,
	}
	enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	accounts := make([]string, 64)
	for i := range accounts {
		accounts[i] = "account-" + strconv.Itoa(i)
	}
	in := enc(map[string]any{"alg": "RS256", "kid": "k1"}) + "." + enc(map[string]any{
		"iss": "iss", "aud": "aud", "sub": "alice", "exp": time.Now().Add(time.Hour).Unix(), "roles": []string{"customer"}, "accounts": accounts,
	})
	sum := sha256.Sum256([]byte(in))
	sig, _ := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	token := in + "." + base64.RawURLEncoding.EncodeToString(sig)
	ctx := context.Background()
	if _, err := v.verify(ctx, token); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		p, err := v.verify(ctx, token)
		if err != nil || p.Subject != "alice" {
			b.Fatalf("verify = %v, %v; want alice", p.Subject, err)
		}
	}
}

// The cache of verified tokens holds at most maxVerifiedBytes of tokens and
// maxVerifiedEntries of them, whatever tokens arrive, and answers only for the exact
// token it was given.
func TestVerifiedCacheIsBounded(t *testing.T) {
	var c verifiedCache
	now := time.Unix(1_800_000_000, 0)
	long := strings.Repeat("x", 8<<10)
	for i := range maxVerifiedBytes/len(long) + 10 {
		c.put(long+strconv.Itoa(i), Principal{Subject: strconv.Itoa(i)}, now.Add(time.Minute))
		if c.bytes > maxVerifiedBytes || len(c.entries) > maxVerifiedEntries {
			t.Fatalf("after %d puts the cache holds %d bytes in %d entries; bounds %d and %d", i+1, c.bytes, len(c.entries), maxVerifiedBytes, maxVerifiedEntries)
		}
	}
	last := long + strconv.Itoa(maxVerifiedBytes/len(long)+9)
	if p, ok := c.get(last, now); !ok || p.Subject != strconv.Itoa(maxVerifiedBytes/len(long)+9) {
		t.Fatalf("the last token put is not found: %v %v", p, ok)
	}
	if _, ok := c.get(last[:len(last)-1], now); ok {
		t.Fatal("a prefix of a cached token was answered from the cache")
	}
	if _, ok := c.get(last, now.Add(time.Minute)); ok {
		t.Fatal("an entry was answered at its until time")
	}
	sum := 0
	for k := range c.entries {
		sum += len(k)
	}
	if sum != c.bytes {
		t.Fatalf("the byte count says %d, the entries hold %d", c.bytes, sum)
	}
}
