// Package mtls is how SecurePay's components prove who they are to each other.
//
// Every internal call (gateway → payments, projector → audit, …) travels over mutual TLS
// with X.509-SVIDs: short-lived certificates whose only name is a SPIFFE ID such as
// spiffe://securepay.dev/payments. A component trusts nothing about the network it runs on
// (no IP allow-lists, no "internal" ports); it trusts the caller's certificate, and then
// only for the procedures its [Policy] lists for that caller's ID.
//
// Certificates come from a [Source]: in production the SPIFFE Workload API served by a
// SPIRE agent ([WorkloadSource]), which attests the process and rotates its SVID and trust
// bundle without restarts; in `securepay dev`, an in-process [DevCA] that issues SVIDs the
// same way and rotates them too, so development exercises the production code paths. There
// is no plaintext mode: [ServerTLS], [ClientTLS] and [HTTPClient] always demand TLS, and
// [Policy.Handler] refuses any request that did not arrive over it.
//
// Authentication happens in two places on purpose. The TLS handshake ([ServerTLS]) accepts
// a client certificate only if it chains to the trust bundle of our trust domain; a client
// without a certificate completes the handshake so that it can be told, as a Connect error
// it can read, that it is unauthenticated. [Policy.Handler] then authorises each procedure
// by the caller's SPIFFE ID, denying by default, so the complete policy of a component is
// one table that can be read, reviewed and tested.
//
// Rotation: a TLS connection keeps the certificates it was opened with, while HTTP/2 keeps
// connections open for as long as they are busy. So that no connection outlives the
// identity it was authenticated with, [Policy.Handler] asks the client to reconnect (an
// HTTP/2 GOAWAY, which lets in-flight calls finish) once the client's certificate is past
// three quarters of its lifetime — after its source has rotated it, at half — and refuses
// calls on a connection whose client certificate has expired.
package mtls
