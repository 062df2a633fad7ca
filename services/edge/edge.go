// Package edge is the contract between the gateway and the components behind it: the
// request headers in which the gateway states who a request acts for and which
// correlation id it carries, and the functions a component uses to read them.
//
// The headers are assertions by the gateway, not by the client: the gateway deletes any
// copy a client sent and sets its own after authenticating the token. A component must
// believe them only on a connection whose mTLS peer is the gateway's SPIFFE ID (the
// component's own authoriser decides that and passes the answer in as fromGateway); on
// any other connection they are ignored, so a client that reaches a component directly
// cannot choose its actor.
package edge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/securepay/securepay/services/mtls"
)

// Header names. Each carries one value; the gateway always overwrites what the client
// sent.
const (
	// PrincipalHeader names the authenticated principal: the token's subject as the
	// issuer wrote it, so it matches what an auditor finds in the identity provider.
	PrincipalHeader = "Securepay-Principal"
	// CorrelationHeader carries the correlation id: taken from the client's
	// X-Request-Id/Correlation-Id when valid, else assigned by the gateway.
	CorrelationHeader = "Securepay-Correlation-Id"
)

// Client-side headers the gateway accepts a correlation id from, in order of preference.
var clientCorrelationHeaders = []string{"X-Correlation-Id", "X-Request-Id"}

// MaxValueBytes bounds a principal or a correlation id: both are recorded in every event's
// metadata, so they must be short, printable and unambiguous.
const MaxValueBytes = 128

// Valid reports whether v may be a principal or correlation id: 1..MaxValueBytes visible
// ASCII characters. Identity providers' subjects (UUIDs, e-mail addresses, "service-account-x")
// all fit; anything else is refused at the edge instead of being mangled.
func Valid(v string) bool {
	if v == "" || len(v) > MaxValueBytes {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] <= ' ' || v[i] > '~' {
			return false
		}
	}
	return true
}

// Identity is what the gateway asserts about a request.
type Identity struct {
	Principal     string // the authenticated subject; "" when absent or not trusted
	CorrelationID string // "" when absent or not trusted
}

// Read returns the identity the gateway asserted in h, or the zero Identity when the
// request did not come from the gateway (fromGateway false) or carries malformed values.
func Read(h http.Header, fromGateway bool) Identity {
	if !fromGateway {
		return Identity{}
	}
	var id Identity
	if p := h.Get(PrincipalHeader); Valid(p) {
		id.Principal = p
	}
	if c := h.Get(CorrelationHeader); Valid(c) {
		id.CorrelationID = c
	}
	return id
}

// Set writes id into h, replacing whatever a client put there. The gateway calls it on
// every forwarded request.
func Set(h http.Header, id Identity) {
	h.Del(PrincipalHeader)
	h.Del(CorrelationHeader)
	if id.Principal != "" {
		h.Set(PrincipalHeader, id.Principal)
	}
	if id.CorrelationID != "" {
		h.Set(CorrelationHeader, id.CorrelationID)
	}
}

// CorrelationFromClient returns a correlation id the client offered, or a new one. A
// client's id is kept only if Valid, so a log line or event never holds what a client
// smuggled in (newlines, kilobytes).
func CorrelationFromClient(h http.Header) string {
	for _, name := range clientCorrelationHeaders {
		if v := strings.TrimSpace(h.Get(name)); Valid(v) {
			return v
		}
	}
	return NewCorrelationID()
}

// NewCorrelationID returns a random id: "c-" and 32 hex digits.
func NewCorrelationID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	// Built in place: one allocation (the string) per request instead of three.
	var id [2 + 2*len(b)]byte
	id[0], id[1] = 'c', '-'
	hex.Encode(id[2:], b[:])
	return string(id[:])
}

// Funcs returns the two functions a component's services.Config takes (Caller and
// CorrelationID), given how the component learns that a request came from the gateway
// (for example: its mTLS peer's SPIFFE ID, which the component's middleware put in ctx).
// A request that did not come from the gateway acts as fallback (the component's own name
// for a direct internal caller); one from the gateway without a principal acts as
// "unauthenticated", which no event should ever carry and which is easy to find if one does.
func Funcs(fromGateway func(ctx context.Context) bool, fallback string) (
	caller func(ctx context.Context, h http.Header) string,
	correlation func(ctx context.Context, h http.Header) string,
) {
	caller = func(ctx context.Context, h http.Header) string {
		if !fromGateway(ctx) {
			return fallback
		}
		if id := Read(h, true); id.Principal != "" {
			return id.Principal
		}
		return "unauthenticated"
	}
	correlation = func(ctx context.Context, h http.Header) string {
		return Read(h, fromGateway(ctx)).CorrelationID
	}
	return caller, correlation
}

// TrustGateway is the fromGateway of Funcs for a component served behind
// mtls.Policy.Handler: a request came from the gateway when its verified mTLS peer is
// gatewayID. Over any other connection (another component, a test client, no client
// certificate) the edge headers are ignored.
func TrustGateway(gatewayID spiffeid.ID) func(ctx context.Context) bool {
	return func(ctx context.Context) bool {
		id, ok := mtls.CallerID(ctx)
		return ok && id == gatewayID
	}
}

// ForComponent is what a component behind mtls.Policy.Handler plugs into
// services.Config (Caller, CorrelationID): a request from gatewayID acts for the
// principal the gateway asserted; one from any other component acts as that component's
// SPIFFE ID, whatever headers it sent; one with no mTLS peer (which the policy already
// refused) as "anonymous".
func ForComponent(gatewayID spiffeid.ID) (
	caller func(ctx context.Context, h http.Header) string,
	correlation func(ctx context.Context, h http.Header) string,
) {
	fromGateway := TrustGateway(gatewayID)
	gw, corr := Funcs(fromGateway, "anonymous")
	caller = func(ctx context.Context, h http.Header) string {
		if peer, ok := mtls.CallerID(ctx); ok && peer != gatewayID {
			return peer.String()
		}
		return gw(ctx, h)
	}
	return caller, corr
}
