package bank

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/securepay/securepay/loadtest"
	"github.com/securepay/securepay/services"
)

// cluster is everything the bank test runs against, each part a process of its own that
// the test can kill: a PostgreSQL cluster and a Redis of its own (infra/local scripts) and
// `securepay serve` built from this tree. This file is the one place that launches them:
// when serve splits into components, or the gateway needs a token, only startServer and
// the fault list change.
type cluster struct {
	t       *testing.T
	root    string // the module's root, where the scripts and ./cmd/securepay are
	dir     string
	bin     string
	pgDir   string
	pgPort  int
	rDir    string
	rPort   int
	dsnFile string // serve's DSN (its own login role), private
	cert    string // self-signed: also the CA file clients trust
	key     string
	// servers are the server processes by component ("all" when one process runs every
	// component), each on a port of its own that stays the same across restarts.
	servers map[string]*server
	// gw runs the components on SPIFFE mTLS behind `serve gateway` (gateway_test.go);
	// nil for the other topologies.
	gw *gatewaySetup
	mu sync.Mutex
}

// server is one `securepay serve [COMPONENT]` process.
type server struct {
	component string
	addr      string
	cmd       *exec.Cmd
	exited    chan struct{}
}

// topologies are the ways the bank test can run the server: every component in one
// process, or payments, queries, audit and projector in four.
var topologies = map[string][]string{
	"all":   {"all"},
	"split": {"payments", "queries", "audit", "projector"},
	// gateway: the split components on SPIRE mTLS, clients through `serve gateway`.
	"gateway": {"payments", "queries", "audit", "projector", "gateway"},
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// script runs an infra/local script and returns what it printed on stdout.
func (c *cluster) script(name string, args ...string) (string, error) {
	cmd := exec.Command("bash", append([]string{filepath.Join(c.root, "infra/local", name)}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

func startCluster(t *testing.T, topology string) *cluster {
	t.Helper()
	components, ok := topologies[topology]
	if !ok {
		t.Fatalf("unknown topology %q: say all or split", topology)
	}
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	// Under /tmp and readable by all: PostgreSQL runs as its own OS user when we are root,
	// and must reach its directory (t.TempDir's parents are private).
	dir, err := os.MkdirTemp("/tmp", "securepay-bank-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, root: filepath.Dir(strings.TrimSpace(string(gomod))), dir: dir, bin: filepath.Join(dir, "securepay"),
		pgDir: filepath.Join(dir, "pg"), rDir: filepath.Join(dir, "redis"), pgPort: freePort(t), rPort: freePort(t)}
	c.servers = map[string]*server{}
	for _, comp := range components {
		c.servers[comp] = &server{component: comp, addr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	}
	t.Cleanup(c.stop)

	build := exec.Command("go", "build", "-o", c.bin, "./cmd/securepay")
	build.Dir = c.root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/securepay: %v\n%s", err, out)
	}
	ownerDSN, err := c.script("postgres.sh", "start", c.pgDir, fmt.Sprint(c.pgPort))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.script("redis.sh", "start", c.rDir, fmt.Sprint(c.rPort)); err != nil {
		t.Fatal(err)
	}
	// serve refuses a login role that could rewrite the log: it logs in as a role of its
	// own that migrate grants the rest, as the README's operator set-up does.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, ownerDSN)
	if err != nil {
		t.Fatalf("connect to the test cluster: %v", err)
	}
	_, err = conn.Exec(ctx, "CREATE ROLE bank_serve LOGIN")
	conn.Close(ctx)
	if err != nil {
		t.Fatalf("create the serving role: %v", err)
	}
	ownerFile := c.private("owner-dsn", ownerDSN)
	if out, err := exec.CommandContext(ctx, c.bin, "migrate", "--postgres-dsn-file", ownerFile, "--serve-role", "bank_serve").CombinedOutput(); err != nil {
		t.Fatalf("securepay migrate: %v\n%s", err, out)
	}
	c.dsnFile = c.private("serve-dsn", strings.Replace(ownerDSN, "postgres://postgres@", "postgres://bank_serve@", 1))
	c.cert, c.key = c.selfSigned()
	if topology == "gateway" {
		c.gw = c.setUpGateway()
	}
	for _, comp := range components {
		if err := c.startServer(comp); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// target is how clients reach the cluster: one URL, and with the components split, each
// procedure sent to the process that serves it (as the gateway does).
func (c *cluster) target() loadtest.Target {
	t := loadtest.Target{CAFile: c.cert, Conns: 2}
	if gw, ok := c.servers["gateway"]; ok {
		t.Server = "https://" + gw.addr
		return t
	}
	if all, ok := c.servers["all"]; ok {
		t.Server = "https://" + all.addr
		return t
	}
	t.Server = "https://" + c.servers["payments"].addr
	t.Wrap = func(next http.RoundTripper) http.RoundTripper {
		return routeByComponent{next: next, addr: func(comp string) string { return c.servers[comp].addr }}
	}
	return t
}

// routeByComponent sends each request to the component that serves its procedure.
type routeByComponent struct {
	next http.RoundTripper
	addr func(component string) string
}

func (r routeByComponent) RoundTrip(req *http.Request) (*http.Response, error) {
	comp, ok := services.ComponentOf(req.URL.Path)
	if !ok {
		return nil, fmt.Errorf("no component serves %s", req.URL.Path)
	}
	req = req.Clone(req.Context())
	req.URL.Host = r.addr(string(comp))
	req.Host = req.URL.Host
	return r.next.RoundTrip(req)
}

func (c *cluster) private(name, content string) string {
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// startServer launches `securepay serve COMPONENT` and waits until it answers /readyz.
// This is the one place that says how the server under test runs.
func (c *cluster) startServer(component string) error {
	srv := c.servers[component]
	logFile, err := os.OpenFile(filepath.Join(c.dir, "serve-"+component+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	args := []string{"serve"}
	if component != "all" {
		args = append(args, component)
	}
	args = append(args, "--listen", srv.addr, "--postgres-dsn-file", c.dsnFile, "--tls-cert", c.cert, "--tls-key", c.key)
	if component != "audit" { // audit reads the log only
		args = append(args, "--redis-addr", fmt.Sprintf("127.0.0.1:%d", c.rPort))
	}
	cmd := exec.Command(c.bin, args...)
	if c.gw != nil {
		cmd = c.gw.command(c, component, srv.addr)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start serve %s: %w", component, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logFile.Close(); close(exited) }()
	c.mu.Lock()
	srv.cmd, srv.exited = cmd, exited
	c.mu.Unlock()
	return c.waitReady(component)
}

// waitReadyAll waits for every server process.
func (c *cluster) waitReadyAll() error {
	for comp := range c.servers {
		if err := c.waitReady(comp); err != nil {
			return err
		}
	}
	return nil
}

// waitReady polls a server's /readyz until it answers 200, it exits, or a minute passes.
func (c *cluster) waitReady(component string) error {
	c.mu.Lock()
	srv := c.servers[component]
	exited, addr := srv.exited, srv.addr
	c.mu.Unlock()
	pool := x509.NewCertPool()
	pemBytes, err := os.ReadFile(c.cert)
	if err != nil {
		return err
	}
	pool.AppendCertsFromPEM(pemBytes)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("serve %s exited before it was ready; its log:\n%s", component, c.serverLog(component))
		default:
		}
		probe := "https://" + addr + "/readyz"
		if c.gw != nil {
			probe = c.gw.probe(component, addr)
		}
		if res, err := hc.Get(probe); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("serve %s not ready on %s after a minute; its log:\n%s", component, addr, c.serverLog(component))
}

func (c *cluster) serverLog(component string) string {
	b, _ := os.ReadFile(filepath.Join(c.dir, "serve-"+component+".log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// killServer sends SIGKILL to a server process and waits for it to be gone.
func (c *cluster) killServer(component string) error {
	c.mu.Lock()
	cmd, exited := c.servers[component].cmd, c.servers[component].exited
	c.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-exited:
		return nil // it had already stopped on its own
	default:
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill serve: %w", err)
	}
	<-exited
	return nil
}

// kill SIGKILLs the server processes of components, then restarts them.
func (c *cluster) kill(components ...string) error {
	for _, comp := range components {
		if err := c.killServer(comp); err != nil {
			return err
		}
	}
	for _, comp := range components {
		if err := c.startServer(comp); err != nil {
			return err
		}
	}
	return nil
}

// faults are the faults the test can inject, by name: kill-server kills every server
// process at once; with the components split, kill-COMPONENT kills one.
func (c *cluster) faults() map[string]Fault {
	var all []string
	for comp := range c.servers {
		all = append(all, comp)
	}
	faults := map[string]Fault{
		"kill-server": {Name: "kill-server", Inject: func(context.Context) error { return c.kill(all...) }},
		"crash-postgres": {Name: "crash-postgres", Inject: func(context.Context) error {
			if _, err := c.script("postgres.sh", "crash", c.pgDir); err != nil {
				return err
			}
			time.Sleep(time.Second) // the server sees the database gone for a while
			if _, err := c.script("postgres.sh", "start", c.pgDir, fmt.Sprint(c.pgPort)); err != nil {
				return err
			}
			return c.waitReadyAll()
		}},
		"restart-redis": {Name: "restart-redis", Inject: func(context.Context) error {
			// Redis runs without persistence: a restart also empties it.
			if _, err := c.script("redis.sh", "stop", c.rDir); err != nil {
				return err
			}
			time.Sleep(500 * time.Millisecond)
			if _, err := c.script("redis.sh", "start", c.rDir, fmt.Sprint(c.rPort)); err != nil {
				return err
			}
			return c.waitReadyAll()
		}},
		"flush-redis": {Name: "flush-redis", Inject: func(context.Context) error {
			out, err := exec.Command("redis-cli", "-h", "127.0.0.1", "-p", fmt.Sprint(c.rPort), "FLUSHALL").CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "OK" {
				return fmt.Errorf("redis FLUSHALL: %v %s", err, out)
			}
			return nil
		}},
	}
	if len(all) > 1 {
		for _, comp := range all {
			faults["kill-"+comp] = Fault{Name: "kill-" + comp, Inject: func(context.Context) error { return c.kill(comp) }}
		}
	}
	return faults
}

// stop ends every process the cluster started and removes its directory, keeping the
// server's log in the test output when the test failed.
func (c *cluster) stop() {
	for comp := range c.servers {
		_ = c.killServer(comp)
		if c.t.Failed() {
			c.t.Logf("serve %s's log (tail):\n%s", comp, c.serverLog(comp))
		}
	}
	if _, err := c.script("redis.sh", "stop", c.rDir); err != nil {
		c.t.Log(err)
	}
	if _, err := c.script("postgres.sh", "stop", c.pgDir); err != nil {
		c.t.Log(err)
	}
	os.RemoveAll(c.dir)
}

// selfSigned writes a certificate for 127.0.0.1 that is its own CA.
func (c *cluster) selfSigned() (certFile, keyFile string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		c.t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "securepay bank test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		c.t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		c.t.Fatal(err)
	}
	certFile = c.private("cert.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	keyFile = c.private("key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})))
	return certFile, keyFile
}
