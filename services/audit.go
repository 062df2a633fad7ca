package services

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/eventstore"
)

type auditService struct {
	store   eventstore.Store
	streams *streamLimiter
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
