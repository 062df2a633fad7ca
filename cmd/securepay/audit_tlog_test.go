package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReceiptTour is the README's auditor lines on a dev ledger: dev made a signing key
// in its directory; a checkpoint is fetched and verified with the public key, a payment's
// receipt is written, and checked offline — and refused once a byte of it changed or with
// another log's key.
func TestReceiptTour(t *testing.T) {
	dir := t.TempDir()
	url := startDev(t, "--dir", dir)
	pub := filepath.Join(dir, "checkpoint-key.pub")
	if fi, err := os.Stat(filepath.Join(dir, "checkpoint-key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("dev's signing key: %v (mode %v), want a private file", err, fi)
	}
	mustCLI(t, url, "account", "open", "world", "--asset", "USD", "--kind", "external")
	mustCLI(t, url, "account", "open", "alice", "--asset", "USD")
	mustCLI(t, url, "transfer", "--from", "world", "--to", "alice", "--amount", "40.00", "--asset", "USD", "--id", "pay-1")

	receipt := filepath.Join(t.TempDir(), "receipt.json")
	// dev signs every 2s: the payment is provable once a checkpoint covers it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := cli(t, url, "audit", "prove", "pay-1", "--public-key", pub, "--out", receipt)
		if err == nil {
			if !strings.Contains(out, "receipt for payment pay-1") {
				t.Fatalf("audit prove: %s", out)
			}
			break
		}
		if !strings.Contains(err.Error(), "CHECKPOINT_UNAVAILABLE") || time.Now().After(deadline) {
			t.Fatalf("audit prove pay-1: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	cp := filepath.Join(t.TempDir(), "cp")
	out := mustCLI(t, url, "audit", "checkpoint", "--public-key", pub, "--out", cp)
	if !strings.Contains(out, "checkpoint verified: log securepay.dev/ledger") {
		t.Fatalf("audit checkpoint: %s", out)
	}
	out = mustCLI(t, "", "audit", "check-receipt", receipt, "--public-key", pub)
	if !strings.HasPrefix(out, "OK: event ") || !strings.Contains(out, "payment-pay-1 version 1") {
		t.Fatalf("audit check-receipt: %s", out)
	}

	b, err := os.ReadFile(receipt)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := cli(t, "", "audit", "check-receipt", bad, "--public-key", pub); err == nil || !strings.Contains(err.Error(), "receipt refused") {
		t.Fatalf("a receipt with a changed byte: %v, want it refused", err)
	}
	other := filepath.Join(t.TempDir(), "other")
	mustCLI(t, "", "audit", "keygen", "--key-file", other)
	if _, err := cli(t, "", "audit", "check-receipt", receipt, "--public-key", other+".pub"); err == nil || !strings.Contains(err.Error(), "not signed by the trusted key") {
		t.Fatalf("a receipt checked with another key: %v, want it refused", err)
	}
	if _, err := cli(t, "", "audit", "keygen", "--key-file", other); err == nil {
		t.Fatal("keygen wrote over an existing key file")
	}
}
