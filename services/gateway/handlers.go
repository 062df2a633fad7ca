package gateway

import (
	"context"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/telemetry"
)

// Each procedure names what its request acts on (target), asks the policy, and forwards.
// The policy table decides who may; these only say which fields are the objects.

func (g *Gateway) mountAccounts(r *router) {
	forwarded[ledgerv1.OpenAccountRequest, ledgerv1.OpenAccountResponse](r, ledgerv1connect.AccountServiceOpenAccountProcedure, func(m *ledgerv1.OpenAccountRequest) target {
		return target{accounts: []string{m.GetAccountId()}, open: m}
	})
	forwarded[ledgerv1.GetAccountRequest, ledgerv1.GetAccountResponse](r, ledgerv1connect.AccountServiceGetAccountProcedure, func(m *ledgerv1.GetAccountRequest) target {
		return target{accounts: []string{m.GetAccountId()}}
	})
	forwarded[ledgerv1.FreezeAccountRequest, ledgerv1.FreezeAccountResponse](r, ledgerv1connect.AccountServiceFreezeAccountProcedure, func(m *ledgerv1.FreezeAccountRequest) target {
		return target{accounts: []string{m.GetAccountId()}}
	})
	forwarded[ledgerv1.UnfreezeAccountRequest, ledgerv1.UnfreezeAccountResponse](r, ledgerv1connect.AccountServiceUnfreezeAccountProcedure, func(m *ledgerv1.UnfreezeAccountRequest) target {
		return target{accounts: []string{m.GetAccountId()}}
	})
	forwarded[ledgerv1.CloseAccountRequest, ledgerv1.CloseAccountResponse](r, ledgerv1connect.AccountServiceCloseAccountProcedure, func(m *ledgerv1.CloseAccountRequest) target {
		return target{accounts: []string{m.GetAccountId()}}
	})
}

func (g *Gateway) mountPayments(r *router) {
	forwarded[ledgerv1.TransferRequest, ledgerv1.TransferResponse](r, ledgerv1connect.PaymentServiceTransferProcedure, func(m *ledgerv1.TransferRequest) target {
		return target{accounts: []string{m.GetSourceAccountId()}}
	})
	forwarded[ledgerv1.BatchTransferRequest, ledgerv1.BatchTransferResponse](r, ledgerv1connect.PaymentServiceBatchTransferProcedure, func(m *ledgerv1.BatchTransferRequest) target {
		sources := make([]string, 0, len(m.GetLegs()))
		for _, l := range m.GetLegs() {
			sources = append(sources, l.GetSourceAccountId())
		}
		return target{accounts: sources}
	})
	forwarded[ledgerv1.AuthoriseRequest, ledgerv1.AuthoriseResponse](r, ledgerv1connect.PaymentServiceAuthoriseProcedure, func(m *ledgerv1.AuthoriseRequest) target {
		return target{accounts: []string{m.GetSourceAccountId()}}
	})
	forwarded[ledgerv1.CaptureRequest, ledgerv1.CaptureResponse](r, ledgerv1connect.PaymentServiceCaptureProcedure, func(m *ledgerv1.CaptureRequest) target {
		return target{paymentID: m.GetPaymentId()}
	})
	forwarded[ledgerv1.VoidRequest, ledgerv1.VoidResponse](r, ledgerv1connect.PaymentServiceVoidProcedure, func(m *ledgerv1.VoidRequest) target {
		return target{paymentID: m.GetPaymentId()}
	})
	forwarded[ledgerv1.RefundRequest, ledgerv1.RefundResponse](r, ledgerv1connect.PaymentServiceRefundProcedure, func(m *ledgerv1.RefundRequest) target {
		return target{paymentID: m.GetPaymentId()}
	})
	unary(r, ledgerv1connect.PaymentServiceGetPaymentProcedure, func(ctx context.Context, req *connect.Request[frame[ledgerv1.GetPaymentRequest]], h *hop[ledgerv1.GetPaymentRequest, ledgerv1.GetPaymentResponse]) (*connect.Response[frame[ledgerv1.GetPaymentResponse]], error) {
		m := req.Msg.msg()
		p, err := g.authorize(ctx, req.Spec().Procedure, target{paymentID: m.GetPaymentId()}, m.GetMinPosition())
		if err != nil {
			return nil, err
		}
		if p != nil {
			// The ownership check read the payment at the caller's min_position (or later):
			// that read is the answer.
			return connect.NewResponse(frameOf(&ledgerv1.GetPaymentResponse{Payment: p})), nil
		}
		return forward(ctx, g, req, h)
	})
}

func (g *Gateway) mountBalances(r *router) {
	forwarded[ledgerv1.GetBalanceRequest, ledgerv1.GetBalanceResponse](r, ledgerv1connect.BalanceServiceGetBalanceProcedure, func(m *ledgerv1.GetBalanceRequest) target {
		return target{accounts: []string{m.GetAccountId()}}
	})
	forwarded[ledgerv1.ListHistoryRequest, ledgerv1.ListHistoryResponse](r, ledgerv1connect.BalanceServiceListHistoryProcedure, func(m *ledgerv1.ListHistoryRequest) target {
		return target{accounts: []string{m.GetAccountId()}}
	})
	streamed[ledgerv1.WatchAccountRequest, ledgerv1.WatchAccountResponse](r, ledgerv1connect.BalanceServiceWatchAccountProcedure, func(m *ledgerv1.WatchAccountRequest) target {
		return target{accounts: []string{m.GetAccountId()}}
	})
}

func (g *Gateway) mountAudit(r *router) {
	forwarded[ledgerv1.ReadStreamRequest, ledgerv1.ReadStreamResponse](r, ledgerv1connect.AuditServiceReadStreamProcedure, func(*ledgerv1.ReadStreamRequest) target {
		return target{}
	})
	streamed[ledgerv1.StreamLogRequest, ledgerv1.StreamLogResponse](r, ledgerv1connect.AuditServiceStreamLogProcedure, func(*ledgerv1.StreamLogRequest) target {
		return target{}
	})
	forwarded[ledgerv1.VerifyChainRequest, ledgerv1.VerifyChainResponse](r, ledgerv1connect.AuditServiceVerifyChainProcedure, func(*ledgerv1.VerifyChainRequest) target {
		return target{}
	})
	forwarded[ledgerv1.GetCheckpointRequest, ledgerv1.GetCheckpointResponse](r, ledgerv1connect.AuditServiceGetCheckpointProcedure, func(*ledgerv1.GetCheckpointRequest) target {
		return target{}
	})
	unary(r, ledgerv1connect.AuditServiceProveInclusionProcedure, func(ctx context.Context, req *connect.Request[frame[ledgerv1.ProveInclusionRequest]], h *hop[ledgerv1.ProveInclusionRequest, ledgerv1.ProveInclusionResponse]) (*connect.Response[frame[ledgerv1.ProveInclusionResponse]], error) {
		m := req.Msg.msg()
		if m.GetPaymentId() == "" {
			// A position may name anyone's event: only auditors and operators prove those.
			if c, ok := callOf(ctx); ok && !c.principal.Has(RoleAuditor) && !c.principal.Has(RoleOperator) {
				g.cfg.Refusals.Refused(telemetry.RefusalForbidden)
				return nil, services.NewError(services.ReasonPermissionDenied, "a customer proves its own payments by payment_id; proofs of log positions are for auditors and operators")
			}
		}
		if _, err := g.authorize(ctx, req.Spec().Procedure, target{paymentID: m.GetPaymentId()}, 0); err != nil {
			return nil, err
		}
		return forward(ctx, g, req, h)
	})
	forwarded[ledgerv1.ProveConsistencyRequest, ledgerv1.ProveConsistencyResponse](r, ledgerv1connect.AuditServiceProveConsistencyProcedure, func(*ledgerv1.ProveConsistencyRequest) target {
		return target{}
	})
}
