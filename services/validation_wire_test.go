package services_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
)

// What `securepay transfer --amount -5` and `securepay open --asset usd` send reach every
// protocol's client as a sentence and a field path, never as a regular expression.
func TestValidationMessagesOnTheWire(t *testing.T) {
	cases := []struct {
		name    string
		call    func(ctx context.Context, c *client) error
		message string
		field   string
	}{
		{"amount -5", unary[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ledgerv1connect.PaymentServiceTransferProcedure,
			transferReq("p1", "alice", "bob", usd("-5"))),
			"amount must be a positive decimal such as 12.34", "amount.value"},
		{"asset usd", unary[ledgerv1.OpenAccountRequest, ledgerv1.OpenAccountResponse](ledgerv1connect.AccountServiceOpenAccountProcedure,
			&ledgerv1.OpenAccountRequest{AccountId: "n1", Asset: "usd", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER}),
			"asset must be upper case, e.g. USD", "asset"},
		{"watch without an account", firstOfStream[ledgerv1.WatchAccountRequest, ledgerv1.WatchAccountResponse](ledgerv1connect.BalanceServiceWatchAccountProcedure,
			&ledgerv1.WatchAccountRequest{}),
			"account_id is required", "account_id"},
	}
	for _, kind := range allKinds {
		t.Run(string(kind), func(t *testing.T) {
			n := startNode(t, nodeOptions{})
			c := newClient(t, n, kind)
			ctx := testContext(t)
			for _, tc := range cases {
				err := tc.call(ctx, c)
				if codeOf(err) != connect.CodeInvalidArgument || reasonOf(err) != services.ReasonInvalidInput {
					t.Errorf("%s: want InvalidArgument INVALID_INPUT, got %v", tc.name, err)
					continue
				}
				msg, info := wireMessage(err)
				if !strings.HasPrefix(msg, tc.message) || strings.Contains(msg, "regex") {
					t.Errorf("%s: message %q, want it to start %q", tc.name, msg, tc.message)
				}
				if got := info.GetMetadata()["field"]; got != tc.field {
					t.Errorf("%s: ErrorInfo field %q, want %q", tc.name, got, tc.field)
				}
			}
		})
	}
}

// wireMessage is the message and the ErrorInfo of an error from either kind of client.
func wireMessage(err error) (string, *errdetails.ErrorInfo) {
	var cerr *connect.Error
	if errors.As(err, &cerr) {
		for _, d := range cerr.Details() {
			if v, derr := d.Value(); derr == nil {
				if info, ok := v.(*errdetails.ErrorInfo); ok {
					return cerr.Message(), info
				}
			}
		}
		return cerr.Message(), nil
	}
	st := status.Convert(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return st.Message(), info
		}
	}
	return st.Message(), nil
}
