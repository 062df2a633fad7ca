package services_test

import (
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/mtls"
)

// TestComponentPolicies pins who may call what on each component: the gateway alone on
// payments and queries, the gateway and audit tooling on audit, every component on
// health, and nobody on another component's procedures.
func TestComponentPolicies(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)
	ids := mtls.WellKnownIDs(td)
	want := map[services.Component][]spiffeid.ID{
		services.ComponentPayments: {ids.Gateway},
		services.ComponentQueries:  {ids.Gateway},
		services.ComponentAudit:    {ids.Audit, ids.Gateway},
	}
	for _, comp := range services.Components() {
		pol, err := services.ComponentPolicy(td, []services.Component{comp})
		if err != nil {
			t.Fatalf("%s: %v", comp, err)
		}
		for _, other := range services.Components() {
			for _, p := range services.Procedures(other) {
				got := pol.Callers(p)
				switch {
				case other != comp && len(got) > 0:
					t.Errorf("%s's policy lets %v call %s, which %s serves", comp, got, p, other)
				case other == comp && !slices.Equal(got, want[comp]):
					t.Errorf("%s: %s callable by %v, want %v", comp, p, got, want[comp])
				}
			}
		}
		for _, h := range []string{"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"} {
			for _, id := range ids.All() {
				if !pol.Allowed(h, id) {
					t.Errorf("%s: %s may not call %s; every component may ask a component's health", comp, id, h)
				}
			}
		}
		if pol.Allowed(ledgerv1connect.PaymentServiceTransferProcedure, ids.Payments) {
			t.Errorf("%s: payments may call Transfer on itself", comp)
		}
	}
	if _, err := services.ComponentPolicy(spiffeid.TrustDomain{}, services.Components()); err == nil {
		t.Error("a policy without a trust domain: want an error")
	}
}
