package gateway

import (
	"context"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
)

type webhookService struct{ g *Gateway }

var _ ledgerv1connect.WebhookServiceHandler = (*webhookService)(nil)

func (s *webhookService) RegisterEndpoint(ctx context.Context, req *connect.Request[ledgerv1.RegisterEndpointRequest]) (*connect.Response[ledgerv1.RegisterEndpointResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{accounts: []string{req.Msg.GetAccountId()}}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).webhooks.RegisterEndpoint)
}

func (s *webhookService) ListEndpoints(ctx context.Context, req *connect.Request[ledgerv1.ListEndpointsRequest]) (*connect.Response[ledgerv1.ListEndpointsResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{accounts: []string{req.Msg.GetAccountId()}}, 0); err != nil {
		return nil, err
	}
	res, err := forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).webhooks.ListEndpoints)
	if err != nil {
		return nil, err
	}
	// A customer sees the endpoints it registered, not those another principal sharing the
	// account registered (the rule of OwnsEndpoint): listing them would name endpoints
	// that Get, Delete and RotateSecret say do not exist.
	if c, ok := callOf(ctx); ok && !c.principal.Has(RoleOperator) {
		own := res.Msg.GetEndpoints()[:0:0]
		for _, e := range res.Msg.GetEndpoints() {
			if e.GetOwner() == c.principal.Subject {
				own = append(own, e)
			}
		}
		res.Msg.Endpoints = own
	}
	return res, nil
}

func (s *webhookService) GetEndpoint(ctx context.Context, req *connect.Request[ledgerv1.GetEndpointRequest]) (*connect.Response[ledgerv1.GetEndpointResponse], error) {
	var found *ledgerv1.WebhookEndpoint
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{endpointID: req.Msg.GetEndpointId(), endpoint: &found}, 0); err != nil {
		return nil, err
	}
	if found != nil {
		// The ownership check read the endpoint: that read is the answer.
		return connect.NewResponse(&ledgerv1.GetEndpointResponse{Endpoint: found}), nil
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).webhooks.GetEndpoint)
}

func (s *webhookService) DeleteEndpoint(ctx context.Context, req *connect.Request[ledgerv1.DeleteEndpointRequest]) (*connect.Response[ledgerv1.DeleteEndpointResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{endpointID: req.Msg.GetEndpointId()}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).webhooks.DeleteEndpoint)
}

func (s *webhookService) RotateSecret(ctx context.Context, req *connect.Request[ledgerv1.RotateSecretRequest]) (*connect.Response[ledgerv1.RotateSecretResponse], error) {
	if _, err := s.g.authorize(ctx, req.Spec().Procedure, target{endpointID: req.Msg.GetEndpointId()}, 0); err != nil {
		return nil, err
	}
	return forward(ctx, s.g, req, s.g.up.of(req.Spec().Procedure).webhooks.RotateSecret)
}
