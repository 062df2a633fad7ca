package services

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
)

type balanceService struct {
	reader   projections.Reader
	store    eventstore.Store
	readWait time.Duration
	streams  *streamLimiter
}

var _ ledgerv1connect.BalanceServiceHandler = (*balanceService)(nil)

// withReadWait bounds a read-your-writes wait, so that a view that lags answers
// NOT_CAUGHT_UP well before the request's own deadline.
func withReadWait(ctx context.Context, minPosition uint64, wait time.Duration) (context.Context, context.CancelFunc) {
	if minPosition == 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, wait)
}

func unknownAccount(err error, id domain.AccountID) error {
	if errors.Is(err, projections.ErrNotFound) {
		return fmt.Errorf("%w: account %s", domain.ErrAccountUnknown, id)
	}
	return err
}

func (s *balanceService) GetBalance(ctx context.Context, req *connect.Request[ledgerv1.GetBalanceRequest]) (*connect.Response[ledgerv1.GetBalanceResponse], error) {
	id, err := accountIDFromProto(req.Msg.GetAccountId(), "account_id")
	if err != nil {
		return nil, err
	}
	ctx, cancel := withReadWait(ctx, req.Msg.GetMinPosition(), s.readWait)
	defer cancel()
	b, err := s.reader.Balance(ctx, id, asOfFromProto(req.Msg), req.Msg.GetMinPosition())
	if err != nil {
		return nil, unknownAccount(err, id)
	}
	return connect.NewResponse(&ledgerv1.GetBalanceResponse{Balance: balanceToProto(b)}), nil
}

func (s *balanceService) ListHistory(ctx context.Context, req *connect.Request[ledgerv1.ListHistoryRequest]) (*connect.Response[ledgerv1.ListHistoryResponse], error) {
	id, err := accountIDFromProto(req.Msg.GetAccountId(), "account_id")
	if err != nil {
		return nil, err
	}
	limit := historyPageSize(req.Msg.GetPageSize())
	ctx, cancel := withReadWait(ctx, req.Msg.GetMinPosition(), s.readWait)
	defer cancel()
	entries, err := s.reader.History(ctx, id, req.Msg.GetAfterPosition(), limit, req.Msg.GetMinPosition())
	if err != nil {
		return nil, unknownAccount(err, id)
	}
	out := &ledgerv1.ListHistoryResponse{Entries: make([]*ledgerv1.HistoryEntry, 0, len(entries))}
	for _, e := range entries {
		out.Entries = append(out.Entries, entryToProto(e))
	}
	if len(entries) == limit {
		out.NextAfterPosition = entries[len(entries)-1].Position
	}
	return connect.NewResponse(out), nil
}

// watchBatch bounds the events one store read hands a watcher.
const watchBatch = 1000

// WatchAccount starts from the views' balance at the position they have applied, then
// follows the log from exactly that position, so no change falls between the snapshot and
// the live part and none is sent twice.
func (s *balanceService) WatchAccount(ctx context.Context, req *connect.Request[ledgerv1.WatchAccountRequest], stream *connect.ServerStream[ledgerv1.WatchAccountResponse]) error {
	id, err := accountIDFromProto(req.Msg.GetAccountId(), "account_id")
	if err != nil {
		return err
	}
	release, err := s.streams.acquire()
	if err != nil {
		return err
	}
	defer release()
	ctx, stop := s.streams.bind(ctx)
	defer stop()

	pos, err := s.reader.Position(ctx)
	if err != nil {
		return fmt.Errorf("watch %s: view position: %w", id, err)
	}
	b, err := s.reader.Balance(ctx, id, projections.AsOf{Position: max(pos, 1)}, pos)
	if err != nil {
		return unknownAccount(err, id)
	}
	bal := balanceToProto(b)
	if err := stream.Send(&ledgerv1.WatchAccountResponse{Balance: bal}); err != nil {
		return err
	}
	want := domain.AccountStream(id)
	err = s.store.Subscribe(ctx, pos, watchBatch, func(ctx context.Context, batch []eventstore.RecordedEvent) error {
		for i := range batch {
			rec := &batch[i]
			if rec.Stream != want {
				continue
			}
			ev, err := domain.DecodeEvent(rec.Type, rec.Data)
			if err != nil {
				return fmt.Errorf("watch %s: decode position %d: %w", id, rec.Position, err)
			}
			changed, payment := applyToBalance(bal, ev)
			if !changed {
				continue
			}
			bal.Position, bal.UpdatedAt = rec.Position, timeToProto(rec.RecordedAt)
			msg := &ledgerv1.WatchAccountResponse{Balance: bal, EventType: rec.Type, PaymentId: string(payment)}
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
		return nil
	})
	return s.streams.endErr(ctx, err)
}
