package services

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"connectrpc.com/connect"
)

// LoopbackOrigins in Config.CORSOrigins allows every browser origin whose host is a
// loopback name or address, on any port: a web app a developer runs on their own machine,
// and no page from elsewhere.
const LoopbackOrigins = "loopback"

// IsLoopbackHost reports whether host (a name or an address, without a port) can only
// mean this machine: localhost and its subdomains (RFC 6761: they never leave the host),
// 127.0.0.0/8 and ::1.
func IsLoopbackHost(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// originAllowed is the CORS decision for Config.CORSOrigins: exact origins, "*" for all,
// LoopbackOrigins for http(s) origins on loopback. Origins compare exactly as browsers
// send them (scheme://host[:port], lower-case).
func originAllowed(allowed []string) func(origin string) bool {
	anyOrigin := slices.Contains(allowed, "*")
	loopback := slices.Contains(allowed, LoopbackOrigins)
	return func(origin string) bool {
		if anyOrigin || slices.Contains(allowed, origin) {
			return true
		}
		if !loopback {
			return false
		}
		u, err := url.Parse(origin)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Path != "" || u.User != nil || u.RawQuery != "" {
			return false
		}
		return IsLoopbackHost(u.Hostname())
	}
}

// loopbackHostsOnly refuses a request addressed (Host, or HTTP/2's :authority) to any
// name but a loopback one. A page on evil.example whose name is rebound to 127.0.0.1
// reaches a loopback server from the browser with Host: evil.example; CORS does not stop
// it, since to the browser the request is same-origin.
func loopbackHostsOnly(next http.Handler, errs *connect.ErrorWriter) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if IsLoopbackHost(host) {
			next.ServeHTTP(w, r)
			return
		}
		msg := fmt.Sprintf("the request is addressed to host %q, which is not a loopback name: this development server answers only requests to localhost, 127.0.0.1 or [::1] (a protection against DNS rebinding); call it as http://127.0.0.1:PORT", r.Host)
		if errs.IsSupported(r) {
			_ = errs.Write(w, r, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s", msg)))
			return
		}
		http.Error(w, msg, http.StatusMisdirectedRequest)
	})
}

// OriginAllowed is the CORS decision of Config.CORSOrigins, for the gateway, which serves
// the same browsers: exact origins, "*" for all, LoopbackOrigins for pages on loopback.
func OriginAllowed(allowed []string) func(origin string) bool { return originAllowed(allowed) }

// LoopbackHostsOnly is Config.LoopbackHostsOnly as a handler wrapper, for the gateway of
// `securepay dev`: requests addressed to any name but a loopback one are refused.
func LoopbackHostsOnly(next http.Handler) http.Handler {
	return loopbackHostsOnly(next, connect.NewErrorWriter())
}
