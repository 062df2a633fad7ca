// Package domain is SecurePay's ledger model: money, accounts, payments, the commands that
// change them, the events that record the changes, and the pure functions Decide and Evolve.
//
// It imports only the standard library (a test enforces it) and does no I/O: time and ids
// are inputs, the store stamps record times, and nothing here calls time.Now.
package domain

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// MaxScale bounds an asset's decimal places so that 10^scale fits comfortably in int64.
const MaxScale = 18

// Asset is a currency or other unit, with the number of decimal places its minor unit has
// (USD/2: 1234 minor = 12.34 USD; JPY/0; BTC/8).
type Asset struct {
	Code  string
	Scale uint8
}

// knownAssets are the assets whose scale is fixed by ISO 4217 or common use, so that a
// client may name them by code alone. Other assets are opened with an explicit scale.
var knownAssets = map[string]uint8{
	"USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "CAD": 2, "AUD": 2, "SEK": 2, "NOK": 2, "DKK": 2,
	"PLN": 2, "CZK": 2, "INR": 2, "CNY": 2, "BRL": 2, "MXN": 2, "SGD": 2, "HKD": 2, "NZD": 2,
	"ZAR": 2, "JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "VND": 0, "BHD": 3, "KWD": 3, "JOD": 3,
	"OMR": 3, "TND": 3, "BTC": 8, "USDC": 6, "USDT": 6,
}

// NewAsset validates an asset: a code of 2 to 12 upper-case letters or digits starting with a
// letter, and a scale of 0 to MaxScale. A known code (USD, JPY, BTC, ...) must carry its
// known scale: "USD/3" is refused rather than silently creating a second dollar.
func NewAsset(code string, scale int) (Asset, error) {
	if err := validAssetCode(code); err != nil {
		return Asset{}, err
	}
	if scale < 0 || scale > MaxScale {
		return Asset{}, fmt.Errorf("%w: asset %s scale %d: must be 0..%d", ErrInvalidInput, code, scale, MaxScale)
	}
	if known, ok := knownAssets[code]; ok && int(known) != scale {
		return Asset{}, fmt.Errorf("%w: asset %s has %d decimal places, not %d", ErrInvalidInput, code, known, scale)
	}
	return Asset{Code: code, Scale: uint8(scale)}, nil
}

// LookupAsset returns a known asset by code ("USD" -> USD/2).
func LookupAsset(code string) (Asset, error) {
	if err := validAssetCode(code); err != nil {
		return Asset{}, err
	}
	scale, ok := knownAssets[code]
	if !ok {
		return Asset{}, fmt.Errorf("%w: asset %s is not a known currency: give its scale as %s/N", ErrInvalidInput, code, code)
	}
	return Asset{Code: code, Scale: scale}, nil
}

// ParseAsset accepts "USD" (a known asset) or "CODE/SCALE" ("POINTS/0").
func ParseAsset(s string) (Asset, error) {
	code, scaleText, explicit := strings.Cut(s, "/")
	if !explicit {
		return LookupAsset(code)
	}
	if len(scaleText) == 0 || len(scaleText) > 2 {
		return Asset{}, fmt.Errorf("%w: asset %q: scale must be a number 0..%d", ErrInvalidInput, s, MaxScale)
	}
	scale := 0
	for _, r := range scaleText {
		if r < '0' || r > '9' {
			return Asset{}, fmt.Errorf("%w: asset %q: scale must be a number 0..%d", ErrInvalidInput, s, MaxScale)
		}
		scale = scale*10 + int(r-'0')
	}
	return NewAsset(code, scale)
}

func validAssetCode(code string) error {
	if len(code) < 2 || len(code) > 12 {
		return fmt.Errorf("%w: asset code %q must be 2..12 characters", ErrInvalidInput, code)
	}
	for i, r := range code {
		upper := r >= 'A' && r <= 'Z'
		digit := r >= '0' && r <= '9'
		if !upper && !(digit && i > 0) {
			return fmt.Errorf("%w: asset code %q must be upper-case letters and digits, starting with a letter", ErrInvalidInput, code)
		}
	}
	return nil
}

func (a Asset) String() string { return fmt.Sprintf("%s/%d", a.Code, a.Scale) }

// IsZero reports whether a is the zero Asset (no asset given).
func (a Asset) IsZero() bool { return a.Code == "" }

// Money is an amount in an asset's minor units. The zero Money has no asset.
type Money struct {
	Asset Asset
	Minor int64
}

// maxAmountDigits bounds the input length; int64 has 19 digits.
const maxAmountDigits = 19

// ParseAmount parses an exact, positive decimal string in the asset's units ("12.34" ->
// 1234 at scale 2). It refuses signs, exponents, spaces, separators, leading zeros, zero,
// more decimals than the asset has, and values that overflow int64 minor units.
func ParseAmount(s string, a Asset) (Money, error) {
	bad := func(why string) (Money, error) {
		return Money{}, fmt.Errorf("%w: %q is not a valid %s amount: %s", ErrInvalidAmount, s, a.Code, why)
	}
	// Names the largest value in the asset's units, since "too large" alone leaves a person
	// guessing how much smaller to go; built only on refusal, off the hot path.
	tooLarge := func() (Money, error) {
		return bad("too large (the ledger can hold at most " + groupDigits(FormatMinor(math.MaxInt64, a)) + ")")
	}
	if a.IsZero() {
		return Money{}, fmt.Errorf("%w: amount %q has no asset", ErrInvalidAmount, s)
	}
	if s == "" {
		return bad("empty")
	}
	intPart, frac, hasPoint := strings.Cut(s, ".")
	if intPart == "" {
		return bad("write a digit before the decimal point")
	}
	if hasPoint && frac == "" {
		return bad("write digits after the decimal point, or drop it")
	}
	if len(frac) > int(a.Scale) {
		if a.Scale == 0 {
			return bad(a.Code + " has no decimal places")
		}
		return bad(fmt.Sprintf("%s has at most %d decimal places", a.Code, a.Scale))
	}
	if len(intPart) > 1 && intPart[0] == '0' {
		return bad("leading zeros are not allowed")
	}
	if len(intPart)+int(a.Scale) > maxAmountDigits+1 {
		return tooLarge()
	}
	var minor int64
	digit := func(r byte) (int64, bool) {
		if r < '0' || r > '9' {
			return 0, false
		}
		return int64(r - '0'), true
	}
	for i := 0; i < len(intPart); i++ {
		d, ok := digit(intPart[i])
		if !ok {
			return bad("only digits and one decimal point are allowed")
		}
		next, ok := mulAdd(minor, 10, d)
		if !ok {
			return tooLarge()
		}
		minor = next
	}
	for i := 0; i < int(a.Scale); i++ {
		var d int64
		if i < len(frac) {
			var ok bool
			if d, ok = digit(frac[i]); !ok {
				return bad("only digits and one decimal point are allowed")
			}
		}
		next, ok := mulAdd(minor, 10, d)
		if !ok {
			return tooLarge()
		}
		minor = next
	}
	if minor == 0 {
		return bad("must be greater than zero")
	}
	return Money{Asset: a, Minor: minor}, nil
}

// NewMoney validates a positive amount given in minor units.
func NewMoney(minor int64, a Asset) (Money, error) {
	if a.IsZero() {
		return Money{}, fmt.Errorf("%w: amount has no asset", ErrInvalidAmount)
	}
	if minor <= 0 {
		return Money{}, fmt.Errorf("%w: %d minor units of %s: must be greater than zero", ErrInvalidAmount, minor, a.Code)
	}
	return Money{Asset: a, Minor: minor}, nil
}

func mulAdd(x, m, d int64) (int64, bool) {
	if x > (math.MaxInt64-d)/m {
		return 0, false
	}
	return x*m + d, true
}

// FormatMinor writes minor units of an asset as an exact decimal string; negative values
// (balances of external accounts) get a leading minus.
func FormatMinor(minor int64, a Asset) string {
	neg := minor < 0
	var u uint64
	if neg {
		u = uint64(-(minor + 1)) + 1 // no overflow at MinInt64
	} else {
		u = uint64(minor)
	}
	// strconv and a zero pad rather than fmt: this runs for every posting the API returns.
	digits := strconv.FormatUint(u, 10)
	if pad := int(a.Scale) + 1 - len(digits); pad > 0 {
		digits = strings.Repeat("0", pad) + digits
	}
	out := digits
	if a.Scale > 0 {
		cut := len(digits) - int(a.Scale)
		out = digits[:cut] + "." + digits[cut:]
	}
	if neg {
		return "-" + out
	}
	return out
}

// String formats Money as "12.34 USD".
func (m Money) String() string { return FormatMinor(m.Minor, m.Asset) + " " + m.Asset.Code }

// Decimal formats Money's amount alone ("12.34").
func (m Money) Decimal() string { return FormatMinor(m.Minor, m.Asset) }

// addChecked and subChecked are the only ways balances change: an overflow is a refused
// command (ErrLimitExceeded), never a wrapped-around balance. The refusal speaks in the
// units of asset, the balance's own, because minor units mean nothing to the person
// reading it.
func addChecked(a, b int64, asset Asset) (int64, error) {
	if (b > 0 && a > math.MaxInt64-b) || (b < 0 && a < math.MinInt64-b) {
		return 0, overflowError(b > 0, asset)
	}
	return a + b, nil
}

func subChecked(a, b int64, asset Asset) (int64, error) {
	if (b < 0 && a > math.MaxInt64+b) || (b > 0 && a < math.MinInt64+b) {
		return 0, overflowError(b < 0, asset)
	}
	return a - b, nil
}

func overflowError(up bool, asset Asset) error {
	if up {
		return fmt.Errorf("%w: the resulting balance would exceed the largest amount the ledger can hold for %s (%s)",
			ErrLimitExceeded, asset.Code, groupDigits(FormatMinor(math.MaxInt64, asset)))
	}
	return fmt.Errorf("%w: the resulting balance would go below the lowest amount the ledger can hold for %s (%s)",
		ErrLimitExceeded, asset.Code, groupDigits(FormatMinor(math.MinInt64, asset)))
}
