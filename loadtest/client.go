package loadtest

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/internal/coalesce"
)

// Target is the server a load or a check talks to, and how.
type Target struct {
	// Server is https://HOST:PORT (TLS) or http://HOST:PORT (cleartext, `securepay dev`).
	// Only loopback hosts are accepted: these tools load this machine and nothing else.
	Server string
	// HTTP1 speaks HTTP/1.1 (one request per connection at a time) instead of HTTP/2, for
	// comparison; over http:// it is plain HTTP/1.1, otherwise h2c.
	HTTP1 bool
	// GRPC uses the gRPC protocol instead of Connect's.
	GRPC bool
	// CAFile holds the PEM roots that signed an https:// server's certificate (default:
	// the system's).
	CAFile string
	// TokenFile holds a bearer token sent as "Authorization: Bearer TOKEN" with every
	// request (for a server behind the gateway); "" sends none.
	TokenFile string
	// Token is a bearer token given directly, for callers that mint their own (the bank
	// test's principals); it wins over TokenFile.
	Token string
	// Conns is how many HTTP/2 connections the callers share, round robin (one
	// connection serialises every frame through one writer on each side). For HTTP/1.1
	// it is ignored: every concurrent request has a connection of its own.
	Conns int
	// Wrap, when set, wraps each connection's transport: the bank test uses it to send
	// each procedure to the component process that serves it.
	Wrap func(http.RoundTripper) http.RoundTripper
}

// Clients are the generated Connect clients of every service, over one transport each for
// Conns connections.
type Clients struct {
	Payments []ledgerv1connect.PaymentServiceClient // one per connection
	Accounts ledgerv1connect.AccountServiceClient
	Balances []ledgerv1connect.BalanceServiceClient // one per connection
	Audit    ledgerv1connect.AuditServiceClient
}

// CheckLoopback refuses a server URL whose host is not this machine.
func CheckLoopback(server string) error {
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("server must be an http:// or https:// URL with a host, got %q", server)
	}
	if IsLoopbackHost(u.Hostname()) {
		return nil
	}
	return fmt.Errorf("server %s is not on loopback (127.0.0.1, ::1 or localhost): load and fault tools only run against this machine", server)
}

// IsLoopbackHost says whether host (a name or an IP address) is this machine.
func IsLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Dial builds the clients. It opens no connection: the first request does.
func (t Target) Dial() (*Clients, error) {
	if err := CheckLoopback(t.Server); err != nil {
		return nil, err
	}
	if t.Conns < 1 || t.Conns > 256 {
		return nil, fmt.Errorf("connections must be in 1..256, got %d", t.Conns)
	}
	token := t.Token
	if token == "" && t.TokenFile != "" {
		b, err := os.ReadFile(t.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("read the token file: %w", err)
		}
		token = strings.TrimSpace(string(b))
		if token == "" || strings.ContainsAny(token, " \r\n\t") {
			return nil, fmt.Errorf("the token file %s must hold one token on one line", t.TokenFile)
		}
	}
	newTransport, err := t.transportFactory()
	if err != nil {
		return nil, err
	}
	var opts []connect.ClientOption
	if t.GRPC {
		opts = append(opts, connect.WithGRPC())
	}
	base := strings.TrimRight(t.Server, "/")
	client := func() *http.Client {
		var rt http.RoundTripper = newTransport()
		if t.Wrap != nil {
			rt = t.Wrap(rt)
		}
		if token != "" {
			rt = bearer{token: "Bearer " + token, next: rt}
		}
		return &http.Client{Transport: rt}
	}
	c := &Clients{}
	conns := t.Conns
	if t.HTTP1 {
		conns = 1 // one pool of connections, as many as there are callers
	}
	for range conns {
		hc := client()
		c.Payments = append(c.Payments, ledgerv1connect.NewPaymentServiceClient(hc, base, opts...))
		c.Balances = append(c.Balances, ledgerv1connect.NewBalanceServiceClient(hc, base, opts...))
	}
	hc := client()
	c.Accounts = ledgerv1connect.NewAccountServiceClient(hc, base, opts...)
	c.Audit = ledgerv1connect.NewAuditServiceClient(hc, base, opts...)
	return c, nil
}

func (t Target) transportFactory() (func() *http.Transport, error) {
	var p http.Protocols
	var tlsConfig *tls.Config
	switch {
	case strings.HasPrefix(t.Server, "https://"):
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		if t.CAFile != "" {
			pem, err := os.ReadFile(t.CAFile)
			if err != nil {
				return nil, fmt.Errorf("read the CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("the CA file %s holds no PEM certificate", t.CAFile)
			}
			tlsConfig.RootCAs = pool
		}
		if t.HTTP1 {
			p.SetHTTP1(true)
		} else {
			p.SetHTTP2(true)
		}
	case t.HTTP1:
		p.SetHTTP1(true)
	default:
		p.SetUnencryptedHTTP2(true)
	}
	// HTTP/2 multiplexes every caller of a client on one connection, and Go's transport
	// makes a write system call per frame: coalescing them keeps the load generator's
	// own CPU (it shares the machine with what it measures) from growing with them.
	// HTTP/1.1 has one call per connection at a time and nothing to gather.
	dial := (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	if !t.HTTP1 {
		dial = coalesce.Dial(dial, coalesce.Options{})
	}
	return func() *http.Transport {
		return &http.Transport{
			Protocols:       &p,
			DialContext:     dial,
			TLSClientConfig: tlsConfig.Clone(),
			// HTTP/1.1 needs a connection per concurrent caller; keep them all open.
			MaxIdleConns:        4096,
			MaxIdleConnsPerHost: 4096,
		}
	}, nil
}

// bearer adds the Authorization header to every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", b.token)
	return b.next.RoundTrip(r)
}

// errNoToken is what a run reports when the server wants a token and none was given.
var errNoToken = errors.New("the server refused the call as unauthenticated: give a bearer token with --token-file")
