package services_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
)

// lostClaimStore stores the first claim and then reports a failure, as a Redis that wrote
// the key but whose answer timed out.
type lostClaimStore struct {
	services.IdempotencyStore
	lost atomic.Bool
}

func (s *lostClaimStore) Claim(ctx context.Context, key, owner, fp string, ttl time.Duration) (services.IdempotencyRecord, bool, error) {
	rec, claimed, err := s.IdempotencyStore.Claim(ctx, key, owner, fp, ttl)
	if err == nil && claimed && s.lost.CompareAndSwap(false, true) {
		return services.IdempotencyRecord{}, false, errors.New("claim answer lost after the write")
	}
	return rec, claimed, err
}

// A claim whose answer was lost is released, so the client's retry runs instead of being
// told "in progress" until the claim lapses (two minutes).
func TestLostClaimAnswerDoesNotBlockRetries(t *testing.T) {
	store := &lostClaimStore{IdempotencyStore: services.NewMemoryIdempotencyStore(0, nil)}
	n := startNode(t, nodeOptions{idem: store})
	ctx := testContext(t)
	c := newClient(t, n, kindConnect)
	seedLedger(t, ctx, c)
	req := transferReq("lost-claim-1", "alice", "bob", usd("1.00"))
	_, err := call[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ctx, c, ledgerv1connect.PaymentServiceTransferProcedure, req, keyHeader("lost-claim"))
	if codeOf(err) != connect.CodeUnavailable {
		t.Fatalf("first attempt: want unavailable (the store's answer was lost), got %v", err)
	}
	// The release runs beside the answer: retry as a client would, a bounded number of times.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err = call[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ctx, c, ledgerv1connect.PaymentServiceTransferProcedure, req, keyHeader("lost-claim"))
		if err == nil {
			return
		}
		if reasonOf(err) != services.ReasonIdempotencyInFlight || time.Now().After(deadline) {
			t.Fatalf("retry after a lost claim: want success, got %v (reason %s)", err, reasonOf(err))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
