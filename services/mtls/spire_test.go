package mtls_test

// Tests against a real SPIRE server and agent (infra/local/spire.sh, started by
// infra/local/test.sh, which exports SECUREPAY_TEST_SPIRE_DIR).
//
// Workloads are told apart the way SPIRE tells processes apart on one host for one uid:
// by executable path (the agent's unix attestor with discover_workload_path). The test
// binary is registered as the gateway; copies of it under other paths are registered as
// payments and queries, and run as child processes in a role (TestMain) — so each gets
// only its own SVID from the Workload API, as separate components would.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services/mtls"
	"github.com/securepay/securepay/services/mtls/mtlstest"
	"github.com/securepay/securepay/services/mtls/spiretest"
)

func serialsSeen(r *serialRecorder) int {
	n, _ := r.stats()
	return n
}

// Child process roles, selected by environment.
const (
	roleEnv    = "SECUREPAY_MTLS_TEST_ROLE" // "server" or "client"
	addrEnv    = "SECUREPAY_MTLS_TEST_WORKLOAD_API"
	targetEnv  = "SECUREPAY_MTLS_TEST_TARGET"
	timeoutEnv = "SECUREPAY_MTLS_TEST_START_TIMEOUT"
)

func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "":
		os.Exit(m.Run())
	case "server":
		os.Exit(runServerRole())
	case "client":
		os.Exit(runClientRole())
	default:
		fmt.Fprintf(os.Stderr, "unknown %s %q\n", roleEnv, os.Getenv(roleEnv))
		os.Exit(2)
	}
}

func roleSource() (*workloadapi.X509Source, error) {
	timeout, err := time.ParseDuration(os.Getenv(timeoutEnv))
	if err != nil {
		timeout = mtls.WorkloadStartTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return mtls.WorkloadSource(ctx, os.Getenv(addrEnv))
}

// runServerRole serves the test payments component with its SVID from the Workload
// API. It prints "URL <base URL>", then "SERIAL <serial>" for its first SVID and every
// rotation, and exits when its standard input closes (the test ended).
func runServerRole() int {
	src, err := roleSource()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3 // not ready: nothing served
	}
	defer src.Close()
	policy, err := mtls.NewPolicy(td, map[string][]spiffeid.ID{transferProc: {ids.Gateway}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ts, err := serveTest(src, policy)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer ts.srv.Close()
	var out sync.Mutex
	say := func(format string, args ...any) {
		out.Lock()
		defer out.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	serial := func() string {
		svid, err := src.GetX509SVID()
		if err != nil {
			return "error:" + err.Error()
		}
		return svid.Certificates[0].SerialNumber.String()
	}
	say("URL %s", ts.URL)
	last := serial()
	say("SERIAL %s", last)
	go func() {
		for range src.Updated() {
			if s := serial(); s != last {
				last = s
				say("SERIAL %s", s)
			}
		}
	}()
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// runClientRole calls Transfer on the target once per protocol with its own SVID and
// prints "CODE <protocol> <code or ok> <message>".
func runClientRole() int {
	src, err := roleSource()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	defer src.Close()
	hc := mtls.HTTPClient(src, ids.Payments)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, p := range mtlstest.Protocols() {
		code, _, err := transfer(ctx, hc, os.Getenv(targetEnv), p.Options...)
		msg := ""
		if err != nil {
			msg = strings.ReplaceAll(err.Error(), "\n", " ")
		}
		fmt.Printf("CODE %s %s %s\n", p.Name, codeName(code), msg)
	}
	return 0
}

// spire is the test's view of the running SPIRE: where it is and how to register.
type spire struct {
	dir, addr, script string
}

func testSPIRE(t *testing.T) *spire {
	t.Helper()
	found := spiretest.FromEnv(t) // fails under CI=true when SPIRE is not running
	script, err := filepath.Abs("../../infra/local/spire.sh")
	if err != nil {
		t.Fatal(err)
	}
	return &spire{dir: found.Dir, addr: found.Addr, script: script}
}

// register creates a registration entry for id selecting the executable path.
func (s *spire) register(t *testing.T, id spiffeid.ID, path string) {
	t.Helper()
	out, err := exec.Command("bash", s.script, "register", s.dir, id.String(), "unix:path:"+path).CombinedOutput()
	if err != nil {
		t.Fatalf("register %s for %s: %v\n%s", id, path, err, out)
	}
}

// workload copies the test binary to a new path of its own, named name, and registers
// that path as id (unless id is zero): a separate identity for the processes started
// from it.
func (s *spire) workload(t *testing.T, name string, id spiffeid.ID) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	dir := filepath.Join(s.dir, "workloads", hex.EncodeToString(b))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	path := filepath.Join(dir, name)
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if !id.IsZero() {
		s.register(t, id, path)
	}
	return path
}

// selfSource registers the test binary itself as id and returns its Workload API source.
func (s *spire) selfSource(t *testing.T, id spiffeid.ID) *workloadapi.X509Source {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s.register(t, id, self)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, err := mtls.WorkloadSource(ctx, s.addr, mtls.WithID(id))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	if svid, err := src.GetX509SVID(); err != nil || svid.ID != id {
		t.Fatalf("the test process got SVID %v (%v), want %s", svid, err, id)
	}
	return src
}

// serverProcess is a payments server running from its own registered executable.
type serverProcess struct {
	URL     string
	mu      sync.Mutex
	serials []string
}

func (p *serverProcess) servingSerials() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.serials...)
}

func (s *spire) startServer(t *testing.T, exe string) *serverProcess {
	t.Helper()
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=server", addrEnv+"="+s.addr, timeoutEnv+"=30s")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	p := &serverProcess{}
	urlc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 2 && f[0] == "URL":
				urlc <- f[1]
			case len(f) == 2 && f[0] == "SERIAL":
				p.mu.Lock()
				p.serials = append(p.serials, f[1])
				p.mu.Unlock()
			}
		}
		close(urlc)
	}()
	select {
	case u, ok := <-urlc:
		if !ok {
			_ = cmd.Wait()
			t.Fatalf("the payments server exited without serving: %s", stderr.String())
		}
		p.URL = u
	case <-time.After(45 * time.Second):
		t.Fatalf("the payments server did not start within 45s: %s", stderr.String())
	}
	return p
}

// TestSPIREAuthorisationMatrix: a payments server and its callers, each with its own SVID
// from the SPIRE agent, against the declared policy; then the hostile callers.
func TestSPIREAuthorisationMatrix(t *testing.T) {
	s := testSPIRE(t)
	server := s.startServer(t, s.workload(t, "payments", ids.Payments))
	gateway := s.selfSource(t, ids.Gateway)
	policy := testPolicy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	allowed := 0
	hc := mtls.HTTPClient(gateway, ids.Payments)
	for _, proc := range []string{transferProc, getAccountProc} {
		want := connect.CodePermissionDenied
		if policy.Allowed(proc, ids.Gateway) {
			want = 0
		}
		for _, p := range mtlstest.Protocols() {
			code, seen, err := call(ctx, hc, server.URL, proc, p.Options)
			if code != want {
				t.Errorf("gateway %s over %s: policy says %s, got %s (%v)", proc, p.Name, codeName(want), codeName(code), err)
			}
			if code == 0 {
				allowed++
				if seen != ids.Gateway.String() {
					t.Errorf("handler saw caller %q, want %s", seen, ids.Gateway)
				}
			}
		}
	}

	// Another registered component: a separate process with the queries SVID.
	queries := s.workload(t, "queries", ids.Queries)
	cmd := exec.Command(queries, "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=client", addrEnv+"="+s.addr, targetEnv+"="+server.URL, timeoutEnv+"=30s")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("queries client: %v: %s", err, stderrOf(err))
	}
	want := connect.CodePermissionDenied
	if policy.Allowed(transferProc, ids.Queries) {
		want = 0
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(mtlstest.Protocols()) {
		t.Fatalf("queries client printed %q, want one CODE line per protocol", out)
	}
	for _, line := range lines {
		f := strings.Fields(line)
		if len(f) < 3 || f[2] != codeName(want) {
			t.Errorf("queries → Transfer: policy says %s, got %q", codeName(want), line)
		}
	}

	// Hostile callers, in process: none may reach the handler.
	foreign := newDevCA(t, "evil.example", time.Now)
	impostor := newDevCA(t, mtls.DefaultTrustDomain, time.Now)
	// Hostile clients trust the SPIRE bundle for the server, so that only the server's
	// verification of the client can refuse them.
	trustSPIRE := func(src mtls.Source) connect.HTTPClient {
		return h2Client(tlsconfig.MTLSClientConfig(src, gateway, tlsconfig.AuthorizeID(ids.Payments)))
	}
	hostile := []struct {
		name      string
		client    connect.HTTPClient
		url       string
		handshake bool
		want      connect.Code
	}{
		{"foreign trust domain", trustSPIRE(devSource(t, foreign, spiffeid.RequireFromString("spiffe://evil.example/gateway"))), server.URL, true, 0},
		{"impostor CA of our trust domain", trustSPIRE(devSource(t, impostor, ids.Gateway)), server.URL, true, 0},
		{"no client certificate", h2Client(tlsconfig.TLSClientConfig(gateway, tlsconfig.AuthorizeID(ids.Payments))), server.URL, false, connect.CodeUnauthenticated},
		{"server is not the one the client asked for", mtls.HTTPClient(gateway, ids.Audit), server.URL, true, 0},
		{"plaintext HTTP/2", h2cClient(), strings.Replace(server.URL, "https:", "http:", 1), true, 0},
	}
	for _, h := range hostile {
		for _, p := range mtlstest.Protocols() {
			code, _, err := transfer(ctx, h.client, h.url, p.Options...)
			switch {
			case err == nil:
				t.Errorf("%s over %s: the call succeeded", h.name, p.Name)
			case h.handshake && (code == connect.CodePermissionDenied || code == connect.CodeUnauthenticated):
				t.Errorf("%s over %s: want a refused connection, got a server answer: %v", h.name, p.Name, err)
			case !h.handshake && code != h.want:
				t.Errorf("%s over %s: want %s, got %v", h.name, p.Name, h.want, err)
			}
		}
	}

	// Every refused call above was refused before the handler: the handler has run
	// exactly for the allowed calls (and this last one).
	res, err := callHandled(ctx, hc, server.URL)
	if err != nil {
		t.Fatal(err)
	}
	if res != allowed+1 {
		t.Fatalf("the handler ran %d times, want %d (the allowed calls and this one)", res, allowed+1)
	}
}

func callHandled(ctx context.Context, hc connect.HTTPClient, url string) (int, error) {
	c := ledgerv1connect.NewPaymentServiceClient(hc, url)
	res, err := c.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{}))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(res.Header().Get("Test-Handled"))
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}

// TestSPIRERotationUnderLoad: SVIDs live 2 minutes (spire.sh's default) and the agent
// rotates them at half-life. Calls run continuously over pooled, reused connections
// until the server's SVID has rotated and a connection has been opened with the new one;
// not one call may fail.
func TestSPIRERotationUnderLoad(t *testing.T) {
	s := testSPIRE(t)
	server := s.startServer(t, s.workload(t, "payments", ids.Payments))
	gateway := s.selfSource(t, ids.Gateway)
	hc := mtls.HTTPClient(gateway, ids.Payments)
	rec := &serialRecorder{}
	rec.wrap(hc.Transport.(*http.Transport).TLSClientConfig)
	firstClient := serialOf(t, gateway)

	const workers = 4
	const limit = 4 * time.Minute // two SVID lifetimes: rotation must have happened by then
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				callCtx, cancelCall := context.WithTimeout(ctx, 10*time.Second)
				code, _, err := transfer(callCtx, hc, server.URL)
				cancelCall()
				if code != 0 {
					if ctx.Err() != nil {
						return // the test's own bound, reported below
					}
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
			}
		}()
	}

	start := time.Now()
	done := func() bool {
		serials := server.servingSerials()
		return len(serials) >= 2 && rec.saw(serials[len(serials)-1]) && serialOf(t, gateway) != firstClient
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for !done() {
		select {
		case <-ctx.Done():
			close(stop)
			wg.Wait()
			t.Fatalf("no rotation seen within %s: server serials %v, client saw %d server certificates; %d calls ok, %d failed",
				limit, server.servingSerials(), serialsSeen(rec), ok.Load(), failed.Load())
		case <-tick.C:
		}
	}
	close(stop)
	wg.Wait()
	serials, handshakes := rec.stats()
	t.Logf("after %s: %d calls ok, %d failed, over %d TLS connections; server SVID serials %v; client saw %d server certificates",
		time.Since(start).Round(time.Second), ok.Load(), failed.Load(), handshakes, server.servingSerials(), serials)
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d calls failed across the rotation; first: %v", n, firstErr.Load())
	}
	if ok.Load() < int64(10*handshakes) {
		t.Errorf("%d calls over %d connections: connections were not reused", ok.Load(), handshakes)
	}
}

// TestSPIREWorkloadAPIUnavailable: a component that cannot get an SVID at start — no
// agent at the address, or an agent that has no entry for it — exits with an error and
// never serves.
func TestSPIREWorkloadAPIUnavailable(t *testing.T) {
	s := testSPIRE(t)
	cases := []struct {
		name, addr, exe, want string
	}{
		{"no agent", "unix://" + filepath.Join(t.TempDir(), "none.sock"), s.workload(t, "payments", ids.Payments), "is the SPIRE agent running"},
		{"not registered", s.addr, s.workload(t, "unregistered", spiffeid.ID{}), "registration entry"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(c.exe, "-test.run=^$")
			cmd.Env = append(os.Environ(), roleEnv+"=server", addrEnv+"="+c.addr, timeoutEnv+"=5s")
			cmd.Stdin = strings.NewReader("") // a server that did start would exit at once
			out, err := cmd.Output()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 3 {
				t.Fatalf("want exit status 3 (no identity, nothing served), got %v; stdout %q", err, out)
			}
			if strings.Contains(string(out), "URL") {
				t.Fatalf("the server announced a URL without an identity: %q", out)
			}
			if !strings.Contains(string(ee.Stderr), c.want) {
				t.Fatalf("error should mention %q: %s", c.want, ee.Stderr)
			}
		})
	}
}

// TestSPIREWithIDPicksTheComponentsSVID: a workload that matches several entries gets
// several SVIDs; WithID makes the source use the component's own, and a component whose
// ID is not among them gets no source at all rather than speaking as another.
func TestSPIREWithIDPicksTheComponentsSVID(t *testing.T) {
	s := testSPIRE(t)
	s.selfSource(t, ids.Gateway)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s.register(t, ids.Relay, self) // the test process now matches two entries

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	relay, err := mtls.WorkloadSource(ctx, s.addr, mtls.WithID(ids.Relay))
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	if svid, err := relay.GetX509SVID(); err != nil || svid.ID != ids.Relay {
		t.Fatalf("WithID(relay) gave %v (%v)", svid, err)
	}

	short, cancelShort := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancelShort()
	src, err := mtls.WorkloadSource(short, s.addr, mtls.WithID(ids.Audit))
	if err == nil {
		_ = src.Close()
		t.Fatal("WithID(audit) gave a source to a workload with no audit entry")
	}
	for _, want := range []string{"but not " + ids.Audit.String(), ids.Gateway.String(), ids.Relay.String()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error should mention %q: %v", want, err)
		}
	}
}
