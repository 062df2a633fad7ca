package mtls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// DevCA is the in-process certificate authority of `securepay dev`: it issues X.509-SVIDs
// to the components running in one process, through the same [Source] interface as the
// SPIFFE Workload API, so development runs the same mTLS and policy code as production.
// Its sources rotate their SVIDs at half of ttl, as a SPIRE agent does, so `dev` exercises
// rotation too. Its key lives in memory only and is new at every start: nothing it issues
// is meant to be trusted outside the process.
type DevCA struct {
	td     spiffeid.TrustDomain
	ttl    time.Duration
	clock  func() time.Time
	key    *ecdsa.PrivateKey
	cert   *x509.Certificate
	bundle *x509bundle.Bundle
}

// Bounds of a development SVID's lifetime: below the minimum, rotation would dominate;
// above the maximum, development would stop exercising it.
const (
	MinDevTTL = 2 * time.Second
	MaxDevTTL = 24 * time.Hour
	// devCAValidity outlives any development session; the CA is new at every start.
	devCAValidity = 30 * 24 * time.Hour
	// maxBackdate tolerates clocks that disagree slightly, as SPIRE does with its SVIDs;
	// a tenth of the ttl at most, so that a short ttl still rotates well before expiry.
	maxBackdate = 10 * time.Second
)

func backdate(ttl time.Duration) time.Duration { return min(maxBackdate, ttl/10) }

// NewDevCA creates a development CA for td (ECDSA P-256) whose SVIDs live ttl, reading
// the time from clock (time.Now in `securepay dev`; a fake in tests).
func NewDevCA(td spiffeid.TrustDomain, ttl time.Duration, clock func() time.Time) (*DevCA, error) {
	switch {
	case td.IsZero():
		return nil, errors.New("dev CA: the trust domain is required")
	case ttl < MinDevTTL || ttl > MaxDevTTL:
		return nil, fmt.Errorf("dev CA: SVID ttl %s is outside %s..%s", ttl, MinDevTTL, MaxDevTTL)
	case clock == nil:
		return nil, errors.New("dev CA: a clock is required (time.Now outside tests)")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("dev CA: generate key: %w", err)
	}
	now := clock()
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{Organization: []string{"SecurePay development CA (not for production)"}},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-maxBackdate),
		NotAfter:              now.Add(devCAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // issues leaves only
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("dev CA: self-sign: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("dev CA: parse own certificate: %w", err)
	}
	return &DevCA{
		td: td, ttl: ttl, clock: clock, key: key, cert: cert,
		bundle: x509bundle.FromX509Authorities(td, []*x509.Certificate{cert}),
	}, nil
}

// TrustDomain is the trust domain the CA issues SVIDs in.
func (ca *DevCA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Bundle is the CA's trust bundle (its own certificate).
func (ca *DevCA) Bundle() *x509bundle.Bundle { return ca.bundle.Clone() }

// Source returns the source of the workload id: its SVID, issued on first use and
// re-issued once half of its lifetime has passed, and the CA's bundle. id must be of the
// CA's trust domain.
func (ca *DevCA) Source(id spiffeid.ID) (Source, error) {
	if id.IsZero() || !id.MemberOf(ca.td) {
		return nil, fmt.Errorf("dev CA: cannot issue %q: not an ID of trust domain %s", id, ca.td)
	}
	return &devSource{ca: ca, id: id}, nil
}

// devSource issues lazily, under its lock, when asked after the renewal time: no
// goroutine to stop, and an injected clock alone drives rotation in tests.
type devSource struct {
	ca *DevCA
	id spiffeid.ID

	mu      sync.Mutex
	svid    *x509svid.SVID
	renewAt time.Time
}

func (s *devSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.ca.clock()
	if s.svid != nil && now.Before(s.renewAt) {
		return s.svid, nil
	}
	svid, err := s.ca.issue(s.id, now)
	if err != nil {
		if s.svid != nil && now.Before(s.svid.Certificates[0].NotAfter) {
			return s.svid, nil // keep serving the still-valid SVID, as a SPIRE agent would
		}
		return nil, err
	}
	s.svid, s.renewAt = svid, now.Add(s.ca.ttl/2)
	return svid, nil
}

func (s *devSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != s.ca.td {
		return nil, fmt.Errorf("dev CA: no bundle for trust domain %q (only %s)", td, s.ca.td)
	}
	return s.ca.bundle, nil
}

// issue signs a fresh key for id, valid from now for ttl: an X.509-SVID leaf (one URI
// SAN, not a CA, digital signature, usable by TLS servers and clients).
func (ca *DevCA) issue(id spiffeid.ID, now time.Time) (*x509svid.SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("dev CA: generate key for %s: %w", id, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{Organization: []string{"SecurePay development"}},
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-backdate(ca.ttl)),
		NotAfter:              now.Add(ca.ttl),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("dev CA: sign SVID for %s: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("dev CA: parse SVID for %s: %w", id, err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}, nil
}

// newSerial is a random 128-bit serial: unique without state, as RFC 5280 asks.
func newSerial() *big.Int {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	b[0] &= 0x7f        // positive
	return new(big.Int).SetBytes(b)
}
