package dispatch_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/securepay/securepay/services/dispatch"
)

// The signature is reproducible from docs/WEBHOOKS.md alone: HMAC-SHA256 over
// "<t>.<body>", hex, in "t=<t>,v1=<hex>". This vector is computed here with nothing of
// the package, as a receiver would.
func TestSignMatchesTheDocumentedAlgorithm(t *testing.T) {
	secret := []byte("whsec_test")
	body := []byte(`{"id":"e1","type":"ledger.account.credited.v1"}`)
	at := time.Unix(1_700_000_000, 0)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("1700000000." + string(body)))
	want := "t=1700000000,v1=" + hex.EncodeToString(m.Sum(nil))
	if got := dispatch.Sign(secret, at, body); got != want {
		t.Fatalf("Sign = %q, want %q", got, want)
	}
	// The vector printed in docs/WEBHOOKS.md (openssl dgst -sha256 -hmac whsec_test).
	if doc := "t=1700000000,v1=e45d8fa0b2cd9bbbf10f4ef2852f12e5b7f15766967e6f85d38338fa79de7454"; want != doc {
		t.Fatalf("the documented vector %q is not %q", doc, want)
	}
}

func TestVerify(t *testing.T) {
	secret := []byte("s3cret")
	other := []byte("other")
	body := []byte(`{"id":"e1"}`)
	at := time.Unix(1_700_000_000, 0)
	good := dispatch.Sign(secret, at, body)
	otherSig := dispatch.Sign(other, at, body)
	tol := 5 * time.Minute
	cases := []struct {
		name   string
		header string
		body   []byte
		now    time.Time
		tol    time.Duration
		want   error // nil: accepted
	}{
		{"valid", good, body, at, tol, nil},
		{"valid at the edge of the tolerance", good, body, at.Add(tol), tol, nil},
		{"valid, receiver clock behind", good, body, at.Add(-tol), tol, nil},
		{"replayed after the tolerance", good, body, at.Add(tol + time.Second), tol, dispatch.ErrStaleSignature},
		{"from the future", good, body, at.Add(-tol - time.Second), tol, dispatch.ErrStaleSignature},
		{"body changed", good, []byte(`{"id":"e2"}`), at, tol, dispatch.ErrBadSignature},
		{"body with a trailing newline", good, append(append([]byte{}, body...), '\n'), at, tol, dispatch.ErrBadSignature},
		{"another secret", otherSig, body, at, tol, dispatch.ErrBadSignature},
		{"timestamp changed", strings.Replace(good, "t=1700000000", "t=1700000001", 1), body, at, tol, dispatch.ErrBadSignature},
		{"one of two signatures matches (secret rotation)", otherSig + "," + good[strings.Index(good, "v1="):], body, at, tol, nil},
		{"unknown scheme ignored", good + ",v0=abc", body, at, tol, nil},
		{"spaces around items", "t=1700000000, " + good[strings.Index(good, "v1="):], body, at, tol, nil},
		{"no v1", "t=1700000000", body, at, tol, dispatch.ErrSignatureHeader},
		{"no t", good[strings.Index(good, "v1="):], body, at, tol, dispatch.ErrSignatureHeader},
		{"empty", "", body, at, tol, dispatch.ErrSignatureHeader},
		{"two t", "t=1," + good, body, at, tol, dispatch.ErrSignatureHeader},
		{"negative t", "t=-1,v1=" + strings.Repeat("0", 64), body, at, tol, dispatch.ErrSignatureHeader},
		{"t too long", "t=9999999999999,v1=" + strings.Repeat("0", 64), body, at, tol, dispatch.ErrSignatureHeader},
		{"short v1", "t=1700000000,v1=abcd", body, at, tol, dispatch.ErrSignatureHeader},
		{"v1 not hex", "t=1700000000,v1=" + strings.Repeat("z", 64), body, at, tol, dispatch.ErrSignatureHeader},
		{"item without =", good + ",junk", body, at, tol, dispatch.ErrSignatureHeader},
		{"nine v1", "t=1700000000" + strings.Repeat(",v1="+strings.Repeat("0", 64), 9), body, at, tol, dispatch.ErrSignatureHeader},
		{"huge header", "t=1700000000,x=" + strings.Repeat("a", 5000) + ",v1=" + strings.Repeat("0", 64), body, at, tol, dispatch.ErrSignatureHeader},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := dispatch.Verify(secret, tc.header, tc.body, tc.now, tc.tol)
			switch {
			case tc.want == nil && err != nil:
				t.Fatalf("Verify(%q) = %v, want accepted", tc.header, err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("Verify(%q) = %v, want %v", tc.header, err, tc.want)
			}
		})
	}
}

// Without a positive tolerance every old request would replay: refused as a usage error.
func TestVerifyRefusesNoTolerance(t *testing.T) {
	at := time.Unix(1_700_000_000, 0)
	h := dispatch.Sign([]byte("k"), at, nil)
	for _, tol := range []time.Duration{0, -time.Second} {
		if err := dispatch.Verify([]byte("k"), h, nil, at, tol); err == nil {
			t.Errorf("Verify with tolerance %s accepted; want an error", tol)
		}
	}
}

// The parser takes any header a hostile sender writes without panicking, and what it
// accepts is well formed: one decimal t, 1..8 signatures of 32 bytes. A header Sign
// wrote always verifies, and one byte changed in the body never does.
func FuzzParseSignatureHeader(f *testing.F) {
	f.Add("t=1700000000,v1="+strings.Repeat("ab", 32), []byte("{}"))
	f.Add("t=1,v1=,v1=", []byte(""))
	f.Add(",,,=,t==", []byte("x"))
	f.Add("t=00000000000000000001,v1="+strings.Repeat("0", 64), []byte("y"))
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		s, err := dispatch.ParseSignatureHeader(header)
		if err == nil {
			if s.Timestamp == "" || strings.Trim(s.Timestamp, "0123456789") != "" || s.Unix < 0 {
				t.Fatalf("accepted t=%q (%d)", s.Timestamp, s.Unix)
			}
			if len(s.V1) < 1 || len(s.V1) > 8 {
				t.Fatalf("accepted %d signatures", len(s.V1))
			}
			for _, sig := range s.V1 {
				if len(sig) != sha256.Size {
					t.Fatalf("accepted a signature of %d bytes", len(sig))
				}
			}
		} else if !errors.Is(err, dispatch.ErrSignatureHeader) {
			t.Fatalf("error %v does not wrap ErrSignatureHeader", err)
		}
		_ = dispatch.Verify([]byte("k"), header, body, time.Unix(1_700_000_000, 0), time.Minute)

		at := time.Unix(1_700_000_000, 0)
		signed := dispatch.Sign([]byte(header), at, body)
		if err := dispatch.Verify([]byte(header), signed, body, at, time.Minute); err != nil {
			t.Fatalf("a header Sign wrote does not verify: %v", err)
		}
		changed := append([]byte{0}, body...)
		if err := dispatch.Verify([]byte(header), signed, changed, at, time.Minute); !errors.Is(err, dispatch.ErrBadSignature) {
			t.Fatalf("a changed body verified: %v", err)
		}
	})
}
