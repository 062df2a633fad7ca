package mtls_test

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/securepay/securepay/services/mtls"
)

// BenchmarkCall measures what mTLS and the policy add to one internal unary call over a
// pooled HTTP/2 connection, against the same handler in cleartext HTTP/2 (h2c), which
// production never serves. Connect protocol, parallel callers.
func BenchmarkCall(b *testing.B) {
	ca := newDevCA(b, mtls.DefaultTrustDomain, time.Now)
	b.Run("h2c-no-policy", func(b *testing.B) {
		url := startPlainServer(b)
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		runCalls(b, &http.Client{Transport: &http.Transport{Protocols: &p}}, url)
	})
	b.Run("mtls-policy", func(b *testing.B) {
		ts := startServer(b, devSource(b, ca, ids.Payments), testPolicy(b))
		runCalls(b, mtls.HTTPClient(devSource(b, ca, ids.Gateway), ids.Payments), ts.URL)
	})
	b.Run("mtls-policy-new-connection-per-call", func(b *testing.B) {
		ts := startServer(b, devSource(b, ca, ids.Payments), testPolicy(b))
		hc := mtls.HTTPClient(devSource(b, ca, ids.Gateway), ids.Payments)
		ctx := context.Background()
		b.ResetTimer()
		for b.Loop() {
			if code, _, err := transfer(ctx, hc, ts.URL); code != 0 {
				b.Fatal(err)
			}
			hc.CloseIdleConnections()
		}
	})
}

func runCalls(b *testing.B, hc *http.Client, url string) {
	ctx := context.Background()
	if code, _, err := transfer(ctx, hc, url); code != 0 { // connect before timing
		b.Fatal(err)
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if code, _, err := transfer(ctx, hc, url); code != 0 {
				b.Error(err)
				return
			}
		}
	})
}

// startPlainServer serves the test handlers in h2c with a fixed caller in the context,
// the baseline without TLS or policy.
func startPlainServer(b *testing.B) string {
	b.Helper()
	ts := &testServer{Svc: &payments{}}
	mux := http.NewServeMux()
	handle(mux, ts.Svc)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	p.SetHTTP1(true)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mux.ServeHTTP(w, r.WithContext(mtls.WithCallerID(r.Context(), ids.Gateway)))
		}),
		Protocols:         &p,
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}
