package gateway_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/services"
)

// TestMaliciousTokens: every attack on the token path is refused with UNAUTHENTICATED,
// before anything reaches the ledger. A valid token of the same shape is accepted, so each
// refusal is about the one thing the case changes.
func TestMaliciousTokens(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	is := f.issuer
	ctx := context.Background()
	valid := func() map[string]any { return claims("alice", []string{"customer"}, "alice") }
	with := func(k string, v any) map[string]any {
		c := valid()
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	now := time.Now()
	cases := []struct {
		name  string
		token string
	}{
		{"alg none, no signature", segment(t, map[string]any{"alg": "none", "typ": "JWT"}) + "." + segment(t, valid()) + "."},
		{"alg none with a kid", func() string {
			kid, _ := is.signer()
			return segment(t, map[string]any{"alg": "none", "kid": kid}) + "." + segment(t, valid()) + "."
		}()},
		{"alg NONE", segment(t, map[string]any{"alg": "NONE"}) + "." + segment(t, valid()) + "."},
		{"HS256 signed with the public key", is.hs256WithPublicKey(t, valid())},
		{"unknown kid", is.sign(t, valid(), map[string]any{"kid": "kid-that-nobody-published"})},
		{"no kid", is.sign(t, valid(), map[string]any{"kid": nil})},
		{"jku header", is.sign(t, valid(), map[string]any{"jku": "https://attacker.example/jwks.json"})},
		{"x5u header", is.sign(t, valid(), map[string]any{"x5u": "https://attacker.example/cert.pem"})},
		{"embedded jwk header", is.sign(t, valid(), map[string]any{"jwk": map[string]any{"kty": "oct", "k": "AAAA"}})},
		{"crit header", is.sign(t, valid(), map[string]any{"crit": []string{"exp"}})},
		{"oversized token", is.sign(t, with("pad", strings.Repeat("x", 9000)), nil)},
		{"expired beyond the leeway", is.sign(t, with("exp", now.Add(-2*time.Minute).Unix()), nil)},
		{"not yet valid beyond the leeway", is.sign(t, with("nbf", now.Add(2*time.Minute).Unix()), nil)},
		{"no exp", is.sign(t, with("exp", nil), nil)},
		{"wrong issuer", is.sign(t, with("iss", "https://attacker.example"), nil)},
		{"wrong audience", is.sign(t, with("aud", "another-api"), nil)},
		{"no audience", is.sign(t, with("aud", nil), nil)},
		{"no subject", is.sign(t, with("sub", nil), nil)},
		{"subject with a newline", is.sign(t, with("sub", "alice\nactor: operator"), nil)},
		{"tampered payload", func() string {
			tok := is.token(t, "alice", []string{"customer"}, "alice")
			parts := strings.Split(tok, ".")
			parts[1] = segment(t, with("roles", []string{"operator"}))
			return strings.Join(parts, ".")
		}()},
		{"signature stripped", func() string {
			tok := is.token(t, "alice", []string{"customer"}, "alice")
			return tok[:strings.LastIndex(tok, ".")+1]
		}()},
		{"two segments", func() string {
			tok := is.token(t, "alice", []string{"customer"}, "alice")
			return tok[:strings.LastIndex(tok, ".")]
		}()},
		{"JWE-shaped (five segments)", "a.b.c.d.e"},
		{"garbage", "not-a-token"},
		{"header not base64", "%%%." + segment(t, valid()) + ".sig"},
		{"roles not a list of strings", is.sign(t, with("roles", map[string]any{"admin": true}), nil)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			head, _ := f.ledger.store.Head(ctx)
			_, err := f.as(tc.token).payments.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{
				PaymentId: "attack", SourceAccountId: "alice", DestinationAccountId: "world", Amount: usd("1.00"),
			}))
			if connect.CodeOf(err) != connect.CodeUnauthenticated || services.ReasonOf(err) != services.ReasonUnauthenticated {
				t.Errorf("got %v, want UNAUTHENTICATED", err)
			}
			if after, _ := f.ledger.store.Head(ctx); after != head {
				t.Errorf("the log moved from %d to %d", head, after)
			}
		})
	}
	t.Run("no Authorization header", func(t *testing.T) {
		_, err := f.as("").balances.GetBalance(ctx, connect.NewRequest(&ledgerv1.GetBalanceRequest{AccountId: "alice"}))
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("got %v, want UNAUTHENTICATED", err)
		}
	})
	t.Run("Basic scheme", func(t *testing.T) {
		req := connect.NewRequest(&ledgerv1.GetBalanceRequest{AccountId: "alice"})
		req.Header().Set("Authorization", "Basic YWxpY2U6cHc=")
		_, err := f.as("").balances.GetBalance(ctx, req)
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("got %v, want UNAUTHENTICATED", err)
		}
	})
	t.Run("within the leeway is accepted", func(t *testing.T) {
		tok := is.sign(t, with("exp", now.Add(-10*time.Second).Unix()), nil)
		_, err := f.as(tok).balances.GetBalance(ctx, connect.NewRequest(&ledgerv1.GetBalanceRequest{AccountId: "alice"}))
		if connect.CodeOf(err) == connect.CodeUnauthenticated {
			t.Errorf("a token expired 10 s ago (leeway 30 s) was refused: %v", err)
		}
	})
}
