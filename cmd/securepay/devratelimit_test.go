package main

import (
	"context"
	"net/http"
	"testing"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
)

// TestDevRateLimitFlags: --rate-limit and --rate-burst set each principal's allowance at
// dev's gateway; a call over it is RESOURCE_EXHAUSTED and reaches nothing.
func TestDevRateLimitFlags(t *testing.T) {
	url := startDev(t, "--rate-limit", "1", "--rate-burst", "2")
	client := ledgerv1connect.NewWebhookServiceClient(http.DefaultClient, url, bearer(devTokenFor(url)))
	list := func() error {
		_, err := client.ListEndpoints(context.Background(), connect.NewRequest(&ledgerv1.ListEndpointsRequest{AccountId: "alice"}))
		return err
	}
	// startDev's readiness checks may have used some of the burst; within a second at
	// most burst+1 calls are admitted, so four in a row must meet a refusal.
	var refused error
	for range 4 {
		if err := list(); err != nil {
			refused = err
			break
		}
	}
	if connect.CodeOf(refused) != connect.CodeResourceExhausted {
		t.Fatalf("4 calls in a row at --rate-limit 1 --rate-burst 2: want resource_exhausted, got %v", refused)
	}
}
