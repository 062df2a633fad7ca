package services

import (
	"context"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
)

// noWebhookRegistry answers WebhookService on a payments server started without a webhook
// registry (no --webhook-key-file): the procedures exist in the API, and a caller learns
// why this server does not offer them and what turns them on.
type noWebhookRegistry struct{}

var _ ledgerv1connect.WebhookServiceHandler = noWebhookRegistry{}

func webhooksDisabled() error {
	return newError(connect.CodeFailedPrecondition, ReasonWebhooksDisabled,
		"this server runs without a webhook registry: start the payments component with --webhook-key-file (securepay dev always has one)")
}

func (noWebhookRegistry) RegisterEndpoint(context.Context, *connect.Request[ledgerv1.RegisterEndpointRequest]) (*connect.Response[ledgerv1.RegisterEndpointResponse], error) {
	return nil, webhooksDisabled()
}

func (noWebhookRegistry) ListEndpoints(context.Context, *connect.Request[ledgerv1.ListEndpointsRequest]) (*connect.Response[ledgerv1.ListEndpointsResponse], error) {
	return nil, webhooksDisabled()
}

func (noWebhookRegistry) GetEndpoint(context.Context, *connect.Request[ledgerv1.GetEndpointRequest]) (*connect.Response[ledgerv1.GetEndpointResponse], error) {
	return nil, webhooksDisabled()
}

func (noWebhookRegistry) DeleteEndpoint(context.Context, *connect.Request[ledgerv1.DeleteEndpointRequest]) (*connect.Response[ledgerv1.DeleteEndpointResponse], error) {
	return nil, webhooksDisabled()
}

func (noWebhookRegistry) RotateSecret(context.Context, *connect.Request[ledgerv1.RotateSecretRequest]) (*connect.Response[ledgerv1.RotateSecretResponse], error) {
	return nil, webhooksDisabled()
}
