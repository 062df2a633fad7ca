package redis

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// DefaultReadTimeout bounds one Redis call on the read path (Config.ReadTimeout). A
// healthy Redis answers in well under a millisecond; without a bound go-redis retries a
// refused connection with backoff, which cost each balance read about two seconds while
// Redis was down.
const DefaultReadTimeout = 50 * time.Millisecond

// readRetryInterval: once Redis has failed a read, reads skip it (and go straight to the
// views) except one every interval, which finds out whether it is back. A dead Redis then
// costs one read in this interval a ReadTimeout, and the others nothing.
const readRetryInterval = time.Second

// degradation tracks whether the read path is falling back from Redis, so that the change
// is logged once each way instead of once per read.
type degradation struct {
	log   *slog.Logger
	clock func() time.Time

	mu       sync.Mutex
	down     bool
	nextTry  time.Time // while down: when the next read may try Redis again
	failures uint64    // reads that fell back during the current outage
}

// skip reports whether a read should not try Redis now. While Redis is down, the first
// caller after each retry interval is let through as the probe.
func (d *degradation) skip() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.down {
		return false
	}
	if now := d.clock(); !now.Before(d.nextTry) {
		d.nextTry = now.Add(readRetryInterval)
		return false
	}
	d.failures++
	return true
}

func (d *degradation) isDown() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.down
}

// failed records a Redis call that did not answer; err is logged only if it starts an
// outage. A read whose own caller went away says nothing about Redis.
func (d *degradation) failed(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failures++
	d.nextTry = d.clock().Add(readRetryInterval)
	if d.down {
		return
	}
	d.down = true
	d.log.Warn("redis unreachable: balance reads fall back to the views until it answers",
		"component", "balance-cache", "error", err.Error())
}

// ok records a Redis call that answered, ending an outage if there was one.
func (d *degradation) ok() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.down {
		return
	}
	d.down = false
	d.log.Info("redis reachable again: balance reads use the cache",
		"component", "balance-cache", "reads_fallen_back", d.failures)
	d.failures = 0
}
