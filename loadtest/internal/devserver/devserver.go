// Package devserver runs what `securepay dev` runs — the ledger on the embedded store,
// in-memory views and the API over cleartext HTTP/2 — inside a test, on a loopback port,
// for the load generator's and the bank checker's own tests.
package devserver

import (
	"context"
	"net"
	"testing"

	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/projections/memory"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/ledger"
)

// Start runs a server until the test ends and returns its http:// URL.
func Start(t testing.TB) string {
	t.Helper()
	store, err := embedded.Open(t.TempDir(), embedded.Options{})
	if err != nil {
		t.Fatalf("open the embedded store: %v", err)
	}
	proc, err := ledger.New(store, ledger.Config{})
	if err != nil {
		t.Fatalf("start the processor: %v", err)
	}
	views := memory.New(0)
	runner, err := projections.NewRunner(projections.RunnerConfig{Store: store, Projectors: views.Projectors()})
	if err != nil {
		t.Fatalf("projections: %v", err)
	}
	srv, err := services.NewServer(services.Config{
		Commands: proc, Reader: views.Reader(), Store: store,
		Idempotency: services.NewMemoryIdempotencyStore(0, nil), AllowH2C: true,
	})
	if err != nil {
		t.Fatalf("new server: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { _ = runner.Run(ctx); done <- struct{}{} }()
	go func() { _ = srv.Serve(ctx, ln); done <- struct{}{} }()
	t.Cleanup(func() {
		cancel()
		<-done
		<-done
		proc.Close()
		store.Close()
	})
	return "http://" + ln.Addr().String()
}
