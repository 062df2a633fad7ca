package mtls_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/securepay/securepay/services/mtls"
)

// TestWorkloadSourceUnavailable: with no agent at the address, WorkloadSource gives up
// within its bound with an error that says what to check, and returns no source (the
// component then has nothing to serve with).
func TestWorkloadSourceUnavailable(t *testing.T) {
	addr := "unix://" + filepath.Join(t.TempDir(), "no-agent.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	src, err := mtls.WorkloadSource(ctx, addr)
	if err == nil {
		_ = src.Close()
		t.Fatal("WorkloadSource succeeded without an agent")
	}
	if src != nil {
		t.Error("WorkloadSource returned a source with its error")
	}
	if !strings.Contains(err.Error(), "is the SPIRE agent running") || !strings.Contains(err.Error(), addr) {
		t.Errorf("error should name the address and the likely causes: %v", err)
	}
	if waited := time.Since(start); waited > mtls.WorkloadStartTimeout+5*time.Second {
		t.Errorf("waited %s, beyond the start bound %s", waited, mtls.WorkloadStartTimeout)
	}
}

func TestWorkloadSourceRefusesBadAddresses(t *testing.T) {
	for _, addr := range []string{"", "http://127.0.0.1:1", "unix:relative.sock", "/abs/path/without/scheme"} {
		src, err := mtls.WorkloadSource(context.Background(), addr)
		if err == nil {
			_ = src.Close()
			t.Errorf("WorkloadSource(%q) accepted the address", addr)
		}
	}
}

func TestCheckSVID(t *testing.T) {
	issued := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	clock := &fakeClock{now: issued}
	ca, err := mtls.NewDevCA(td, time.Hour, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	src := devSource(t, ca, ids.Queries)
	if _, err := src.GetX509SVID(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		at   time.Time
		want string // "" for valid
	}{
		{issued, ""},
		{issued.Add(59 * time.Minute), ""},
		{issued.Add(-time.Hour), "not valid before"},
		{issued.Add(61 * time.Minute), "expired"},
	}
	for _, c := range cases {
		err := mtls.CheckSVID(src, c.at)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("CheckSVID at %s = %v, want %q", c.at, err, c.want)
		}
	}
}
