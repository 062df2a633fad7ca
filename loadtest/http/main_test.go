package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	ok := config{server: "http://127.0.0.1:8080", transfers: 10, concurrency: 4, conns: 2, duration: time.Second, warmup: 5, gcPercent: 800}
	cases := []struct {
		name    string
		change  func(*config)
		wantErr string // "" means valid
	}{
		{"loopback v4", func(*config) {}, ""},
		{"localhost", func(c *config) { c.server = "http://localhost:9" }, ""},
		{"loopback v6", func(c *config) { c.server = "http://[::1]:9" }, ""},
		{"remote host", func(c *config) { c.server = "http://10.0.0.1:8080" }, "not on loopback"},
		{"named host", func(c *config) { c.server = "http://example.com" }, "not on loopback"},
		{"https", func(c *config) { c.server = "https://127.0.0.1:8080" }, "http:// URL"},
		{"no transfers", func(c *config) { c.transfers = 0 }, "-transfers"},
		{"too many callers", func(c *config) { c.concurrency = 5000 }, "-concurrency"},
		{"more conns than callers", func(c *config) { c.conns = 5 }, "-conns"},
		{"no time", func(c *config) { c.duration = 0 }, "-duration"},
		{"warm-up beyond count", func(c *config) { c.warmup = 11 }, "-warmup"},
		{"no collector setting", func(c *config) { c.gcPercent = 0 }, "-gc-percent"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.change(&c)
			err := c.validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("want an error mentioning %q, got %v", tc.wantErr, err)
			}
		})
	}
}

// TestReadProcSelf reads this test process's own /proc entries: the parser must find a
// resident size and a CPU time that only grows.
func TestReadProcSelf(t *testing.T) {
	first, err := readProc(os.Getpid())
	if err != nil {
		t.Fatalf("read own /proc: %v", err)
	}
	if first.rssKB <= 0 || first.hwmKB < first.rssKB {
		t.Fatalf("want 0 < VmRSS <= VmHWM, got VmRSS %d kB, VmHWM %d kB", first.rssKB, first.hwmKB)
	}
	// Spin until the tick counter (10ms granularity) moves, for at most two seconds.
	second, spins := first, 0
	for deadline := time.Now().Add(2 * time.Second); second.cpu <= first.cpu && time.Now().Before(deadline); {
		for range 1_000_000 {
			spins++
		}
		if second, err = readProc(os.Getpid()); err != nil {
			t.Fatalf("read own /proc again: %v", err)
		}
	}
	if second.cpu <= first.cpu {
		t.Fatalf("want CPU time to grow from %v after %d spins, got %v", first.cpu, spins, second.cpu)
	}
	if none, err := readProc(0); err != nil || none != (procSample{}) {
		t.Fatalf("pid 0: want an empty sample and no error, got %+v, %v", none, err)
	}
}
