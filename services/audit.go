package services

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/audit/tlog"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

type auditService struct {
	store       eventstore.Store
	streams     *streamLimiter
	checkpoints *Checkpoints // nil: this server keeps no Merkle tree
}

// Checkpoints is the log's Merkle tree and the signer of its checkpoints (audit/tlog),
// which the AuditService's proofs read. The tree is kept by a follower off the append
// path, so a proof is only ever against a checkpoint the signer published.
type Checkpoints struct {
	Tree   *tlog.Tree
	Signer *tlog.Signer
}

var _ ledgerv1connect.AuditServiceHandler = (*auditService)(nil)

func (s *auditService) ReadStream(ctx context.Context, req *connect.Request[ledgerv1.ReadStreamRequest]) (*connect.Response[ledgerv1.ReadStreamResponse], error) {
	limit := auditLimit(req.Msg.GetLimit(), defaultReadStreamLimit)
	events, err := s.store.ReadStream(ctx, req.Msg.GetStream(), req.Msg.GetAfterVersion(), limit)
	if err != nil {
		return nil, fmt.Errorf("read stream %q: %w", req.Msg.GetStream(), err)
	}
	out := &ledgerv1.ReadStreamResponse{Events: eventsToProto(events)}
	if len(events) == limit {
		out.NextAfterVersion = events[len(events)-1].StreamVersion
	}
	return connect.NewResponse(out), nil
}

// errLogEnd stops a following subscription once to_position has been sent.
var errLogEnd = errors.New("log streamed up to the requested position")

func (s *auditService) StreamLog(ctx context.Context, req *connect.Request[ledgerv1.StreamLogRequest], stream *connect.ServerStream[ledgerv1.StreamLogResponse]) error {
	release, err := s.streams.acquire()
	if err != nil {
		return err
	}
	defer release()
	ctx, stop := s.streams.bind(ctx)
	defer stop()

	after, to := req.Msg.GetAfterPosition(), req.Msg.GetToPosition()
	batch := auditLimit(req.Msg.GetBatchSize(), defaultLogBatch)
	if to != 0 && to <= after {
		return nil
	}
	// send writes events up to `to` (0: no end) and reports whether the end was reached.
	send := func(events []eventstore.RecordedEvent) (bool, error) {
		end := false
		if to != 0 {
			n := 0
			for n < len(events) && events[n].Position <= to {
				n++
			}
			end, events = n < len(events) || (n > 0 && events[n-1].Position == to), events[:n]
		}
		if len(events) > 0 {
			if err := stream.Send(&ledgerv1.StreamLogResponse{Events: eventsToProto(events)}); err != nil {
				return false, err
			}
		}
		return end, nil
	}

	if req.Msg.GetFollow() {
		err := s.store.Subscribe(ctx, after, batch, func(_ context.Context, events []eventstore.RecordedEvent) error {
			end, err := send(events)
			if err == nil && end {
				return errLogEnd
			}
			return err
		})
		if errors.Is(err, errLogEnd) {
			return nil
		}
		return s.streams.endErr(ctx, err)
	}

	if to == 0 {
		head, err := s.store.Head(ctx)
		if err != nil {
			return fmt.Errorf("stream log: head: %w", err)
		}
		if head <= after {
			return nil
		}
		to = head
	}
	// Bounded: every round sends at least one event and stops at `to`.
	for {
		events, err := s.store.ReadAll(ctx, after, batch)
		if err != nil {
			return s.streams.endErr(ctx, fmt.Errorf("stream log: read after %d: %w", after, err))
		}
		if len(events) == 0 {
			return nil
		}
		end, err := send(events)
		if err != nil || end {
			return err
		}
		after = events[len(events)-1].Position
	}
}

// verifyPage is the events read per step of a chain verification.
const verifyPage = 1000

func (s *auditService) VerifyChain(ctx context.Context, _ *connect.Request[ledgerv1.VerifyChainRequest]) (*connect.Response[ledgerv1.VerifyChainResponse], error) {
	v := eventstore.NewChainVerifier(0, eventstore.Hash{})
	out := &ledgerv1.VerifyChainResponse{Ok: true}
	var brk *eventstore.ChainBreak
	switch err := v.ReadFrom(ctx, s.store, verifyPage, nil); {
	case errors.As(err, &brk):
		out.Ok, out.BreakPosition, out.BreakReason = false, brk.Position, brk.Reason
	case err != nil:
		return nil, err
	}
	last, hash := v.Verified()
	out.Verified, out.LastPosition, out.LastHash = last, last, hash.String()
	return connect.NewResponse(out), nil
}

// latest returns the newest signed checkpoint, or the error that says why there is none.
func (s *auditService) latest() (tlog.Signed, error) {
	if s.checkpoints == nil {
		return tlog.Signed{}, newError(connect.CodeFailedPrecondition, ReasonCheckpointUnavailable,
			"this server signs no checkpoints: start it with --checkpoint-dir and --checkpoint-key-file")
	}
	cp, ok := s.checkpoints.Signer.Latest()
	if !ok {
		return tlog.Signed{}, newError(connect.CodeFailedPrecondition, ReasonCheckpointUnavailable,
			"no checkpoint has been signed yet: ask again after the next one")
	}
	return cp, nil
}

// proofSize resolves a requested tree size: 0 is the newest checkpoint's, which is then
// returned too; any other size must be one the tree holds.
func (s *auditService) proofSize(requested uint64, field string) (uint64, tlog.Signed, error) {
	cp, err := s.latest()
	if err != nil {
		return 0, tlog.Signed{}, err
	}
	if requested == 0 {
		return cp.Size, cp, nil
	}
	if have := s.checkpoints.Tree.Size(); requested > have {
		return 0, tlog.Signed{}, newFieldError(connect.CodeInvalidArgument, ReasonInvalidInput,
			fmt.Sprintf("%s %d is beyond the Merkle tree, which holds %d events", field, requested, have), field)
	}
	if requested == cp.Size {
		return requested, cp, nil
	}
	return requested, tlog.Signed{}, nil
}

func (s *auditService) GetCheckpoint(_ context.Context, _ *connect.Request[ledgerv1.GetCheckpointRequest]) (*connect.Response[ledgerv1.GetCheckpointResponse], error) {
	cp, err := s.latest()
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.GetCheckpointResponse{Checkpoint: string(cp.Note), TreeSize: cp.Size, RootHash: cp.Root}), nil
}

func (s *auditService) ProveInclusion(ctx context.Context, req *connect.Request[ledgerv1.ProveInclusionRequest]) (*connect.Response[ledgerv1.ProveInclusionResponse], error) {
	m := req.Msg
	if m.GetPosition() != 0 && m.GetPaymentEvent() != 0 {
		return nil, newFieldError(connect.CodeInvalidArgument, ReasonInvalidInput,
			"payment_event selects an event of a payment: give it with payment_id, not with position", "payment_event")
	}
	size, cp, err := s.proofSize(m.GetTreeSize(), "tree_size")
	if err != nil {
		return nil, err
	}
	var event eventstore.RecordedEvent
	if id := m.GetPaymentId(); id != "" {
		pid, err := domain.NewPaymentID(id)
		if err != nil {
			return nil, newFieldError(connect.CodeInvalidArgument, ReasonInvalidInput, err.Error(), "payment_id")
		}
		version := max(m.GetPaymentEvent(), 1)
		events, err := s.store.ReadStream(ctx, domain.PaymentStream(pid), version-1, 1)
		if err != nil {
			return nil, fmt.Errorf("prove inclusion: read payment %s: %w", id, err)
		}
		switch {
		case len(events) == 0 && version == 1:
			return nil, newFieldError(connect.CodeNotFound, Reason(domain.ReasonPaymentUnknown), fmt.Sprintf("payment %s is not in the log", id), "payment_id")
		case len(events) == 0:
			return nil, newFieldError(connect.CodeNotFound, ReasonNotFound, fmt.Sprintf("payment %s has no event %d", id, version), "payment_event")
		}
		event = events[0]
	} else {
		pos := m.GetPosition()
		if pos > size {
			return nil, newFieldError(connect.CodeInvalidArgument, ReasonInvalidInput,
				fmt.Sprintf("position %d is not in a tree of %d events", pos, size), "position")
		}
		events, err := s.store.ReadAll(ctx, pos-1, 1)
		if err != nil {
			return nil, fmt.Errorf("prove inclusion: read position %d: %w", pos, err)
		}
		if len(events) != 1 || events[0].Position != pos {
			return nil, fmt.Errorf("prove inclusion: position %d is in the tree but not readable from the log", pos)
		}
		event = events[0]
	}
	if event.Position > size {
		return nil, newError(connect.CodeFailedPrecondition, ReasonCheckpointUnavailable,
			fmt.Sprintf("the event is at position %d, after the tree of %d events: ask again after the next checkpoint", event.Position, size))
	}
	p, err := s.checkpoints.Tree.InclusionProof(event.Position-1, size)
	if err != nil {
		return nil, fmt.Errorf("prove inclusion of %d in %d: %w", event.Position, size, err)
	}
	return connect.NewResponse(&ledgerv1.ProveInclusionResponse{
		Event: eventToProto(&event), LeafIndex: event.Position - 1, TreeSize: size, Proof: p, Checkpoint: string(cp.Note),
	}), nil
}

func (s *auditService) ProveConsistency(_ context.Context, req *connect.Request[ledgerv1.ProveConsistencyRequest]) (*connect.Response[ledgerv1.ProveConsistencyResponse], error) {
	to, cp, err := s.proofSize(req.Msg.GetToSize(), "to_size")
	if err != nil {
		return nil, err
	}
	from := req.Msg.GetFromSize()
	if from > to {
		return nil, newFieldError(connect.CodeInvalidArgument, ReasonInvalidInput,
			fmt.Sprintf("from_size %d is after to_size %d: a consistency proof goes from the older checkpoint to the newer", from, to), "from_size")
	}
	p, err := s.checkpoints.Tree.ConsistencyProof(from, to)
	if err != nil {
		return nil, fmt.Errorf("prove consistency %d..%d: %w", from, to, err)
	}
	return connect.NewResponse(&ledgerv1.ProveConsistencyResponse{FromSize: from, ToSize: to, Proof: p, Checkpoint: string(cp.Note)}), nil
}
