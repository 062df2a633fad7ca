package gateway

import (
	"context"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
)

func (g *Gateway) mountWebhooks(r *router) {
	forwarded[ledgerv1.RegisterEndpointRequest, ledgerv1.RegisterEndpointResponse](r, ledgerv1connect.WebhookServiceRegisterEndpointProcedure, func(m *ledgerv1.RegisterEndpointRequest) target {
		return target{accounts: []string{m.GetAccountId()}}
	})
	unary(r, ledgerv1connect.WebhookServiceListEndpointsProcedure, func(ctx context.Context, req *connect.Request[frame[ledgerv1.ListEndpointsRequest]], h *hop[ledgerv1.ListEndpointsRequest, ledgerv1.ListEndpointsResponse]) (*connect.Response[frame[ledgerv1.ListEndpointsResponse]], error) {
		if _, err := g.authorize(ctx, req.Spec().Procedure, target{accounts: []string{req.Msg.msg().GetAccountId()}}, 0); err != nil {
			return nil, err
		}
		res, err := forward(ctx, g, req, h)
		if err != nil {
			return nil, err
		}
		// A customer sees the endpoints it registered, not those another principal sharing
		// the account registered (the rule of OwnsEndpoint): listing them would name
		// endpoints that Get, Delete and RotateSecret say do not exist.
		if c, ok := callOf(ctx); ok && !c.principal.Has(RoleOperator) {
			list, err := res.Msg.message()
			if err != nil {
				g.cfg.Logger.ErrorContext(ctx, "gateway: upstream answer does not decode", "procedure", req.Spec().Procedure, "error", err)
				return nil, services.NewError(services.ReasonInternal, "internal error")
			}
			own := list.GetEndpoints()[:0:0]
			for _, e := range list.GetEndpoints() {
				if e.GetOwner() == c.principal.Subject {
					own = append(own, e)
				}
			}
			list.Endpoints = own
			res.Msg.setMessage(list)
		}
		return res, nil
	})
	unary(r, ledgerv1connect.WebhookServiceGetEndpointProcedure, func(ctx context.Context, req *connect.Request[frame[ledgerv1.GetEndpointRequest]], h *hop[ledgerv1.GetEndpointRequest, ledgerv1.GetEndpointResponse]) (*connect.Response[frame[ledgerv1.GetEndpointResponse]], error) {
		var found *ledgerv1.WebhookEndpoint
		if _, err := g.authorize(ctx, req.Spec().Procedure, target{endpointID: req.Msg.msg().GetEndpointId(), endpoint: &found}, 0); err != nil {
			return nil, err
		}
		if found != nil {
			// The ownership check read the endpoint: that read is the answer.
			return connect.NewResponse(frameOf(&ledgerv1.GetEndpointResponse{Endpoint: found})), nil
		}
		return forward(ctx, g, req, h)
	})
	forwarded[ledgerv1.DeleteEndpointRequest, ledgerv1.DeleteEndpointResponse](r, ledgerv1connect.WebhookServiceDeleteEndpointProcedure, func(m *ledgerv1.DeleteEndpointRequest) target {
		return target{endpointID: m.GetEndpointId()}
	})
	forwarded[ledgerv1.RotateSecretRequest, ledgerv1.RotateSecretResponse](r, ledgerv1connect.WebhookServiceRotateSecretProcedure, func(m *ledgerv1.RotateSecretRequest) target {
		return target{endpointID: m.GetEndpointId()}
	})
}
