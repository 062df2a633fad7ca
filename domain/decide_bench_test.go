package domain_test

import (
	"testing"

	"github.com/securepay/securepay/domain"
)

// BenchmarkDecideTransfer measures one transfer's decision alone (no store): the checks
// every write passes through, ceilings and overflow-checked arithmetic included.
func BenchmarkDecideTransfer(b *testing.B) {
	usd := domain.Asset{Code: "USD", Scale: 2}
	state := domain.State{
		Accounts: map[domain.AccountID]domain.Account{
			"world": {ID: "world", Asset: usd, Kind: domain.KindExternal, Status: domain.AccountStatusOpen, Posted: -1_000_000},
			"alice": {ID: "alice", Asset: usd, Kind: domain.KindCustomer, Status: domain.AccountStatusOpen, Posted: 1_000_000},
		},
		Payments: map[domain.PaymentID]domain.Payment{},
	}
	cmd := domain.Transfer{PaymentID: "p1", Source: "alice", Destination: "world", Amount: domain.Money{Asset: usd, Minor: 1234}, Reference: "r"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := domain.Decide(state, cmd, t0); err != nil {
			b.Fatal(err)
		}
	}
}
