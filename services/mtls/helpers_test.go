package mtls_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services/mtls"
)

var (
	td  = spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)
	ids = mtls.WellKnownIDs(td)
)

const (
	transferProc   = ledgerv1connect.PaymentServiceTransferProcedure
	getAccountProc = ledgerv1connect.AccountServiceGetAccountProcedure // served, absent from the policy
)

// testPolicy is the payments component's shape in small: only the gateway may transfer,
// and a served procedure missing from the table is denied to everyone.
func testPolicy(t testing.TB) mtls.Policy {
	t.Helper()
	p, err := mtls.NewPolicy(td, map[string][]spiffeid.ID{transferProc: {ids.Gateway}})
	if err != nil {
		t.Fatalf("NewPolicy: %v", err)
	}
	return p
}

// payments answers Transfer and GetAccount, echoing the caller's SPIFFE ID in a header so
// tests can see what the handler saw.
type payments struct {
	ledgerv1connect.UnimplementedPaymentServiceHandler
	ledgerv1connect.UnimplementedAccountServiceHandler
	mu    sync.Mutex
	calls int
}

func (p *payments) Transfer(ctx context.Context, _ *connect.Request[ledgerv1.TransferRequest]) (*connect.Response[ledgerv1.TransferResponse], error) {
	res := connect.NewResponse(&ledgerv1.TransferResponse{})
	return res, p.seen(ctx, res.Header())
}

func (p *payments) GetAccount(ctx context.Context, _ *connect.Request[ledgerv1.GetAccountRequest]) (*connect.Response[ledgerv1.GetAccountResponse], error) {
	res := connect.NewResponse(&ledgerv1.GetAccountResponse{})
	return res, p.seen(ctx, res.Header())
}

func (p *payments) seen(ctx context.Context, h http.Header) error {
	p.mu.Lock()
	p.calls++
	n := p.calls
	p.mu.Unlock()
	h.Set("Test-Handled", strconv.Itoa(n))
	id, ok := mtls.CallerID(ctx)
	if !ok {
		return connect.NewError(connect.CodeInternal, errors.New("test handler: no caller ID in the context"))
	}
	h.Set("Test-Caller", id.String())
	return nil
}

func (p *payments) handled() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls
}

// testServer serves payments behind the policy with ServerTLS on a loopback port, and
// counts accepted TLS connections. It returns the base URL.
type testServer struct {
	URL   string
	Svc   *payments
	srv   *http.Server
	mu    sync.Mutex
	conns int
}

func startServer(t testing.TB, src mtls.Source, policy mtls.Policy) *testServer {
	t.Helper()
	ts, err := serveTest(src, policy)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ts.srv.Close() })
	return ts
}

// serveTest is startServer without a testing.TB, for the SPIRE tests' server process.
func serveTest(src mtls.Source, policy mtls.Policy) (*testServer, error) {
	ts := &testServer{Svc: &payments{}}
	mux := http.NewServeMux()
	handle(mux, ts.Svc)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ts.srv = &http.Server{
		Handler:           policy.Handler(mux),
		TLSConfig:         mtls.ServerTLS(src),
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				ts.mu.Lock()
				ts.conns++
				ts.mu.Unlock()
			}
		},
		ErrorLog: discardLog(),
	}
	go func() { _ = ts.srv.ServeTLS(ln, "", "") }()
	ts.URL = "https://" + ln.Addr().String()
	return ts, nil
}

func handle(mux *http.ServeMux, svc *payments) {
	mux.Handle(ledgerv1connect.NewPaymentServiceHandler(svc))
	mux.Handle(ledgerv1connect.NewAccountServiceHandler(svc))
}

func (ts *testServer) connections() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.conns
}

// transfer makes one Transfer call with the given client and protocol and returns the
// Connect code (0 for success) and the caller ID the handler saw.
func transfer(ctx context.Context, hc connect.HTTPClient, url string, opts ...connect.ClientOption) (connect.Code, string, error) {
	c := ledgerv1connect.NewPaymentServiceClient(hc, url, opts...)
	res, err := c.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{}))
	if err != nil {
		return connect.CodeOf(err), "", err
	}
	return 0, res.Header().Get("Test-Caller"), nil
}

// serialRecorder wraps a client TLS configuration to record the serial of every server
// certificate seen at a handshake.
type serialRecorder struct {
	mu         sync.Mutex
	serials    map[string]bool
	handshakes int
}

func (r *serialRecorder) wrap(cfg *tls.Config) *tls.Config {
	next := cfg.VerifyPeerCertificate
	cfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if err := next(raw, chains); err != nil {
			return err
		}
		leaf, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return err
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.serials == nil {
			r.serials = map[string]bool{}
		}
		r.serials[leaf.SerialNumber.String()] = true
		r.handshakes++
		return nil
	}
	return cfg
}

func (r *serialRecorder) saw(serial string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.serials[serial]
}

// h2Client is an HTTP/2-over-TLS client with a caller-built TLS configuration, for the
// cases HTTPClient deliberately cannot express (no client certificate, a recorder).
func h2Client(cfg *tls.Config) *http.Client {
	var p http.Protocols
	p.SetHTTP2(true)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true, Protocols: &p}}
}

func serialOf(t testing.TB, src mtls.Source) string {
	t.Helper()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatalf("GetX509SVID: %v", err)
	}
	return svid.Certificates[0].SerialNumber.String()
}

func (r *serialRecorder) stats() (serials, handshakes int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.serials), r.handshakes
}
