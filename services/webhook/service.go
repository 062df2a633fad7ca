package webhook

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/services"
)

// Service serves WebhookService on a component (payments: see services.Component). It
// trusts its caller as the rest of the component does: the gateway has authorised the
// call (roles, accounts, endpoint ownership) and names the principal, which becomes the
// owner of what it registers.
type Service struct {
	reg    *Registry
	caller func(ctx context.Context, h http.Header) string
}

var _ ledgerv1connect.WebhookServiceHandler = (*Service)(nil)

// NewService serves reg. caller names the principal of a request (the component's
// services.Config.Caller: the gateway's assertion, or the component's own name for a
// direct internal caller).
func NewService(reg *Registry, caller func(ctx context.Context, h http.Header) string) (*Service, error) {
	if reg == nil || caller == nil {
		return nil, errors.New("webhook service: a Registry and a caller function are required")
	}
	return &Service{reg: reg, caller: caller}, nil
}

func (s *Service) RegisterEndpoint(ctx context.Context, req *connect.Request[ledgerv1.RegisterEndpointRequest]) (*connect.Response[ledgerv1.RegisterEndpointResponse], error) {
	owner := s.caller(ctx, req.Header())
	rec, secret, err := s.reg.Register(ctx, req.Msg.GetAccountId(), req.Msg.GetUrl(), req.Msg.GetEventTypes(), owner)
	if err != nil {
		return nil, s.refusal(err, req.Msg.GetAccountId(), "")
	}
	return connect.NewResponse(&ledgerv1.RegisterEndpointResponse{Endpoint: toProto(rec), Secret: secret}), nil
}

func (s *Service) ListEndpoints(ctx context.Context, req *connect.Request[ledgerv1.ListEndpointsRequest]) (*connect.Response[ledgerv1.ListEndpointsResponse], error) {
	recs, err := s.reg.List(ctx, req.Msg.GetAccountId())
	if err != nil {
		return nil, s.refusal(err, req.Msg.GetAccountId(), "")
	}
	out := &ledgerv1.ListEndpointsResponse{Endpoints: make([]*ledgerv1.WebhookEndpoint, 0, len(recs))}
	for _, r := range recs {
		out.Endpoints = append(out.Endpoints, toProto(r))
	}
	return connect.NewResponse(out), nil
}

func (s *Service) GetEndpoint(ctx context.Context, req *connect.Request[ledgerv1.GetEndpointRequest]) (*connect.Response[ledgerv1.GetEndpointResponse], error) {
	rec, err := s.reg.Get(ctx, req.Msg.GetEndpointId())
	if err != nil {
		return nil, s.refusal(err, "", req.Msg.GetEndpointId())
	}
	return connect.NewResponse(&ledgerv1.GetEndpointResponse{Endpoint: toProto(rec)}), nil
}

func (s *Service) DeleteEndpoint(ctx context.Context, req *connect.Request[ledgerv1.DeleteEndpointRequest]) (*connect.Response[ledgerv1.DeleteEndpointResponse], error) {
	rec, err := s.reg.Delete(ctx, req.Msg.GetEndpointId())
	if err != nil {
		return nil, s.refusal(err, "", req.Msg.GetEndpointId())
	}
	return connect.NewResponse(&ledgerv1.DeleteEndpointResponse{Endpoint: toProto(rec)}), nil
}

func (s *Service) RotateSecret(ctx context.Context, req *connect.Request[ledgerv1.RotateSecretRequest]) (*connect.Response[ledgerv1.RotateSecretResponse], error) {
	rec, secret, err := s.reg.Rotate(ctx, req.Msg.GetEndpointId())
	if err != nil {
		return nil, s.refusal(err, "", req.Msg.GetEndpointId())
	}
	return connect.NewResponse(&ledgerv1.RotateSecretResponse{Endpoint: toProto(rec), Secret: secret}), nil
}

// EndpointNotFound is the one answer for an endpoint that does not exist, and (from the
// gateway) for one the caller may not see: word for word the same, so the two cannot be
// told apart.
func EndpointNotFound(id string) error {
	return services.NewError(services.ReasonNotFound, fmt.Sprintf("webhook endpoint %s does not exist", id))
}

// refusal maps the registry's refusals to the API's reasons. Anything else (the store
// unreachable, a key mismatch) goes on to the component's error interceptor, which answers
// UNAVAILABLE or INTERNAL and logs the details for the operator.
func (s *Service) refusal(err error, account, endpoint string) error {
	var in *inputError
	switch {
	case errors.As(err, &in):
		return services.NewFieldError(services.ReasonInvalidInput, in.msg, in.field)
	case errors.Is(err, ErrNotFound):
		return EndpointNotFound(endpoint)
	case errors.Is(err, ErrDuplicate):
		return services.NewError(services.Reason(domain.ReasonDuplicateID),
			fmt.Sprintf("account %s already has an endpoint with this url: list its endpoints, or rotate that endpoint's secret if it was lost", account))
	case errors.Is(err, ErrLimit):
		return services.NewError(services.ReasonEndpointLimit,
			fmt.Sprintf("account %s already has %d webhook endpoints, the most this server allows: delete one first", account, s.reg.MaxPerAccount()))
	}
	return err
}

// toProto is an endpoint as the API shows it: never its secret, sealed or not.
func toProto(r Record) *ledgerv1.WebhookEndpoint {
	return &ledgerv1.WebhookEndpoint{
		EndpointId:      r.ID,
		AccountId:       r.AccountID,
		Url:             r.URL,
		EventTypes:      r.EventTypes,
		Owner:           r.Owner,
		CreatedAt:       timestamppb.New(r.CreatedAt),
		SecretRotatedAt: timestamppb.New(r.RotatedAt),
	}
}
