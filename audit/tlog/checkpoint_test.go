package tlog

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

func testKey(t testing.TB, origin string) (private, public string) {
	t.Helper()
	private, public, err := GenerateKey(origin)
	if err != nil {
		t.Fatal(err)
	}
	return private, public
}

func TestCheckpointSignedAndOpened(t *testing.T) {
	private, public := testKey(t, "securepay.test/ledger")
	derived, err := PublicKey(private)
	if err != nil || derived != public {
		t.Fatalf("public key derived from the private one: %q, %v; generated %q", derived, err, public)
	}
	signer := mustSigner(t, private)
	v, err := NewVerifier(public)
	if err != nil {
		t.Fatal(err)
	}
	cp := Checkpoint{Origin: "securepay.test/ledger", Size: 42, Root: bytes.Repeat([]byte{7}, HashSize)}
	msg, err := SignCheckpoint(cp, signer)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(msg), "securepay.test/ledger\n42\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n\n— securepay.test/ledger ") {
		t.Fatalf("not a C2SP checkpoint note:\n%s", msg)
	}
	got, err := OpenCheckpoint(msg, v)
	if err != nil {
		t.Fatal(err)
	}
	if got.Size != 42 || !bytes.Equal(got.Root, cp.Root) || got.Origin != cp.Origin {
		t.Fatalf("opened %+v, signed %+v", got, cp)
	}

	// Another key with the same name: the signature is not the trusted key's.
	otherPrivate, _ := testKey(t, "securepay.test/ledger")
	forged, err := SignCheckpoint(cp, mustSigner(t, otherPrivate))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenCheckpoint(forged, v); !errors.Is(err, ErrCheckpoint) || !strings.Contains(err.Error(), "not signed by the trusted key") {
		t.Fatalf("checkpoint signed with another key: got %v, want a refusal naming the trusted key", err)
	}
	// A changed body under the right signature.
	changed := bytes.Replace(msg, []byte("\n42\n"), []byte("\n43\n"), 1)
	if _, err := OpenCheckpoint(changed, v); err == nil {
		t.Fatal("a checkpoint whose size was changed after signing was accepted")
	}
}

func TestParseCheckpointRefusesMalformedBodies(t *testing.T) {
	root := "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="
	for _, tc := range []struct{ name, body string }{
		{"empty", ""},
		{"two lines", "o\n1\n"},
		{"no final newline", "o\n1\n" + root},
		{"empty origin", "\n1\n" + root + "\n"},
		{"signed size", "o\n+1\n" + root + "\n"},
		{"leading zero", "o\n01\n" + root + "\n"},
		{"size overflow", "o\n18446744073709551616\n" + root + "\n"},
		{"short root", "o\n1\nBwcH\n"},
		{"unpadded root", "o\n1\n" + strings.TrimSuffix(root, "=") + "\n"},
		{"url base64 root", "o\n1\n" + strings.ReplaceAll(root, "B", "-") + "\n"},
		{"empty extension", "o\n1\n" + root + "\n\n"},
	} {
		if _, err := ParseCheckpoint(tc.body); !errors.Is(err, ErrCheckpoint) {
			t.Errorf("%s: %q parsed (err %v)", tc.name, tc.body, err)
		}
	}
	if c, err := ParseCheckpoint("o\n1\n" + root + "\next\n"); err != nil || c.Size != 1 {
		t.Errorf("an extension line is allowed by C2SP: %+v, %v", c, err)
	}
}

func FuzzOpenCheckpoint(f *testing.F) {
	private, public := testKey(f, "securepay.test/ledger")
	v, err := NewVerifier(public)
	if err != nil {
		f.Fatal(err)
	}
	msg, err := SignCheckpoint(Checkpoint{Origin: "securepay.test/ledger", Size: 5, Root: make([]byte, HashSize)}, mustSigner(f, private))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(msg)
	f.Add([]byte("securepay.test/ledger\n5\nAAAA\n\n— x y\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := OpenCheckpoint(b, v)
		if err != nil {
			return
		}
		// Whatever opened must be exactly what the key signed: re-signing is deterministic
		// (Ed25519), so the same body under the same key gives the same bytes.
		again, err := SignCheckpoint(c, mustSigner(t, private))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, b) && !strings.Contains(string(b), "\n\n— ") {
			t.Fatalf("opened %q as %+v", b, c)
		}
	})
}

func FuzzParseCheckpoint(f *testing.F) {
	f.Add("o\n1\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n")
	f.Add("o\n0\n\n")
	f.Fuzz(func(t *testing.T, body string) {
		c, err := ParseCheckpoint(body)
		if err != nil {
			return
		}
		// A parsed body starts with its own canonical text.
		if !strings.HasPrefix(body, c.Text()) {
			t.Fatalf("%q parsed as %+v, whose text is %q", body, c, c.Text())
		}
	})
}

func mustSigner(t testing.TB, private string) note.Signer {
	t.Helper()
	s, err := note.NewSigner(private)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
