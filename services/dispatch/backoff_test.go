package dispatch_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/securepay/securepay/services/dispatch"
)

func TestBackoffCeiling(t *testing.T) {
	b := dispatch.Backoff{Base: 100 * time.Millisecond, Max: time.Second}
	cases := []struct {
		retry int
		want  time.Duration
	}{
		{-1, 0}, {0, 0},
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{3, 400 * time.Millisecond},
		{4, 800 * time.Millisecond},
		{5, time.Second}, // capped
		{6, time.Second},
		{1 << 20, time.Second}, // no overflow however many retries
	}
	for _, tc := range cases {
		if got := b.Ceiling(tc.retry); got != tc.want {
			t.Errorf("Ceiling(%d) = %s, want %s", tc.retry, got, tc.want)
		}
	}
	if got := (dispatch.Backoff{}).Ceiling(3); got != 0 {
		t.Errorf("zero Backoff Ceiling(3) = %s, want 0", got)
	}
}

// Full jitter: every delay is within [0, ceiling], and the draws spread over the range
// (both halves are hit), so retries of notifications that failed together do not align.
func TestBackoffDelayIsFullJitter(t *testing.T) {
	const seed = 42
	r := rand.New(rand.NewPCG(seed, seed))
	b := dispatch.Backoff{Base: 10 * time.Millisecond, Max: 80 * time.Millisecond}
	for retry := 1; retry <= 6; retry++ {
		ceil := b.Ceiling(retry)
		var low, high int
		for range 1000 {
			d := b.Delay(retry, r)
			if d < 0 || d > ceil {
				t.Fatalf("seed %d: Delay(%d) = %s, outside [0, %s]", seed, retry, d, ceil)
			}
			if d < ceil/2 {
				low++
			} else {
				high++
			}
		}
		if low < 300 || high < 300 {
			t.Errorf("seed %d: Delay(%d) over 1000 draws: %d below half the ceiling, %d above; want both near 500", seed, retry, low, high)
		}
	}
}
