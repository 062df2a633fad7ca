package webhook_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/ledger"
	"github.com/securepay/securepay/services/webhook"
)

// syncBuffer collects a logger's output from concurrent handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// paymentsServer is the payments component as `securepay serve payments` builds it, with
// the registry on store, serving WebhookService through the component's whole interceptor
// chain (validation, error mapping). Every request acts as principal "alice". Logs, at
// debug level, go to the returned buffer.
func paymentsServer(t *testing.T, st webhook.Store, max int) (ledgerv1connect.WebhookServiceClient, *webhook.Registry, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store, err := embedded.Open(t.TempDir(), embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	proc, err := ledger.New(store, ledger.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proc.Close(); _ = store.Close() })
	reg, err := webhook.NewRegistry(webhook.Config{Store: st, Key: testKey(t, keyA), MaxPerAccount: max, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	caller := func(context.Context, http.Header) string { return "alice" }
	svc, err := webhook.NewService(reg, caller)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := services.NewServer(services.Config{
		Components: []services.Component{services.ComponentPayments},
		Commands:   proc, Store: store, Idempotency: services.NewMemoryIdempotencyStore(0, nil),
		Caller: caller, Logger: log, AllowH2C: true, Webhooks: svc,
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return ledgerv1connect.NewWebhookServiceClient(hs.Client(), hs.URL), reg, logs
}

// TestServiceRoundTrip: the API's four operations over the wire, on PostgreSQL, and the
// secret shown only by Register and Rotate: never by List or Get, never in a log line.
func TestServiceRoundTrip(t *testing.T) {
	ctx := context.Background()
	client, reg, logs := paymentsServer(t, pgBackend(t).store, 0)
	reg1, err := client.RegisterEndpoint(ctx, connect.NewRequest(&ledgerv1.RegisterEndpointRequest{
		AccountId: "alice", Url: "https://hooks.example/alice", EventTypes: []string{"ledger.account.credited.v1"},
	}))
	if err != nil {
		t.Fatal(err)
	}
	ep, secret := reg1.Msg.GetEndpoint(), reg1.Msg.GetSecret()
	if !strings.HasPrefix(secret, "whsec_") || len(secret) != len("whsec_")+43 || ep.GetOwner() != "alice" || ep.GetCreatedAt() == nil {
		t.Fatalf("register answered %v with secret of %d chars", ep, len(secret))
	}
	list, err := client.ListEndpoints(ctx, connect.NewRequest(&ledgerv1.ListEndpointsRequest{AccountId: "alice"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Msg.GetEndpoints()) != 1 || !proto.Equal(list.Msg.GetEndpoints()[0], ep) {
		t.Fatalf("list: %v, want [%v]", list.Msg.GetEndpoints(), ep)
	}
	got, err := client.GetEndpoint(ctx, connect.NewRequest(&ledgerv1.GetEndpointRequest{EndpointId: ep.GetEndpointId()}))
	if err != nil || !proto.Equal(got.Msg.GetEndpoint(), ep) {
		t.Fatalf("get: %v, %v", got, err)
	}
	rot, err := client.RotateSecret(ctx, connect.NewRequest(&ledgerv1.RotateSecretRequest{EndpointId: ep.GetEndpointId()}))
	if err != nil {
		t.Fatal(err)
	}
	secret2 := rot.Msg.GetSecret()
	if secret2 == secret || !strings.HasPrefix(secret2, "whsec_") {
		t.Fatalf("rotate answered secret %q (the first was %q)", secret2, secret)
	}
	eps, err := reg.Endpoints(ctx, "alice")
	if err != nil || len(eps) != 1 || webhook.SecretText(eps[0].Secret) != secret2 {
		t.Fatalf("the dispatcher sees %+v, %v; want the rotated secret", eps, err)
	}
	list2, _ := client.ListEndpoints(ctx, connect.NewRequest(&ledgerv1.ListEndpointsRequest{AccountId: "alice"}))
	for _, m := range []proto.Message{list.Msg, list2.Msg, got.Msg} {
		b, _ := proto.Marshal(m)
		for _, s := range []string{secret, secret2, strings.TrimPrefix(secret, "whsec_"), strings.TrimPrefix(secret2, "whsec_")} {
			if bytes.Contains(b, []byte(s)) {
				t.Fatalf("%T carries a secret", m)
			}
		}
	}
	del, err := client.DeleteEndpoint(ctx, connect.NewRequest(&ledgerv1.DeleteEndpointRequest{EndpointId: ep.GetEndpointId()}))
	if err != nil || del.Msg.GetEndpoint().GetEndpointId() != ep.GetEndpointId() {
		t.Fatalf("delete: %v, %v", del, err)
	}
	_, err = client.GetEndpoint(ctx, connect.NewRequest(&ledgerv1.GetEndpointRequest{EndpointId: ep.GetEndpointId()}))
	if connect.CodeOf(err) != connect.CodeNotFound || services.ReasonOf(err) != services.ReasonNotFound {
		t.Fatalf("get after delete: %v, want NOT_FOUND", err)
	}
	for _, s := range []string{secret, secret2, strings.TrimPrefix(secret, "whsec_"), strings.TrimPrefix(secret2, "whsec_")} {
		if strings.Contains(logs.String(), s) {
			t.Fatalf("a log line holds a secret:\n%s", logs.String())
		}
	}
}

// TestServiceRefusesBadInput: every bad request gets its Connect code and reason, a message
// that says what to send instead, the refused field where there is one, and changes
// nothing.
func TestServiceRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	client, _, _ := paymentsServer(t, pgBackend(t).store, 2)
	if _, err := client.RegisterEndpoint(ctx, connect.NewRequest(&ledgerv1.RegisterEndpointRequest{AccountId: "alice", Url: "https://hooks.example/1"})); err != nil {
		t.Fatal(err)
	}
	reg := func(account, url string, types ...string) func() error {
		return func() error {
			_, err := client.RegisterEndpoint(ctx, connect.NewRequest(&ledgerv1.RegisterEndpointRequest{AccountId: account, Url: url, EventTypes: types}))
			return err
		}
	}
	byID := func(id string) []func() error {
		return []func() error{
			func() error {
				_, err := client.GetEndpoint(ctx, connect.NewRequest(&ledgerv1.GetEndpointRequest{EndpointId: id}))
				return err
			},
			func() error {
				_, err := client.DeleteEndpoint(ctx, connect.NewRequest(&ledgerv1.DeleteEndpointRequest{EndpointId: id}))
				return err
			},
			func() error {
				_, err := client.RotateSecret(ctx, connect.NewRequest(&ledgerv1.RotateSecretRequest{EndpointId: id}))
				return err
			},
		}
	}
	type tc struct {
		name   string
		call   func() error
		code   connect.Code
		reason services.Reason
		field  string
		says   string
	}
	cases := []tc{
		{"http to a public host", reg("alice", "http://hooks.example/x"), connect.CodeInvalidArgument, services.ReasonInvalidInput, "url", "http is accepted only for a loopback host"},
		{"user info", reg("alice", "https://u:p@hooks.example/x"), connect.CodeInvalidArgument, services.ReasonInvalidInput, "url", "user name or password"},
		{"not a URL", reg("alice", "hooks.example/x"), connect.CodeInvalidArgument, services.ReasonInvalidInput, "url", "absolute URL"},
		{"URL too long", reg("alice", "https://hooks.example/"+strings.Repeat("a", 2100)), connect.CodeInvalidArgument, services.ReasonInvalidInput, "url", "at most 2048 characters"},
		{"no URL", reg("alice", ""), connect.CodeInvalidArgument, services.ReasonInvalidInput, "url", "url is required"},
		{"unknown event type", reg("alice", "https://hooks.example/t", "ledger.payment.captured.v1"), connect.CodeInvalidArgument, services.ReasonInvalidInput, "event_types", "known ones are"},
		{"repeated event type", reg("alice", "https://hooks.example/t", "ledger.account.debited.v1", "ledger.account.debited.v1"), connect.CodeInvalidArgument, services.ReasonInvalidInput, "event_types", "same entry twice"},
		{"too many event types", reg("alice", "https://hooks.example/t", manyTypes(17)...), connect.CodeInvalidArgument, services.ReasonInvalidInput, "event_types", "at most 16"},
		{"bad account id", reg("al ice", "https://hooks.example/t"), connect.CodeInvalidArgument, services.ReasonInvalidInput, "account_id", "letters, digits"},
		{"same URL twice", reg("alice", "https://hooks.example/1"), connect.CodeAlreadyExists, "DUPLICATE_ID", "", "already has an endpoint with this url"},
		{"list without account", func() error {
			_, err := client.ListEndpoints(ctx, connect.NewRequest(&ledgerv1.ListEndpointsRequest{}))
			return err
		}, connect.CodeInvalidArgument, services.ReasonInvalidInput, "account_id", "account_id is required"},
	}
	for i, f := range byID("not-an-id") {
		cases = append(cases, tc{fmt.Sprintf("malformed endpoint id (%d)", i), f, connect.CodeInvalidArgument, services.ReasonInvalidInput, "endpoint_id", "we_ and 32 lower-case hex digits"})
	}
	for i, f := range byID("we_" + strings.Repeat("0", 32)) {
		cases = append(cases, tc{fmt.Sprintf("unknown endpoint (%d)", i), f, connect.CodeNotFound, services.ReasonNotFound, "", "does not exist"})
	}
	for _, c := range cases {
		err := c.call()
		if connect.CodeOf(err) != c.code || services.ReasonOf(err) != c.reason {
			t.Errorf("%s: %v (reason %s), want %v %s", c.name, err, services.ReasonOf(err), c.code, c.reason)
			continue
		}
		if !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %q, want it to say %q", c.name, err, c.says)
		}
		if c.field != "" && fieldOf(err) != c.field {
			t.Errorf("%s: ErrorInfo field %q, want %q", c.name, fieldOf(err), c.field)
		}
	}
	// The limit (2 here): the second is accepted, the third refused with what to do.
	if err := reg("alice", "https://hooks.example/2")(); err != nil {
		t.Fatal(err)
	}
	err := reg("alice", "https://hooks.example/3")()
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || services.ReasonOf(err) != services.ReasonEndpointLimit || !strings.Contains(err.Error(), "delete one first") {
		t.Fatalf("over the limit: %v, want FAILED_PRECONDITION ENDPOINT_LIMIT_REACHED saying to delete one", err)
	}
	list, err := client.ListEndpoints(ctx, connect.NewRequest(&ledgerv1.ListEndpointsRequest{AccountId: "alice"}))
	if err != nil || len(list.Msg.GetEndpoints()) != 2 {
		t.Fatalf("after the refusals: %v, %v; want the 2 accepted endpoints only", list, err)
	}
}

func manyTypes(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("ledger.account.t%d.v1", i)
	}
	return out
}

// fieldOf is the ErrorInfo metadata "field" of an API error.
func fieldOf(err error) string {
	var cerr *connect.Error
	if !asConnect(err, &cerr) {
		return ""
	}
	for _, d := range cerr.Details() {
		v, derr := d.Value()
		if derr != nil {
			continue
		}
		if info, ok := v.(interface{ GetMetadata() map[string]string }); ok {
			return info.GetMetadata()["field"]
		}
	}
	return ""
}

func asConnect(err error, target **connect.Error) bool { return errors.As(err, target) }
