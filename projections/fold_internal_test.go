package projections

import (
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
)

// The fold's overflow checks are its own (see addChecked), so they are pinned here against
// math/big rather than against the domain's: edge values where int64 arithmetic wraps,
// then random pairs from a printed seed.
func TestFoldOverflowChecksAgreeWithBigIntegers(t *testing.T) {
	check := func(a, b int64) {
		t.Helper()
		for _, c := range []struct {
			op  string
			got func(a, b int64) (int64, bool)
			ref func(z, x, y *big.Int) *big.Int
		}{{"+", addChecked, (*big.Int).Add}, {"-", subChecked, (*big.Int).Sub}} {
			exact := c.ref(new(big.Int), big.NewInt(a), big.NewInt(b))
			sum, ok := c.got(a, b)
			if fits := exact.IsInt64(); ok != fits || ok && sum != exact.Int64() {
				t.Fatalf("%d %s %d = %d, ok %v; exactly %s (fits in int64: %v)", a, c.op, b, sum, ok, exact, fits)
			}
		}
	}
	edges := []int64{math.MinInt64, math.MinInt64 + 1, -1 << 62, -2, -1, 0, 1, 2, 1 << 62, math.MaxInt64 - 1, math.MaxInt64}
	for _, a := range edges {
		for _, b := range edges {
			check(a, b)
		}
	}
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	for range 100_000 {
		check(int64(rng.Uint64()), int64(rng.Uint64()))
	}
}
