package mtls

import "github.com/spiffe/go-spiffe/v2/spiffeid"

// DefaultTrustDomain is the trust domain of SecurePay's components unless configured
// otherwise.
const DefaultTrustDomain = "securepay.dev"

// IDs are the SPIFFE IDs of SecurePay's components in one trust domain. Policies and
// SPIRE registration entries are written in terms of these.
type IDs struct {
	Gateway   spiffeid.ID // the only north-south entry point
	Payments  spiffeid.ID // commands: transfers, authorisations, account changes
	Queries   spiffeid.ID // accounts, balances, history, watch
	Audit     spiffeid.ID // the log, read whole
	Projector spiffeid.ID // builds the read models from the log
	Relay     spiffeid.ID // publishes the log to other systems
}

// WellKnownIDs returns the components' IDs in td: spiffe://TD/gateway, /payments,
// /queries, /audit, /projector and /relay.
func WellKnownIDs(td spiffeid.TrustDomain) IDs {
	id := func(path string) spiffeid.ID {
		// The paths are constants that are valid SPIFFE ID paths, so this cannot fail for
		// a valid trust domain; a zero td yields zero IDs, which NewPolicy refuses.
		v, err := spiffeid.FromPath(td, path)
		if err != nil {
			return spiffeid.ID{}
		}
		return v
	}
	return IDs{
		Gateway:   id("/gateway"),
		Payments:  id("/payments"),
		Queries:   id("/queries"),
		Audit:     id("/audit"),
		Projector: id("/projector"),
		Relay:     id("/relay"),
	}
}

// All lists the IDs in a fixed order, for registration scripts and tests.
func (ids IDs) All() []spiffeid.ID {
	return []spiffeid.ID{ids.Gateway, ids.Payments, ids.Queries, ids.Audit, ids.Projector, ids.Relay}
}
