package dispatch

import (
	"sync"
	"time"
)

// BreakerState is where a circuit breaker is.
type BreakerState int

const (
	// Closed: attempts go through; consecutive failures are counted.
	Closed BreakerState = iota
	// Open: the endpoint failed Threshold times in a row; attempts are refused without
	// a request until Cooldown has passed.
	Open
	// HalfOpen: the cooldown passed; one probe goes through, and its outcome closes the
	// breaker or opens it for another cooldown.
	HalfOpen
)

func (s BreakerState) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return "unknown"
}

// Breaker is one endpoint's circuit breaker. It is shared by every delivery to the
// endpoint (all partitions), so a receiver that is down is probed by one request per
// cooldown instead of by every notification waiting for it. Time is an input.
type Breaker struct {
	threshold int
	cooldown  time.Duration
	onChange  func(from, to BreakerState) // called with mu held: must not call back

	mu       sync.Mutex
	state    BreakerState
	failures int       // consecutive, while closed
	openedAt time.Time // while open
	probing  bool      // while half-open: the probe is out
	// downSince is when the breaker last left Closed: a failed probe reopens it without
	// moving this, so it says how long the endpoint has been down, not since the last probe.
	downSince time.Time
	lastErr   error // the last failure's, kept for the dead letters of an open circuit
}

// NewBreaker returns a closed breaker that opens after threshold consecutive failures
// (at least 1) and lets a probe through cooldown after opening. onChange, when set, sees
// every transition.
func NewBreaker(threshold int, cooldown time.Duration, onChange func(from, to BreakerState)) *Breaker {
	return &Breaker{threshold: max(threshold, 1), cooldown: cooldown, onChange: onChange}
}

// Allow reports whether an attempt may be made now. A true answer in the half-open state
// is the probe: the caller must report its outcome with Success or Failure.
func (b *Breaker) Allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case Open:
		if now.Sub(b.openedAt) < b.cooldown {
			return false
		}
		b.set(HalfOpen)
		b.probing = true
		return true
	case HalfOpen:
		if b.probing {
			return false
		}
		b.probing = true
		return true
	}
	return true
}

// Success records an attempt the endpoint answered (2xx, or a 4xx refusal: it is up).
func (b *Breaker) Success() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failures = 0
	b.probing = false
	b.set(Closed)
}

// Failure records an attempt that failed (network error, timeout, 5xx, 429) with its error.
func (b *Breaker) Failure(now time.Time, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil {
		b.lastErr = err
	}
	switch b.state {
	case Closed:
		b.failures++
		if b.failures < b.threshold {
			return
		}
	case Open:
		// An attempt allowed before the breaker opened ended after it: already open.
		return
	}
	if b.state == Closed {
		b.downSince = now
	}
	b.failures = 0
	b.probing = false
	b.openedAt = now
	b.set(Open)
}

// Down reports whether the breaker is not closed (open, or half-open with its probe not
// yet answered), since when it has been so, and the last failure's error.
func (b *Breaker) Down() (since time.Time, lastErr error, down bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == Closed {
		return time.Time{}, nil, false
	}
	return b.downSince, b.lastErr, true
}

// Abandon gives back a probe that was allowed but never made (the delivery was
// cancelled), so the next attempt may probe.
func (b *Breaker) Abandon() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == HalfOpen {
		b.probing = false
	}
}

// State is the breaker's state at now (an open breaker whose cooldown passed reads as
// half-open).
func (b *Breaker) State(now time.Time) BreakerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == Open && now.Sub(b.openedAt) >= b.cooldown {
		return HalfOpen
	}
	return b.state
}

func (b *Breaker) set(s BreakerState) {
	if b.state == s {
		return
	}
	from := b.state
	b.state = s
	if b.onChange != nil {
		b.onChange(from, s)
	}
}
