package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"time"
)

// certReloader serves the certificate in a pair of PEM files and picks up a renewed pair
// without a restart: certificates are rotated while connections live (cert-manager,
// ACME), and a server that must restart to see them is down at every renewal.
//
// Each handshake asks for the certificate; the files are looked at most once per
// checkEvery, and reloaded when either one's modification time or size changed. A pair
// that does not load (a renewal caught half-written) keeps the previous certificate in
// service and is logged once; the next change is tried again.
type certReloader struct {
	certFile, keyFile string
	checkEvery        time.Duration
	log               *slog.Logger
	now               func() time.Time

	mu        sync.Mutex
	cert      *tls.Certificate
	stamp     [2]fileStamp
	checkedAt time.Time
	failed    [2]fileStamp // the stamps of the last pair that failed to load
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// newCertReloader loads the pair once; a server must not start without a certificate.
func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	if err := checkKeyFileMode(keyFile); err != nil {
		return nil, err
	}
	r := &certReloader{certFile: certFile, keyFile: keyFile, checkEvery: time.Second, log: log, now: time.Now}
	stamps, err := r.stamps()
	if err != nil {
		return nil, err
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("the TLS certificate %s and key %s do not load as a pair: %v", certFile, keyFile, err)
	}
	r.cert, r.stamp, r.checkedAt = &pair, stamps, r.now()
	return r, nil
}

// checkKeyFileMode refuses a private key that other users can read: whoever reads it can
// impersonate the ledger.
func checkKeyFileMode(keyFile string) error {
	fi, err := os.Stat(keyFile)
	if err != nil {
		return fmt.Errorf("the TLS key %s: %w", keyFile, err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("the TLS key %s can be read by other users (mode %#o); make it private: chmod 600 %s", keyFile, perm, keyFile)
	}
	return nil
}

func (r *certReloader) stamps() ([2]fileStamp, error) {
	var out [2]fileStamp
	for i, name := range [2]string{r.certFile, r.keyFile} {
		fi, err := os.Stat(name)
		if err != nil {
			return out, fmt.Errorf("the TLS file %s: %w", name, err)
		}
		out[i] = fileStamp{mod: fi.ModTime(), size: fi.Size()}
	}
	return out, nil
}

// GetCertificate is tls.Config.GetCertificate.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.now(); now.Sub(r.checkedAt) >= r.checkEvery {
		r.checkedAt = now
		r.reloadLocked()
	}
	return r.cert, nil
}

func (r *certReloader) reloadLocked() {
	stamps, err := r.stamps()
	if err != nil || stamps == r.stamp || stamps == r.failed {
		// A file briefly missing during a rename-into-place renewal is normal.
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			r.log.Warn("TLS files cannot be checked; keeping the current certificate", "error", err)
		}
		return
	}
	if err := checkKeyFileMode(r.keyFile); err != nil {
		r.failed = stamps
		r.log.Error("renewed TLS key refused; keeping the current certificate", "error", err)
		return
	}
	pair, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		r.failed = stamps
		r.log.Error("renewed TLS pair does not load; keeping the current certificate", "cert", r.certFile, "key", r.keyFile, "error", err)
		return
	}
	r.cert, r.stamp, r.failed = &pair, stamps, [2]fileStamp{}
	r.log.Info("TLS certificate reloaded", "cert", r.certFile)
}
