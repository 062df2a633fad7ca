package services_test

import (
	"errors"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
)

// errorField reads the "field" metadata of the API's ErrorInfo in a Connect error.
func errorField(err error) string {
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		return ""
	}
	for _, d := range cerr.Details() {
		msg, derr := d.Value()
		if derr != nil {
			continue
		}
		if info, ok := msg.(*errdetails.ErrorInfo); ok {
			return info.GetMetadata()["field"]
		}
	}
	return ""
}

// Refusals found after schema validation, while converting a request (more decimals than
// the asset has, an asset scale out of range), name the field they are about in the
// ErrorInfo metadata, as schema refusals do, so a program can point at it.
func TestConversionRefusalsNameTheirField(t *testing.T) {
	n := startNode(t, nodeOptions{})
	ctx := testContext(t)
	c := newClient(t, n, kindConnect)
	seedLedger(t, ctx, c)
	for _, tc := range []struct {
		name  string
		req   *ledgerv1.TransferRequest
		field string
	}{
		{"too many decimals", transferReq("f1", "alice", "bob", usd("1.001")), "amount.value"},
		{"batch leg", nil, "legs[1].amount.value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.req != nil {
				_, err = call[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ctx, c, ledgerv1connect.PaymentServiceTransferProcedure, tc.req, nil)
			} else {
				_, err = call[ledgerv1.BatchTransferRequest, ledgerv1.BatchTransferResponse](ctx, c, ledgerv1connect.PaymentServiceBatchTransferProcedure,
					&ledgerv1.BatchTransferRequest{PaymentId: "f2", Legs: []*ledgerv1.Leg{
						{SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")},
						{SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("0.001")},
					}}, nil)
			}
			if codeOf(err) != connect.CodeInvalidArgument || errorField(err) != tc.field {
				t.Fatalf("want invalid_argument about field %q, got %v (field %q)", tc.field, err, errorField(err))
			}
		})
	}
}
