package services_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
)

// One bad request never fails someone else's payment: requests whose traceparent is 55
// bytes of invalid UTF-8 (they used to pass the server, join a batch and make the store
// refuse all of it) are refused alone with INVALID_ARGUMENT, and every good transfer sent
// at the same time succeeds.
func TestPoisonHeadersFailOnlyTheirRequest(t *testing.T) {
	n := startNode(t, nodeOptions{})
	ctx := testContext(t)
	c := newClient(t, n, kindConnect)
	seedLedger(t, ctx, c)
	bad := []string{
		"00-" + strings.Repeat("\xff", 32) + "-00f067aa0ba902b7-01",     // invalid UTF-8, the right length
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",       // upper-case hex
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",       // all-zero trace id
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",       // the forbidden version
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // version 00 has no extra fields
		"not a traceparent",
	}
	const good, poison = 1500, 93
	var wg sync.WaitGroup
	var mu sync.Mutex
	goodFailed, poisonWrong := 0, 0
	sem := make(chan struct{}, 32)
	for i := range good + poison {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			isPoison := i%((good+poison)/poison) == 0 && i/((good+poison)/poison) < poison
			h := http.Header{}
			if isPoison {
				h.Set("traceparent", bad[i%len(bad)])
			} else if i%2 == 0 {
				h.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
			}
			_, err := call[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ctx, c, ledgerv1connect.PaymentServiceTransferProcedure,
				transferReq(fmt.Sprintf("poison-mix-%d", i), "world", "bob", usd("0.01")), h)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case isPoison && codeOf(err) != connect.CodeInvalidArgument:
				poisonWrong++
				t.Errorf("request %d with traceparent %q: want invalid_argument, got %v", i, h.Get("traceparent"), err)
			case !isPoison && err != nil:
				goodFailed++
				t.Errorf("good request %d: %v (code %v)", i, err, codeOf(err))
			}
		}()
	}
	wg.Wait()
	bob := mustCall[ledgerv1.GetAccountRequest, ledgerv1.GetAccountResponse](t, ctx, c, ledgerv1connect.AccountServiceGetAccountProcedure, &ledgerv1.GetAccountRequest{AccountId: "bob"})
	if goodFailed != 0 || poisonWrong != 0 {
		t.Fatalf("want 0 good requests failed and every poison refused, got %d failed and %d poison answered otherwise", goodFailed, poisonWrong)
	}
	if got := bob.GetAccount().GetBalance().GetPosted(); got != "15.00" {
		t.Fatalf("bob after %d good transfers of 0.01: want 15.00, got %s", good, got)
	}
}
