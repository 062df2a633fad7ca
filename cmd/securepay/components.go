package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/mtls"
)

// allComponents is `securepay serve all` (and `serve` with no component): every
// component in one process, for a small deployment and for tests.
const allComponents = "all"

// parseServeComponent reads serve's COMPONENT argument.
func parseServeComponent(s string) ([]services.Component, error) {
	if s == allComponents || s == "" {
		return services.Components(), nil
	}
	c, err := services.ParseComponent(s)
	if err != nil {
		return nil, fmt.Errorf("%v (or %s, every component in one process)", err, allComponents)
	}
	return []services.Component{c}, nil
}

// components is what serve runs; Validate has checked Component.
func (c *serveConfig) components() []services.Component {
	comps, _ := parseServeComponent(c.Component)
	return comps
}

// needsRedis: idempotency keys (payments), the balance cache (queries) and the Redis
// views (projector) live there; audit reads the log only.
func needsRedis(comps []services.Component) bool {
	return slices.ContainsFunc(comps, func(c services.Component) bool { return c != services.ComponentAudit })
}

// checkServeListen refuses an address that other machines can reach unless callers are
// authenticated: without it, anyone who reaches the port moves money.
func checkServeListen(addr string, authenticated bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("the listen address %q is not host:port: %v", addr, err)
	}
	if authenticated || services.IsLoopbackHost(host) {
		return nil
	}
	where := "every interface"
	if host != "" && !net.ParseIP(host).IsUnspecified() {
		where = host + ", which is not a loopback address"
	}
	return fmt.Errorf("--listen %s (SECUREPAY_LISTEN) would serve on %s, and no caller is authenticated: anyone who reaches the port could move money; "+
		"listen on loopback (--listen 127.0.0.1:8443) behind a proxy that authenticates", addr, where)
}

// checkDevListen keeps `securepay dev` on loopback: it speaks cleartext, and its tokens
// are signed by a development key anyone on the machine can use.
func checkDevListen(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return usagef("dev: the listen address %q is not host:port: %v", addr, err)
	}
	if services.IsLoopbackHost(host) {
		return nil
	}
	return usagef("dev: --listen %s (SECUREPAY_DEV_LISTEN) is not a loopback address: securepay dev speaks cleartext and trusts tokens of its own development key, so it listens on "+
		"127.0.0.1, [::1] or localhost only (e.g. --listen 127.0.0.1:8080); a server others can reach is securepay serve", addr)
}

// lateSource is a component's SVID source before it has one: the server's TLS config and
// health are built at start, while the Workload API may answer only later (or never).
// Until set, every handshake fails and health reports the component not ready.
type lateSource struct {
	mu  sync.RWMutex
	src mtls.Source
}

var errNoSVID = errors.New("no X.509-SVID yet from the SPIFFE Workload API")

func (l *lateSource) set(src mtls.Source) {
	l.mu.Lock()
	l.src = src
	l.mu.Unlock()
}

func (l *lateSource) get() mtls.Source {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.src
}

func (l *lateSource) GetX509SVID() (*x509svid.SVID, error) {
	if s := l.get(); s != nil {
		return s.GetX509SVID()
	}
	return nil, errNoSVID
}

func (l *lateSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if s := l.get(); s != nil {
		return s.GetX509BundleForTrustDomain(td)
	}
	return nil, errNoSVID
}

// check is the "svid" dependency of health: ready once an SVID is at hand and valid.
func (l *lateSource) check(context.Context) error {
	return mtls.CheckSVID(l, time.Now())
}

// componentID is the SPIFFE ID a component serves as, and the only SVID it uses.
func componentID(td spiffeid.TrustDomain, c services.Component) (spiffeid.ID, error) {
	return spiffeid.FromPath(td, "/"+string(c))
}

// workloadSource is the production SVID source: the Workload API at socket, the SVID of
// id only (a workload matching several registration entries never speaks as another).
func workloadSource(socket string, id spiffeid.ID) func(ctx context.Context) (mtls.Source, func(), error) {
	return func(ctx context.Context) (mtls.Source, func(), error) {
		src, err := mtls.WorkloadSource(ctx, socket, mtls.WithID(id))
		if err != nil {
			return nil, nil, err
		}
		return src, func() { _ = src.Close() }, nil
	}
}

// awaitSource asks for the component's SVID until it comes or ctx ends, with a bounded
// backoff; each failure is logged. The component serves nothing meanwhile.
func awaitSource(ctx context.Context, log *slog.Logger, get func(ctx context.Context) (mtls.Source, func(), error)) (mtls.Source, func(), error) {
	wait := 500 * time.Millisecond
	for {
		src, closeSrc, err := get(ctx)
		if err == nil {
			return src, closeSrc, nil
		}
		log.Warn("no SVID: not ready, serving nothing", "error", err, "retry_in", wait.String())
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// healthListenUsage is --health-listen of serve COMPONENT and serve gateway.
const healthListenUsage = "`address` of a component's probe port (cleartext, /healthz, /readyz and grpc.health.v1 only; default 127.0.0.1, any free port)"

// serveHealth serves the component's probes (no API) on ln until ctx ends: cleartext,
// since a kubelet has no SVID, and harmless, since health carries no ledger data.
func serveHealth(ctx context.Context, ln net.Listener, h http.Handler) func() {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &protocols, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			_ = srv.Close()
		}
		<-done
	}
}
