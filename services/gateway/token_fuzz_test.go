package gateway

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// FuzzVerify drives the whole token path (header checks, key look-up, jwx's parser and
// validation, our claims) with arbitrary input: it never panics, and it accepts nothing
// but a token signed by the issuer's key.
func FuzzVerify(f *testing.F) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	pub, err := jwk.Import(key.Public())
	if err != nil {
		f.Fatal(err)
	}
	_ = pub.Set(jwk.KeyIDKey, "k1")
	set := jwk.NewSet()
	_ = set.AddKey(pub)
	algs, _ := parseAlgorithms([]string{"RS256", "ES256"})
	now := time.Unix(1_800_000_000, 0)
	v := &verifier{
		keys: staticKeys{set: set}, issuer: "iss", audience: "aud", algorithms: algs, leeway: 30 * time.Second,
		maxBytes: 8 << 10, rolesClaim: "roles", accountsClaim: "accounts", now: func() time.Time { return now },
	}
	enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	sign := func(h, c map[string]any) string {
		in := enc(h) + "." + enc(c)
		sum := sha256.Sum256([]byte(in))
		sig, _ := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
		return in + "." + base64.RawURLEncoding.EncodeToString(sig)
	}
	good := map[string]any{"iss": "iss", "aud": "aud", "sub": "alice", "exp": now.Add(time.Hour).Unix(), "roles": []string{"customer"}, "accounts": "alice"}
	valid := sign(map[string]any{"alg": "RS256", "kid": "k1"}, good)
	if _, err := v.verify(context.Background(), valid); err != nil {
		f.Fatalf("the seed token is refused: %v", err)
	}
	f.Add(valid)
	f.Add(enc(map[string]any{"alg": "none"}) + "." + enc(good) + ".")
	f.Add(sign(map[string]any{"alg": "RS256", "kid": "k1", "jku": "https://x"}, good))
	f.Add(sign(map[string]any{"alg": "RS256", "kid": "k1"}, map[string]any{"iss": "iss", "aud": []any{"aud", 7}, "sub": "a", "exp": "soon", "roles": 3}))
	f.Add("e30.e30.")
	f.Add("..")
	f.Fuzz(func(t *testing.T, token string) {
		p, err := v.verify(context.Background(), token)
		if err != nil {
			if !errors.Is(err, errToken) {
				t.Fatalf("a refusal that is not a token error: %v", err)
			}
			return
		}
		if p.Subject == "" {
			t.Fatalf("accepted %q with no subject", token)
		}
		// Whatever the fuzzer changed, an accepted token still verifies with the key:
		// only the signature's own bytes may differ (base64 padding bits).
		if _, err := v.verify(context.Background(), token); err != nil {
			t.Fatalf("accepted once, refused the second time: %v", err)
		}
	})
}
