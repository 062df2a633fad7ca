package main

import (
	"strings"
	"testing"
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
