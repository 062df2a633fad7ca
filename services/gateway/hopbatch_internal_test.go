package gateway

import (
	"errors"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	hopv1 "github.com/securepay/securepay/api/gen/securepay/hop/v1"
	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/services"
)

// TestResultResponse: each Result payments can answer becomes what a lone call's client
// would have read, and a Result no payments answers (no outcome, an unknown or no code)
// becomes a plain error, which upstreamError turns into INTERNAL and logs.
func TestResultResponse(t *testing.T) {
	info, err := anypb.New(&errdetails.ErrorInfo{Reason: "ACCOUNT_FROZEN", Domain: services.ErrorDomain})
	if err != nil {
		t.Fatal(err)
	}
	answer, err := proto.Marshal(&ledgerv1.TransferResponse{Result: &ledgerv1.WriteResult{Position: 9}})
	if err != nil {
		t.Fatal(err)
	}
	replayed := []*hopv1.Header{{Name: services.ReplayedHeader, Value: "true"}}
	cases := []struct {
		name     string
		result   *hopv1.Result
		position uint64       // of the answer, when it is one
		code     connect.Code // of the error, when it is a *connect.Error
		plain    bool         // an error that is no *connect.Error
		header   string       // Idempotent-Replayed of the answer or the error's metadata
	}{
		{name: "message", result: &hopv1.Result{Outcome: &hopv1.Result_Message{Message: answer}, Headers: replayed}, position: 9, header: "true"},
		{name: "empty message", result: &hopv1.Result{Outcome: &hopv1.Result_Message{}}},
		{name: "refusal", result: &hopv1.Result{Outcome: &hopv1.Result_Error{Error: &hopv1.Error{Code: "failed_precondition", Message: "account frozen: account bob is frozen", Details: []*anypb.Any{info}}}, Headers: replayed},
			code: connect.CodeFailedPrecondition, header: "true"},
		{name: "no outcome", result: &hopv1.Result{}, plain: true},
		{name: "unknown code", result: &hopv1.Result{Outcome: &hopv1.Result_Error{Error: &hopv1.Error{Code: "teapot"}}}, plain: true},
		{name: "no code", result: &hopv1.Result{Outcome: &hopv1.Result_Error{Error: &hopv1.Error{Message: "?"}}}, plain: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := resultResponse[ledgerv1.TransferResponse](tc.result)
			var cerr *connect.Error
			switch {
			case tc.plain:
				if err == nil || errors.As(err, &cerr) {
					t.Fatalf("got %v, %v; want a plain error", res, err)
				}
			case tc.code != 0:
				if !errors.As(err, &cerr) || cerr.Code() != tc.code {
					t.Fatalf("got %v, %v; want %v", res, err, tc.code)
				}
				if cerr.Message() != tc.result.GetError().GetMessage() || services.ReasonOf(cerr) != "ACCOUNT_FROZEN" || cerr.Meta().Get(services.ReplayedHeader) != tc.header {
					t.Errorf("error %v (reason %q, meta %v); want the component's message, its ErrorInfo and headers", cerr, services.ReasonOf(cerr), cerr.Meta())
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				wire, ok := res.Msg.wireBytes()
				if !ok || string(wire) != string(tc.result.GetMessage()) {
					t.Errorf("frame holds %x (%v), want the component's bytes %x", wire, ok, tc.result.GetMessage())
				}
				m, err := res.Msg.message()
				if err != nil || m.GetResult().GetPosition() != tc.position {
					t.Errorf("decoded %v, %v; want position %d", m, err, tc.position)
				}
				if got := res.Header().Get(services.ReplayedHeader); got != tc.header {
					t.Errorf("%s %q, want %q", services.ReplayedHeader, got, tc.header)
				}
			}
		})
	}
}
