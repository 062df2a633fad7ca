// Package spiretest gives tests the real SPIRE server and agent that infra/local/spire.sh
// started (infra/local/test.sh exports SECUREPAY_TEST_SPIRE_DIR), and registers workloads
// with it by executable path.
package spiretest

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// SPIRE is a running SPIRE: its directory and the agent's Workload API address.
type SPIRE struct {
	Dir  string // spire.sh's DIR
	Addr string // the Workload API, unix:///.../agent.sock
}

// FromEnv returns the SPIRE of SECUREPAY_TEST_SPIRE_DIR. Without it the test is skipped,
// or fails when CI=true: in CI a missing service is a failure.
func FromEnv(t testing.TB) *SPIRE {
	t.Helper()
	dir := os.Getenv("SECUREPAY_TEST_SPIRE_DIR")
	if dir == "" {
		msg := "SECUREPAY_TEST_SPIRE_DIR is not set: run the tests with infra/local/test.sh (or infra/local/spire.sh start DIR and export it)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	addr, err := os.ReadFile(filepath.Join(dir, "workload-api"))
	if err != nil {
		t.Fatalf("no SPIRE agent recorded in %s (%v): start it with infra/local/spire.sh start DIR", dir, err)
	}
	return &SPIRE{Dir: dir, Addr: strings.TrimSpace(string(addr))}
}

// script is infra/local/spire.sh, found from this file's place in the module.
func script(t testing.TB) string {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("spiretest: cannot locate infra/local/spire.sh")
	}
	return filepath.Join(filepath.Dir(self), "..", "..", "..", "infra", "local", "spire.sh")
}

// Register creates (idempotently) the entry that gives id to processes running exe.
func (s *SPIRE) Register(t testing.TB, id spiffeid.ID, exe string) {
	t.Helper()
	out, err := exec.Command("bash", script(t), "register", s.Dir, id.String(), "unix:path:"+exe).CombinedOutput()
	if err != nil {
		t.Fatalf("register %s for %s: %v\n%s", id, exe, err, out)
	}
}

// WorkDir is a fresh directory under SPIRE's, removed when the test ends: short enough
// for unix socket paths, and readable by the agent, which attests executables in it.
func (s *SPIRE) WorkDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp(s.Dir, "w-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// CopyAs copies exe to dir/NAME/BASE and registers the copy as id: the agent tells
// processes of one user apart by executable path (a symlink would not do: it sees the
// resolved file), so each identity needs a copy of its own.
func (s *SPIRE) CopyAs(t testing.TB, exe, dir, name string, id spiffeid.ID) string {
	t.Helper()
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name, filepath.Base(exe))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
	s.Register(t, id, path)
	return path
}
