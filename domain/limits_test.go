package domain_test

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/securepay/securepay/domain"
)

// The ceilings of each asset, in its minor units: the major-unit setting scaled by the
// asset's decimals, capped far below the int64 edge for assets with many decimals.
func TestLimitsFor(t *testing.T) {
	const capped = math.MaxInt64 / 10_000
	wei := domain.Asset{Code: "WEI", Scale: 18}
	tests := []struct {
		name   string
		limits domain.Limits
		asset  domain.Asset
		want   domain.Ceilings
	}{
		{"zero value is the defaults, USD", domain.Limits{}, usd, domain.Ceilings{MaxAmount: 1e14, MaxCreditLimit: 1e14}},
		{"defaults spelled out, USD", domain.DefaultLimits(), usd, domain.Ceilings{MaxAmount: 1e14, MaxCreditLimit: 1e14}},
		{"defaults, JPY has no decimals", domain.Limits{}, jpy, domain.Ceilings{MaxAmount: 1e12, MaxCreditLimit: 1e12}},
		{"defaults, BTC is capped below the edge", domain.Limits{}, btc, domain.Ceilings{MaxAmount: capped, MaxCreditLimit: capped}},
		{"defaults, 18 decimals is capped below the edge", domain.Limits{}, wei, domain.Ceilings{MaxAmount: capped, MaxCreditLimit: capped}},
		{"configured in major units", domain.Limits{MaxAmountMajor: 100, MaxCreditLimitMajor: 5}, usd, domain.Ceilings{MaxAmount: 10000, MaxCreditLimit: 500}},
		{"configured above the cap is capped", domain.Limits{MaxAmountMajor: math.MaxInt64}, jpy, domain.Ceilings{MaxAmount: capped, MaxCreditLimit: 1e12}},
		{"per asset, exact", domain.Limits{Assets: map[domain.Asset]domain.Ceilings{usd: {MaxAmount: 7, MaxCreditLimit: 0}}}, usd, domain.Ceilings{MaxAmount: 7}},
		{"per asset is per scale too", domain.Limits{Assets: map[domain.Asset]domain.Ceilings{{Code: "POINTS", Scale: 0}: {MaxAmount: 7}}},
			domain.Asset{Code: "POINTS", Scale: 2}, domain.Ceilings{MaxAmount: 1e14, MaxCreditLimit: 1e14}},
		{"per asset leaves others alone", domain.Limits{Assets: map[domain.Asset]domain.Ceilings{usd: {MaxAmount: 7}}}, jpy, domain.Ceilings{MaxAmount: 1e12, MaxCreditLimit: 1e12}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.limits.For(tt.asset); got != tt.want {
				t.Fatalf("For(%s) = %+v, want %+v", tt.asset, got, tt.want)
			}
		})
	}
}

func TestLimitsValidate(t *testing.T) {
	tests := []struct {
		name   string
		limits domain.Limits
		ok     bool
	}{
		{"zero", domain.Limits{}, true},
		{"defaults", domain.DefaultLimits(), true},
		{"negative amount", domain.Limits{MaxAmountMajor: -1}, false},
		{"negative credit limit", domain.Limits{MaxCreditLimitMajor: -1}, false},
		{"per asset zero amount", domain.Limits{Assets: map[domain.Asset]domain.Ceilings{usd: {}}}, false},
		{"per asset bad code", domain.Limits{Assets: map[domain.Asset]domain.Ceilings{{Code: "usd", Scale: 2}: {MaxAmount: 1}}}, false},
		{"per asset", domain.Limits{Assets: map[domain.Asset]domain.Ceilings{usd: {MaxAmount: 1}}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.limits.Validate(); (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// Each ceiling accepts a value at it and refuses one minor unit above it, with
// LIMIT_EXCEEDED and a sentence naming the ceiling in the asset's units.
func TestDecideCeilings(t *testing.T) {
	top := int64(1e14) // the default for USD: 1,000,000,000,000.00
	small := domain.Limits{MaxAmountMajor: 100, MaxCreditLimitMajor: 50}
	tests := []struct {
		name    string
		limits  domain.Limits
		when    domain.Command
		message string // "" when accepted
	}{
		{name: "transfer at the default ceiling", when: xferCmd("p1", "world", "bob", usdMoney(top))},
		{name: "transfer just above the default ceiling", when: xferCmd("p1", "world", "bob", usdMoney(top+1)),
			message: "limit exceeded: amount 1,000,000,000,000.01 USD is above the largest single amount the ledger accepts for USD (1,000,000,000,000.00)"},
		{name: "the reported amount of the issue", when: xferCmd("p1", "world", "bob", usdMoney(9223372036854765807)),
			message: "limit exceeded: amount 92,233,720,368,547,658.07 USD is above the largest single amount the ledger accepts for USD (1,000,000,000,000.00)"},
		{name: "batch leg just above the ceiling", when: batchCmd("b1", leg("world", "bob", usdMoney(1)), leg("world", "bob", usdMoney(top+1))),
			message: "limit exceeded: transfer 2 amount 1,000,000,000,000.01 USD is above the largest single amount the ledger accepts for USD (1,000,000,000,000.00)"},
		{name: "authorise at the default ceiling", when: authCmd("a1", "world", "bob", usdMoney(top), exp)},
		{name: "authorise just above the default ceiling", when: authCmd("a1", "world", "bob", usdMoney(top+1), exp),
			message: "limit exceeded: amount 1,000,000,000,000.01 USD is above the largest single amount the ledger accepts for USD (1,000,000,000,000.00)"},
		{name: "credit limit at the default ceiling", when: openCmd("dave", usd, domain.KindCustomer, top)},
		{name: "credit limit just above the default ceiling", when: openCmd("dave", usd, domain.KindCustomer, top+1),
			message: "limit exceeded: credit limit 1,000,000,000,000.01 USD is above the largest credit limit the ledger accepts for USD (1,000,000,000,000.00)"},
		{name: "credit limit of the issue, 9e16", when: openCmd("dave", jpy, domain.KindMerchant, 9e16),
			message: "limit exceeded: credit limit 90,000,000,000,000,000 JPY is above the largest credit limit the ledger accepts for JPY (1,000,000,000,000)"},
		{name: "configured transfer at the ceiling", limits: small, when: xferCmd("p1", "world", "bob", usdMoney(10000))},
		{name: "configured transfer just above", limits: small, when: xferCmd("p1", "world", "bob", usdMoney(10001)),
			message: "limit exceeded: amount 100.01 USD is above the largest single amount the ledger accepts for USD (100.00)"},
		{name: "configured credit limit at the ceiling", limits: small, when: openCmd("dave", usd, domain.KindCustomer, 5000)},
		{name: "configured credit limit just above", limits: small, when: openCmd("dave", usd, domain.KindCustomer, 5001),
			message: "limit exceeded: credit limit 50.01 USD is above the largest credit limit the ledger accepts for USD (50.00)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state := fold(base())
			state.Limits = tt.limits
			events, err := domain.Decide(state, tt.when, t0)
			if tt.message == "" {
				if err != nil || len(events) == 0 {
					t.Fatalf("want accepted, got %v (%d events)", err, len(events))
				}
				return
			}
			if !errors.Is(err, domain.ErrLimitExceeded) || domain.ReasonOf(err) != domain.ReasonLimitExceeded {
				t.Fatalf("want LIMIT_EXCEEDED, got %v", err)
			}
			if err.Error() != tt.message {
				t.Fatalf("message:\n got %s\nwant %s", err, tt.message)
			}
		})
	}
}

// A retried open of an account created before its ceiling was lowered is still the same
// request: the ceiling applies to what is new, not to what is replayed.
func TestCeilingDoesNotRefuseAReplay(t *testing.T) {
	open := openCmd("dave", usd, domain.KindCustomer, 5001)
	state := fold(append(base(), opened(open)))
	state.Limits = domain.Limits{MaxCreditLimitMajor: 50}
	if events, err := domain.Decide(state, open, t0); err != nil || len(events) != 0 {
		t.Fatalf("replayed open: want no events and no error, got %v, %v", events, err)
	}
}

// An overflow says what happened in the asset's units, never in raw minor units.
func TestOverflowMessageSpeaksInUnits(t *testing.T) {
	huge := int64(math.MaxInt64)
	tests := []struct {
		name    string
		given   []domain.Event
		when    domain.Command
		message string
	}{
		{
			name:    "credit past the top",
			given:   cat(base(), transferred(xferCmd("w", "world", "bob", usdMoney(huge-10)), -huge+10500-10, huge-10)),
			when:    xferCmd("p1", "alice", "bob", usdMoney(11)),
			message: "limit exceeded: the resulting balance would exceed the largest amount the ledger can hold for USD (92,233,720,368,547,758.07)",
		},
		{
			name:    "external debit past the bottom",
			given:   cat(base(), transferred(xferCmd("w", "world", "bob", usdMoney(huge-10500)), -huge, huge-10500)),
			when:    xferCmd("p1", "world", "shop", usdMoney(2)),
			message: "limit exceeded: the resulting balance would go below the lowest amount the ledger can hold for USD (-92,233,720,368,547,758.08)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := domain.Decide(fold(tt.given), tt.when, t0)
			if !errors.Is(err, domain.ErrLimitExceeded) {
				t.Fatalf("want LIMIT_EXCEEDED, got %v", err)
			}
			if err.Error() != tt.message {
				t.Fatalf("message:\n got %s\nwant %s", err, tt.message)
			}
			if strings.Contains(err.Error(), "9223372036854775807") {
				t.Fatalf("message shows raw minor units: %s", err)
			}
		})
	}
}

// An amount too large to parse names the largest the ledger can hold, in the asset's units.
func TestParseAmountTooLargeNamesTheLargest(t *testing.T) {
	_, err := domain.ParseAmount("99999999999999999999", usd)
	want := `invalid amount: "99999999999999999999" is not a valid USD amount: too large (the ledger can hold at most 92,233,720,368,547,758.07)`
	if !errors.Is(err, domain.ErrInvalidAmount) || err.Error() != want {
		t.Fatalf("ParseAmount: got %v, want %s", err, want)
	}
}
