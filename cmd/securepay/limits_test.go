package main

import (
	"reflect"
	"strings"
	"testing"

	"github.com/securepay/securepay/domain"
)

// The ceilings set on dev's command line reach every decision, and refusals of bad input
// and of amounts above a ceiling read as sentences in the asset's units.
func TestDevCeilingsAndMessages(t *testing.T) {
	url := startDev(t, "--max-amount", "100", "--max-credit-limit", "50")
	mustCLI(t, url, "account", "open", "world", "--asset", "USD", "--kind", "external")
	mustCLI(t, url, "account", "open", "alice", "--asset", "USD")
	mustCLI(t, url, "transfer", "--from", "world", "--to", "alice", "--amount", "100.00", "--asset", "USD", "--id", "at-ceiling")
	mustCLI(t, url, "account", "open", "bob", "--asset", "USD", "--credit-limit", "50.00")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"amount above the ceiling", []string{"transfer", "--from", "world", "--to", "alice", "--amount", "100.01", "--asset", "USD", "--id", "above"},
			"amount 100.01 USD is above the largest single amount the ledger accepts for USD (100.00)"},
		{"credit limit above the ceiling", []string{"account", "open", "carol", "--asset", "USD", "--credit-limit", "50.01"},
			"credit limit 50.01 USD is above the largest credit limit the ledger accepts for USD (50.00)"},
		{"negative amount", []string{"transfer", "--from", "world", "--to", "alice", "--amount", "-5", "--asset", "USD", "--id", "neg"},
			"amount must be a positive decimal such as 12.34"},
		{"lower-case asset", []string{"account", "open", "dave", "--asset", "usd"},
			"asset must be upper case, e.g. USD"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := cli(t, url, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("securepay %s: want an error saying %q, got %v", strings.Join(tt.args, " "), tt.want, err)
			}
			if strings.Contains(err.Error(), "regex") {
				t.Fatalf("the refusal shows a pattern: %v", err)
			}
		})
	}
}

func TestParseAssetLimits(t *testing.T) {
	usd, points := domain.Asset{Code: "USD", Scale: 2}, domain.Asset{Code: "POINTS", Scale: 0}
	tests := []struct {
		in      string
		want    map[domain.Asset]domain.Ceilings
		wantErr string
	}{
		{in: "USD=5000000.00:1000.00", want: map[domain.Asset]domain.Ceilings{usd: {MaxAmount: 500000000, MaxCreditLimit: 100000}}},
		{in: "USD=10, POINTS/0=7", want: map[domain.Asset]domain.Ceilings{usd: {MaxAmount: 1000, MaxCreditLimit: 1000}, points: {MaxAmount: 7, MaxCreditLimit: 7}}},
		{in: "USD=10:0", want: map[domain.Asset]domain.Ceilings{usd: {MaxAmount: 1000}}},
		{in: "USD", wantErr: "want ASSET=AMOUNT[:CREDIT]"},
		{in: "usd=10", wantErr: "upper-case"},
		{in: "POINTS=10", wantErr: "give its scale"},
		{in: "USD=1.001", wantErr: "at most 2 decimal places"},
		{in: "USD=0", wantErr: "greater than zero"},
		{in: "USD=10:-1", wantErr: "not a valid USD amount"},
		{in: "USD=1,USD=2", wantErr: "given twice"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseAssetLimits(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("want an error containing %q, got %v, %v", tt.wantErr, got, err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

// A per-asset ceiling applies to its asset alone; the others keep the flags' ceilings.
func TestDevAssetLimits(t *testing.T) {
	url := startDev(t, "--asset-limits", "EUR=5.00:0")
	mustCLI(t, url, "account", "open", "world", "--asset", "EUR", "--kind", "external")
	mustCLI(t, url, "account", "open", "anna", "--asset", "EUR")
	mustCLI(t, url, "account", "open", "usd-world", "--asset", "USD", "--kind", "external")
	mustCLI(t, url, "account", "open", "bill", "--asset", "USD")
	mustCLI(t, url, "transfer", "--from", "usd-world", "--to", "bill", "--amount", "5.01", "--asset", "USD")
	_, err := cli(t, url, "transfer", "--from", "world", "--to", "anna", "--amount", "5.01", "--asset", "EUR")
	if want := "above the largest single amount the ledger accepts for EUR (5.00)"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("EUR transfer above its ceiling: want %q, got %v", want, err)
	}
	_, err = cli(t, url, "account", "open", "bert", "--asset", "EUR", "--credit-limit", "0.01")
	if want := "above the largest credit limit the ledger accepts for EUR (0.00)"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("EUR credit limit above its ceiling: want %q, got %v", want, err)
	}
}
