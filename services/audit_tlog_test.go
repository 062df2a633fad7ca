package services_test

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/audit/tlog"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/projections/memory"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/ledger"
)

// tlogNode is a server whose AuditService keeps a Merkle tree and signs checkpoints.
type tlogNode struct {
	audit    ledgerv1connect.AuditServiceClient
	accounts ledgerv1connect.AccountServiceClient
	payments ledgerv1connect.PaymentServiceClient
	store    eventstore.Store
	tree     *tlog.Tree
	signer   *tlog.Signer
	public   string
}

func startTlogNode(t *testing.T, withCheckpoints bool) *tlogNode {
	t.Helper()
	store, err := embedded.Open(t.TempDir(), embedded.Options{Logger: quietPebble{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	proc, err := ledger.New(store, ledger.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proc.Close() })
	views := memory.New(0)
	runner, err := projections.NewRunner(projections.RunnerConfig{Store: store, Projectors: views.Projectors()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = runner.Run(ctx) }()
	n := &tlogNode{store: store}
	var cps *services.Checkpoints
	if withCheckpoints {
		dir := t.TempDir()
		n.tree, err = tlog.OpenTree(filepath.Join(dir, tlog.TreeDir))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.tree.Close() })
		private, public, err := tlog.GenerateKey("securepay.test/ledger")
		if err != nil {
			t.Fatal(err)
		}
		n.public = public
		n.signer, err = tlog.NewSigner(tlog.SignerConfig{Tree: n.tree, PrivateKey: private, Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		cps = &services.Checkpoints{Tree: n.tree, Signer: n.signer}
	}
	srv, err := services.NewServer(services.Config{Commands: proc, Reader: views.Reader(), Store: store,
		Idempotency: services.NewMemoryIdempotencyStore(0, nil), AllowH2C: true, Checkpoints: cps})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-served; <-done })
	url := "http://" + ln.Addr().String()
	n.audit = ledgerv1connect.NewAuditServiceClient(h2cClient(), url)
	n.accounts = ledgerv1connect.NewAccountServiceClient(h2cClient(), url)
	n.payments = ledgerv1connect.NewPaymentServiceClient(h2cClient(), url)
	return n
}

// checkpoint brings the tree up to the log's head and signs it.
func (n *tlogNode) checkpoint(t *testing.T) tlog.Signed {
	t.Helper()
	head, err := n.store.Head(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if n.tree.Size() < head {
		f := &tlog.Follower{Store: n.store, Tree: n.tree, Appended: func(size uint64) {
			if size >= head {
				cancel()
			}
		}}
		if err := f.Run(ctx); err != nil {
			t.Fatal(err)
		}
	}
	s, err := n.signer.Publish()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (n *tlogNode) pay(t *testing.T, ctx context.Context, id, from, to string) {
	t.Helper()
	if _, err := n.payments.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{PaymentId: id, SourceAccountId: from, DestinationAccountId: to, Amount: usd("1.00")})); err != nil {
		t.Fatalf("transfer %s: %v", id, err)
	}
}

func TestCheckpointsAndProofsOverTheAPI(t *testing.T) {
	ctx := testContext(t)
	n := startTlogNode(t, true)
	if _, err := n.audit.GetCheckpoint(ctx, connect.NewRequest(&ledgerv1.GetCheckpointRequest{})); codeOf(err) != connect.CodeFailedPrecondition || reasonOf(err) != services.ReasonCheckpointUnavailable {
		t.Fatalf("before the first checkpoint: %v, want FAILED_PRECONDITION CHECKPOINT_UNAVAILABLE", err)
	}
	for _, id := range []string{"world", "alice"} {
		kind := ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER
		if id == "world" {
			kind = ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL
		}
		if _, err := n.accounts.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{AccountId: id, Asset: "USD", Kind: kind})); err != nil {
			t.Fatal(err)
		}
	}
	n.pay(t, ctx, "p1", "world", "alice")
	first := n.checkpoint(t)
	n.pay(t, ctx, "p2", "world", "alice")
	n.pay(t, ctx, "p3", "alice", "world")
	second := n.checkpoint(t)

	v, err := tlog.NewVerifier(n.public)
	if err != nil {
		t.Fatal(err)
	}
	got, err := n.audit.GetCheckpoint(ctx, connect.NewRequest(&ledgerv1.GetCheckpointRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := tlog.OpenCheckpoint([]byte(got.Msg.GetCheckpoint()), v)
	if err != nil || cp.Size != second.Size || got.Msg.GetTreeSize() != second.Size {
		t.Fatalf("GetCheckpoint: %+v (%v), want size %d", cp, err, second.Size)
	}

	// A receipt for p1 against the newest checkpoint verifies offline.
	incl, err := n.audit.ProveInclusion(ctx, connect.NewRequest(&ledgerv1.ProveInclusionRequest{Target: &ledgerv1.ProveInclusionRequest_PaymentId{PaymentId: "p1"}}))
	if err != nil {
		t.Fatal(err)
	}
	ev := incl.Msg.GetEvent()
	if ev.GetStream() != "payment-p1" || incl.Msg.GetTreeSize() != second.Size || incl.Msg.GetCheckpoint() != string(second.Note) {
		t.Fatalf("inclusion of p1: %v", incl.Msg)
	}
	events, err := n.store.ReadAll(ctx, ev.GetPosition()-1, 1)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := tlog.NewReceipt(&events[0], incl.Msg.GetLeafIndex(), incl.Msg.GetProof(), second).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := tlog.CheckReceipt(rec, v); err != nil {
		t.Fatalf("receipt from the API's proof: %v", err)
	}
	// By position, against the older checkpoint: no checkpoint text (it is not the newest).
	byPos, err := n.audit.ProveInclusion(ctx, connect.NewRequest(&ledgerv1.ProveInclusionRequest{Target: &ledgerv1.ProveInclusionRequest_Position{Position: 2}, TreeSize: first.Size}))
	if err != nil {
		t.Fatal(err)
	}
	if byPos.Msg.GetCheckpoint() != "" || byPos.Msg.GetEvent().GetPosition() != 2 {
		t.Fatalf("inclusion of position 2 in %d: %v", first.Size, byPos.Msg)
	}
	cons, err := n.audit.ProveConsistency(ctx, connect.NewRequest(&ledgerv1.ProveConsistencyRequest{FromSize: first.Size}))
	if err != nil {
		t.Fatal(err)
	}
	if err := tlog.VerifyConsistency(first.Checkpoint, second.Checkpoint, cons.Msg.GetProof()); err != nil {
		t.Fatalf("consistency %d..%d from the API: %v", first.Size, second.Size, err)
	}

	beyond := second.Size + 1
	for _, tc := range []struct {
		name   string
		call   func() error
		code   connect.Code
		reason services.Reason
	}{
		{"no target", func() error {
			_, err := n.audit.ProveInclusion(ctx, connect.NewRequest(&ledgerv1.ProveInclusionRequest{}))
			return err
		}, connect.CodeInvalidArgument, services.ReasonInvalidInput},
		{"position 0", func() error {
			_, err := n.audit.ProveInclusion(ctx, connect.NewRequest(&ledgerv1.ProveInclusionRequest{Target: &ledgerv1.ProveInclusionRequest_Position{}}))
			return err
		}, connect.CodeInvalidArgument, services.ReasonInvalidInput},
		{"position beyond the checkpoint", func() error {
			_, err := n.audit.ProveInclusion(ctx, connect.NewRequest(&ledgerv1.ProveInclusionRequest{Target: &ledgerv1.ProveInclusionRequest_Position{Position: beyond}}))
			return err
		}, connect.CodeInvalidArgument, services.ReasonInvalidInput},
		{"tree size beyond the tree", func() error {
			_, err := n.audit.ProveInclusion(ctx, connect.NewRequest(&ledgerv1.ProveInclusionRequest{Target: &ledgerv1.ProveInclusionRequest_Position{Position: 1}, TreeSize: beyond}))
			return err
		}, connect.CodeInvalidArgument, services.ReasonInvalidInput},
		{"unknown payment", func() error {
			_, err := n.audit.ProveInclusion(ctx, connect.NewRequest(&ledgerv1.ProveInclusionRequest{Target: &ledgerv1.ProveInclusionRequest_PaymentId{PaymentId: "nope"}}))
			return err
		}, connect.CodeNotFound, services.Reason("PAYMENT_UNKNOWN")},
		{"payment event beyond the payment", func() error {
			_, err := n.audit.ProveInclusion(ctx, connect.NewRequest(&ledgerv1.ProveInclusionRequest{Target: &ledgerv1.ProveInclusionRequest_PaymentId{PaymentId: "p1"}, PaymentEvent: 9}))
			return err
		}, connect.CodeNotFound, services.ReasonNotFound},
		{"payment event with a position", func() error {
			_, err := n.audit.ProveInclusion(ctx, connect.NewRequest(&ledgerv1.ProveInclusionRequest{Target: &ledgerv1.ProveInclusionRequest_Position{Position: 1}, PaymentEvent: 1}))
			return err
		}, connect.CodeInvalidArgument, services.ReasonInvalidInput},
		{"malformed payment id", func() error {
			_, err := n.audit.ProveInclusion(ctx, connect.NewRequest(&ledgerv1.ProveInclusionRequest{Target: &ledgerv1.ProveInclusionRequest_PaymentId{PaymentId: "a b"}}))
			return err
		}, connect.CodeInvalidArgument, services.ReasonInvalidInput},
		{"consistency from 0", func() error {
			_, err := n.audit.ProveConsistency(ctx, connect.NewRequest(&ledgerv1.ProveConsistencyRequest{}))
			return err
		}, connect.CodeInvalidArgument, services.ReasonInvalidInput},
		{"consistency backwards", func() error {
			_, err := n.audit.ProveConsistency(ctx, connect.NewRequest(&ledgerv1.ProveConsistencyRequest{FromSize: second.Size, ToSize: first.Size}))
			return err
		}, connect.CodeInvalidArgument, services.ReasonInvalidInput},
		{"consistency to beyond the tree", func() error {
			_, err := n.audit.ProveConsistency(ctx, connect.NewRequest(&ledgerv1.ProveConsistencyRequest{FromSize: 1, ToSize: beyond}))
			return err
		}, connect.CodeInvalidArgument, services.ReasonInvalidInput},
	} {
		err := tc.call()
		if codeOf(err) != tc.code || reasonOf(err) != tc.reason {
			t.Errorf("%s: got %v (code %v, reason %q), want %v %s", tc.name, err, codeOf(err), reasonOf(err), tc.code, tc.reason)
		}
	}

	// A payment newer than the newest checkpoint: not yet provable, and the answer says when.
	n.pay(t, ctx, "p4", "world", "alice")
	if _, err := n.audit.ProveInclusion(ctx, connect.NewRequest(&ledgerv1.ProveInclusionRequest{Target: &ledgerv1.ProveInclusionRequest_PaymentId{PaymentId: "p4"}})); codeOf(err) != connect.CodeFailedPrecondition || reasonOf(err) != services.ReasonCheckpointUnavailable {
		t.Fatalf("a payment after the newest checkpoint: %v, want FAILED_PRECONDITION CHECKPOINT_UNAVAILABLE", err)
	}
}

func TestProofsOnAServerWithoutCheckpoints(t *testing.T) {
	ctx := testContext(t)
	n := startTlogNode(t, false)
	_, err := n.audit.ProveConsistency(ctx, connect.NewRequest(&ledgerv1.ProveConsistencyRequest{FromSize: 1}))
	if codeOf(err) != connect.CodeFailedPrecondition || reasonOf(err) != services.ReasonCheckpointUnavailable {
		t.Fatalf("consistency on a server without a tree: %v, want FAILED_PRECONDITION CHECKPOINT_UNAVAILABLE", err)
	}
}
