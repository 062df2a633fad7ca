package mtls

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Policy is a component's authorisation table: for each procedure it serves
// ("/securepay.ledger.v1.PaymentService/Transfer"), the SPIFFE IDs that may call it.
// Everything else is denied: a procedure not in the table, a caller without a
// certificate, a caller from another trust domain, any ID not listed. The zero Policy
// denies everything.
type Policy struct {
	td    spiffeid.TrustDomain
	rules map[string][]spiffeid.ID // procedure -> allowed callers, sorted, no duplicates
}

// maxRuleIDs bounds one procedure's callers: a table is written by hand and a component
// has a handful of callers, so a longer list is a generated mistake, not a policy.
const maxRuleIDs = 64

// NewPolicy validates rules and returns the policy of a component of trust domain td.
// Every procedure must be a Connect procedure path ("/package.Service/Method") with at
// least one caller; every caller must be an ID of td, listed once. Listing a procedure
// with no callers is refused rather than read as "nobody": absence already means that.
func NewPolicy(td spiffeid.TrustDomain, rules map[string][]spiffeid.ID) (Policy, error) {
	if td.IsZero() {
		return Policy{}, errors.New("mtls policy: the trust domain is required")
	}
	if len(rules) == 0 {
		return Policy{}, errors.New("mtls policy: no procedures: a component that serves nothing needs no policy")
	}
	out := make(map[string][]spiffeid.ID, len(rules))
	for _, proc := range sortedKeys(rules) {
		if err := validateProcedure(proc); err != nil {
			return Policy{}, fmt.Errorf("mtls policy: %w", err)
		}
		ids := rules[proc]
		if len(ids) == 0 {
			return Policy{}, fmt.Errorf("mtls policy: %s lists no callers; leave it out of the table to deny it", proc)
		}
		if len(ids) > maxRuleIDs {
			return Policy{}, fmt.Errorf("mtls policy: %s lists %d callers, more than %d", proc, len(ids), maxRuleIDs)
		}
		allowed := make([]spiffeid.ID, 0, len(ids))
		for _, id := range ids {
			switch {
			case id.IsZero():
				return Policy{}, fmt.Errorf("mtls policy: %s lists an empty SPIFFE ID", proc)
			case !id.MemberOf(td):
				return Policy{}, fmt.Errorf("mtls policy: %s lists %s, which is not of trust domain %s", proc, id, td)
			case slices.Contains(allowed, id):
				return Policy{}, fmt.Errorf("mtls policy: %s lists %s twice", proc, id)
			}
			allowed = append(allowed, id)
		}
		slices.SortFunc(allowed, func(a, b spiffeid.ID) int { return strings.Compare(a.String(), b.String()) })
		out[proc] = allowed
	}
	return Policy{td: td, rules: out}, nil
}

func sortedKeys(m map[string][]spiffeid.ID) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// validateProcedure accepts "/package.Service/Method": the path Connect, gRPC and gRPC-web
// all use, and the one http.ServeMux routes on, so that the table and the routing cannot
// disagree about which procedure a request is.
func validateProcedure(proc string) error {
	service, method, ok := strings.Cut(strings.TrimPrefix(proc, "/"), "/")
	switch {
	case !strings.HasPrefix(proc, "/") || !ok:
		return fmt.Errorf("procedure %q must look like /package.Service/Method", proc)
	case service == "" || method == "" || strings.Contains(method, "/"):
		return fmt.Errorf("procedure %q must look like /package.Service/Method", proc)
	case !strings.Contains(service, "."):
		return fmt.Errorf("procedure %q: the service must be fully qualified (package.Service)", proc)
	}
	for _, r := range proc {
		if !(r == '/' || r == '.' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return fmt.Errorf("procedure %q contains %q; procedure names are letters, digits, '_' and '.'", proc, r)
		}
	}
	return nil
}

// TrustDomain is the trust domain the policy admits callers from.
func (p Policy) TrustDomain() spiffeid.TrustDomain { return p.td }

// Procedures lists the procedures the policy allows anyone to call, sorted.
func (p Policy) Procedures() []string {
	procs := make([]string, 0, len(p.rules))
	for proc := range p.rules {
		procs = append(procs, proc)
	}
	sort.Strings(procs)
	return procs
}

// Allowed reports whether caller may call procedure.
func (p Policy) Allowed(procedure string, caller spiffeid.ID) bool {
	return caller.MemberOf(p.td) && slices.Contains(p.rules[procedure], caller)
}

// Callers lists the IDs allowed to call procedure (none for an unknown procedure).
func (p Policy) Callers(procedure string) []spiffeid.ID {
	return slices.Clone(p.rules[procedure])
}

type callerKey struct{}

// CallerID is the SPIFFE ID of the authenticated caller of the current request, set by
// [Policy.Handler]; false outside it.
func CallerID(ctx context.Context) (spiffeid.ID, bool) {
	id, ok := ctx.Value(callerKey{}).(spiffeid.ID)
	return id, ok && !id.IsZero()
}

// WithCallerID returns ctx carrying id as the caller, for in-process tests of handlers
// that read [CallerID]; production requests get it from [Policy.Handler] only.
func WithCallerID(ctx context.Context, id spiffeid.ID) context.Context {
	return context.WithValue(ctx, callerKey{}, id)
}

// Handler enforces the policy in front of next, which must be served with [ServerTLS]
// (it relies on the handshake having verified the client certificate against the trust
// bundle). A refused call never reaches next and gets a Connect error in the protocol
// the client spoke (Connect, gRPC or gRPC-web): Unauthenticated without a verified
// client certificate (or over plaintext), PermissionDenied for a caller or procedure the
// table does not allow. An allowed call reaches next with the caller's ID in its context
// ([CallerID]).
func (p Policy) Handler(next http.Handler) http.Handler {
	errs := connect.NewErrorWriter()
	peers := &peerCache{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller, recycle, err := p.authorize(r, time.Now(), peers)
		if recycle {
			// A GOAWAY once this response's headers are written: calls in flight on
			// the connection finish, the next ones open a new connection with the
			// client's current SVID.
			w.Header().Set("Connection", "close")
		}
		if err != nil {
			_ = errs.Write(w, r, err) // a write error means the client has gone
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, caller.boxed)))
	})
}

// peer is what authorize learns from a client certificate: its SPIFFE ID, and the same ID
// boxed once as the context value [CallerID] reads, so that an allowed call costs no
// allocation for either.
type peer struct {
	id    spiffeid.ID
	boxed any
}

// peerCache remembers the SPIFFE ID of each client certificate seen, by the certificate's
// pointer: every request on one TLS connection carries the same parsed leaf, so the ID is
// read from its URI SAN once per connection instead of once per request (parsing it back
// from the URL was a string build and a validation per call). The ID of a certificate never
// changes, and an entry holds its certificate, so a pointer cannot be reused for another
// while it is cached. Everything else (the expiry, the policy) is still decided per request.
type peerCache struct {
	mu      sync.Mutex
	entries map[*x509.Certificate]peer
}

// maxPeerEntries bounds the cache: a component has a handful of callers, each on a few
// connections that a rotation replaces every half SVID lifetime. When full it starts over,
// which costs one parse per live connection.
const maxPeerEntries = 1024

func (c *peerCache) lookup(leaf *x509.Certificate) (peer, error) {
	c.mu.Lock()
	e, ok := c.entries[leaf]
	c.mu.Unlock()
	if ok {
		return e, nil
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return peer{}, err // not cached: a refused certificate is refused again, at full cost
	}
	e = peer{id: id, boxed: id}
	c.mu.Lock()
	if c.entries == nil || len(c.entries) >= maxPeerEntries {
		c.entries = make(map[*x509.Certificate]peer, 64)
	}
	c.entries[leaf] = e
	c.mu.Unlock()
	return e, nil
}

// recycleAt is the fraction of a client certificate's lifetime after which the server
// asks the client to reconnect. Sources rotate at half the lifetime (SPIRE and DevCA
// alike), so by three quarters the client has a fresh SVID for its new connection, and a
// quarter of the lifetime remains for calls already in flight.
const recycleAtNum, recycleAtDen = 3, 4

// authorize decides one request. recycle asks the client to reconnect: its certificate
// is late in its life, or it is being refused for an expired one.
func (p Policy) authorize(r *http.Request, now time.Time, peers *peerCache) (caller peer, recycle bool, err error) {
	if r.TLS == nil || !r.TLS.HandshakeComplete {
		return peer{}, false, connect.NewError(connect.CodeUnauthenticated,
			errors.New("mtls: plaintext call refused: internal calls use mutual TLS with an X.509-SVID"))
	}
	if len(r.TLS.PeerCertificates) == 0 {
		return peer{}, false, connect.NewError(connect.CodeUnauthenticated,
			fmt.Errorf("mtls: no client certificate: present an X.509-SVID of trust domain %s", p.td))
	}
	leaf := r.TLS.PeerCertificates[0]
	caller, err = peers.lookup(leaf)
	if err != nil {
		return peer{}, false, connect.NewError(connect.CodeUnauthenticated,
			fmt.Errorf("mtls: the client certificate is not an X.509-SVID: %v", err))
	}
	id := caller.id
	if now.After(leaf.NotAfter) {
		return peer{}, true, connect.NewError(connect.CodeUnauthenticated,
			fmt.Errorf("mtls: the client certificate of %s expired at %s; reconnect with the current SVID",
				id, leaf.NotAfter.UTC().Format(time.RFC3339)))
	}
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	recycle = !now.Before(leaf.NotBefore.Add(life / recycleAtDen * recycleAtNum))
	proc := r.URL.Path
	switch {
	case !id.MemberOf(p.td):
		// The handshake verifies against our own trust domain's bundle only; checked
		// again here so that a federated bundle source cannot widen the policy.
		return peer{}, recycle, connect.NewError(connect.CodePermissionDenied,
			fmt.Errorf("mtls: %s is not of trust domain %s", id, p.td))
	case p.rules[proc] == nil:
		return peer{}, recycle, connect.NewError(connect.CodePermissionDenied,
			fmt.Errorf("mtls: %s may not call %q: no caller may, here", id, clip(proc)))
	case !slices.Contains(p.rules[proc], id):
		return peer{}, recycle, connect.NewError(connect.CodePermissionDenied,
			fmt.Errorf("mtls: %s may not call %s", id, proc))
	}
	return caller, recycle, nil
}

// clip bounds what a refusal echoes of the request path, which the caller chose.
func clip(s string) string {
	const maxEcho = 200
	if len(s) <= maxEcho {
		return s
	}
	return s[:maxEcho] + "…"
}
