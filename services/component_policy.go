package services

import (
	"fmt"

	"connectrpc.com/grpchealth"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/securepay/securepay/api/gen/securepay/hop/v1/hopv1connect"
	"github.com/securepay/securepay/services/mtls"
)

// Who may call each component over mTLS: one table per component, deny by default (a
// procedure or a caller not listed is refused by mtls.Policy with PermissionDenied, a
// caller without an SVID with Unauthenticated).
//
//	component  procedures                              callers
//	payments   every write, GetAccount                   gateway
//	           HopService.Forward (the gateway's hop)    gateway
//	queries    GetPayment, GetBalance, ListHistory,      gateway
//	           WatchAccount
//	audit      AuditService (the whole log)              gateway, audit (auditors' tooling
//	                                                     runs under the audit ID)
//	every one  grpc.health.v1 Check and Watch            every component of the trust domain
//
// The gateway is the only way in for clients: it authenticates them and decides per
// principal; components trust the gateway's assertions (services/edge) because the
// caller's SVID says it is the gateway. No component calls another's API; the projector
// and the relay read the log from the store, not through audit.

// healthProcedures are grpc.health.v1's, which the gateway and operators' tools use to
// see whether a component is serving.
var healthProcedures = []string{
	"/" + grpchealth.HealthV1ServiceName + "/Check",
	"/" + grpchealth.HealthV1ServiceName + "/Watch",
}

// componentCallers is the table above: who may call each of c's own procedures.
func componentCallers(c Component, ids mtls.IDs) []spiffeid.ID {
	switch c {
	case ComponentPayments, ComponentQueries:
		return []spiffeid.ID{ids.Gateway}
	case ComponentAudit:
		return []spiffeid.ID{ids.Gateway, ids.Audit}
	}
	return nil // the projector serves no procedure
}

// ComponentPolicy is the mTLS policy of a server running set in trust domain td: each
// procedure of its components for the callers componentCallers names, and health for
// every well-known component ID.
func ComponentPolicy(td spiffeid.TrustDomain, set []Component) (mtls.Policy, error) {
	ids := mtls.WellKnownIDs(td)
	rules := map[string][]spiffeid.ID{}
	for _, c := range set {
		for _, p := range Procedures(c) {
			rules[p] = componentCallers(c, ids)
		}
	}
	if componentSet(set).has(ComponentPayments) {
		// HopService is internal (services/hop.go): not in Procedures, the gateway's alone.
		rules[hopv1connect.HopServiceForwardProcedure] = []spiffeid.ID{ids.Gateway}
	}
	for _, p := range healthProcedures {
		rules[p] = ids.All()
	}
	pol, err := mtls.NewPolicy(td, rules)
	if err != nil {
		return mtls.Policy{}, fmt.Errorf("policy of %s: %w", componentSet(set), err)
	}
	return pol, nil
}
