package main

import (
	"context"
	"fmt"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// checkInvariants streams the whole log once, in pages, and checks what must always hold:
// the hash chain verifies; per asset the posted balances of all accounts sum to zero; no
// account with a floor is ever below it (checked after every event, not just at the end);
// every payment is created exactly once. Memory: one page plus one entry per account and
// per payment id.
func checkInvariants(ctx context.Context, store eventstore.Store) (uint64, error) {
	type account struct {
		asset         domain.Asset
		floor         int64
		limited       bool
		posted, holds int64
	}
	accounts := map[string]*account{}
	created := map[domain.PaymentID]struct{}{}
	chain := eventstore.NewChainVerifier(0, eventstore.Hash{})
	var after uint64
	const page = 5000
	for {
		recs, err := store.ReadAll(ctx, after, page)
		if err != nil {
			return after, err
		}
		for i := range recs {
			rec := &recs[i]
			if err := chain.Check(rec); err != nil {
				return after, err
			}
			ev, err := domain.DecodeEvent(rec.Type, rec.Data)
			if err != nil {
				return after, fmt.Errorf("position %d: %w", rec.Position, err)
			}
			acc := accounts[rec.Stream]
			switch e := ev.(type) {
			case domain.AccountOpened:
				acc = &account{asset: e.Asset, floor: -e.CreditLimit, limited: e.Kind != domain.KindExternal}
				accounts[rec.Stream] = acc
			case domain.AccountDebited:
				acc.posted -= e.Amount.Minor
			case domain.AccountCredited:
				acc.posted += e.Amount.Minor
			case domain.HoldPlaced:
				acc.holds += e.Amount.Minor
			case domain.HoldCaptured:
				acc.posted -= e.Amount.Minor
				acc.holds -= e.Amount.Minor
			case domain.HoldReleased:
				acc.holds -= e.Amount.Minor
			case domain.PaymentTransferred, domain.PaymentBatchTransferred, domain.PaymentAuthorised:
				id := ev.(domain.PaymentEvent).Payment()
				if _, dup := created[id]; dup {
					return after, fmt.Errorf("position %d: payment %s created twice", rec.Position, id)
				}
				created[id] = struct{}{}
			}
			if acc != nil && acc.limited && acc.posted-acc.holds < acc.floor {
				return after, fmt.Errorf("position %d: %s is below its floor (%d available, floor %d)", rec.Position, rec.Stream, acc.posted-acc.holds, acc.floor)
			}
		}
		if len(recs) > 0 {
			after = recs[len(recs)-1].Position
		}
		if len(recs) < page {
			break
		}
	}
	sums := map[domain.Asset]int64{}
	for _, a := range accounts {
		sums[a.asset] += a.posted
	}
	for asset, sum := range sums {
		if sum != 0 {
			return after, fmt.Errorf("balances of %s sum to %d, not zero", asset, sum)
		}
	}
	return after, nil
}
