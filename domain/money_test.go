package domain_test

import (
	"errors"
	"flag"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/securepay/securepay/domain"
)

var (
	usd = domain.Asset{Code: "USD", Scale: 2}
	jpy = domain.Asset{Code: "JPY", Scale: 0}
	btc = domain.Asset{Code: "BTC", Scale: 8}
)

func TestParseAmountAccepts(t *testing.T) {
	cases := []struct {
		in    string
		asset domain.Asset
		minor int64
	}{
		{"12.34", usd, 1234},
		{"12.3", usd, 1230},
		{"12", usd, 1200},
		{"0.01", usd, 1},
		{"0.10", usd, 10},
		{"1", jpy, 1},
		{"1000000", jpy, 1000000},
		{"0.00000001", btc, 1},
		{"21000000", btc, 2100000000000000},
		{"1.5", btc, 150000000},
		{"92233720368547758.07", usd, math.MaxInt64},
		{"9223372036854775807", jpy, math.MaxInt64},
		{"92233720368.54775807", btc, math.MaxInt64},
	}
	for _, c := range cases {
		t.Run(c.asset.Code+"/"+c.in, func(t *testing.T) {
			m, err := domain.ParseAmount(c.in, c.asset)
			if err != nil {
				t.Fatalf("ParseAmount(%q, %s): want %d minor, got error %v", c.in, c.asset, c.minor, err)
			}
			if m.Minor != c.minor || m.Asset != c.asset {
				t.Fatalf("ParseAmount(%q, %s) = %d %s, want %d %s", c.in, c.asset, m.Minor, m.Asset, c.minor, c.asset)
			}
		})
	}
}

func TestParseAmountRefuses(t *testing.T) {
	cases := []struct {
		in    string
		asset domain.Asset
	}{
		{"", usd}, {"1e3", usd}, {"1.5e2", usd}, {"1E3", jpy}, {"-1", usd}, {"+1", usd}, {"-0.01", usd},
		{" 1", usd}, {"1 ", usd}, {"1\n", usd}, {"1,00", usd}, {"1_000", usd}, {"1'000", jpy},
		{"0", usd}, {"0.00", usd}, {"0", jpy}, {"0.00000000", btc}, {"00.1", usd}, {"01", usd},
		{"007", jpy}, {"1.", usd}, {".5", usd}, {".", usd}, {"1.234", usd}, {"1.5", jpy},
		{"1.0", jpy}, {"1.000000001", btc}, {"1..2", usd}, {"1.2.3", btc}, {"1.-2", usd},
		// Overflow near MaxInt64 at each scale.
		{"92233720368547758.08", usd}, {"92233720368547759", usd}, {"9223372036854775808", jpy},
		{"99999999999999999999", jpy}, {"92233720368.54775808", btc}, {"100000000000", btc},
		{strings.Repeat("9", 400), jpy},
		// Garbage and look-alikes.
		{"abc", usd}, {"12.3a", usd}, {"0x10", jpy}, {"NaN", usd}, {"Inf", usd}, {"1/2", usd},
		{"١٢", jpy},         // Arabic-Indic digits
		{"１２", jpy},         // full-width digits
		{"1\u00a0000", jpy}, // no-break space as separator
		{"12\x00", jpy},
	}
	for _, c := range cases {
		t.Run(c.asset.Code+"/"+strconv.Quote(c.in), func(t *testing.T) {
			m, err := domain.ParseAmount(c.in, c.asset)
			if err == nil {
				t.Fatalf("ParseAmount(%q, %s): want ErrInvalidAmount, got %d minor", c.in, c.asset, m.Minor)
			}
			if !errors.Is(err, domain.ErrInvalidAmount) {
				t.Fatalf("ParseAmount(%q, %s): want ErrInvalidAmount, got %v", c.in, c.asset, err)
			}
		})
	}
	if _, err := domain.ParseAmount("1", domain.Asset{}); !errors.Is(err, domain.ErrInvalidAmount) {
		t.Fatalf("ParseAmount with no asset: want ErrInvalidAmount, got %v", err)
	}
}

func TestFormatMinor(t *testing.T) {
	cases := []struct {
		minor int64
		asset domain.Asset
		want  string
	}{
		{1234, usd, "12.34"},
		{1, usd, "0.01"},
		{0, usd, "0.00"},
		{100, usd, "1.00"},
		{-1, usd, "-0.01"},
		{-1234, usd, "-12.34"},
		{7, jpy, "7"},
		{0, jpy, "0"},
		{-7, jpy, "-7"},
		{1, btc, "0.00000001"},
		{-150000000, btc, "-1.50000000"},
		{math.MaxInt64, usd, "92233720368547758.07"},
		{math.MinInt64, usd, "-92233720368547758.08"},
		{math.MinInt64, jpy, "-9223372036854775808"},
		{math.MinInt64 + 1, btc, "-92233720368.54775807"},
	}
	for _, c := range cases {
		if got := domain.FormatMinor(c.minor, c.asset); got != c.want {
			t.Errorf("FormatMinor(%d, %s) = %q, want %q", c.minor, c.asset, got, c.want)
		}
	}
	if got := (domain.Money{Asset: usd, Minor: 1234}).String(); got != "12.34 USD" {
		t.Errorf("Money.String() = %q, want %q", got, "12.34 USD")
	}
}

func TestNewAndParseAsset(t *testing.T) {
	good := []struct {
		in   string
		want domain.Asset
	}{
		{"USD", usd}, {"JPY", jpy}, {"BTC", btc}, {"USD/2", usd}, {"JPY/0", jpy}, {"BTC/8", btc},
		{"POINTS/0", domain.Asset{Code: "POINTS", Scale: 0}}, {"X1/18", domain.Asset{Code: "X1", Scale: 18}},
		{"BHD", domain.Asset{Code: "BHD", Scale: 3}},
	}
	for _, c := range good {
		got, err := domain.ParseAsset(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseAsset(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	bad := []string{"", "usd", "US", "U", "USD/3", "JPY/2", "BTC/2", "POINTS", "POINTS/19", "POINTS/-1",
		"POINTS/", "POINTS/x", "POINTS/100", "1USD/2", "US D/2", "ABCDEFGHIJKLM/2", "/2", "USD/2/2", "ÜSD/2"}
	for _, in := range bad {
		if a, err := domain.ParseAsset(in); !errors.Is(err, domain.ErrInvalidInput) {
			t.Errorf("ParseAsset(%q) = %v, %v; want ErrInvalidInput", in, a, err)
		}
	}
	newCases := []struct {
		code  string
		scale int
		ok    bool
	}{
		{"USD", 2, true}, {"USD", 3, false}, {"JPY", 0, true}, {"JPY", 2, false}, {"BTC", 8, true},
		{"POINTS", 0, true}, {"POINTS", 18, true}, {"POINTS", 19, false}, {"POINTS", -1, false},
		{"A", 2, false}, {"ab", 2, false}, {"A-B", 2, false}, {"ABCDEFGHIJKL", 0, true}, {"ABCDEFGHIJKLM", 0, false},
	}
	for _, c := range newCases {
		a, err := domain.NewAsset(c.code, c.scale)
		switch {
		case c.ok && err != nil:
			t.Errorf("NewAsset(%q, %d): want ok, got %v", c.code, c.scale, err)
		case c.ok && (a.Code != c.code || int(a.Scale) != c.scale):
			t.Errorf("NewAsset(%q, %d) = %v", c.code, c.scale, a)
		case !c.ok && !errors.Is(err, domain.ErrInvalidInput):
			t.Errorf("NewAsset(%q, %d) = %v, %v; want ErrInvalidInput", c.code, c.scale, a, err)
		}
	}
}

var moneySeed = flag.Uint64("money-seed", 0, "seed for TestAmountRoundTrip (0: derive from time)")

// For any positive minor amount and any scale, formatting and parsing back is the identity.
func TestAmountRoundTrip(t *testing.T) {
	seed := *moneySeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	rng := rand.New(rand.NewPCG(seed, 0))
	for i := range 20000 {
		scale := rng.IntN(domain.MaxScale + 1)
		a := domain.Asset{Code: "TEST", Scale: uint8(scale)}
		var minor int64
		switch i % 4 {
		case 0:
			minor = 1 + rng.Int64N(1000) // small amounts, where leading "0." matters
		case 1:
			minor = math.MaxInt64 - rng.Int64N(1000) // near overflow
		default:
			minor = 1 + rng.Int64N(math.MaxInt64)
		}
		s := domain.FormatMinor(minor, a)
		m, err := domain.ParseAmount(s, a)
		if err != nil || m.Minor != minor {
			t.Fatalf("seed %d step %d: ParseAmount(FormatMinor(%d, %s) = %q) = %d, %v; want %d (replay with -money-seed=%d)",
				seed, i, minor, a, s, m.Minor, err, minor, seed)
		}
	}
}

// canonical is what FormatMinor writes for an accepted input: the fraction padded with zeros
// to the asset's scale (and a point added if the input had none and the asset has decimals).
func canonical(s string, scale int) string {
	intPart, frac, _ := strings.Cut(s, ".")
	if scale == 0 {
		return intPart
	}
	return intPart + "." + frac + strings.Repeat("0", scale-len(frac))
}

func FuzzParseAmount(f *testing.F) {
	for _, s := range []string{"12.34", "0.01", "1", "1e3", "-1", "00.1", "92233720368547758.07", "92233720368547758.08", "١", ".5", "1."} {
		for _, scale := range []uint8{0, 2, 8} {
			f.Add(s, scale)
		}
	}
	f.Fuzz(func(t *testing.T, s string, scale uint8) {
		a := domain.Asset{Code: "FUZZ", Scale: scale % (domain.MaxScale + 1)}
		m, err := domain.ParseAmount(s, a)
		if err != nil {
			if !errors.Is(err, domain.ErrInvalidAmount) {
				t.Fatalf("ParseAmount(%q, %s): refusal must wrap ErrInvalidAmount, got %v", s, a, err)
			}
			return
		}
		if m.Minor <= 0 || m.Asset != a {
			t.Fatalf("ParseAmount(%q, %s) accepted %d %s: must be > 0 in the asked asset", s, a, m.Minor, m.Asset)
		}
		formatted := domain.FormatMinor(m.Minor, a)
		if want := canonical(s, int(a.Scale)); formatted != want {
			t.Fatalf("ParseAmount(%q, %s) = %d, which formats as %q; want %q", s, a, m.Minor, formatted, want)
		}
		again, err := domain.ParseAmount(formatted, a)
		if err != nil || again != m {
			t.Fatalf("ParseAmount(%q) = %v, %v; want %v", formatted, again, err, m)
		}
	})
}
