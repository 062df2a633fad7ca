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

	"github.com/securepay/securepay/services/mtls"
	"github.com/securepay/securepay/services/mtls/mtlstest"
)

const (
	transfer = "/securepay.ledger.v1.PaymentService/Transfer"
	freeze   = "/securepay.ledger.v1.AccountService/FreezeAccount"
	getAcct  = "/securepay.ledger.v1.AccountService/GetAccount"
)

// serve answers every procedure with an empty message, behind wrap, over ServerTLS.
func serve(t *testing.T, src mtls.Source, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	mux := http.NewServeMux()
	for _, proc := range []string{transfer, freeze, getAcct} {
		mux.Handle(proc, connect.NewUnaryHandler(proc, func(context.Context, *connect.Request[emptypb.Empty]) (*connect.Response[emptypb.Empty], error) {
			return connect.NewResponse(&emptypb.Empty{}), nil
		}))
	}
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
	mtlstest.Matrix{URL: url, Server: ids.Payments, CA: ca, Policy: policy, Served: []string{transfer, freeze, getAcct}}.Run(t)
}

// TestMatrixCatchesMiswiring: the mistakes the matrix exists for are reported, not
// passed — the policy left out of the handler chain, and a different table enforced
// than the one declared.
func TestMatrixCatchesMiswiring(t *testing.T) {
	ca, ids, policy, src := setup(t)
	looser, err := mtls.NewPolicy(policy.TrustDomain(), map[string][]spiffeid.ID{
		transfer: {ids.Gateway, ids.Queries},
		freeze:   {ids.Gateway, ids.Relay},
	})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		wrap func(http.Handler) http.Handler
		// 6 callers x 3 procedures, 3 of them allowed, x 3 protocols; plus the caller
		// without a certificate on the 2 declared procedures x 3 protocols.
		want int
	}{
		{"no policy in front of the handlers", func(h http.Handler) http.Handler { return h }, 15*3 + 2*3},
		{"another table enforced", looser.Handler, 3}, // queries -> Transfer
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			url := serve(t, src, c.wrap)
			got, err := mtlstest.Matrix{URL: url, Server: ids.Payments, CA: ca, Policy: policy, Served: []string{transfer, freeze, getAcct}}.Check(context.Background())
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
