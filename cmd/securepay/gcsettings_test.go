package main

import (
	"runtime/debug"
	"testing"
)

func TestResolveGC(t *testing.T) {
	cases := []struct {
		name         string
		env          map[string]string
		limitMiB, gc int
		want         gcSettings
	}{
		{"flags", nil, 1024, 400, gcSettings{MemoryLimitBytes: 1 << 30, GCPercent: 400}},
		{"no limit leaves GOGC alone", nil, 0, 400, gcSettings{}},
		{"GOMEMLIMIT wins, and GOGC is not raised without our limit", map[string]string{"GOMEMLIMIT": "2GiB"}, 1024, 400, gcSettings{}},
		{"GOGC wins", map[string]string{"GOGC": "100"}, 300, 400, gcSettings{MemoryLimitBytes: 300 << 20}},
	}
	for _, tc := range cases {
		got := resolveGC(func(k string) string { return tc.env[k] }, tc.limitMiB, tc.gc)
		if got != tc.want {
			t.Errorf("%s: resolveGC = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// TestGCSettingsApplyAndRestore: a server run inside a test process (the command tests)
// must leave the runtime's knobs as it found them.
func TestGCSettingsApplyAndRestore(t *testing.T) {
	limit0, gc0 := debug.SetMemoryLimit(-1), debug.SetGCPercent(-1)
	debug.SetGCPercent(gc0)
	restore := gcSettings{MemoryLimitBytes: 512 << 20, GCPercent: 321}.apply()
	if l, g := debug.SetMemoryLimit(-1), debug.SetGCPercent(-1); l != 512<<20 || g != 321 {
		debug.SetGCPercent(g)
		restore()
		t.Fatalf("applied: memory limit %d, GOGC %d; want %d and 321", l, g, 512<<20)
	}
	debug.SetGCPercent(321)
	restore()
	if l, g := debug.SetMemoryLimit(-1), debug.SetGCPercent(-1); l != limit0 || g != gc0 {
		debug.SetGCPercent(g)
		t.Fatalf("restored: memory limit %d, GOGC %d; want %d and %d", l, g, limit0, gc0)
	}
	debug.SetGCPercent(gc0)
	gcSettings{}.apply()() // nothing to set: nothing changes
	if l, g := debug.SetMemoryLimit(-1), debug.SetGCPercent(-1); l != limit0 || g != gc0 {
		t.Fatalf("empty settings changed the memory limit to %d and GOGC to %d", l, g)
	}
	debug.SetGCPercent(gc0)
}
