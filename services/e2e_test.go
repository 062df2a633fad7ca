package services_test

import (
	"context"
	"io"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
)

// streamer reads a server stream of any of the three clients.
type streamer[Res any] struct {
	next  func() (*Res, error) // io.EOF at the end
	close func()
}

func serverStream[Req, Res any, PRes interface {
	*Res
	proto.Message
}](ctx context.Context, c *client, procedure string, req *Req) (*streamer[Res], error) {
	if c.kind == kindGRPC {
		ctx, cancel := context.WithCancel(ctx)
		desc := &grpc.StreamDesc{StreamName: procedure, ServerStreams: true}
		s, err := c.conn.NewStream(ctx, desc, procedure)
		if err != nil {
			cancel()
			return nil, err
		}
		if err := s.SendMsg(req); err != nil {
			cancel()
			return nil, err
		}
		if err := s.CloseSend(); err != nil {
			cancel()
			return nil, err
		}
		return &streamer[Res]{
			next: func() (*Res, error) {
				out := PRes(new(Res))
				if err := s.RecvMsg(out); err != nil {
					return nil, err
				}
				return (*Res)(out), nil
			},
			close: cancel,
		}, nil
	}
	cl := connect.NewClient[Req, Res](c.http, c.url+procedure, c.opts...)
	ctx, cancel := context.WithCancel(ctx)
	s, err := cl.CallServerStream(ctx, connect.NewRequest(req))
	if err != nil {
		cancel()
		return nil, err
	}
	return &streamer[Res]{
		next: func() (*Res, error) {
			if s.Receive() {
				return s.Msg(), nil
			}
			if err := s.Err(); err != nil {
				return nil, err
			}
			return nil, io.EOF
		},
		close: func() { cancel(); s.Close() },
	}, nil
}

// mustCall fails the test on an error, naming the step.
func mustCall[Req, Res any, PRes interface {
	*Res
	proto.Message
}](t *testing.T, ctx context.Context, c *client, procedure string, req *Req) *Res {
	t.Helper()
	res, err := call[Req, Res, PRes](ctx, c, procedure, req, nil)
	if err != nil {
		t.Fatalf("%s over %s: unexpected error %v (code %v, reason %q)", procedure, c.kind, err, codeOf(err), reasonOf(err))
	}
	return res
}

func balanceIn(t *testing.T, r *ledgerv1.WriteResult, account string) *ledgerv1.Balance {
	t.Helper()
	for _, b := range r.GetBalances() {
		if b.GetAccountId() == account {
			return b
		}
	}
	t.Fatalf("write result has no balance of %s: %v", account, r)
	return nil
}

func wantBalance(t *testing.T, what string, b *ledgerv1.Balance, posted, held, available string) {
	t.Helper()
	if b.GetPosted() != posted || b.GetHeld() != held || b.GetAvailable() != available {
		t.Fatalf("%s: want posted %s held %s available %s, got posted %s held %s available %s",
			what, posted, held, available, b.GetPosted(), b.GetHeld(), b.GetAvailable())
	}
}

// TestEndToEnd walks a newcomer's whole journey with each of the three clients: open
// accounts, fund, transfer, read balances and history (read-your-writes), the card flow
// (authorise, capture, void, refund), a batch, account life cycle, audit, and a live watch.
func TestEndToEnd(t *testing.T) {
	for _, kind := range allKinds {
		t.Run(string(kind), func(t *testing.T) {
			n := startNode(t, nodeOptions{})
			c := newClient(t, n, kind)
			ctx := testContext(t)
			journey(t, ctx, c)
		})
	}
}

func journey(t *testing.T, ctx context.Context, c *client) {
	open := func(id string, kind ledgerv1.AccountKind) *ledgerv1.OpenAccountResponse {
		return mustCall[ledgerv1.OpenAccountRequest, ledgerv1.OpenAccountResponse](t, ctx, c, ledgerv1connect.AccountServiceOpenAccountProcedure,
			&ledgerv1.OpenAccountRequest{AccountId: id, Asset: "USD", Kind: kind, Metadata: map[string]string{"owner": id, "team": "e2e"}})
	}
	world := open("world", ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL)
	if world.GetResult().GetPosition() == 0 || world.GetAccount().GetStatus() != ledgerv1.AccountStatus_ACCOUNT_STATUS_OPEN {
		t.Fatalf("open world: want an open account at a log position, got %v", world)
	}
	open("alice", ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER)
	open("bob", ledgerv1.AccountKind_ACCOUNT_KIND_MERCHANT)
	again := open("alice", ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER)
	if !again.GetResult().GetReplayed() {
		t.Fatalf("opening alice twice with the same input: want replayed, got %v", again.GetResult())
	}

	transfer := func(id, from, to, amount string) *ledgerv1.TransferResponse {
		return mustCall[ledgerv1.TransferRequest, ledgerv1.TransferResponse](t, ctx, c, ledgerv1connect.PaymentServiceTransferProcedure,
			&ledgerv1.TransferRequest{PaymentId: id, SourceAccountId: from, DestinationAccountId: to, Amount: usd(amount), Reference: "e2e " + id})
	}
	fund := transfer("fund-1", "world", "alice", "100.00")
	wantBalance(t, "world after funding", balanceIn(t, fund.GetResult(), "world"), "-100.00", "0.00", "-100.00")
	wantBalance(t, "alice after funding", balanceIn(t, fund.GetResult(), "alice"), "100.00", "0.00", "100.00")
	if fund.GetPayment().GetStatus() != ledgerv1.PaymentStatus_PAYMENT_STATUS_COMPLETED || fund.GetPayment().GetCaptured().GetValue() != "100.00" {
		t.Fatalf("funding payment: want completed with 100.00 moved, got %v", fund.GetPayment())
	}
	pay := transfer("pay-1", "alice", "bob", "12.34")
	wantBalance(t, "alice after paying bob", balanceIn(t, pay.GetResult(), "alice"), "87.66", "0.00", "87.66")
	if got := balanceIn(t, pay.GetResult(), "alice").GetPostedMinor(); got != 8766 {
		t.Fatalf("alice posted_minor: want 8766, got %d", got)
	}
	replay := transfer("pay-1", "alice", "bob", "12.34")
	if !replay.GetResult().GetReplayed() || replay.GetResult().GetPosition() != pay.GetResult().GetPosition() {
		t.Fatalf("retried transfer: want replayed at position %d, got %v", pay.GetResult().GetPosition(), replay.GetResult())
	}

	// Read-your-writes: the views answer at least up to the write's position.
	bal := mustCall[ledgerv1.GetBalanceRequest, ledgerv1.GetBalanceResponse](t, ctx, c, ledgerv1connect.BalanceServiceGetBalanceProcedure,
		&ledgerv1.GetBalanceRequest{AccountId: "alice", MinPosition: pay.GetResult().GetPosition()})
	wantBalance(t, "alice from the balances view", bal.GetBalance(), "87.66", "0.00", "87.66")
	past := mustCall[ledgerv1.GetBalanceRequest, ledgerv1.GetBalanceResponse](t, ctx, c, ledgerv1connect.BalanceServiceGetBalanceProcedure,
		&ledgerv1.GetBalanceRequest{AccountId: "alice", AsOf: &ledgerv1.GetBalanceRequest_AsOfPosition{AsOfPosition: fund.GetResult().GetPosition()}})
	wantBalance(t, "alice as of the funding", past.GetBalance(), "100.00", "0.00", "100.00")

	page1 := mustCall[ledgerv1.ListHistoryRequest, ledgerv1.ListHistoryResponse](t, ctx, c, ledgerv1connect.BalanceServiceListHistoryProcedure,
		&ledgerv1.ListHistoryRequest{AccountId: "alice", PageSize: 1, MinPosition: pay.GetResult().GetPosition()})
	if len(page1.GetEntries()) != 1 || page1.GetEntries()[0].GetKind() != ledgerv1.EntryKind_ENTRY_KIND_CREDIT ||
		page1.GetEntries()[0].GetAmount().GetValue() != "100.00" || page1.GetNextAfterPosition() == 0 {
		t.Fatalf("history page 1: want the 100.00 credit and a next page, got %v", page1)
	}
	page2 := mustCall[ledgerv1.ListHistoryRequest, ledgerv1.ListHistoryResponse](t, ctx, c, ledgerv1connect.BalanceServiceListHistoryProcedure,
		&ledgerv1.ListHistoryRequest{AccountId: "alice", PageSize: 10, AfterPosition: page1.GetNextAfterPosition()})
	if len(page2.GetEntries()) != 1 || page2.GetEntries()[0].GetKind() != ledgerv1.EntryKind_ENTRY_KIND_DEBIT ||
		page2.GetEntries()[0].GetPostedAfter() != "87.66" || page2.GetNextAfterPosition() != 0 {
		t.Fatalf("history page 2: want the 12.34 debit leaving 87.66 and no next page, got %v", page2)
	}

	// The card flow.
	auth := mustCall[ledgerv1.AuthoriseRequest, ledgerv1.AuthoriseResponse](t, ctx, c, ledgerv1connect.PaymentServiceAuthoriseProcedure,
		&ledgerv1.AuthoriseRequest{PaymentId: "auth-1", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("20.00"),
			ExpiresAt: timestamppb.New(time.Now().Add(time.Hour))})
	wantBalance(t, "alice after authorising 20.00", balanceIn(t, auth.GetResult(), "alice"), "87.66", "20.00", "67.66")
	capt := mustCall[ledgerv1.CaptureRequest, ledgerv1.CaptureResponse](t, ctx, c, ledgerv1connect.PaymentServiceCaptureProcedure,
		&ledgerv1.CaptureRequest{PaymentId: "auth-1", CaptureId: "cap-1", What: &ledgerv1.CaptureRequest_Amount{Amount: usd("5.00")}})
	wantBalance(t, "alice after capturing 5.00", balanceIn(t, capt.GetResult(), "alice"), "82.66", "15.00", "67.66")
	wantBalance(t, "bob after capturing 5.00", balanceIn(t, capt.GetResult(), "bob"), "17.34", "0.00", "17.34")
	void := mustCall[ledgerv1.VoidRequest, ledgerv1.VoidResponse](t, ctx, c, ledgerv1connect.PaymentServiceVoidProcedure,
		&ledgerv1.VoidRequest{PaymentId: "auth-1"})
	wantBalance(t, "alice after the void", balanceIn(t, void.GetResult(), "alice"), "82.66", "0.00", "82.66")
	if void.GetPayment().GetStatus() != ledgerv1.PaymentStatus_PAYMENT_STATUS_VOIDED || void.GetPayment().GetReleased().GetValue() != "15.00" {
		t.Fatalf("voided authorisation: want voided with 15.00 released, got %v", void.GetPayment())
	}
	refund := mustCall[ledgerv1.RefundRequest, ledgerv1.RefundResponse](t, ctx, c, ledgerv1connect.PaymentServiceRefundProcedure,
		&ledgerv1.RefundRequest{PaymentId: "auth-1", RefundId: "ref-1", Amount: usd("2.00")})
	wantBalance(t, "alice after a 2.00 refund", balanceIn(t, refund.GetResult(), "alice"), "84.66", "0.00", "84.66")
	mustCall[ledgerv1.AuthoriseRequest, ledgerv1.AuthoriseResponse](t, ctx, c, ledgerv1connect.PaymentServiceAuthoriseProcedure,
		&ledgerv1.AuthoriseRequest{PaymentId: "auth-2", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("4.00"),
			ExpiresAt: timestamppb.New(time.Now().Add(time.Hour))})
	fullCap := mustCall[ledgerv1.CaptureRequest, ledgerv1.CaptureResponse](t, ctx, c, ledgerv1connect.PaymentServiceCaptureProcedure,
		&ledgerv1.CaptureRequest{PaymentId: "auth-2", CaptureId: "cap-all", What: &ledgerv1.CaptureRequest_Full{Full: true}})
	if fullCap.GetPayment().GetStatus() != ledgerv1.PaymentStatus_PAYMENT_STATUS_CAPTURED || fullCap.GetPayment().GetCaptured().GetValue() != "4.00" {
		t.Fatalf("full capture: want captured 4.00, got %v", fullCap.GetPayment())
	}

	batch := mustCall[ledgerv1.BatchTransferRequest, ledgerv1.BatchTransferResponse](t, ctx, c, ledgerv1connect.PaymentServiceBatchTransferProcedure,
		&ledgerv1.BatchTransferRequest{PaymentId: "batch-1", Legs: []*ledgerv1.Leg{
			{SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")},
			{SourceAccountId: "bob", DestinationAccountId: "world", Amount: usd("0.50")},
		}})
	wantBalance(t, "alice after the batch", balanceIn(t, batch.GetResult(), "alice"), "79.66", "0.00", "79.66")
	wantBalance(t, "bob after the batch", balanceIn(t, batch.GetResult(), "bob"), "19.84", "0.00", "19.84")
	wantBalance(t, "world after the batch", balanceIn(t, batch.GetResult(), "world"), "-99.50", "0.00", "-99.50")

	got := mustCall[ledgerv1.GetPaymentRequest, ledgerv1.GetPaymentResponse](t, ctx, c, ledgerv1connect.PaymentServiceGetPaymentProcedure,
		&ledgerv1.GetPaymentRequest{PaymentId: "auth-1", MinPosition: refund.GetResult().GetPosition()})
	if got.GetPayment().GetRefunded().GetValue() != "2.00" || got.GetPayment().GetCaptured().GetValue() != "5.00" {
		t.Fatalf("payments view of auth-1: want captured 5.00 refunded 2.00, got %v", got.GetPayment())
	}

	// Account life cycle.
	frozen := mustCall[ledgerv1.FreezeAccountRequest, ledgerv1.FreezeAccountResponse](t, ctx, c, ledgerv1connect.AccountServiceFreezeAccountProcedure,
		&ledgerv1.FreezeAccountRequest{AccountId: "bob", Reason: "kyc review"})
	if frozen.GetAccount().GetStatus() != ledgerv1.AccountStatus_ACCOUNT_STATUS_FROZEN {
		t.Fatalf("freeze bob: want frozen, got %v", frozen.GetAccount())
	}
	refrozen := mustCall[ledgerv1.FreezeAccountRequest, ledgerv1.FreezeAccountResponse](t, ctx, c, ledgerv1connect.AccountServiceFreezeAccountProcedure,
		&ledgerv1.FreezeAccountRequest{AccountId: "bob", Reason: "kyc review"})
	if refrozen.GetAccount().GetStatus() != ledgerv1.AccountStatus_ACCOUNT_STATUS_FROZEN || refrozen.GetResult().GetPosition() < frozen.GetResult().GetPosition() {
		t.Fatalf("freezing a frozen account: want a no-op that leaves it frozen, got %v", refrozen)
	}
	_, err := call[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ctx, c, ledgerv1connect.PaymentServiceTransferProcedure,
		&ledgerv1.TransferRequest{PaymentId: "to-frozen", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")}, nil)
	if codeOf(err) != connect.CodeFailedPrecondition || reasonOf(err) != "ACCOUNT_FROZEN" {
		t.Fatalf("transfer to a frozen account: want FailedPrecondition ACCOUNT_FROZEN, got %v (%q)", err, reasonOf(err))
	}
	mustCall[ledgerv1.UnfreezeAccountRequest, ledgerv1.UnfreezeAccountResponse](t, ctx, c, ledgerv1connect.AccountServiceUnfreezeAccountProcedure,
		&ledgerv1.UnfreezeAccountRequest{AccountId: "bob"})
	open("temp", ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER)
	closed := mustCall[ledgerv1.CloseAccountRequest, ledgerv1.CloseAccountResponse](t, ctx, c, ledgerv1connect.AccountServiceCloseAccountProcedure,
		&ledgerv1.CloseAccountRequest{AccountId: "temp"})
	if closed.GetAccount().GetStatus() != ledgerv1.AccountStatus_ACCOUNT_STATUS_CLOSED {
		t.Fatalf("close temp: want closed, got %v", closed.GetAccount())
	}
	acc := mustCall[ledgerv1.GetAccountRequest, ledgerv1.GetAccountResponse](t, ctx, c, ledgerv1connect.AccountServiceGetAccountProcedure,
		&ledgerv1.GetAccountRequest{AccountId: "alice"})
	if acc.GetAccount().GetBalance().GetPosted() != "79.66" || acc.GetAccount().GetMetadata()["owner"] != "alice" || acc.GetAccount().GetAsset() != "USD/2" {
		t.Fatalf("get alice: want USD/2 with 79.66 and its metadata, got %v", acc.GetAccount())
	}

	// Audit: the chain verifies; the log streams in order up to the head.
	verify := mustCall[ledgerv1.VerifyChainRequest, ledgerv1.VerifyChainResponse](t, ctx, c, ledgerv1connect.AuditServiceVerifyChainProcedure, &ledgerv1.VerifyChainRequest{})
	if !verify.GetOk() || verify.GetLastPosition() < batch.GetResult().GetPosition() || len(verify.GetLastHash()) != 64 {
		t.Fatalf("verify chain: want ok up to at least %d, got %v", batch.GetResult().GetPosition(), verify)
	}
	stream := mustCall[ledgerv1.ReadStreamRequest, ledgerv1.ReadStreamResponse](t, ctx, c, ledgerv1connect.AuditServiceReadStreamProcedure,
		&ledgerv1.ReadStreamRequest{Stream: "payment-auth-1"})
	if len(stream.GetEvents()) != 4 || stream.GetEvents()[0].GetType() != "ledger.payment.authorised.v1" {
		t.Fatalf("payment-auth-1 stream: want authorised, captured, voided, refunded, got %d events %v", len(stream.GetEvents()), stream.GetEvents())
	}
	logs, err := serverStream[ledgerv1.StreamLogRequest, ledgerv1.StreamLogResponse](ctx, c, ledgerv1connect.AuditServiceStreamLogProcedure,
		&ledgerv1.StreamLogRequest{BatchSize: 3})
	if err != nil {
		t.Fatalf("stream log: %v", err)
	}
	var next uint64 = 1
	for {
		msg, err := logs.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("stream log after position %d: %v", next-1, err)
		}
		if len(msg.GetEvents()) == 0 || len(msg.GetEvents()) > 3 {
			t.Fatalf("stream log: want batches of 1..3 events, got %d", len(msg.GetEvents()))
		}
		for _, e := range msg.GetEvents() {
			if e.GetPosition() != next {
				t.Fatalf("stream log: want position %d next, got %d", next, e.GetPosition())
			}
			next++
		}
	}
	logs.close()
	if next-1 != verify.GetLastPosition() {
		t.Fatalf("stream log: want every event up to %d, got up to %d", verify.GetLastPosition(), next-1)
	}

	// A live watch sees the next change with the balance after it.
	watch, err := serverStream[ledgerv1.WatchAccountRequest, ledgerv1.WatchAccountResponse](ctx, c, ledgerv1connect.BalanceServiceWatchAccountProcedure,
		&ledgerv1.WatchAccountRequest{AccountId: "alice"})
	if err != nil {
		t.Fatalf("watch alice: %v", err)
	}
	defer watch.close()
	first, err := watch.next()
	if err != nil {
		t.Fatalf("watch alice, first message: %v", err)
	}
	if first.GetBalance().GetPosted() != "79.66" {
		t.Fatalf("watch alice: want the current 79.66 first, got %v", first.GetBalance())
	}
	moved := transfer("watched-1", "alice", "bob", "0.66")
	update, err := watch.next()
	if err != nil {
		t.Fatalf("watch alice, update: %v", err)
	}
	if update.GetBalance().GetPosted() != "79.00" || update.GetPaymentId() != "watched-1" ||
		update.GetBalance().GetPosition() > moved.GetResult().GetPosition() || update.GetBalance().GetPosition() <= first.GetBalance().GetPosition() {
		// The command's position is its last event's; the debit of alice is one of its events.
		t.Fatalf("watch alice after paying 0.66: want 79.00 for watched-1 at a position in (%d, %d], got %v",
			first.GetBalance().GetPosition(), moved.GetResult().GetPosition(), update)
	}
}

// TestStreamLogFollow: a following log stream sends what is committed after the call, in
// order, and ends at to_position.
func TestStreamLogFollow(t *testing.T) {
	n := startNode(t, nodeOptions{})
	ctx := testContext(t)
	c := newClient(t, n, kindConnect)
	seedLedger(t, ctx, c)
	head, err := n.store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fund := mustCall[ledgerv1.TransferRequest, ledgerv1.TransferResponse](t, ctx, c, ledgerv1connect.PaymentServiceTransferProcedure, transferReq("follow-0", "world", "bob", usd("1.00")))
	// Follow from the head before the transfer, up to a position that does not exist yet.
	to := fund.GetResult().GetPosition() + 3
	s, err := serverStream[ledgerv1.StreamLogRequest, ledgerv1.StreamLogResponse](ctx, c, ledgerv1connect.AuditServiceStreamLogProcedure,
		&ledgerv1.StreamLogRequest{AfterPosition: head, ToPosition: to, Follow: true})
	if err != nil {
		t.Fatalf("stream log: %v", err)
	}
	defer s.close()
	got := []uint64{}
	committed := false
	for {
		msg, err := s.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("follow: %v after %v", err, got)
		}
		for _, e := range msg.GetEvents() {
			got = append(got, e.GetPosition())
		}
		if !committed && got[len(got)-1] == fund.GetResult().GetPosition() {
			// Caught up with the past: what is committed now must arrive live.
			committed = true
			mustCall[ledgerv1.TransferRequest, ledgerv1.TransferResponse](t, ctx, c, ledgerv1connect.PaymentServiceTransferProcedure, transferReq("follow-1", "world", "bob", usd("1.00")))
		}
	}
	for i, p := range got {
		if p != head+uint64(i)+1 {
			t.Fatalf("follow: want positions %d..%d in order, got %v", head+1, to, got)
		}
	}
	if len(got) == 0 || got[len(got)-1] != to {
		t.Fatalf("follow up to %d: want the stream to end there, got %v", to, got)
	}
}
