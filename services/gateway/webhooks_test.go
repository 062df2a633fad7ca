package gateway_test

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/webhook"
)

// TestWebhookEndpointsBOLA: customer bob against alice's account and endpoints, on every
// WebhookService procedure. Each refusal is word for word what bob gets for an account or
// endpoint that does not exist (the ids aside), nothing of alice's changes, and the
// operator still manages alice's endpoints.
func TestWebhookEndpointsBOLA(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	aliceTok, bobTok := f.seed(t)
	alice, bob := f.as(aliceTok), f.as(bobTok)
	op := f.as(f.issuer.token(t, "operator-1", []string{"operator"}))

	reg, err := alice.webhooks.RegisterEndpoint(ctx, connect.NewRequest(&ledgerv1.RegisterEndpointRequest{AccountId: "alice", Url: "https://hooks.example/alice"}))
	if err != nil {
		t.Fatalf("alice registers for her account: %v", err)
	}
	ep := reg.Msg.GetEndpoint()
	if ep.GetOwner() != "alice" {
		t.Fatalf("the endpoint's owner is %q, want the registering principal alice", ep.GetOwner())
	}
	secret := reg.Msg.GetSecret()
	const ghostEndpoint = "we_0123456789abcdef0123456789abcdef"

	// same reports whether two refusals read the same once the object's id is masked.
	same := func(a, b error, idA, idB string) bool {
		return strings.ReplaceAll(errorSummary(a), idA, "ID") == strings.ReplaceAll(errorSummary(b), idB, "ID")
	}
	accountCalls := map[string]func(api, string) error{
		"RegisterEndpoint": func(a api, account string) error {
			_, err := a.webhooks.RegisterEndpoint(ctx, connect.NewRequest(&ledgerv1.RegisterEndpointRequest{AccountId: account, Url: "https://evil.example/steal"}))
			return err
		},
		"ListEndpoints": func(a api, account string) error {
			_, err := a.webhooks.ListEndpoints(ctx, connect.NewRequest(&ledgerv1.ListEndpointsRequest{AccountId: account}))
			return err
		},
	}
	for name, call := range accountCalls {
		theirs, missing := call(bob, "alice"), call(bob, "ghost")
		if connect.CodeOf(theirs) != connect.CodeNotFound || !same(theirs, missing, "alice", "ghost") {
			t.Errorf("%s by bob on alice's account: %s; on a missing account: %s; want the same NOT_FOUND", name, errorSummary(theirs), errorSummary(missing))
		}
	}
	endpointCalls := map[string]func(api, string) error{
		"GetEndpoint": func(a api, id string) error {
			_, err := a.webhooks.GetEndpoint(ctx, connect.NewRequest(&ledgerv1.GetEndpointRequest{EndpointId: id}))
			return err
		},
		"DeleteEndpoint": func(a api, id string) error {
			_, err := a.webhooks.DeleteEndpoint(ctx, connect.NewRequest(&ledgerv1.DeleteEndpointRequest{EndpointId: id}))
			return err
		},
		"RotateSecret": func(a api, id string) error {
			_, err := a.webhooks.RotateSecret(ctx, connect.NewRequest(&ledgerv1.RotateSecretRequest{EndpointId: id}))
			return err
		},
	}
	// A second principal that also owns account alice (another service of hers) did not
	// register the endpoint: it is not hers either.
	coOwner := f.as(f.issuer.token(t, "alice-batch-job", []string{"customer"}, "alice"))
	for name, call := range endpointCalls {
		for who, a := range map[string]api{"bob": bob, "a co-owner of the account": coOwner} {
			theirs, missing := call(a, ep.GetEndpointId()), call(a, ghostEndpoint)
			if connect.CodeOf(theirs) != connect.CodeNotFound || services.ReasonOf(theirs) != services.ReasonNotFound || !same(theirs, missing, ep.GetEndpointId(), ghostEndpoint) {
				t.Errorf("%s by %s on alice's endpoint: %s; on a missing one: %s; want the same NOT_FOUND", name, who, errorSummary(theirs), errorSummary(missing))
			}
		}
	}
	// Nothing of alice's changed: her endpoint is there, with the secret she was shown.
	eps, err := f.ledger.webhooks.Endpoints(ctx, "alice")
	if err != nil || len(eps) != 1 || eps[0].ID != ep.GetEndpointId() || eps[0].URL != "https://hooks.example/alice" {
		t.Fatalf("alice's endpoints after bob's attempts: %+v, %v", eps, err)
	}
	if webhook.SecretText(eps[0].Secret) != secret {
		t.Fatal("bob's RotateSecret changed alice's secret")
	}
	// The co-owner lists the account but sees only the endpoints it registered.
	if res, err := coOwner.webhooks.ListEndpoints(ctx, connect.NewRequest(&ledgerv1.ListEndpointsRequest{AccountId: "alice"})); err != nil || len(res.Msg.GetEndpoints()) != 0 {
		t.Fatalf("the co-owner's list: %v, %v; want none (it registered none)", res, err)
	}
	// alice herself: list, get, rotate.
	if res, err := alice.webhooks.ListEndpoints(ctx, connect.NewRequest(&ledgerv1.ListEndpointsRequest{AccountId: "alice"})); err != nil || len(res.Msg.GetEndpoints()) != 1 {
		t.Fatalf("alice's list: %v, %v", res, err)
	}
	if _, err := alice.webhooks.GetEndpoint(ctx, connect.NewRequest(&ledgerv1.GetEndpointRequest{EndpointId: ep.GetEndpointId()})); err != nil {
		t.Fatalf("alice gets her endpoint: %v", err)
	}
	if _, err := alice.webhooks.RotateSecret(ctx, connect.NewRequest(&ledgerv1.RotateSecretRequest{EndpointId: ep.GetEndpointId()})); err != nil {
		t.Fatalf("alice rotates her secret: %v", err)
	}
	// An auditor has no webhook rights; the operator manages anyone's.
	auditor := f.as(f.issuer.token(t, "auditor-1", []string{"auditor"}))
	if err := accountCalls["ListEndpoints"](auditor, "alice"); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("an auditor lists endpoints: %v, want PERMISSION_DENIED", err)
	}
	if res, err := op.webhooks.ListEndpoints(ctx, connect.NewRequest(&ledgerv1.ListEndpointsRequest{AccountId: "alice"})); err != nil || len(res.Msg.GetEndpoints()) != 1 {
		t.Fatalf("the operator's list of alice's endpoints: %v, %v", res, err)
	}
	if _, err := op.webhooks.DeleteEndpoint(ctx, connect.NewRequest(&ledgerv1.DeleteEndpointRequest{EndpointId: ep.GetEndpointId()})); err != nil {
		t.Fatalf("the operator deletes alice's endpoint: %v", err)
	}
	if err := endpointCalls["GetEndpoint"](alice, ep.GetEndpointId()); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("alice's endpoint after the operator deleted it: %v, want NOT_FOUND", err)
	}
}
