package domain

import (
	"fmt"
	"math"
	"strings"
)

// Default ceilings, in major units of every asset (dollars, yen, bitcoins).
//
// A single amount of a trillion is above any real payment (the largest interbank
// settlements are a few hundred billion) and 9,223 times below the int64 edge for a
// two-decimal asset, so the shared external account of an asset can absorb thousands of
// the largest payments in one direction and still take the next one. The credit-limit
// ceiling is the same: no account should be able to owe more than the largest payment the
// ledger will move, and an account at its floor stays as far from the edge as that.
const (
	DefaultMaxAmountMajor      int64 = 1_000_000_000_000
	DefaultMaxCreditLimitMajor int64 = 1_000_000_000_000
)

// edgeHeadroom is how many ceiling-sized movements in one direction must fit in int64 before
// any balance reaches the edge. It caps the ceilings of assets with many decimals (BTC/8,
// X/18), whose default in major units would not fit in int64 minor units at all.
const edgeHeadroom = 10_000

// Ceilings bound the amounts of one asset, in its minor units.
type Ceilings struct {
	MaxAmount      int64 // largest amount of one payment, authorisation, capture or refund
	MaxCreditLimit int64 // largest credit limit an account may be opened with
}

// Limits give every asset its Ceilings. They are an input of Decide (carried in State), not
// a global, so that an operator's configuration reaches the domain the way time does.
//
// The zero value is the defaults, so a caller that forgets Limits still gets a usable
// ledger.
type Limits struct {
	// MaxAmountMajor and MaxCreditLimitMajor apply to every asset without its own entry in
	// Assets, in major units scaled by each asset's decimals; zero means the default. The
	// result is capped at 1/edgeHeadroom of the int64 range.
	MaxAmountMajor      int64
	MaxCreditLimitMajor int64
	// Assets sets exact ceilings, in minor units, for the assets it names (code and scale:
	// POINTS/0 and POINTS/2 are different assets). They are taken as given (not capped), so
	// tests and operators can say precisely what they mean.
	Assets map[Asset]Ceilings
}

// DefaultLimits are the limits of the zero Limits value, spelled out.
func DefaultLimits() Limits {
	return Limits{MaxAmountMajor: DefaultMaxAmountMajor, MaxCreditLimitMajor: DefaultMaxCreditLimitMajor}
}

// Validate reports the first setting that cannot be a ceiling.
func (l Limits) Validate() error {
	if l.MaxAmountMajor < 0 || l.MaxCreditLimitMajor < 0 {
		return fmt.Errorf("%w: limits must not be negative (amount %d, credit limit %d)", ErrInvalidInput, l.MaxAmountMajor, l.MaxCreditLimitMajor)
	}
	for a, c := range l.Assets {
		if _, err := NewAsset(a.Code, int(a.Scale)); err != nil {
			return err
		}
		if c.MaxAmount <= 0 || c.MaxCreditLimit < 0 {
			return fmt.Errorf("%w: limits of %s: the largest amount must be positive and the largest credit limit zero or more", ErrInvalidInput, a)
		}
	}
	return nil
}

// For returns the ceilings of asset a in its minor units.
func (l Limits) For(a Asset) Ceilings {
	if c, ok := l.Assets[a]; ok {
		return c
	}
	amount, credit := l.MaxAmountMajor, l.MaxCreditLimitMajor
	if amount == 0 {
		amount = DefaultMaxAmountMajor
	}
	if credit == 0 {
		credit = DefaultMaxCreditLimitMajor
	}
	return Ceilings{MaxAmount: scaledCeiling(amount, a.Scale), MaxCreditLimit: scaledCeiling(credit, a.Scale)}
}

// scaledCeiling converts major units to minor units, saturating instead of overflowing,
// and keeps the result edgeHeadroom times below the int64 edge.
func scaledCeiling(major int64, scale uint8) int64 {
	const most = math.MaxInt64 / edgeHeadroom
	minor := major
	for range scale {
		if minor > most/10 {
			return most
		}
		minor *= 10
	}
	return min(minor, most)
}

// checkAmountCeiling refuses an amount above the asset's ceiling.
func checkAmountCeiling(l Limits, m Money, what string) error {
	if ceiling := l.For(m.Asset).MaxAmount; m.Minor > ceiling {
		return fmt.Errorf("%w: %s %s %s is above the largest single amount the ledger accepts for %s (%s)",
			ErrLimitExceeded, what, groupDigits(FormatMinor(m.Minor, m.Asset)), m.Asset.Code, m.Asset.Code,
			groupDigits(FormatMinor(ceiling, m.Asset)))
	}
	return nil
}

// checkCreditCeiling refuses a credit limit above the asset's ceiling.
func checkCreditCeiling(l Limits, limitMinor int64, a Asset) error {
	if ceiling := l.For(a).MaxCreditLimit; limitMinor > ceiling {
		return fmt.Errorf("%w: credit limit %s %s is above the largest credit limit the ledger accepts for %s (%s)",
			ErrLimitExceeded, groupDigits(FormatMinor(limitMinor, a)), a.Code, a.Code, groupDigits(FormatMinor(ceiling, a)))
	}
	return nil
}

// groupDigits puts a comma between every three digits of the whole part of a decimal
// ("-1234567.89" -> "-1,234,567.89"), so that people can read the size of a large amount.
func groupDigits(decimal string) string {
	sign := ""
	if strings.HasPrefix(decimal, "-") {
		sign, decimal = "-", decimal[1:]
	}
	whole, frac, hasFrac := strings.Cut(decimal, ".")
	var b strings.Builder
	b.Grow(len(sign) + len(decimal) + len(whole)/3)
	b.WriteString(sign)
	for i, r := range whole {
		if i > 0 && (len(whole)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if hasFrac {
		b.WriteByte('.')
		b.WriteString(frac)
	}
	return b.String()
}
