// Package mtlstest checks a running component against its declared mTLS policy: the
// authorisation matrix of issue 9, reusable by every component's tests.
package mtlstest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/securepay/securepay/services/mtls"
)

// Matrix describes a component served with [mtls.ServerTLS] and [mtls.Policy.Handler],
// whose SVID CA issued.
type Matrix struct {
	URL    string      // the component's base URL, https://host:port
	Server spiffeid.ID // the component's SPIFFE ID
	CA     *mtls.DevCA // issued the component's SVID; issues the callers' SVIDs
	Policy mtls.Policy // what the component declares
	// Served lists every procedure the component serves; those the policy omits must be
	// refused to everyone. The policy's own procedures are always checked.
	Served []string
	// Callers default to the well-known IDs of the policy's trust domain.
	Callers []spiffeid.ID
	// ServerStreams lists served procedures that are server streams, in addition to those
	// the global protobuf registry describes as such (every generated service linked into
	// the test binary). A stream is called as a stream in every protocol: over Connect a
	// server stream has its own content type, and a unary call to it is answered 415 by
	// the handler, which cannot be told from a refusal.
	ServerStreams []string
	// CallTimeout bounds one call (default 5s). A call still running when it ends has
	// passed the policy: refusals are immediate, and a stream the handler keeps open is
	// an allowed call.
	CallTimeout time.Duration
}

// Mismatch is one outcome that differs from the policy.
type Mismatch struct {
	Caller, Procedure, Protocol string
	Want, Got                   string
}

func (m Mismatch) String() string {
	return fmt.Sprintf("%s → %s over %s: want %s, got %s", m.Caller, m.Procedure, m.Protocol, m.Want, m.Got)
}

// Protocol is one of the wire protocols a Connect server speaks, as client options.
type Protocol struct {
	Name    string
	Options []connect.ClientOption
}

// Protocols are Connect, gRPC and gRPC-web: every refusal must be readable in each.
func Protocols() []Protocol {
	return []Protocol{
		{"connect", nil},
		{"grpc", []connect.ClientOption{connect.WithGRPC()}},
		{"grpc-web", []connect.ClientOption{connect.WithGRPCWeb()}},
	}
}

// Run reports every mismatch as a test error.
func (m Matrix) Run(t *testing.T) {
	t.Helper()
	mismatches, err := m.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, mm := range mismatches {
		t.Error(mm)
	}
}

// Check calls every procedure as every caller in every protocol, with an empty request
// (the policy decides before the request is read), unary procedures as unary calls and
// server streams as streams, and then as the hostile callers: a
// foreign trust domain, an impostor CA of our trust domain's name, no client certificate,
// and plaintext. It returns the outcomes that differ from the policy.
func (m Matrix) Check(ctx context.Context) ([]Mismatch, error) {
	if m.URL == "" || m.Server.IsZero() || m.CA == nil {
		return nil, errors.New("mtlstest: URL, Server and CA are required")
	}
	if m.CallTimeout == 0 {
		m.CallTimeout = 5 * time.Second
	}
	callers := m.Callers
	if len(callers) == 0 {
		callers = mtls.WellKnownIDs(m.Policy.TrustDomain()).All()
	}
	procs := slices.Clone(m.Served)
	for _, p := range m.Policy.Procedures() {
		if !slices.Contains(procs, p) {
			procs = append(procs, p)
		}
	}
	slices.Sort(procs)
	if len(procs) == 0 {
		return nil, errors.New("mtlstest: no procedures to check")
	}

	var out []Mismatch
	for _, caller := range callers {
		src, err := m.CA.Source(caller)
		if err != nil {
			return nil, err
		}
		hc := mtls.HTTPClient(src, m.Server)
		for _, proc := range procs {
			want := "refused by the policy"
			if m.Policy.Allowed(proc, caller) {
				want = "passed the policy"
			}
			for _, p := range Protocols() {
				if got := m.outcome(ctx, hc, proc, p.Options); got != want {
					out = append(out, Mismatch{caller.String(), proc, p.Name, want, got})
				}
			}
		}
		hc.CloseIdleConnections()
	}

	hostile, err := m.hostileClients()
	if err != nil {
		return nil, err
	}
	for _, h := range hostile {
		for _, proc := range m.Policy.Procedures() {
			for _, p := range Protocols() {
				if got := m.outcome(ctx, h.client, proc, p.Options); got != h.want {
					out = append(out, Mismatch{h.name, proc, p.Name, h.want, got})
				}
			}
		}
	}
	return out, nil
}

// Outcomes of one call.
const (
	passed          = "passed the policy"
	refusedByPolicy = "refused by the policy"
	unauthenticated = "refused as unauthenticated"
	noConnection    = "refused before any request (handshake or protocol)"
)

// IsServerStream reports whether proc ("/package.Service/Method") is a server-streaming
// method of a service in the global protobuf registry.
func IsServerStream(proc string) bool {
	service, method, ok := strings.Cut(strings.TrimPrefix(proc, "/"), "/")
	if !ok {
		return false
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return false
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return false
	}
	md := sd.Methods().ByName(protoreflect.Name(method))
	return md != nil && md.IsStreamingServer() && !md.IsStreamingClient()
}

func (m Matrix) outcome(ctx context.Context, hc connect.HTTPClient, proc string, opts []connect.ClientOption) string {
	ctx, cancel := context.WithTimeout(ctx, m.CallTimeout)
	defer cancel()
	c := connect.NewClient[emptypb.Empty, emptypb.Empty](hc, strings.TrimRight(m.URL, "/")+proc, opts...)
	var err error
	if slices.Contains(m.ServerStreams, proc) || IsServerStream(proc) {
		err = callStream(ctx, c)
	} else {
		_, err = c.CallUnary(ctx, connect.NewRequest(&emptypb.Empty{}))
	}
	var cerr *connect.Error
	switch {
	case err == nil:
		return passed
	case ctx.Err() != nil:
		return passed // still running at the bound: a stream the handler keeps open
	case !errors.As(err, &cerr):
		return "unexpected error: " + err.Error()
	case !connect.IsWireError(err):
		// Synthesized by the client: the connection failed, or the answer was not a
		// Connect response (a TLS port answering plaintext).
		return noConnection
	case strings.HasPrefix(cerr.Message(), "mtls: ") && cerr.Code() == connect.CodePermissionDenied:
		return refusedByPolicy
	case strings.HasPrefix(cerr.Message(), "mtls: ") && cerr.Code() == connect.CodeUnauthenticated:
		return unauthenticated
	default:
		return passed // the handler answered (an empty request is usually invalid)
	}
}

// callStream opens a server stream and waits for its first message or its end: a refusal
// arrives as the stream's error, in the headers or the end of the stream, whatever the
// protocol.
func callStream(ctx context.Context, c *connect.Client[emptypb.Empty, emptypb.Empty]) error {
	s, err := c.CallServerStream(ctx, connect.NewRequest(&emptypb.Empty{}))
	if err != nil {
		return err
	}
	defer s.Close()
	if s.Receive() {
		return nil // a message: the handler serves this caller
	}
	return s.Err()
}

type hostileClient struct {
	name   string
	client connect.HTTPClient
	want   string
}

func (m Matrix) hostileClients() ([]hostileClient, error) {
	td := m.Policy.TrustDomain()
	foreignTD := spiffeid.RequireTrustDomainFromString("foreign.invalid")
	foreignCA, err := mtls.NewDevCA(foreignTD, time.Hour, time.Now)
	if err != nil {
		return nil, err
	}
	impostorCA, err := mtls.NewDevCA(td, time.Hour, time.Now)
	if err != nil {
		return nil, err
	}
	ids := mtls.WellKnownIDs(td)
	foreignSrc, err := foreignCA.Source(spiffeid.RequireFromPath(foreignTD, ids.Gateway.Path()))
	if err != nil {
		return nil, err
	}
	impostorSrc, err := impostorCA.Source(ids.Gateway)
	if err != nil {
		return nil, err
	}
	bundle := m.CA.Bundle()
	authorize := tlsconfig.AuthorizeID(m.Server)
	var h2, h2c http.Protocols
	h2.SetHTTP2(true)
	h2c.SetUnencryptedHTTP2(true)
	over := func(cfg *tls.Config) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, Protocols: &h2}}
	}
	return []hostileClient{
		// Both trust our CA for the server, so only the server can refuse them.
		{"foreign trust domain", over(tlsconfig.MTLSClientConfig(foreignSrc, bundle, authorize)), noConnection},
		{"impostor CA of " + td.String(), over(tlsconfig.MTLSClientConfig(impostorSrc, bundle, authorize)), noConnection},
		{"no client certificate", over(tlsconfig.TLSClientConfig(bundle, authorize)), unauthenticated},
		{"plaintext HTTP/2", plainClient{&http.Client{Transport: &http.Transport{Protocols: &h2c}}}, noConnection},
	}, nil
}

// plainClient sends the call in plaintext to the same port.
type plainClient struct{ c *http.Client }

func (p plainClient) Do(r *http.Request) (*http.Response, error) {
	u := *r.URL
	u.Scheme = "http"
	r2 := r.Clone(r.Context())
	r2.URL = &u
	return p.c.Do(r2)
}
