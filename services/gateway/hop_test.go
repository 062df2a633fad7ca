package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	hopv1 "github.com/securepay/securepay/api/gen/securepay/hop/v1"
	"github.com/securepay/securepay/api/gen/securepay/hop/v1/hopv1connect"
	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/edge"
	"github.com/securepay/securepay/services/gateway"
)

// scriptedHop is a payments component that serves HopService.Forward only: it records
// every call and answers each Transfer by its payment id (scriptedAnswer), or refuses
// the whole Forward while refuse is set. A lone call would get 404 (UNIMPLEMENTED).
type scriptedHop struct {
	mu     sync.Mutex
	calls  []*hopv1.Call
	refuse error
}

func (s *scriptedHop) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(hopv1connect.NewHopServiceHandler(s))
	return mux
}

func (s *scriptedHop) Forward(_ context.Context, req *connect.Request[hopv1.ForwardRequest]) (*connect.Response[hopv1.ForwardResponse], error) {
	s.mu.Lock()
	s.calls = append(s.calls, req.Msg.GetCalls()...)
	refuse := s.refuse
	s.mu.Unlock()
	if refuse != nil {
		return nil, refuse
	}
	out := &hopv1.ForwardResponse{}
	for _, c := range req.Msg.GetCalls() {
		out.Results = append(out.Results, scriptedAnswer(c))
	}
	return connect.NewResponse(out), nil
}

func (s *scriptedHop) received() []*hopv1.Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*hopv1.Call(nil), s.calls...)
}

func scriptedAnswer(c *hopv1.Call) *hopv1.Result {
	var req ledgerv1.TransferRequest
	if c.GetProcedure() != ledgerv1connect.PaymentServiceTransferProcedure || proto.Unmarshal(c.GetMessage(), &req) != nil {
		return errorResult(connect.NewError(connect.CodeUnimplemented, errors.New("not scripted")), nil)
	}
	switch req.GetPaymentId() {
	case "p-frozen":
		return errorResult(services.NewError(services.Reason(domain.ReasonAccountFrozen),
			"account frozen: destination account bob is frozen"), nil)
	case "p-busy":
		return errorResult(services.NewError(services.ReasonUnavailable, "the ledger's store is unreachable; retry with the same ids and Idempotency-Key"),
			[]*hopv1.Header{{Name: "Retry-After", Value: "3"}})
	}
	b, _ := proto.Marshal(&ledgerv1.TransferResponse{
		Payment: &ledgerv1.Payment{PaymentId: req.GetPaymentId()},
		Result:  &ledgerv1.WriteResult{Position: 7},
	})
	return &hopv1.Result{Outcome: &hopv1.Result_Message{Message: b},
		Headers: []*hopv1.Header{{Name: services.ReplayedHeader, Value: "true"}}}
}

// errorResult is a Connect error as payments puts it in a Result.
func errorResult(cerr *connect.Error, headers []*hopv1.Header) *hopv1.Result {
	e := &hopv1.Error{Code: cerr.Code().String(), Message: cerr.Message()}
	for _, d := range cerr.Details() {
		e.Details = append(e.Details, &anypb.Any{TypeUrl: "type.googleapis.com/" + d.Type(), Value: d.Bytes()})
	}
	return &hopv1.Result{Outcome: &hopv1.Result_Error{Error: e}, Headers: headers}
}

func startHopGateway(t *testing.T, is *issuer, comp http.Handler, mode gateway.HopMode) (string, *http.Client) {
	t.Helper()
	up := serveH2(t, comp)
	u := gateway.Upstream{URL: up.URL, Client: up.Client()}
	gw, err := gateway.New(gateway.Config{
		Payments: u, Queries: u, Audit: u,
		Auth:     gateway.Auth{Issuer: testIssuer, Audience: testAudience, JWKSURL: is.srv.URL + "/certs", JWKSClient: is.srv.Client()},
		AllowH2C: true,
		Hop:      mode,
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := serveH2(t, gw.Handler())
	return hs.URL, hs.Client()
}

// TestHopBatchedCallsAnswerAsAlone: a call that travels in a Forward reaches payments
// with the gateway's identity headers and the client's Idempotency-Key (never its token),
// as the bytes the client sent, and its answer reaches the client as a lone call's would:
// the message, Idempotency-Replayed, a refusal concealed for a customer, a retryable
// error with its Retry-After, and a Forward refused as a whole as the refusal of each.
func TestHopBatchedCallsAnswerAsAlone(t *testing.T) {
	is := newIssuer(t)
	comp := &scriptedHop{}
	url, httpClient := startHopGateway(t, is, comp.handler(), gateway.HopBatched)
	alice := apiAt(httpClient, url, is.token(t, "alice", []string{"customer"}, "alice"))
	transfer := func(payment string) (*connect.Response[ledgerv1.TransferResponse], error) {
		req := connect.NewRequest(&ledgerv1.TransferRequest{PaymentId: payment, SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")})
		req.Header().Set(services.IdempotencyKeyHeader, "key-"+payment)
		return alice.payments.Transfer(context.Background(), req)
	}

	res, err := transfer("p-ok")
	if err != nil {
		t.Fatalf("transfer: %v", err)
	}
	if res.Msg.GetPayment().GetPaymentId() != "p-ok" || res.Msg.GetResult().GetPosition() != 7 || res.Header().Get(services.ReplayedHeader) != "true" {
		t.Errorf("answer %v, %s %q; want payment p-ok at position 7, replayed", res.Msg, services.ReplayedHeader, res.Header().Get(services.ReplayedHeader))
	}
	calls := comp.received()
	if len(calls) != 1 {
		t.Fatalf("payments received %d calls, want 1", len(calls))
	}
	got := map[string]string{}
	for _, h := range calls[0].GetHeaders() {
		if _, dup := got[h.GetName()]; dup {
			t.Errorf("header %s sent twice", h.GetName())
		}
		got[h.GetName()] = h.GetValue()
	}
	if got[edge.PrincipalHeader] != "alice" || got[services.IdempotencyKeyHeader] != "key-p-ok" || got[edge.CorrelationHeader] == "" {
		t.Errorf("call headers %v; want the principal alice, a correlation id, Idempotency-Key key-p-ok", got)
	}
	for name := range got {
		if !slices.Contains([]string{edge.PrincipalHeader, edge.CorrelationHeader, services.IdempotencyKeyHeader, "Traceparent", "Tracestate"}, name) {
			t.Errorf("call carries header %s, which payments refuses in a Forward", name)
		}
	}
	var sent ledgerv1.TransferRequest
	if err := proto.Unmarshal(calls[0].GetMessage(), &sent); err != nil || sent.GetPaymentId() != "p-ok" || calls[0].GetProcedure() != ledgerv1connect.PaymentServiceTransferProcedure {
		t.Errorf("call %s with %v (%v); want the client's Transfer", calls[0].GetProcedure(), &sent, err)
	}
	if calls[0].GetTimeout() != nil {
		t.Errorf("a call without a deadline carries timeout %v", calls[0].GetTimeout().AsDuration())
	}

	_, err = transfer("p-frozen")
	if connect.CodeOf(err) != connect.CodeNotFound || !strings.Contains(err.Error(), "account bob does not exist or cannot take part") {
		t.Errorf("a refusal naming bob's state: %v; want NOT_FOUND concealing it, as for a lone call", err)
	}

	_, err = transfer("p-busy")
	var cerr *connect.Error
	if !errors.As(err, &cerr) || cerr.Code() != connect.CodeUnavailable || cerr.Meta().Get("Retry-After") != "3" || services.ReasonOf(err) != services.ReasonUnavailable {
		t.Errorf("a retryable refusal: %v; want UNAVAILABLE, reason UNAVAILABLE, Retry-After 3", errorSummary(err))
	}

	comp.mu.Lock()
	comp.refuse = connect.NewError(connect.CodePermissionDenied, errors.New("spiffe://securepay.dev/projector may not call Forward"))
	comp.mu.Unlock()
	_, err = transfer("p-refused")
	if connect.CodeOf(err) != connect.CodeInternal || strings.Contains(err.Error(), "spiffe") {
		t.Errorf("payments refusing the gateway's Forward: %v; want INTERNAL without the component's words, as for a lone call", err)
	}
}

// TestHopBatchedJSONClient: a client speaking JSON gets JSON from a batched call, whose
// message reached payments as binary protobuf.
func TestHopBatchedJSONClient(t *testing.T) {
	is := newIssuer(t)
	comp := &scriptedHop{}
	url, httpClient := startHopGateway(t, is, comp.handler(), gateway.HopBatched)
	body := `{"paymentId":"p-json","sourceAccountId":"alice","destinationAccountId":"bob","amount":{"value":"1.00","asset":"USD"}}`
	req, err := http.NewRequest(http.MethodPost, url+ledgerv1connect.PaymentServiceTransferProcedure, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+is.token(t, "alice", []string{"customer"}, "alice"))
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var answer struct {
		Payment struct{ PaymentID string } `json:"payment"`
		Result  struct{ Position string }  `json:"result"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &answer) != nil || answer.Payment.PaymentID != "p-json" || answer.Result.Position != "7" {
		t.Errorf("JSON transfer: %d %s; want 200 with payment p-json at position 7", resp.StatusCode, b)
	}
	var sent ledgerv1.TransferRequest
	if calls := comp.received(); len(calls) != 1 || proto.Unmarshal(calls[0].GetMessage(), &sent) != nil || sent.GetPaymentId() != "p-json" {
		t.Errorf("payments received %v; want the JSON request as binary protobuf", calls)
	}
}

// TestHopAloneSendsNoForward: with HopAlone every call goes on its own, as before; a
// component that serves only Forward then answers UNIMPLEMENTED, which the gateway
// reports as INTERNAL.
func TestHopAloneSendsNoForward(t *testing.T) {
	is := newIssuer(t)
	comp := &scriptedHop{}
	url, httpClient := startHopGateway(t, is, comp.handler(), gateway.HopAlone)
	alice := apiAt(httpClient, url, is.token(t, "alice", []string{"customer"}, "alice"))
	_, err := alice.payments.Transfer(context.Background(), connect.NewRequest(&ledgerv1.TransferRequest{PaymentId: "p-1", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")}))
	if connect.CodeOf(err) != connect.CodeInternal || len(comp.received()) != 0 {
		t.Errorf("HopAlone: %v and %d calls in Forwards; want INTERNAL (no lone Transfer served) and none", err, len(comp.received()))
	}
}

// TestHopBatchedFallsBackToLoneCalls: a payments component that does not serve
// HopService yet (the gateway upgraded first) answers Forward UNIMPLEMENTED; each call
// then goes alone, and the client sees no difference.
func TestHopBatchedFallsBackToLoneCalls(t *testing.T) {
	is := newIssuer(t)
	answer, _ := proto.Marshal(&ledgerv1.TransferResponse{Payment: &ledgerv1.Payment{PaymentId: "p-1"}})
	comp := &recordingComponent{answer: answer}
	url, httpClient := startHopGateway(t, is, comp.handler(), gateway.HopBatched)
	alice := apiAt(httpClient, url, is.token(t, "alice", []string{"customer"}, "alice"))
	res, err := alice.payments.Transfer(context.Background(), connect.NewRequest(&ledgerv1.TransferRequest{PaymentId: "p-1", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")}))
	if err != nil || res.Msg.GetPayment().GetPaymentId() != "p-1" || len(comp.calls()) != 1 {
		t.Errorf("transfer through a payments without Forward: %v, %v, %d lone calls; want p-1 from one lone call", res, err, len(comp.calls()))
	}
}

// olderPayments is a payments component from before HopService: it serves Transfer
// alone and answers Forward as any server answers a procedure it does not know (404,
// UNIMPLEMENTED). It counts both.
type olderPayments struct {
	ledgerv1connect.UnimplementedPaymentServiceHandler
	mu                 sync.Mutex
	forwards, transfer int
}

func (o *olderPayments) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(ledgerv1connect.NewPaymentServiceHandler(o))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == hopv1connect.HopServiceForwardProcedure {
			o.mu.Lock()
			o.forwards++
			o.mu.Unlock()
		}
		mux.ServeHTTP(w, r)
	})
}

func (o *olderPayments) Transfer(_ context.Context, req *connect.Request[ledgerv1.TransferRequest]) (*connect.Response[ledgerv1.TransferResponse], error) {
	o.mu.Lock()
	o.transfer++
	o.mu.Unlock()
	return connect.NewResponse(&ledgerv1.TransferResponse{Payment: &ledgerv1.Payment{PaymentId: req.Msg.GetPaymentId()}, Result: &ledgerv1.WriteResult{Position: 3}}), nil
}

// TestHopOlderPaymentsGetsCallsAlone: during a rolling upgrade (the gateway first), a
// payments component without HopService gets every call alone, and only the first call
// pays a refused Forward: the gateway does not try Forward again for a while.
func TestHopOlderPaymentsGetsCallsAlone(t *testing.T) {
	is := newIssuer(t)
	comp := &olderPayments{}
	url, httpClient := startHopGateway(t, is, comp.handler(), gateway.HopBatched)
	alice := apiAt(httpClient, url, is.token(t, "alice", []string{"customer"}, "alice"))
	const calls = 5
	for i := range calls {
		id := fmt.Sprintf("p-%d", i)
		res, err := alice.payments.Transfer(context.Background(), connect.NewRequest(&ledgerv1.TransferRequest{
			PaymentId: id, SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")}))
		if err != nil {
			t.Fatalf("transfer %s through a gateway in front of an older payments: %v", id, err)
		}
		if res.Msg.GetPayment().GetPaymentId() != id {
			t.Fatalf("transfer %s answered for payment %q", id, res.Msg.GetPayment().GetPaymentId())
		}
	}
	comp.mu.Lock()
	defer comp.mu.Unlock()
	if comp.transfer != calls || comp.forwards != 1 {
		t.Errorf("payments got %d lone transfers and %d Forwards; want %d and 1 (the first call finds Forward missing, the rest go alone)", comp.transfer, comp.forwards, calls)
	}
}
