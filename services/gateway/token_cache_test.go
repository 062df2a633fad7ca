package gateway

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
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
