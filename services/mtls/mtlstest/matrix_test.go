package mtlstest_test

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/emptypb"

	// Linked in so that the registry describes the ledger's streams (IsServerStream).
	_ "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/services/mtls"
	"github.com/securepay/securepay/services/mtls/mtlstest"
)

const (
	transfer = "/securepay.ledger.v1.PaymentService/Transfer"
	freeze   = "/securepay.ledger.v1.AccountService/FreezeAccount"
	getAcct  = "/securepay.ledger.v1.AccountService/GetAccount"
	// watch is served as a server stream only: the matrix must call it as one.
	watch = "/securepay.test.v1.WatchService/Watch"
)

var served = []string{transfer, freeze, getAcct, watch}

// serve answers every unary procedure with an empty message, and watch with a stream of
// one empty message, behind wrap, over ServerTLS.
func serve(t *testing.T, src mtls.Source, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	mux := http.NewServeMux()
	for _, proc := range []string{transfer, freeze, getAcct} {
		mux.Handle(proc, connect.NewUnaryHandler(proc, func(context.Context, *connect.Request[emptypb.Empty]) (*connect.Response[emptypb.Empty], error) {
			return connect.NewResponse(&emptypb.Empty{}), nil
		}))
	}
	mux.Handle(watch, connect.NewServerStreamHandler(watch, func(_ context.Context, _ *connect.Request[emptypb.Empty], s *connect.ServerStream[emptypb.Empty]) error {
		return s.Send(&emptypb.Empty{})
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: wrap(mux), TLSConfig: mtls.ServerTLS(src), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: log.New(io.Discard, "", 0)} // the hostile handshakes fail on purpose
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	return "https://" + ln.Addr().String()
}

func setup(t *testing.T) (*mtls.DevCA, mtls.IDs, mtls.Policy, mtls.Source) {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)
	ca, err := mtls.NewDevCA(td, time.Hour, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	ids := mtls.WellKnownIDs(td)
	policy, err := mtls.NewPolicy(td, map[string][]spiffeid.ID{
		transfer: {ids.Gateway},
		freeze:   {ids.Gateway, ids.Relay},
		watch:    {ids.Gateway},
	})
	if err != nil {
		t.Fatal(err)
	}
	src, err := ca.Source(ids.Payments)
	if err != nil {
		t.Fatal(err)
	}
	return ca, ids, policy, src
}

// TestMatrixPassesAWellWiredComponent: every caller × procedure × protocol and every
// hostile caller agree with the policy when the policy wraps everything served.
func TestMatrixPassesAWellWiredComponent(t *testing.T) {
	ca, ids, policy, src := setup(t)
	url := serve(t, src, policy.Handler)
	mtlstest.Matrix{URL: url, Server: ids.Payments, CA: ca, Policy: policy, Served: served, ServerStreams: []string{watch}}.Run(t)
}

// TestMatrixCallsStreamsAsStreams: a server stream is called as a stream in every protocol.
// Called as unary, the Connect protocol's stream handler answers 415 to the gateway, whom
// the policy allows, which the matrix would have to read as a refusal.
func TestMatrixCallsStreamsAsStreams(t *testing.T) {
	ca, ids, policy, src := setup(t)
	url := serve(t, src, policy.Handler)
	m := mtlstest.Matrix{URL: url, Server: ids.Payments, CA: ca, Policy: policy, Served: served, Callers: []spiffeid.ID{ids.Gateway}}
	got, err := m.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Procedure != watch || got[0].Protocol != "connect" || got[0].Want != "passed the policy" {
		t.Fatalf("watch not declared a stream: want exactly one mismatch, the gateway's Connect call of %s read as refused (what a unary call meets), got %v", watch, got)
	}
	m.ServerStreams = []string{watch}
	if got, err = m.Check(context.Background()); err != nil || len(got) != 0 {
		t.Fatalf("watch declared a stream: want no mismatch, got %v %v", got, err)
	}
	// The registry knows the generated services' streams without being told.
	for proc, want := range map[string]bool{
		"/securepay.ledger.v1.BalanceService/WatchAccount": true,
		"/securepay.ledger.v1.AuditService/StreamLog":      true,
		"/securepay.ledger.v1.BalanceService/GetBalance":   false,
		"/securepay.ledger.v1.NoSuchService/Watch":         false,
		"not a procedure": false,
	} {
		if got := mtlstest.IsServerStream(proc); got != want {
			t.Errorf("IsServerStream(%q) = %v, want %v", proc, got, want)
		}
	}
}

// TestMatrixCatchesMiswiring: the mistakes the matrix exists for are reported, not
// passed — the policy left out of the handler chain, and a different table enforced
// than the one declared.
func TestMatrixCatchesMiswiring(t *testing.T) {
	ca, ids, policy, src := setup(t)
	looser, err := mtls.NewPolicy(policy.TrustDomain(), map[string][]spiffeid.ID{
		transfer: {ids.Gateway, ids.Queries},
		freeze:   {ids.Gateway, ids.Relay},
		watch:    {ids.Gateway},
	})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		wrap func(http.Handler) http.Handler
		// 6 callers x 4 procedures, 4 of them allowed, x 3 protocols; plus the caller
		// without a certificate on the 3 declared procedures x 3 protocols.
		want int
	}{
		{"no policy in front of the handlers", func(h http.Handler) http.Handler { return h }, 20*3 + 3*3},
		{"another table enforced", looser.Handler, 3}, // queries -> Transfer
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			url := serve(t, src, c.wrap)
			got, err := mtlstest.Matrix{URL: url, Server: ids.Payments, CA: ca, Policy: policy, Served: served, ServerStreams: []string{watch}}.Check(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != c.want {
				for _, m := range got {
					t.Log(m)
				}
				t.Fatalf("the matrix found %d mismatches, want %d", len(got), c.want)
			}
		})
	}
}
