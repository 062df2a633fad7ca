package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/securepay/securepay/internal/coalesce"
)

// Source is what a component needs from the SPIFFE Workload API: its own X.509-SVID and
// the trust bundles to verify its peers with. Both are read at every handshake, so a
// rotated SVID or bundle is used from the next connection on. *workloadapi.X509Source
// satisfies it, and so do the development CA's sources ([DevCA.Source]).
type Source interface {
	x509svid.Source
	x509bundle.Source
}

// ServerTLS is the TLS configuration of a component's listener. It presents the
// component's current SVID and verifies a client certificate, when one is presented,
// against the bundle of the server's own trust domain: a certificate from any other trust
// domain, or one that does not chain to the bundle, fails the handshake.
//
// A client without a certificate does complete the handshake, so that [Policy.Handler]
// can refuse it with a Connect error (Unauthenticated) that every Connect, gRPC and
// gRPC-web client can read. Everything served with this configuration must therefore be
// wrapped in [Policy.Handler], which refuses such calls; serving a handler without it
// would serve unauthenticated callers.
func ServerTLS(src Source) *tls.Config {
	verify := tlsconfig.VerifyPeerCertificate(src, sameTrustDomain(src))
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: tlsconfig.GetCertificate(src),
		// RequestClientCert: ask for a certificate but leave the verification to
		// VerifyPeerCertificate, which verifies against the SPIFFE bundle (SVIDs carry no
		// DNS names, so the standard verification does not apply).
		ClientAuth: tls.RequestClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil // refused per request by Policy.Handler, as a Connect error
			}
			return verify(raw, nil)
		},
		NextProtos: []string{"h2", "http/1.1"},
	}
}

// ClientTLS is the TLS configuration for calling the component whose SPIFFE ID is server:
// it presents the caller's current SVID and accepts only a server certificate that
// chains to the bundle of the server's trust domain and names exactly server.
func ClientTLS(src Source, server spiffeid.ID) *tls.Config {
	cfg := tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(server))
	cfg.MinVersion = tls.VersionTLS13
	cfg.NextProtos = []string{"h2"}
	return cfg
}

// Timeouts of the internal HTTP client. Calls themselves are bounded by their contexts
// (a client-wide timeout would cut server streams); these bound what a context does not
// see: connecting, the handshake, and a peer that silently stopped answering.
const (
	dialTimeout      = 5 * time.Second
	handshakeTimeout = 5 * time.Second
	// idleConnTimeout closes an unused connection well before its client certificate
	// can expire (SVIDs live minutes to hours), so that an idle connection is not
	// refused by Policy.Handler when it is next used.
	idleConnTimeout = 30 * time.Second
	pingAfterIdle   = 15 * time.Second // HTTP/2 PING when nothing was read for this long
	pingTimeout     = 5 * time.Second  // and close the connection without an answer
)

// HTTPClient is the HTTP client for Connect clients that call the component whose SPIFFE
// ID is server. It speaks HTTP/2 over mTLS only (an http:// URL fails, it never falls
// back to plaintext), multiplexes calls over pooled connections, and picks up rotated
// SVIDs and bundles on its next connection.
func HTTPClient(src Source, server spiffeid.ID) *http.Client {
	var protocols http.Protocols
	protocols.SetHTTP2(true)
	transport := &http.Transport{
		TLSClientConfig: ClientTLS(src, server),
		// Under TLS, so that the gateway's many concurrent calls on one connection go
		// out in fewer write system calls (internal/coalesce).
		DialContext:         coalesce.Dial((&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext, coalesce.Options{}),
		TLSHandshakeTimeout: handshakeTimeout,
		IdleConnTimeout:     idleConnTimeout,
		ForceAttemptHTTP2:   true,
		Protocols:           &protocols,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: pingAfterIdle,
			PingTimeout:     pingTimeout,
			// No HPACK dynamic table on the hop: every forwarded call carries values
			// seen once (its correlation id, the client's Idempotency-Key), and each one
			// indexed evicts another, which cost the gateway ~4 % of its CPU in map work
			// (and the component as much to mirror it). Literals cost less than that
			// churn here: 4 interleaved pairs gave 118-134 against 120-147 µs per
			// transfer in the gateway (docs/PERFORMANCE.md).
			MaxEncoderHeaderTableSize: 1,
		},
	}
	return &http.Client{Transport: transport}
}

// sameTrustDomain authorises any SVID of the trust domain of src's own SVID, read at each
// handshake. Which ID may call which procedure is decided per request by Policy.
func sameTrustDomain(src x509svid.Source) tlsconfig.Authorizer {
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		own, err := src.GetX509SVID()
		if err != nil {
			return fmt.Errorf("mtls: no SVID of our own to compare trust domains: %w", err)
		}
		if !id.MemberOf(own.ID.TrustDomain()) {
			return errors.New("mtls: client certificate " + id.String() + " is not of trust domain " + own.ID.TrustDomain().String())
		}
		return nil
	}
}
