package edge

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/securepay/securepay/services/mtls"
)

func TestReadTrustsOnlyTheGateway(t *testing.T) {
	h := http.Header{}
	Set(h, Identity{Principal: "alice", CorrelationID: "c-1"})
	if got := Read(h, false); got != (Identity{}) {
		t.Errorf("from a caller that is not the gateway: %+v, want nothing", got)
	}
	if got := Read(h, true); got != (Identity{Principal: "alice", CorrelationID: "c-1"}) {
		t.Errorf("from the gateway: %+v, want alice and c-1", got)
	}
	h.Set(PrincipalHeader, "alice\x7f")
	if got := Read(h, true).Principal; got != "" {
		t.Errorf("a malformed principal was read as %q", got)
	}
}

func TestSetReplacesWhatTheClientSent(t *testing.T) {
	h := http.Header{}
	h.Add(PrincipalHeader, "mallory")
	h.Add(PrincipalHeader, "operator")
	h.Set(CorrelationHeader, "forged")
	Set(h, Identity{Principal: "alice"})
	if v := h.Values(PrincipalHeader); len(v) != 1 || v[0] != "alice" {
		t.Errorf("principal values %q, want only alice", v)
	}
	if v := h.Values(CorrelationHeader); len(v) != 0 {
		t.Errorf("correlation values %q, want none (the gateway gave none)", v)
	}
}

func TestCorrelationFromClient(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		keep        bool
	}{
		{"plain", "order-42", true},
		{"uuid", "4bf92f35-77b3-4da6-a3ce-929d0e0e4736", true},
		{"too long", strings.Repeat("x", MaxValueBytes+1), false},
		{"control", "a\tb", false},
		{"non-ASCII", "caf\u00e9", false},
		{"empty", "", false},
	} {
		h := http.Header{}
		h["X-Request-Id"] = []string{tc.value}
		got := CorrelationFromClient(h)
		if tc.keep && got != tc.value {
			t.Errorf("%s: %q, want the client's %q", tc.name, got, tc.value)
		}
		if !tc.keep && (got == tc.value || !strings.HasPrefix(got, "c-") || !Valid(got)) {
			t.Errorf("%s: %q, want a new c-... id", tc.name, got)
		}
	}
}

func TestFuncs(t *testing.T) {
	fromGateway := func(ctx context.Context) bool { return ctx.Value(gatewayKey{}) != nil }
	caller, correlation := Funcs(fromGateway, "spiffe://securepay.dev/projector")
	h := http.Header{}
	Set(h, Identity{Principal: "alice", CorrelationID: "c-9"})
	gw := context.WithValue(context.Background(), gatewayKey{}, true)
	if c := caller(gw, h); c != "alice" {
		t.Errorf("caller from the gateway: %q, want alice", c)
	}
	if c := correlation(gw, h); c != "c-9" {
		t.Errorf("correlation from the gateway: %q, want c-9", c)
	}
	if c := caller(context.Background(), h); c != "spiffe://securepay.dev/projector" {
		t.Errorf("caller not from the gateway: %q, want the fallback", c)
	}
	if c := correlation(context.Background(), h); c != "" {
		t.Errorf("correlation not from the gateway: %q, want none", c)
	}
	if c := caller(gw, http.Header{}); c != "unauthenticated" {
		t.Errorf("gateway request without a principal: %q, want unauthenticated", c)
	}
}

type gatewayKey struct{}

func TestTrustGateway(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("securepay.dev")
	ids := mtls.WellKnownIDs(td)
	trust := TrustGateway(ids.Gateway)
	if !trust(mtls.WithCallerID(context.Background(), ids.Gateway)) {
		t.Error("the gateway's SVID is not trusted")
	}
	if trust(mtls.WithCallerID(context.Background(), ids.Payments)) {
		t.Error("the payments component's SVID is trusted as the gateway")
	}
	other := spiffeid.RequireFromString("spiffe://evil.example/gateway")
	if trust(mtls.WithCallerID(context.Background(), other)) {
		t.Error("a foreign trust domain's /gateway is trusted")
	}
	if trust(context.Background()) {
		t.Error("a request with no mTLS peer is trusted")
	}
}

func TestForComponent(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("securepay.dev")
	ids := mtls.WellKnownIDs(td)
	caller, correlation := ForComponent(ids.Gateway)
	h := http.Header{}
	Set(h, Identity{Principal: "alice", CorrelationID: "c-1"})
	for _, tc := range []struct {
		name       string
		ctx        context.Context
		actor, cid string
	}{
		{"gateway", mtls.WithCallerID(context.Background(), ids.Gateway), "alice", "c-1"},
		{"projector forging the headers", mtls.WithCallerID(context.Background(), ids.Projector), ids.Projector.String(), ""},
		{"no peer", context.Background(), "anonymous", ""},
	} {
		if a, c := caller(tc.ctx, h), correlation(tc.ctx, h); a != tc.actor || c != tc.cid {
			t.Errorf("%s: actor %q correlation %q, want %q and %q", tc.name, a, c, tc.actor, tc.cid)
		}
	}
}
