package dispatch

import (
	"math/rand/v2"
	"time"
)

// Backoff is exponential backoff with full jitter: before retry n (1 for the first retry)
// a delivery waits a uniformly random time in [0, min(Max, Base·2^(n-1))]. The jitter
// spreads the retries of many notifications that failed together (a receiver coming back
// is not hit by all of them in the same instant); "full" rather than "equal" jitter
// because it spreads them most for the same expected wait.
type Backoff struct {
	Base time.Duration // ceiling of the first retry's wait
	Max  time.Duration // ceiling of every wait
}

// Ceiling is the longest wait before retry n (n >= 1); 0 for n < 1.
func (b Backoff) Ceiling(n int) time.Duration {
	if n < 1 || b.Base <= 0 {
		return 0
	}
	d := b.Base
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2 // stops at Max, so it never overflows
	}
	return min(d, b.Max)
}

// Delay is the wait before retry n, drawn from r.
func (b Backoff) Delay(n int, r *rand.Rand) time.Duration {
	c := b.Ceiling(n)
	if c <= 0 {
		return 0
	}
	return time.Duration(r.Int64N(int64(c) + 1))
}
