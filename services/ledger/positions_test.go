package ledger_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/services/ledger"
)

// Every state a result returns is labelled with the log position it is true at: the
// event at that position belongs to the account's (or payment's) stream and has the
// state's version. Checked for concurrent transfers batched together (another command may
// move an account after this one in the same append), for replays after later activity
// (which return today's state), and for reads.
func TestResultPositionsNameTheirState(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			store, _ := b.open(t)
			p := newProcessor(t, store, ledger.Config{SharedStore: b.shared})
			open(t, p, "world", usd, domain.KindExternal, 0)
			const payers = 8
			for i := range payers {
				open(t, p, fmt.Sprintf("payer-%d", i), usd, domain.KindCustomer, 0)
			}
			check := func(what string, res ledger.Result) {
				t.Helper()
				if len(res.AccountPositions) != len(res.Accounts) {
					t.Fatalf("%s: %d accounts but %d positions", what, len(res.Accounts), len(res.AccountPositions))
				}
				for i, a := range res.Accounts {
					checkAt(t, store, what, domain.AccountStream(a.ID), a.Version, res.AccountPositions[i])
				}
				if res.Payment != nil {
					checkAt(t, store, what, domain.PaymentStream(res.Payment.ID), res.Payment.Version, res.PaymentPosition)
				}
			}
			var wg sync.WaitGroup
			results := make([]ledger.Result, 200)
			cmds := make([]domain.Transfer, len(results))
			for i := range results {
				cmds[i] = domain.Transfer{PaymentID: domain.PaymentID(fmt.Sprintf("t-%d", i)), Source: "world",
					Destination: domain.AccountID(fmt.Sprintf("payer-%d", i%payers)), Amount: money(1, usd)}
				wg.Add(1)
				go func() {
					defer wg.Done()
					results[i] = exec(t, p, cmds[i])
				}()
			}
			wg.Wait()
			for i, res := range results {
				check(fmt.Sprintf("transfer %d", i), res)
			}
			// Replays after later activity: today's states, with today's positions.
			for i := range 10 {
				res := exec(t, p, cmds[i])
				if !res.Replayed || res.Position != results[i].Position {
					t.Fatalf("replay %d: want replayed at %d, got replayed=%v at %d", i, results[i].Position, res.Replayed, res.Position)
				}
				check(fmt.Sprintf("replay %d", i), res)
			}
			a, pos, err := p.AccountAt(ctxT(t), "world")
			if err != nil {
				t.Fatalf("read world: %v", err)
			}
			checkAt(t, store, "read of world", domain.AccountStream("world"), a.Version, pos)
		})
	}
}

func checkAt(t *testing.T, store eventstore.Store, what, stream string, version, position uint64) {
	t.Helper()
	recs, err := store.ReadAll(ctxT(t), position-1, 1)
	if err != nil || len(recs) != 1 {
		t.Fatalf("%s: read position %d: %d records, %v", what, position, len(recs), err)
	}
	if r := recs[0]; r.Stream != stream || r.StreamVersion != version {
		t.Errorf("%s: %s at version %d is labelled position %d, which holds %s version %d", what, stream, version, position, r.Stream, r.StreamVersion)
	}
}
