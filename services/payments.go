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
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/services/ledger"
)

type paymentService struct {
	cmds   Commands
	reader projections.Reader
	meta   metaFunc
	// readWait bounds how long a query waits for the view to reach min_position.
	readWait time.Duration
}

var _ ledgerv1connect.PaymentServiceHandler = (*paymentService)(nil)

// paymentWrite runs a payment command; the payment id is the correlation id of its events.
func (s *paymentService) paymentWrite(ctx context.Context, h connect.AnyRequest, id domain.PaymentID, cmd domain.Command) (*ledgerv1.Payment, *ledgerv1.WriteResult, error) {
	meta, err := s.meta(ctx, h, string(id))
	if err != nil {
		return nil, nil, err
	}
	res, err := s.cmds.Execute(ctx, ledger.Request{Command: cmd, Meta: meta})
	if err != nil {
		return nil, nil, err
	}
	if res.Payment == nil {
		return nil, nil, fmt.Errorf("processor result for %T has no payment", cmd)
	}
	return paymentToProto(projections.Payment{Payment: *res.Payment, Position: res.PaymentPosition}), writeResult(res), nil
}

func (s *paymentService) Transfer(ctx context.Context, req *connect.Request[ledgerv1.TransferRequest]) (*connect.Response[ledgerv1.TransferResponse], error) {
	cmd, err := transferFromProto(req.Msg)
	if err != nil {
		return nil, err
	}
	p, wr, err := s.paymentWrite(ctx, req, cmd.PaymentID, cmd)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.TransferResponse{Payment: p, Result: wr}), nil
}

func (s *paymentService) BatchTransfer(ctx context.Context, req *connect.Request[ledgerv1.BatchTransferRequest]) (*connect.Response[ledgerv1.BatchTransferResponse], error) {
	cmd, err := batchFromProto(req.Msg)
	if err != nil {
		return nil, err
	}
	p, wr, err := s.paymentWrite(ctx, req, cmd.PaymentID, cmd)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.BatchTransferResponse{Payment: p, Result: wr}), nil
}

func (s *paymentService) Authorise(ctx context.Context, req *connect.Request[ledgerv1.AuthoriseRequest]) (*connect.Response[ledgerv1.AuthoriseResponse], error) {
	cmd, err := authoriseFromProto(req.Msg)
	if err != nil {
		return nil, err
	}
	p, wr, err := s.paymentWrite(ctx, req, cmd.PaymentID, cmd)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.AuthoriseResponse{Payment: p, Result: wr}), nil
}

func (s *paymentService) Capture(ctx context.Context, req *connect.Request[ledgerv1.CaptureRequest]) (*connect.Response[ledgerv1.CaptureResponse], error) {
	cmd, err := captureFromProto(req.Msg)
	if err != nil {
		return nil, err
	}
	p, wr, err := s.paymentWrite(ctx, req, cmd.PaymentID, cmd)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.CaptureResponse{Payment: p, Result: wr}), nil
}

func (s *paymentService) Void(ctx context.Context, req *connect.Request[ledgerv1.VoidRequest]) (*connect.Response[ledgerv1.VoidResponse], error) {
	cmd, err := voidFromProto(req.Msg)
	if err != nil {
		return nil, err
	}
	p, wr, err := s.paymentWrite(ctx, req, cmd.PaymentID, cmd)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.VoidResponse{Payment: p, Result: wr}), nil
}

func (s *paymentService) Refund(ctx context.Context, req *connect.Request[ledgerv1.RefundRequest]) (*connect.Response[ledgerv1.RefundResponse], error) {
	cmd, err := refundFromProto(req.Msg)
	if err != nil {
		return nil, err
	}
	p, wr, err := s.paymentWrite(ctx, req, cmd.PaymentID, cmd)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.RefundResponse{Payment: p, Result: wr}), nil
}

func (s *paymentService) GetPayment(ctx context.Context, req *connect.Request[ledgerv1.GetPaymentRequest]) (*connect.Response[ledgerv1.GetPaymentResponse], error) {
	id, err := paymentIDFromProto(req.Msg.GetPaymentId())
	if err != nil {
		return nil, err
	}
	ctx, cancel := withReadWait(ctx, req.Msg.GetMinPosition(), s.readWait)
	defer cancel()
	p, err := s.reader.Payment(ctx, id, req.Msg.GetMinPosition())
	if errors.Is(err, projections.ErrNotFound) {
		return nil, fmt.Errorf("%w: payment %s", domain.ErrPaymentUnknown, id)
	}
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.GetPaymentResponse{Payment: paymentToProto(p)}), nil
}
