package main

import (
	"runtime/debug"
)

// gcSettings are the Go runtime's memory knobs of a server process: a soft memory limit
// and the heap growth between collections (GOGC). The environment's GOMEMLIMIT and GOGC
// win over the flags (resolveGC).
type gcSettings struct {
	// MemoryLimitBytes is the soft memory limit (0: leave it alone).
	MemoryLimitBytes int64
	// GCPercent is GOGC (0: leave it alone). It is only raised together with
	// MemoryLimitBytes, which then bounds the heap that a high GOGC would let grow.
	GCPercent int
}

// resolveGC turns the flags into settings: a variable set in the environment leaves its
// knob to the runtime, which read it at start.
func resolveGC(getenv func(string) string, memLimitMiB, gcPercent int) gcSettings {
	var s gcSettings
	if getenv("GOMEMLIMIT") == "" {
		s.MemoryLimitBytes = int64(memLimitMiB) << 20
	}
	if getenv("GOGC") == "" && s.MemoryLimitBytes > 0 {
		s.GCPercent = gcPercent
	}
	return s
}

// apply sets the knobs and returns what puts them back (tests run servers in one process).
func (s gcSettings) apply() (restore func()) {
	prevLimit, prevPercent := int64(-1), -1
	if s.MemoryLimitBytes > 0 {
		// A soft limit: the collector works harder near it instead of letting the heap
		// double; it never fails an allocation.
		prevLimit = debug.SetMemoryLimit(s.MemoryLimitBytes)
	}
	if s.GCPercent > 0 {
		prevPercent = debug.SetGCPercent(s.GCPercent)
	}
	return func() {
		if prevPercent >= 0 {
			debug.SetGCPercent(prevPercent)
		}
		if prevLimit >= 0 {
			debug.SetMemoryLimit(prevLimit)
		}
	}
}
