package coalesce_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/securepay/securepay/internal/coalesce"
)

// selfSigned is a certificate for 127.0.0.1 and the pool that trusts it.
func selfSigned(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// maxStreams is the server's bound on concurrent streams per connection: a client
// with more calls in flight opens another connection.
const maxStreams = 250

// h2Pair serves an echo handler over HTTP/2 and TLS on a coalescing listener and returns
// its URL and a client that dials coalescing connections, as the load generator and the
// gateway do. served counts the server's connections.
func h2Pair(t testing.TB, wrapServer, wrapClient bool) (url string, client *http.Client, served *atomic.Int64) {
	t.Helper()
	cert, pool := selfSigned(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if wrapServer {
		ln = coalesce.Listener(ln, coalesce.Options{})
	}
	served = &atomic.Int64{}
	var protocols http.Protocols
	protocols.SetHTTP2(true)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ProtoMajor != 2 {
				http.Error(w, "want HTTP/2, got "+r.Proto, http.StatusBadRequest)
				return
			}
			if r.TLS == nil || r.TLS.NegotiatedProtocol != "h2" {
				http.Error(w, "ALPN did not negotiate h2", http.StatusBadRequest)
				return
			}
			_, _ = io.Copy(w, r.Body)
		}),
		Protocols:         &protocols,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
		ReadHeaderTimeout: 10 * time.Second,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: maxStreams,
			WriteByteTimeout:     10 * time.Second, SendPingTimeout: 5 * time.Second, PingTimeout: 5 * time.Second,
		},
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				served.Add(1)
			}
		},
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })

	dial := (&net.Dialer{Timeout: 5 * time.Second}).DialContext
	if wrapClient {
		dial = coalesce.Dial(dial, coalesce.Options{})
	}
	tr := &http.Transport{
		DialContext:       dial,
		TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13},
		Protocols:         &protocols,
		ForceAttemptHTTP2: true,
		HTTP2:             &http.HTTP2Config{WriteByteTimeout: 10 * time.Second, SendPingTimeout: 5 * time.Second, PingTimeout: 5 * time.Second},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return "https://" + ln.Addr().String(), &http.Client{Transport: tr}, served
}

// TestHTTP2OverTLS: many concurrent streams on one HTTP/2 connection over TLS, both ends
// coalescing, with bodies from empty to larger than the buffer, all come back intact.
func TestHTTP2OverTLS(t *testing.T) {
	url, client, served := h2Pair(t, true, true)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := echo(ctx, client, url, []byte("warm up")); err != nil { // one connection, then many streams on it
		t.Fatal(err)
	}
	sizes := []int{0, 1, 300, 16 << 10, 100 << 10, 1 << 20}
	var wg sync.WaitGroup
	const streams = maxStreams - 10 // all on the one connection
	errs := make(chan error, streams)
	for i := range streams {
		wg.Go(func() {
			body := bytes.Repeat([]byte{byte(i)}, sizes[i%len(sizes)])
			if err := echo(ctx, client, url, body); err != nil {
				errs <- fmt.Errorf("stream %d (%d bytes): %w", i, len(body), err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := served.Load(); n != 1 {
		t.Errorf("the server saw %d connections; want the streams multiplexed on 1", n)
	}
}

func echo(ctx context.Context, client *http.Client, url string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	switch {
	case err != nil:
		return fmt.Errorf("read the answer: %w", err)
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("status %d: %s", resp.StatusCode, got)
	case resp.ProtoMajor != 2:
		return fmt.Errorf("answered over %s, want HTTP/2", resp.Proto)
	case !bytes.Equal(got, body):
		return fmt.Errorf("echoed %d bytes, want the %d sent back", len(got), len(body))
	}
	return nil
}
