package gateway

import (
	"context"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/telemetry"
)

// Each handler names what its request acts on (target), asks the policy, and forwards.
// The policy table decides who may; these only say which fields are the objects.

type accountService struct{ g *Gateway }

var _ ledgerv1connect.AccountServiceHandler = (*accountService)(nil)

func (s *accountService) OpenAccount(ctx context.Context, req *connect.Request[ledgerv1.OpenAccountRequest]) (*connect.Response[ledgerv1.OpenAccountResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{accounts: []string{req.Msg.GetAccountId()}, open: req.Msg}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).accounts.OpenAccount)
}

func (s *accountService) GetAccount(ctx context.Context, req *connect.Request[ledgerv1.GetAccountRequest]) (*connect.Response[ledgerv1.GetAccountResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{accounts: []string{req.Msg.GetAccountId()}}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).accounts.GetAccount)
}

func (s *accountService) FreezeAccount(ctx context.Context, req *connect.Request[ledgerv1.FreezeAccountRequest]) (*connect.Response[ledgerv1.FreezeAccountResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{accounts: []string{req.Msg.GetAccountId()}}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).accounts.FreezeAccount)
}

func (s *accountService) UnfreezeAccount(ctx context.Context, req *connect.Request[ledgerv1.UnfreezeAccountRequest]) (*connect.Response[ledgerv1.UnfreezeAccountResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{accounts: []string{req.Msg.GetAccountId()}}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).accounts.UnfreezeAccount)
}

func (s *accountService) CloseAccount(ctx context.Context, req *connect.Request[ledgerv1.CloseAccountRequest]) (*connect.Response[ledgerv1.CloseAccountResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{accounts: []string{req.Msg.GetAccountId()}}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).accounts.CloseAccount)
}

type paymentService struct{ g *Gateway }

var _ ledgerv1connect.PaymentServiceHandler = (*paymentService)(nil)

func (s *paymentService) Transfer(ctx context.Context, req *connect.Request[ledgerv1.TransferRequest]) (*connect.Response[ledgerv1.TransferResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{accounts: []string{req.Msg.GetSourceAccountId()}}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).payments.Transfer)
}

func (s *paymentService) BatchTransfer(ctx context.Context, req *connect.Request[ledgerv1.BatchTransferRequest]) (*connect.Response[ledgerv1.BatchTransferResponse], error) {
	sources := make([]string, 0, len(req.Msg.GetLegs()))
	for _, l := range req.Msg.GetLegs() {
		sources = append(sources, l.GetSourceAccountId())
	}
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{accounts: sources}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).payments.BatchTransfer)
}

func (s *paymentService) Authorise(ctx context.Context, req *connect.Request[ledgerv1.AuthoriseRequest]) (*connect.Response[ledgerv1.AuthoriseResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{accounts: []string{req.Msg.GetSourceAccountId()}}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).payments.Authorise)
}

func (s *paymentService) Capture(ctx context.Context, req *connect.Request[ledgerv1.CaptureRequest]) (*connect.Response[ledgerv1.CaptureResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{paymentID: req.Msg.GetPaymentId()}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).payments.Capture)
}

func (s *paymentService) Void(ctx context.Context, req *connect.Request[ledgerv1.VoidRequest]) (*connect.Response[ledgerv1.VoidResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{paymentID: req.Msg.GetPaymentId()}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).payments.Void)
}

func (s *paymentService) Refund(ctx context.Context, req *connect.Request[ledgerv1.RefundRequest]) (*connect.Response[ledgerv1.RefundResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{paymentID: req.Msg.GetPaymentId()}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).payments.Refund)
}

func (s *paymentService) GetPayment(ctx context.Context, req *connect.Request[ledgerv1.GetPaymentRequest]) (*connect.Response[ledgerv1.GetPaymentResponse], error) {
	p, err := s.g.authorize(ctx, req.Spec().Procedure, target{paymentID: req.Msg.GetPaymentId()}, req.Msg.GetMinPosition())
	if err != nil {
		return nil, err
	}
	if p != nil {
		// The ownership check read the payment at the caller's min_position (or later):
		// that read is the answer.
		return connect.NewResponse(&ledgerv1.GetPaymentResponse{Payment: p}), nil
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).payments.GetPayment)
}

type balanceService struct{ g *Gateway }

var _ ledgerv1connect.BalanceServiceHandler = (*balanceService)(nil)

func (s *balanceService) GetBalance(ctx context.Context, req *connect.Request[ledgerv1.GetBalanceRequest]) (*connect.Response[ledgerv1.GetBalanceResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{accounts: []string{req.Msg.GetAccountId()}}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).balances.GetBalance)
}

func (s *balanceService) ListHistory(ctx context.Context, req *connect.Request[ledgerv1.ListHistoryRequest]) (*connect.Response[ledgerv1.ListHistoryResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{accounts: []string{req.Msg.GetAccountId()}}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).balances.ListHistory)
}

func (s *balanceService) WatchAccount(ctx context.Context, req *connect.Request[ledgerv1.WatchAccountRequest], stream *connect.ServerStream[ledgerv1.WatchAccountResponse]) error {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{accounts: []string{req.Msg.GetAccountId()}}, 0); err != nil {
		return err
	}
	return relayStream(ctx, s.g, req, stream, s.g.up.of(req.Spec().Procedure).balances.WatchAccount)
}

type auditService struct{ g *Gateway }

var _ ledgerv1connect.AuditServiceHandler = (*auditService)(nil)

func (s *auditService) ReadStream(ctx context.Context, req *connect.Request[ledgerv1.ReadStreamRequest]) (*connect.Response[ledgerv1.ReadStreamResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).audit.ReadStream)
}

func (s *auditService) StreamLog(ctx context.Context, req *connect.Request[ledgerv1.StreamLogRequest], stream *connect.ServerStream[ledgerv1.StreamLogResponse]) error {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{}, 0); err != nil {
		return err
	}
	return relayStream(ctx, s.g, req, stream, s.g.up.of(req.Spec().Procedure).audit.StreamLog)
}

func (s *auditService) VerifyChain(ctx context.Context, req *connect.Request[ledgerv1.VerifyChainRequest]) (*connect.Response[ledgerv1.VerifyChainResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).audit.VerifyChain)
}

func (s *auditService) GetCheckpoint(ctx context.Context, req *connect.Request[ledgerv1.GetCheckpointRequest]) (*connect.Response[ledgerv1.GetCheckpointResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).audit.GetCheckpoint)
}

func (s *auditService) ProveInclusion(ctx context.Context, req *connect.Request[ledgerv1.ProveInclusionRequest]) (*connect.Response[ledgerv1.ProveInclusionResponse], error) {
	if req.Msg.GetPaymentId() == "" {
		// A position may name anyone's event: only auditors and operators prove those.
		if c, ok := callOf(ctx); ok && !c.principal.Has(RoleAuditor) && !c.principal.Has(RoleOperator) {
			s.g.cfg.Refusals.Refused(telemetry.RefusalForbidden)
			return nil, services.NewError(services.ReasonPermissionDenied, "a customer proves its own payments by payment_id; proofs of log positions are for auditors and operators")
		}
	}
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{paymentID: req.Msg.GetPaymentId()}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).audit.ProveInclusion)
}

func (s *auditService) ProveConsistency(ctx context.Context, req *connect.Request[ledgerv1.ProveConsistencyRequest]) (*connect.Response[ledgerv1.ProveConsistencyResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).audit.ProveConsistency)
}
