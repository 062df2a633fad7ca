package services_test

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
)

// writeResponse is every mutating RPC's response: it carries a WriteResult.
type writeResponse interface {
	proto.Message
	GetResult() *ledgerv1.WriteResult
}

// writeCall binds one mutating RPC and its request, so a table can hold every kind.
func writeCall[Req, Res any, PRes interface {
	*Res
	writeResponse
}](procedure string, req *Req) func(context.Context, *client, http.Header) (*ledgerv1.WriteResult, error) {
	return func(ctx context.Context, c *client, h http.Header) (*ledgerv1.WriteResult, error) {
		res, err := call[Req, Res, PRes](ctx, c, procedure, req, h)
		if err != nil {
			return nil, err
		}
		return PRes(res).GetResult(), nil
	}
}

// TestRetryAfterServerRestart: a client whose call succeeded (or was refused) before the
// server restarted retries it after the restart — with its Idempotency-Key while the key
// store still holds the response, with the key after the key store lost it, and without a
// key. Every retry gets the original outcome, even though today's balances would refuse
// every one of the original payments, and nothing is appended again. The key store is a
// cache of responses; exactly-once rests on the ledger's ids (api/README.md).
func TestRetryAfterServerRestart(t *testing.T) {
	rdb := redisClient(t)
	idem := services.NewRedisIdempotencyStore(rdb, "")
	dir := t.TempDir()
	n := startNode(t, nodeOptions{dir: dir, idem: idem})
	ctx := testContext(t)
	c := newClient(t, n, kindConnect)
	for _, id := range []string{"world", "alice", "bob", "carol"} {
		kind := ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER
		if id == "world" {
			kind = ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL
		}
		mustCall[ledgerv1.OpenAccountRequest, ledgerv1.OpenAccountResponse](t, ctx, c, ledgerv1connect.AccountServiceOpenAccountProcedure,
			&ledgerv1.OpenAccountRequest{AccountId: id, Asset: "USD", Kind: kind})
	}
	mustCall[ledgerv1.TransferRequest, ledgerv1.TransferResponse](t, ctx, c, ledgerv1connect.PaymentServiceTransferProcedure,
		transferReq("fund", "world", "alice", usd("100.00")))

	expires := timestamppb.New(time.Now().Add(time.Hour).Truncate(time.Second))
	type doFunc = func(context.Context, *client, http.Header) (*ledgerv1.WriteResult, error)
	completed := []struct {
		name string
		do   doFunc
	}{
		{"transfer", writeCall[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ledgerv1connect.PaymentServiceTransferProcedure,
			transferReq("t1", "alice", "bob", usd("30.00")))},
		{"batch", writeCall[ledgerv1.BatchTransferRequest, ledgerv1.BatchTransferResponse](ledgerv1connect.PaymentServiceBatchTransferProcedure,
			&ledgerv1.BatchTransferRequest{PaymentId: "b1", Legs: []*ledgerv1.Leg{
				{SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("10.00")},
				{SourceAccountId: "alice", DestinationAccountId: "carol", Amount: usd("10.00")},
			}})},
		{"authorise", writeCall[ledgerv1.AuthoriseRequest, ledgerv1.AuthoriseResponse](ledgerv1connect.PaymentServiceAuthoriseProcedure,
			&ledgerv1.AuthoriseRequest{PaymentId: "a1", SourceAccountId: "alice", DestinationAccountId: "carol", Amount: usd("20.00"), ExpiresAt: expires})},
		{"capture", writeCall[ledgerv1.CaptureRequest, ledgerv1.CaptureResponse](ledgerv1connect.PaymentServiceCaptureProcedure,
			&ledgerv1.CaptureRequest{PaymentId: "a1", CaptureId: "c1", What: &ledgerv1.CaptureRequest_Amount{Amount: usd("5.00")}})},
		{"authorise to void", writeCall[ledgerv1.AuthoriseRequest, ledgerv1.AuthoriseResponse](ledgerv1connect.PaymentServiceAuthoriseProcedure,
			&ledgerv1.AuthoriseRequest{PaymentId: "a2", SourceAccountId: "alice", DestinationAccountId: "carol", Amount: usd("5.00"), ExpiresAt: expires})},
		{"void", writeCall[ledgerv1.VoidRequest, ledgerv1.VoidResponse](ledgerv1connect.PaymentServiceVoidProcedure,
			&ledgerv1.VoidRequest{PaymentId: "a2"})},
		{"refund", writeCall[ledgerv1.RefundRequest, ledgerv1.RefundResponse](ledgerv1connect.PaymentServiceRefundProcedure,
			&ledgerv1.RefundRequest{PaymentId: "t1", RefundId: "r1", Amount: usd("10.00")})},
		{"open account", writeCall[ledgerv1.OpenAccountRequest, ledgerv1.OpenAccountResponse](ledgerv1connect.AccountServiceOpenAccountProcedure,
			&ledgerv1.OpenAccountRequest{AccountId: "dave", Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER})},
	}
	refused := writeCall[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ledgerv1connect.PaymentServiceTransferProcedure,
		transferReq("x1", "bob", "alice", usd("1000.00")))
	altered := writeCall[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ledgerv1connect.PaymentServiceTransferProcedure,
		transferReq("t1", "alice", "bob", usd("30.01")))

	key := func(i int) http.Header { return keyHeader("restart-" + string(rune('a'+i))) }
	positions := make([]uint64, len(completed))
	for i, cmd := range completed {
		res, err := cmd.do(ctx, c, key(i))
		if err != nil {
			t.Fatalf("%s before the restart: %v", cmd.name, err)
		}
		positions[i] = res.GetPosition()
	}
	if _, err := refused(ctx, c, keyHeader("restart-refused")); codeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("overdraft before the restart: want failed_precondition, got %v", err)
	}
	acc := mustCall[ledgerv1.GetAccountRequest, ledgerv1.GetAccountResponse](t, ctx, c, ledgerv1connect.AccountServiceGetAccountProcedure,
		&ledgerv1.GetAccountRequest{AccountId: "alice"})
	mustCall[ledgerv1.TransferRequest, ledgerv1.TransferResponse](t, ctx, c, ledgerv1connect.PaymentServiceTransferProcedure,
		transferReq("drain", "alice", "world", usd(acc.GetAccount().GetBalance().GetAvailable())))

	n.shutdown()
	n = startNode(t, nodeOptions{dir: dir, idem: idem})
	c = newClient(t, n, kindConnect)
	head := func() uint64 {
		t.Helper()
		pos, err := n.store.Head(ctx)
		if err != nil {
			t.Fatalf("head: %v", err)
		}
		return pos
	}
	before := head()

	rounds := []struct {
		name          string
		key           func(int) http.Header
		flush         bool
		ledgerAnswers bool // no stored response can answer: the ledger must
	}{
		{name: "with its key, key store intact", key: key},
		{name: "with its key, key store flushed", key: key, flush: true, ledgerAnswers: true},
		{name: "without a key", key: func(int) http.Header { return nil }, ledgerAnswers: true},
	}
	for r, round := range rounds {
		if round.flush {
			if err := rdb.FlushDB(ctx).Err(); err != nil {
				t.Fatalf("flush the key store: %v", err)
			}
		}
		for i, cmd := range completed {
			res, err := cmd.do(ctx, c, round.key(i))
			switch {
			case err != nil:
				t.Errorf("%s retried after the restart %s: want the original outcome, got %v (code %v, reason %s)", cmd.name, round.name, err, codeOf(err), reasonOf(err))
			case res.GetPosition() != positions[i]:
				t.Errorf("%s retried after the restart %s: want the original position %d, got %d", cmd.name, round.name, positions[i], res.GetPosition())
			case round.ledgerAnswers && !res.GetReplayed():
				// The key store had no response to replay: the ledger itself must have
				// recognised the id.
				t.Errorf("%s retried after the restart %s: want replayed=true from the ledger, got false", cmd.name, round.name)
			}
		}
		if _, err := refused(ctx, c, keyHeader("restart-refused")); codeOf(err) != connect.CodeFailedPrecondition || reasonOf(err) != "INSUFFICIENT_FUNDS" {
			t.Errorf("refused overdraft retried after the restart %s: want failed_precondition INSUFFICIENT_FUNDS, got %v", round.name, err)
		}
		if _, err := altered(ctx, c, keyHeader("restart-altered-"+strconv.Itoa(r))); codeOf(err) != connect.CodeAlreadyExists || reasonOf(err) != "DUPLICATE_ID" {
			t.Errorf("payment t1 reused with another amount after the restart %s: want already_exists DUPLICATE_ID, got %v (reason %s)", round.name, err, reasonOf(err))
		}
	}
	if after := head(); after != before {
		t.Errorf("retries after the restart appended %d events, want none", after-before)
	}
}
