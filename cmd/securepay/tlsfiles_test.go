package main

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"
)

func servedName(t *testing.T, r *certReloader) string {
	t.Helper()
	c, err := r.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatalf("get certificate: %v", err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.Subject.CommonName
}

func TestCertificateReloadedWhenItsFilesChange(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := writeSelfSigned(t, dir, "first.securepay.test")
	r, err := newCertReloader(certFile, keyFile, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	clock := time.Now()
	r.now = func() time.Time { return clock }
	if got := servedName(t, r); got != "first.securepay.test" {
		t.Fatalf("before renewal: want first.securepay.test, got %s", got)
	}

	writeSelfSigned(t, dir, "second.securepay.test")
	// Some file systems keep a second's resolution: make the change visible by time too.
	later := time.Now().Add(2 * time.Second)
	for _, f := range []string{certFile, keyFile} {
		if err := os.Chtimes(f, later, later); err != nil {
			t.Fatal(err)
		}
	}
	if got := servedName(t, r); got != "first.securepay.test" {
		t.Fatalf("within the check interval: want the cached first certificate, got %s", got)
	}
	clock = clock.Add(r.checkEvery)
	if got := servedName(t, r); got != "second.securepay.test" {
		t.Fatalf("after renewal: want second.securepay.test, got %s", got)
	}

	// A renewal caught half-written keeps the working certificate in service.
	if err := os.WriteFile(certFile, []byte("-----BEGIN CERTIFICATE-----\ntruncated"), 0o644); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(r.checkEvery)
	if got := servedName(t, r); got != "second.securepay.test" {
		t.Fatalf("after a broken renewal: want second.securepay.test kept, got %s", got)
	}
}

func TestKeyReadableByOthersIsRefused(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := writeSelfSigned(t, dir, "x.securepay.test")
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := newCertReloader(certFile, keyFile, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a world-readable key: want a refusal that says chmod 600, got %v", err)
	}
}
