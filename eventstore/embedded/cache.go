package embedded

import (
	"strings"
	"sync/atomic"
)

// versionCache remembers stream versions so the writer does not read pebble for every
// stream of every append. It is bounded: two generations of at most max/2 entries each;
// when the young generation fills, the old one is dropped whole and the young one takes
// its place. Streams in use keep moving to the young generation, so a hot account stays
// cached while a million one-off payment streams cycle through. Only the writer goroutine
// touches it.
//
// gen counts generation changes (the only time entries are forgotten); appenders read it
// to know whether a lookup they made is still good (see Store.prefetch).
type versionCache struct {
	young, old map[string]uint64
	half       int
	gen        *atomic.Uint64
}

func newVersionCache(max int, gen *atomic.Uint64) *versionCache {
	half := max / 2
	if half < 1 {
		half = 1
	}
	return &versionCache{young: make(map[string]uint64), old: make(map[string]uint64), half: half, gen: gen}
}

func (c *versionCache) generation() uint64 { return c.gen.Load() }

func (c *versionCache) get(stream string) (uint64, bool) {
	if v, ok := c.young[stream]; ok {
		return v, true
	}
	if v, ok := c.old[stream]; ok {
		c.put(stream, v)
		return v, true
	}
	return 0, false
}

// remove forgets a stream.
func (c *versionCache) remove(stream string) {
	delete(c.young, stream)
	delete(c.old, stream)
}

// put records a stream's version. The key is cloned when new, so the cache never pins a
// caller's (possibly much larger) backing string.
func (c *versionCache) put(stream string, version uint64) {
	if _, ok := c.young[stream]; ok {
		c.young[stream] = version
		return
	}
	if len(c.young) >= c.half {
		c.gen.Add(1) // before anything is forgotten
		c.old = c.young
		c.young = make(map[string]uint64, c.half)
	}
	c.young[strings.Clone(stream)] = version
}
