package services_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	hopv1 "github.com/securepay/securepay/api/gen/securepay/hop/v1"
	"github.com/securepay/securepay/api/gen/securepay/hop/v1/hopv1connect"
	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/edge"
	"github.com/securepay/securepay/services/mtls"
	"github.com/securepay/securepay/services/mtls/mtlstest"
	"github.com/securepay/securepay/services/telemetry"
)

// asHopError is a lone call's error as Forward reports it, to compare the two.
func asHopError(t testing.TB, err error) *hopv1.Error {
	t.Helper()
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		t.Fatalf("want a Connect error, got %v", err)
	}
	out := &hopv1.Error{Code: cerr.Code().String(), Message: cerr.Message()}
	for _, d := range cerr.Details() {
		out.Details = append(out.Details, &anypb.Any{TypeUrl: "type.googleapis.com/" + d.Type(), Value: d.Bytes()})
	}
	return out
}

// sameError compares two errors by code, message and details; each detail by its type
// and decoded message, since its bytes may differ: connect-go encodes details without
// deterministic map order (ErrorInfo's metadata).
func sameError(a, b *hopv1.Error) bool {
	if a.GetCode() != b.GetCode() || a.GetMessage() != b.GetMessage() || len(a.GetDetails()) != len(b.GetDetails()) {
		return false
	}
	for i, da := range a.GetDetails() {
		db := b.GetDetails()[i]
		ma, errA := da.UnmarshalNew()
		mb, errB := db.UnmarshalNew()
		if da.GetTypeUrl() != db.GetTypeUrl() || errA != nil || errB != nil || !proto.Equal(ma, mb) {
			return false
		}
	}
	return true
}

func headerOf(res *hopv1.Result, name string) string {
	for _, h := range res.GetHeaders() {
		if http.CanonicalHeaderKey(h.GetName()) == http.CanonicalHeaderKey(name) {
			return h.GetValue()
		}
	}
	return ""
}

// TestForwardServesEachCallAsIfAlone sends one Forward from the gateway's SVID that mixes
// every kind of outcome, and compares each call's answer with the same call sent alone
// on the same kind of connection: same code, message and details, same message bytes for
// a replay; then reads the log to see that each committed call was recorded for its own
// principal and correlation id, and that nothing else was.
func TestForwardServesEachCallAsIfAlone(t *testing.T) {
	n := startPaymentsNode(t)
	ctx := testContext(t)
	gw := n.client(t, n.ids.Gateway)
	n.seedAccounts(t, gw, "alice", "bob", "carol")
	payments := ledgerv1connect.NewPaymentServiceClient(gw, n.url)
	hop := hopv1connect.NewHopServiceClient(gw, n.url)
	transfer := ledgerv1connect.PaymentServiceTransferProcedure

	// The lone calls that Forward's answers are compared with. A refused call changes
	// nothing, so the same request can be sent again through Forward.
	badInput := &ledgerv1.TransferRequest{PaymentId: "bad", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.0.0")}
	_, loneBad := payments.Transfer(ctx, asGateway(badInput, "alice", "c-bad"))
	broke := &ledgerv1.TransferRequest{PaymentId: "broke", SourceAccountId: "carol", DestinationAccountId: "bob", Amount: usd("5000.00")}
	_, loneBroke := payments.Transfer(ctx, asGateway(broke, "carol", "c-broke"))
	if connect.CodeOf(loneBroke) != connect.CodeFailedPrecondition || connect.CodeOf(loneBad) != connect.CodeInvalidArgument {
		t.Fatalf("lone calls: want failed_precondition and invalid_argument, got %v and %v", loneBroke, loneBad)
	}
	replayed := &ledgerv1.TransferRequest{PaymentId: "once", SourceAccountId: "alice", DestinationAccountId: "carol", Amount: usd("2.00")}
	first := asGateway(replayed, "alice", "c-once")
	first.Header().Set(services.IdempotencyKeyHeader, "key-once")
	loneOnce, err := payments.Transfer(ctx, first)
	if err != nil {
		t.Fatalf("lone idempotent transfer: %v", err)
	}
	loneOnceBytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(loneOnce.Msg)
	if err != nil {
		t.Fatal(err)
	}
	head0, err := n.store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}

	good := func(id, from, to string) *ledgerv1.TransferRequest {
		return &ledgerv1.TransferRequest{PaymentId: id, SourceAccountId: from, DestinationAccountId: to, Amount: usd("1.00")}
	}
	ident := func(principal, correlation string) []string {
		return []string{edge.PrincipalHeader, principal, edge.CorrelationHeader, correlation}
	}
	expired := hopCall(t, transfer, good("late", "alice", "bob"), ident("alice", "c-late")...)
	expired.Timeout = durationpb.New(0)
	type want struct {
		err       *hopv1.Error // nil: a message
		code      string       // when err is nil and the call is refused: the code alone
		committed string       // the payment id recorded, for a transfer that commits
		principal string
		replay    bool
	}
	cases := []struct {
		name string
		call *hopv1.Call
		want want
	}{
		{"good transfer", hopCall(t, transfer, good("g1", "alice", "bob"), ident("alice", "c-g1")...), want{committed: "g1", principal: "alice"}},
		{"bad input", hopCall(t, transfer, badInput, ident("alice", "c-bad")...), want{err: asHopError(t, loneBad)}},
		{"another principal's good transfer", hopCall(t, transfer, good("g2", "bob", "alice"), ident("bob", "c-g2")...), want{committed: "g2", principal: "bob"}},
		{"insufficient funds", hopCall(t, transfer, broke, ident("carol", "c-broke")...), want{err: asHopError(t, loneBroke)}},
		{"idempotent replay", hopCall(t, transfer, replayed, append(ident("alice", "c-once"), services.IdempotencyKeyHeader, "key-once")...), want{replay: true}},
		{"another component's procedure", hopCall(t, ledgerv1connect.BalanceServiceGetBalanceProcedure, &ledgerv1.GetBalanceRequest{AccountId: "alice"}, ident("alice", "c-q")...), want{code: "unimplemented"}},
		{"a stream", hopCall(t, ledgerv1connect.BalanceServiceWatchAccountProcedure, &ledgerv1.WatchAccountRequest{AccountId: "alice"}, ident("alice", "c-w")...), want{code: "unimplemented"}},
		{"HopService's own", hopCall(t, hopv1connect.HopServiceForwardProcedure, &hopv1.ForwardRequest{}, ident("alice", "c-h")...), want{code: "invalid_argument"}},
		{"unknown procedure", hopCall(t, "/securepay.ledger.v1.PaymentService/Steal", good("s", "bob", "alice"), ident("alice", "c-s")...), want{code: "unimplemented"}},
		{"Authorization header", hopCall(t, transfer, good("h1", "bob", "alice"), append(ident("bob", "c-h1"), "Authorization", "Bearer x")...), want{code: "invalid_argument"}},
		{"Content-Type header", hopCall(t, transfer, good("h2", "bob", "alice"), append(ident("bob", "c-h2"), "content-type", "application/json")...), want{code: "invalid_argument"}},
		{"principal twice", hopCall(t, transfer, good("h3", "bob", "alice"), append(ident("bob", "c-h3"), edge.PrincipalHeader, "alice")...), want{code: "invalid_argument"}},
		{"expired deadline", expired, want{code: "deadline_exceeded"}},
		{"good transfer after the refusals", hopCall(t, transfer, good("g3", "carol", "alice"), append(ident("carol", "c-g3"), "traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")...), want{committed: "g3", principal: "carol"}},
	}
	req := &hopv1.ForwardRequest{}
	for _, tc := range cases {
		req.Calls = append(req.Calls, tc.call)
	}
	res, err := hop.Forward(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatalf("Forward: %v", err)
	}
	if len(res.Msg.GetResults()) != len(cases) {
		t.Fatalf("Forward answered %d results for %d calls", len(res.Msg.GetResults()), len(cases))
	}
	for i, tc := range cases {
		got := res.Msg.GetResults()[i]
		switch {
		case tc.want.err != nil:
			if !sameError(got.GetError(), tc.want.err) {
				t.Errorf("%s: Forward answered %v, the lone call %v", tc.name, got.GetError(), tc.want.err)
			}
		case tc.want.code != "":
			if got.GetError().GetCode() != tc.want.code || got.GetError().GetMessage() == "" {
				t.Errorf("%s: want %s with a message, got %v", tc.name, tc.want.code, got.GetOutcome())
			}
		case tc.want.replay:
			if !bytes.Equal(got.GetMessage(), loneOnceBytes) || headerOf(got, services.ReplayedHeader) != "true" {
				t.Errorf("%s: want the first answer's bytes with %s: true, got %v, headers %v", tc.name, services.ReplayedHeader, got.GetOutcome(), got.GetHeaders())
			}
		default:
			var tr ledgerv1.TransferResponse
			if err := proto.Unmarshal(got.GetMessage(), &tr); err != nil || got.GetError() != nil || tr.GetResult().GetPosition() == 0 {
				t.Errorf("%s: want a committed transfer, got %v (%v)", tc.name, got.GetOutcome(), err)
			}
		}
		for _, h := range got.GetHeaders() {
			if name := http.CanonicalHeaderKey(h.GetName()); strings.HasPrefix(name, "Content-") || strings.HasPrefix(name, "Connect-") {
				t.Errorf("%s: transport header %s forwarded", tc.name, name)
			}
		}
	}

	// The log holds the three good transfers, each for its own principal and correlation
	// id, and nothing from the refused or failed calls.
	events, err := n.store.ReadAll(ctx, head0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	recorded := map[string]eventstore.Metadata{}
	for _, e := range events {
		recorded[e.Metadata.CorrelationID] = e.Metadata
	}
	var correlations []string
	for c := range recorded {
		correlations = append(correlations, c)
	}
	slices.Sort(correlations)
	if want := []string{"c-g1", "c-g2", "c-g3"}; !slices.Equal(correlations, want) {
		t.Fatalf("the Forward recorded events of correlation ids %v, want %v", correlations, want)
	}
	for _, tc := range cases {
		if tc.want.committed == "" {
			continue
		}
		corr := "c-" + tc.want.committed
		if got := recorded[corr].Actor; got != tc.want.principal {
			t.Errorf("%s: events of %s recorded actor %q, want the call's own principal %q", tc.name, corr, got, tc.want.principal)
		}
	}
	if tp := recorded["c-g3"].TraceParent; tp != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" {
		t.Errorf("the traceparent of its call: want it recorded, got %q", tp)
	}
}

// TestForwardLimits: the whole Forward is refused when it is too large; an empty one
// answers nothing.
func TestForwardLimits(t *testing.T) {
	n := startPaymentsNode(t)
	ctx := testContext(t)
	hop := n.hop(t, n.ids.Gateway)
	empty, err := hop.Forward(ctx, connect.NewRequest(&hopv1.ForwardRequest{}))
	if err != nil || len(empty.Msg.GetResults()) != 0 {
		t.Fatalf("empty Forward: want an empty answer, got %v %v", empty, err)
	}
	call := &hopv1.Call{Procedure: ledgerv1connect.AccountServiceGetAccountProcedure}
	tooMany := &hopv1.ForwardRequest{Calls: slices.Repeat([]*hopv1.Call{call}, 1025)}
	if _, err := hop.Forward(ctx, connect.NewRequest(tooMany)); connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "at most 1024") {
		t.Errorf("1,025 calls: want invalid_argument saying at most 1024, got %v", err)
	}
	big := &hopv1.ForwardRequest{Calls: []*hopv1.Call{{Procedure: ledgerv1connect.PaymentServiceTransferProcedure, Message: make([]byte, 4<<20)}}}
	if _, err := hop.Forward(ctx, connect.NewRequest(big)); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Errorf("a Forward over 4 MiB: want resource_exhausted, got %v", err)
	}
}

// TestForwardOnlyFromTheGateway: any other caller is refused the whole Forward, and
// nothing it carried is appended.
func TestForwardOnlyFromTheGateway(t *testing.T) {
	n := startPaymentsNode(t)
	ctx := testContext(t)
	n.seedAccounts(t, n.client(t, n.ids.Gateway), "alice", "bob")
	head0, err := n.store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	req := &hopv1.ForwardRequest{Calls: []*hopv1.Call{hopCall(t, ledgerv1connect.PaymentServiceTransferProcedure,
		&ledgerv1.TransferRequest{PaymentId: "stolen", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")},
		edge.PrincipalHeader, "alice")}}
	for _, id := range n.ids.All() {
		if id == n.ids.Gateway {
			continue
		}
		_, err := n.hop(t, id).Forward(ctx, connect.NewRequest(req))
		if connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Errorf("Forward as %s: want permission_denied, got %v", id, err)
		}
	}
	if head, err := n.store.Head(ctx); err != nil || head != head0 {
		t.Errorf("after refused Forwards the log moved from %d to %d (%v)", head0, head, err)
	}
}

// TestForwardAuthorisationMatrix runs the authorisation matrix against the payments
// component with Forward in its table: the gateway passes, every other ID is refused,
// and so are a foreign trust domain, an impostor CA, no client certificate and plaintext.
func TestForwardAuthorisationMatrix(t *testing.T) {
	n := startPaymentsNode(t)
	if got := n.policy.Callers(hopv1connect.HopServiceForwardProcedure); len(got) != 1 || got[0] != n.ids.Gateway {
		t.Fatalf("Forward callable by %v, want the gateway alone", got)
	}
	var served []string
	for _, c := range services.Components() {
		served = append(served, services.Procedures(c)...)
	}
	served = append(served, hopv1connect.HopServiceForwardProcedure)
	mtlstest.Matrix{URL: n.url, Server: n.ids.Payments, CA: n.ca, Policy: n.policy, Served: served, CallTimeout: 5 * time.Second}.Run(t)
}

// rpcCount is how many calls of procedure ended with code ("ok" or a Connect code), as the
// RPC metrics counted them.
func rpcCount(t testing.TB, tel *telemetry.Telemetry, procedure, code string) uint64 {
	t.Helper()
	families, err := tel.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, f := range families {
		if f.GetName() != telemetry.MetricRPCDuration {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["procedure"] == procedure && labels["code"] == code {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return n
}

// TestForwardPerCallDeadlinesAndMetrics: each call keeps its own deadline (one that ends
// while the command waits is DEADLINE_EXCEEDED, as it is for a lone call, and commits
// nothing; its neighbour without one commits), and the RPC metrics count each call under
// its own procedure and outcome, besides the Forward itself.
func TestForwardPerCallDeadlinesAndMetrics(t *testing.T) {
	tel, err := telemetry.New(context.Background(), telemetry.Config{ServiceName: "securepay-hop-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	var delay atomic.Int64
	td := spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)
	interceptors, err := tel.RPCInterceptors(edge.TrustGateway(mtls.WellKnownIDs(td).Gateway))
	if err != nil {
		t.Fatal(err)
	}
	n := startPaymentsNode(t, paymentsOptions{interceptors: interceptors, delay: &delay})
	ctx := testContext(t)
	gw := n.client(t, n.ids.Gateway)
	n.seedAccounts(t, gw, "alice", "bob")
	transfer := ledgerv1connect.PaymentServiceTransferProcedure
	okBefore := rpcCount(t, tel, transfer, "ok")

	// Every command now waits a second: a call given 100 ms ends first.
	delay.Store(int64(time.Second))
	lateBefore := rpcCount(t, tel, transfer, "deadline_exceeded")
	late := hopCall(t, transfer, &ledgerv1.TransferRequest{PaymentId: "late", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")},
		edge.PrincipalHeader, "alice", edge.CorrelationHeader, "c-late")
	late.Timeout = durationpb.New(100 * time.Millisecond)
	patient := hopCall(t, transfer, &ledgerv1.TransferRequest{PaymentId: "patient", SourceAccountId: "bob", DestinationAccountId: "alice", Amount: usd("1.00")},
		edge.PrincipalHeader, "bob", edge.CorrelationHeader, "c-patient")
	res, err := n.hop(t, n.ids.Gateway).Forward(ctx, connect.NewRequest(&hopv1.ForwardRequest{Calls: []*hopv1.Call{late, patient}}))
	if err != nil {
		t.Fatalf("Forward: %v", err)
	}
	results := res.Msg.GetResults()
	if got := results[0].GetError(); got.GetCode() != "deadline_exceeded" {
		t.Errorf("the call with 100 ms: want deadline_exceeded, got %v", results[0].GetOutcome())
	}
	if results[1].GetError() != nil {
		t.Errorf("the call without a timeout: want it committed, got %v", results[1].GetError())
	}
	if got := rpcCount(t, tel, transfer, "ok") - okBefore; got != 1 {
		t.Errorf("Transfer ok: counted %d more, want 1 (the patient call)", got)
	}
	if got := rpcCount(t, tel, transfer, "deadline_exceeded") - lateBefore; got != 1 {
		t.Errorf("Transfer deadline_exceeded: counted %d more, want 1 (the late call)", got)
	}
	if got := rpcCount(t, tel, hopv1connect.HopServiceForwardProcedure, "ok"); got != 1 {
		t.Errorf("Forward ok: counted %d, want 1", got)
	}
	// The same call alone, once the counts were read: its client gives up at the moment
	// the handler does, so the server may count it as canceled, or after the check.
	lone := ledgerv1connect.NewPaymentServiceClient(gw, n.url, connect.WithInterceptors(fixedTimeout(100*time.Millisecond)))
	_, loneErr := lone.Transfer(ctx, asGateway(&ledgerv1.TransferRequest{PaymentId: "lone-late", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")}, "alice", "c-lone-late"))
	if connect.CodeOf(loneErr) != connect.CodeDeadlineExceeded {
		t.Errorf("the same call alone with 100 ms left: want deadline_exceeded, got %v", loneErr)
	}
	delay.Store(0)
	events, err := n.store.ReadAll(ctx, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if c := e.Metadata.CorrelationID; c == "c-late" || c == "c-lone-late" {
			t.Errorf("a call past its deadline recorded %s at %d", e.Type, e.Position)
		}
	}
}

// fixedTimeout gives each call of a client its own deadline, as a caller's would be.
type fixedTimeout time.Duration

func (d fixedTimeout) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		ctx, cancel := context.WithTimeout(ctx, time.Duration(d))
		defer cancel()
		return next(ctx, req)
	}
}

func (d fixedTimeout) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (d fixedTimeout) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// rawCodec sends and reads a message's bytes as they are, so that a lone call can carry
// exactly the bytes a Forward's call carries (a message that does not decode included).
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }

func (rawCodec) Unmarshal(b []byte, v any) error {
	*v.(*[]byte) = bytes.Clone(b)
	return nil
}

// TestForwardMatchesLoneCalls sends each case alone and then all of them in one Forward,
// and compares: the same message bytes for an answer, the same code, message and details
// for an error. Every case changes nothing (reads and refusals), so that sending it twice
// cannot change its answer; the answers come from every layer a lone call passes:
// connect-go's decoding, the request limits, the idempotency and metadata checks,
// validation, the domain, and WebhookService's own chain.
func TestForwardMatchesLoneCalls(t *testing.T) {
	n := startPaymentsNode(t)
	ctx := testContext(t)
	gw := n.client(t, n.ids.Gateway)
	n.seedAccounts(t, gw, "alice", "bob")
	marshal := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	transfer := func(id, asset string) []byte {
		return marshal(&ledgerv1.TransferRequest{PaymentId: id, SourceAccountId: "alice", DestinationAccountId: "bob", Amount: &ledgerv1.Money{Value: "1.00", Asset: asset}})
	}
	cases := []struct {
		name      string
		procedure string
		message   []byte
		header    []string // besides the edge identity of alice
	}{
		{"account read", ledgerv1connect.AccountServiceGetAccountProcedure, marshal(&ledgerv1.GetAccountRequest{AccountId: "alice"}), nil},
		{"unknown account", ledgerv1connect.AccountServiceGetAccountProcedure, marshal(&ledgerv1.GetAccountRequest{AccountId: "nobody"}), nil},
		{"account opened again in another asset", ledgerv1connect.AccountServiceOpenAccountProcedure, marshal(&ledgerv1.OpenAccountRequest{AccountId: "alice", Asset: "EUR", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER}), nil},
		{"unknown payment captured", ledgerv1connect.PaymentServiceCaptureProcedure, marshal(&ledgerv1.CaptureRequest{PaymentId: "never", CaptureId: "cap-1", What: &ledgerv1.CaptureRequest_Amount{Amount: usd("1.00")}}), nil},
		{"asset mismatch", ledgerv1connect.PaymentServiceTransferProcedure, transfer("eur", "EUR"), nil},
		{"empty batch", ledgerv1connect.PaymentServiceBatchTransferProcedure, marshal(&ledgerv1.BatchTransferRequest{PaymentId: "batch"}), nil},
		{"message that does not decode", ledgerv1connect.PaymentServiceTransferProcedure, []byte{0x0a, 0xff, 0xff}, nil},
		{"message over the per-call limit", ledgerv1connect.PaymentServiceTransferProcedure, bytes.Repeat([]byte{0}, 1<<20+1), nil},
		{"malformed traceparent", ledgerv1connect.PaymentServiceTransferProcedure, transfer("tp", "USD"), []string{"traceparent", "00-zz"}},
		{"malformed idempotency key", ledgerv1connect.PaymentServiceTransferProcedure, transfer("ik", "USD"), []string{services.IdempotencyKeyHeader, "two words"}},
		{"webhooks without a registry", ledgerv1connect.WebhookServiceRegisterEndpointProcedure, marshal(&ledgerv1.RegisterEndpointRequest{AccountId: "alice", Url: "https://example.com/hook"}), nil},
	}
	head0, err := n.store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lone := make([]*hopv1.Result, len(cases))
	req := &hopv1.ForwardRequest{}
	for i, tc := range cases {
		headers := append([]string{edge.PrincipalHeader, "alice", edge.CorrelationHeader, "c-" + strings.ReplaceAll(tc.name, " ", "-")}, tc.header...)
		c := connect.NewClient[[]byte, []byte](gw, n.url+tc.procedure, connect.WithCodec(rawCodec{}))
		r := connect.NewRequest(&tc.message)
		for j := 0; j+1 < len(headers); j += 2 {
			r.Header().Set(headers[j], headers[j+1])
		}
		res, err := c.CallUnary(ctx, r)
		if err != nil {
			lone[i] = &hopv1.Result{Outcome: &hopv1.Result_Error{Error: asHopError(t, err)}}
		} else {
			lone[i] = &hopv1.Result{Outcome: &hopv1.Result_Message{Message: *res.Msg}}
		}
		call := &hopv1.Call{Procedure: tc.procedure, Message: tc.message}
		for j := 0; j+1 < len(headers); j += 2 {
			call.Headers = append(call.Headers, &hopv1.Header{Name: headers[j], Value: headers[j+1]})
		}
		req.Calls = append(req.Calls, call)
	}
	res, err := n.hop(t, n.ids.Gateway).Forward(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatalf("Forward: %v", err)
	}
	for i, tc := range cases {
		got, want := res.Msg.GetResults()[i], lone[i]
		if tc.name == "account read" && want.GetError() != nil {
			t.Fatalf("%s: the lone call failed: %v", tc.name, want.GetError())
		}
		if tc.name != "account read" && want.GetError() == nil {
			t.Fatalf("%s: the lone call succeeded; the case must be a refusal", tc.name)
		}
		if !bytes.Equal(got.GetMessage(), want.GetMessage()) || (want.GetError() != nil) != (got.GetError() != nil) ||
			(want.GetError() != nil && !sameError(got.GetError(), want.GetError())) {
			t.Errorf("%s: Forward answered %v, alone %v", tc.name, clipped(got), clipped(want))
		}
	}
	if head, err := n.store.Head(ctx); err != nil || head != head0 {
		t.Errorf("reads and refusals moved the log from %d to %d (%v)", head0, head, err)
	}
}

func clipped(r *hopv1.Result) string {
	s := fmt.Sprint(r.GetOutcome())
	if len(s) > 600 {
		s = s[:600] + "…"
	}
	return s
}

// TestForwardSurvivesAPanickingCall: a call whose handler panics answers INTERNAL (alone,
// net/http would have reset its stream), its neighbour commits, and the component goes
// on serving.
func TestForwardSurvivesAPanickingCall(t *testing.T) {
	var panicNext atomic.Bool
	n := startPaymentsNode(t, paymentsOptions{panicNext: &panicNext})
	ctx := testContext(t)
	gw := n.client(t, n.ids.Gateway)
	n.seedAccounts(t, gw, "alice", "bob")
	transfer := func(id string) *hopv1.Call {
		return hopCall(t, ledgerv1connect.PaymentServiceTransferProcedure,
			&ledgerv1.TransferRequest{PaymentId: id, SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")},
			edge.PrincipalHeader, "alice")
	}
	panicNext.Store(true)
	res, err := n.hop(t, n.ids.Gateway).Forward(ctx, connect.NewRequest(&hopv1.ForwardRequest{Calls: []*hopv1.Call{transfer("p1"), transfer("p2")}}))
	if err != nil {
		t.Fatalf("Forward: %v", err)
	}
	var internal, committed int
	for _, r := range res.Msg.GetResults() {
		switch {
		case r.GetError().GetCode() == "internal" && r.GetError().GetMessage() == "internal error":
			internal++
		case r.GetError() == nil:
			committed++
		default:
			t.Errorf("unexpected answer %v", r.GetOutcome())
		}
	}
	if internal != 1 || committed != 1 {
		t.Errorf("want one call answered internal (it panicked) and one committed, got %d and %d", internal, committed)
	}
	again, err := n.hop(t, n.ids.Gateway).Forward(ctx, connect.NewRequest(&hopv1.ForwardRequest{Calls: []*hopv1.Call{transfer("p3")}}))
	if err != nil || again.Msg.GetResults()[0].GetError() != nil {
		t.Fatalf("after the panic: want the next Forward served, got %v %v", again, err)
	}
}

// TestHopServiceIsNotPartOfTheAPI: Forward is nobody's public procedure (the gateway
// routes by ComponentOf and Procedures, and reflection lists the API's services), and a
// server without the payments component does not serve it.
func TestHopServiceIsNotPartOfTheAPI(t *testing.T) {
	if c, ok := services.ComponentOf(hopv1connect.HopServiceForwardProcedure); ok {
		t.Errorf("ComponentOf(Forward) = %s: the gateway would route clients to it", c)
	}
	for _, c := range services.Components() {
		if slices.Contains(services.Procedures(c), hopv1connect.HopServiceForwardProcedure) {
			t.Errorf("Procedures(%s) lists Forward", c)
		}
	}
	td := spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)
	for _, c := range []services.Component{services.ComponentQueries, services.ComponentAudit} {
		pol, err := services.ComponentPolicy(td, []services.Component{c})
		if err != nil {
			t.Fatal(err)
		}
		if ids := pol.Callers(hopv1connect.HopServiceForwardProcedure); len(ids) > 0 {
			t.Errorf("%s's policy lets %v call Forward", c, ids)
		}
	}
	n := startNode(t, nodeOptions{components: []services.Component{services.ComponentQueries}})
	_, err := hopv1connect.NewHopServiceClient(h2cClient(), n.url).Forward(testContext(t), connect.NewRequest(&hopv1.ForwardRequest{}))
	if connect.CodeOf(err) != connect.CodeUnimplemented {
		t.Errorf("Forward on a queries server: want unimplemented, got %v", err)
	}
}
