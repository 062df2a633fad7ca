package main

import (
	"fmt"
	"net"
	"slices"

	"github.com/securepay/securepay/services"
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

// checkDevListen keeps `securepay dev` on loopback: it speaks cleartext and
// authenticates no one.
func checkDevListen(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return usagef("dev: the listen address %q is not host:port: %v", addr, err)
	}
	if services.IsLoopbackHost(host) {
		return nil
	}
	return usagef("dev: --listen %s (SECUREPAY_DEV_LISTEN) is not a loopback address: securepay dev speaks cleartext and authenticates no one, so it listens on "+
		"127.0.0.1, [::1] or localhost only (e.g. --listen 127.0.0.1:8080); a server others can reach is securepay serve", addr)
}
