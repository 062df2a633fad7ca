package bank

import (
	"fmt"
	"os"
	"os/exec"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/securepay/securepay/services/gateway/gatewaytest"
	"github.com/securepay/securepay/services/mtls"
	"github.com/securepay/securepay/services/mtls/spiretest"
)

// gatewaySetup is the gateway topology: payments, queries, audit and projector on SPIFFE
// mTLS with SVIDs from the real SPIRE of infra/local/spire.sh, and `serve gateway` in
// front of them, the only port clients reach, trusting a test OIDC issuer.
type gatewaySetup struct {
	spire  *spiretest.SPIRE
	exes   map[string]string // component -> its own registered copy of the binary
	health map[string]string // component -> its probe address (cleartext, health only)
	issuer *gatewaytest.Issuer
}

// gatewayRate is each principal's allowance at the gateway: far above what a bank run
// sends, so that the run measures the ledger, not the limiter (the limiter has its own
// tests in services/gateway).
const gatewayRate = 100_000

func (c *cluster) setUpGateway() *gatewaySetup {
	c.t.Helper()
	sp := spiretest.FromEnv(c.t)
	work := sp.WorkDir(c.t)
	g := &gatewaySetup{spire: sp, exes: map[string]string{}, health: map[string]string{},
		issuer: gatewaytest.NewIssuer(c.t, work, "securepay-bank")}
	td := spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)
	for comp := range c.servers {
		id, err := spiffeid.FromPath(td, "/"+comp)
		if err != nil {
			c.t.Fatal(err)
		}
		g.exes[comp] = sp.CopyAs(c.t, c.bin, work, comp, id)
		if comp != "gateway" {
			g.health[comp] = fmt.Sprintf("127.0.0.1:%d", freePort(c.t))
		}
	}
	return g
}

// command is how one process of the gateway topology runs; its address stays the same
// across restarts, as its identity does (the same executable path).
func (g *gatewaySetup) command(c *cluster, component, addr string) *exec.Cmd {
	redisAddr := fmt.Sprintf("127.0.0.1:%d", c.rPort)
	if component == "gateway" {
		args := []string{"serve", "gateway", "--listen", addr, "--tls-cert", c.cert, "--tls-key", c.key,
			"--spiffe-socket", g.spire.Addr, "--redis-addr", redisAddr,
			"--payments-url", "https://" + c.servers["payments"].addr, "--queries-url", "https://" + c.servers["queries"].addr,
			"--audit-url", "https://" + c.servers["audit"].addr,
			"--rate-limit", fmt.Sprint(gatewayRate), "--rate-burst", fmt.Sprint(gatewayRate)}
		cmd := exec.Command(g.exes[component], append(args, g.issuer.GatewayFlags()...)...)
		// The issuer's JWKS is served over TLS by this test, with a certificate of its own.
		cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+g.issuer.CAFile())
		return cmd
	}
	args := []string{"serve", component, "--listen", addr, "--health-listen", g.health[component],
		"--postgres-dsn-file", c.dsnFile, "--spiffe-socket", g.spire.Addr}
	if component != "audit" { // audit reads the log only
		args = append(args, "--redis-addr", redisAddr)
	}
	return exec.Command(g.exes[component], args...)
}

// probe is the URL that answers 200 once a process is ready: a component's probe port
// (its API port admits SVIDs only), the gateway's public /healthz.
func (g *gatewaySetup) probe(component, addr string) string {
	if component == "gateway" {
		return "https://" + addr + "/healthz"
	}
	return "http://" + g.health[component] + "/readyz"
}

// principals is how the bank's clients authenticate: nil unless the gateway is in front.
// One principal per writer, up to one per account.
func (c *cluster) principals(writers, accounts int) *Principals {
	if c.gw == nil {
		return nil
	}
	return &Principals{Count: min(writers, accounts), Token: c.gw.issuer.Token}
}
