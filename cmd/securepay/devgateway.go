package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/edge"
	"github.com/securepay/securepay/services/gateway"
	"github.com/securepay/securepay/services/mtls"
)

// devSVIDTTL is the life of the development SVIDs: short enough that a dev session
// exercises rotation (the CA re-issues at half the life, every 5 minutes), long enough
// that issuing is never a noticeable cost.
const devSVIDTTL = 10 * time.Minute

// devStack is `securepay dev`'s components behind its gateway, in one process: each API
// component (payments, queries, audit) serves on a loopback port of its own over mTLS
// with SVIDs from an in-process development CA, behind a policy that lets only the
// gateway's SPIFFE ID call it, as in production; the gateway serves the public port.
// There is no plaintext path between the gateway and the components.
type devStack struct {
	gw   *gateway.Gateway
	lns  []net.Listener
	srvs []*services.Server
}

// newDevStack builds the components from base (a services.Config with the ledger, the
// views and the store, but no Components, TLS or Caller) and the gateway that trusts
// signer's tokens.
func newDevStack(base services.Config, signer *devSigner, gcfg gateway.Config, log *slog.Logger) (*devStack, error) {
	td, err := spiffeid.TrustDomainFromString(mtls.DefaultTrustDomain)
	if err != nil {
		return nil, err
	}
	ca, err := mtls.NewDevCA(td, devSVIDTTL, time.Now)
	if err != nil {
		return nil, err
	}
	ids := mtls.WellKnownIDs(td)
	gwSrc, err := ca.Source(ids.Gateway)
	if err != nil {
		return nil, err
	}
	st := &devStack{}
	fail := func(err error) (*devStack, error) {
		for _, ln := range st.lns {
			_ = ln.Close()
		}
		return nil, err
	}
	ups := map[services.Component]gateway.Upstream{}
	caller, correlation := edge.ForComponent(ids.Gateway)
	for _, c := range []struct {
		comp services.Component
		id   spiffeid.ID
	}{{services.ComponentPayments, ids.Payments}, {services.ComponentQueries, ids.Queries}, {services.ComponentAudit, ids.Audit}} {
		src, err := ca.Source(c.id)
		if err != nil {
			return fail(err)
		}
		// The same table as serve COMPONENT (services/component_policy.go).
		policy, err := services.ComponentPolicy(td, []services.Component{c.comp})
		if err != nil {
			return fail(err)
		}
		cfg := base
		cfg.Components = []services.Component{c.comp}
		cfg.TLS = mtls.ServerTLS(src)
		cfg.AllowH2C = false
		cfg.Authorize = policy.Handler
		cfg.Caller, cfg.CorrelationID = caller, correlation
		// Browsers and reflection are the gateway's business now.
		cfg.CORSOrigins, cfg.LoopbackHostsOnly, cfg.Reflection = nil, false, false
		srv, err := services.NewServer(cfg)
		if err != nil {
			return fail(fmt.Errorf("%s component: %w", c.comp, err))
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fail(fmt.Errorf("%s component: %w", c.comp, err))
		}
		st.lns = append(st.lns, ln)
		st.srvs = append(st.srvs, srv)
		ups[c.comp] = gateway.Upstream{URL: "https://" + ln.Addr().String(), Client: mtls.HTTPClient(gwSrc, c.id)}
	}
	auth, err := signer.gatewayAuth()
	if err != nil {
		return fail(err)
	}
	gcfg.Payments, gcfg.Queries, gcfg.Audit = ups[services.ComponentPayments], ups[services.ComponentQueries], ups[services.ComponentAudit]
	gcfg.Auth = auth
	gcfg.AllowH2C = true
	gcfg.Logger = log
	if st.gw, err = gateway.New(gcfg); err != nil {
		return fail(err)
	}
	return st, nil
}

// serve runs the components and the gateway (on public) until ctx ends; the gateway
// stops first, so no call reaches a component that is gone.
func (st *devStack) serve(ctx context.Context, public net.Listener) error {
	compCtx, stopComponents := context.WithCancel(context.WithoutCancel(ctx))
	defer stopComponents()
	errc := make(chan error, len(st.srvs))
	for i, srv := range st.srvs {
		go func() { errc <- srv.Serve(compCtx, st.lns[i]) }()
	}
	gwErr := st.gw.Serve(ctx, public, 5*time.Second)
	stopComponents()
	var errs []error
	for range st.srvs {
		if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, err)
		}
	}
	return errors.Join(append([]error{gwErr}, errs...)...)
}
