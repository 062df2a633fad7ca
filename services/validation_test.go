package services

import (
	"errors"
	"strings"
	"testing"

	validatepb "buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
)

// Every refusal of the schema reads as a sentence about the field the client sent, names
// the field in ErrorInfo metadata, and never shows a regular expression.
func TestValidationMessages(t *testing.T) {
	usd := func(v string) *ledgerv1.Money { return &ledgerv1.Money{Value: v, Asset: "USD"} }
	xfer := func(m *ledgerv1.Money) *ledgerv1.TransferRequest {
		return &ledgerv1.TransferRequest{PaymentId: "p1", SourceAccountId: "a", DestinationAccountId: "b", Amount: m}
	}
	open := func(f func(*ledgerv1.OpenAccountRequest)) *ledgerv1.OpenAccountRequest {
		r := &ledgerv1.OpenAccountRequest{AccountId: "n1", Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER}
		f(r)
		return r
	}
	tests := []struct {
		name    string
		req     proto.Message
		message string
		field   string
		rule    string
	}{
		{"negative amount", xfer(usd("-5")),
			"amount must be a positive decimal such as 12.34 (digits and at most one point; no sign, exponent, spaces or leading zeros)", "amount.value", "string.pattern"},
		{"exponent", xfer(usd("1e3")),
			"amount must be a positive decimal such as 12.34 (digits and at most one point; no sign, exponent, spaces or leading zeros)", "amount.value", "string.pattern"},
		{"lower-case asset of an amount", xfer(&ledgerv1.Money{Value: "1.00", Asset: "usd"}),
			"amount.asset must be upper case, e.g. USD, or CODE/SCALE for other assets, e.g. POINTS/0", "amount.asset", "string.pattern"},
		{"no amount", xfer(nil), "amount is required", "amount", "required"},
		{"empty amount", xfer(usd("")), "amount is required", "amount.value", "string.min_len"},
		{"lower-case asset of an account", open(func(r *ledgerv1.OpenAccountRequest) { r.Asset = "usd" }),
			"asset must be upper case, e.g. USD, or CODE/SCALE for other assets, e.g. POINTS/0", "asset", "string.pattern"},
		{"negative credit limit", open(func(r *ledgerv1.OpenAccountRequest) { r.CreditLimit = "-1" }),
			"credit_limit must be a decimal of zero or more such as 500.00, or empty for none", "credit_limit", "string.pattern"},
		{"id with a space", open(func(r *ledgerv1.OpenAccountRequest) { r.AccountId = "a b" }),
			"account_id may contain only letters, digits and . _ : - (e.g. acct-42)", "account_id", "string.pattern"},
		{"id too long", open(func(r *ledgerv1.OpenAccountRequest) { r.AccountId = strings.Repeat("a", 65) }),
			"account_id must be at most 64 characters long", "account_id", "string.max_len"},
		{"no kind", open(func(r *ledgerv1.OpenAccountRequest) { r.Kind = 0 }),
			"kind must be ACCOUNT_KIND_CUSTOMER, ACCOUNT_KIND_MERCHANT or ACCOUNT_KIND_EXTERNAL", "kind", "enum.not_in"},
		{"upper-case metadata key", open(func(r *ledgerv1.OpenAccountRequest) { r.Metadata = map[string]string{"Key": "v"} }),
			"metadata keys may contain only lower-case letters, digits and . _ - (e.g. order.id)", `metadata["Key"]`, "string.pattern"},
		{"reference too long", &ledgerv1.TransferRequest{PaymentId: "p1", SourceAccountId: "a", DestinationAccountId: "b", Amount: usd("1"), Reference: strings.Repeat("r", 129)},
			"reference must be at most 128 bytes long", "reference", "string.max_bytes"},
		{"page too big", &ledgerv1.ListHistoryRequest{AccountId: "a", PageSize: 1001}, "page_size must be at most 1000", "page_size", "uint32.lte"},
		{"batch without legs", &ledgerv1.BatchTransferRequest{PaymentId: "b1"}, "legs must have at least 1 entries", "legs", "repeated.min_items"},
		{"leg amount", &ledgerv1.BatchTransferRequest{PaymentId: "b1", Legs: []*ledgerv1.Leg{{SourceAccountId: "a", DestinationAccountId: "b", Amount: usd("-1")}}},
			"legs[0].amount must be a positive decimal such as 12.34 (digits and at most one point; no sign, exponent, spaces or leading zeros)", "legs[0].amount.value", "string.pattern"},
		{"capture without what", &ledgerv1.CaptureRequest{PaymentId: "p1", CaptureId: "c1"}, "either amount or full must be set", "what", "required"},
		{"capture full = false", &ledgerv1.CaptureRequest{PaymentId: "p1", CaptureId: "c1", What: &ledgerv1.CaptureRequest_Full{}}, "full must be true when it is sent", "full", "bool.const"},
		{"two problems", &ledgerv1.TransferRequest{PaymentId: "p 1", SourceAccountId: "a", DestinationAccountId: "b", Amount: usd("-5")},
			"payment_id may contain only letters, digits and . _ : - (e.g. acct-42); amount must be a positive decimal such as 12.34 (digits and at most one point; no sign, exponent, spaces or leading zeros)", "payment_id", "string.pattern"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			verr := validationFailure(t, tt.req)
			cerr := explainValidation(refusal(t, verr)).(*connect.Error)
			if cerr.Message() != tt.message {
				t.Errorf("message:\n got %s\nwant %s", cerr.Message(), tt.message)
			}
			if strings.Contains(cerr.Message(), "regex") || strings.Contains(cerr.Message(), "^") {
				t.Errorf("message shows a pattern: %s", cerr.Message())
			}
			info := errorInfo(t, cerr)
			if Reason(info.GetReason()) != ReasonInvalidInput || info.GetMetadata()["field"] != tt.field || info.GetMetadata()["rule"] != tt.rule {
				t.Errorf("ErrorInfo = %s %v, want %s field=%s rule=%s", info.GetReason(), info.GetMetadata(), ReasonInvalidInput, tt.field, tt.rule)
			}
			if n := len(cerr.Details()); n != 2 {
				t.Errorf("want ErrorInfo and buf.validate.Violations, got %d details", n)
			}
		})
	}
}

// A request with more problems than a person should read in one line is told the first
// few; the Violations detail still lists them all.
func TestValidationMessagesAreBounded(t *testing.T) {
	meta := map[string]string{}
	for _, k := range []string{"A", "B", "C", "D", "E", "F", "G"} {
		meta[k] = "v"
	}
	verr := validationFailure(t, &ledgerv1.OpenAccountRequest{AccountId: "n1", Asset: "USD", Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER, Metadata: meta})
	cerr := explainValidation(refusal(t, verr)).(*connect.Error)
	if got := strings.Count(cerr.Message(), ";"); got != maxViolationsTold {
		t.Fatalf("want %d sentences and a pointer to the rest, got %s", maxViolationsTold, cerr.Message())
	}
	if !strings.HasSuffix(cerr.Message(), "and more problems (all are listed in the buf.validate.Violations detail)") {
		t.Fatalf("want a pointer to the rest at the end, got %s", cerr.Message())
	}
}

// Errors that are not the schema's refusals pass untouched.
func TestExplainValidationLeavesOtherErrors(t *testing.T) {
	other := newError(connect.CodeInvalidArgument, ReasonInvalidInput, "amount has 3 decimals")
	for _, err := range []error{nil, errors.New("boom"), other, connect.NewError(connect.CodeInternal, &protovalidate.ValidationError{})} {
		if got := explainValidation(err); got != err {
			t.Errorf("explainValidation(%v) = %v, want it unchanged", err, got)
		}
	}
}

func validationFailure(t *testing.T, req proto.Message) *protovalidate.ValidationError {
	t.Helper()
	var verr *protovalidate.ValidationError
	if err := protovalidate.Validate(req); !errors.As(err, &verr) {
		t.Fatalf("want a validation error for %v, got %v", req, err)
	}
	return verr
}

// refusal is the error connectrpc.com/validate returns for verr.
func refusal(t *testing.T, verr *protovalidate.ValidationError) *connect.Error {
	t.Helper()
	cerr := connect.NewError(connect.CodeInvalidArgument, verr)
	detail, err := connect.NewErrorDetail(verr.ToProto())
	if err != nil {
		t.Fatal(err)
	}
	cerr.AddDetail(detail)
	return cerr
}

func errorInfo(t *testing.T, cerr *connect.Error) *errdetails.ErrorInfo {
	t.Helper()
	for _, d := range cerr.Details() {
		if v, err := d.Value(); err == nil {
			if info, ok := v.(*errdetails.ErrorInfo); ok {
				return info
			}
		}
	}
	t.Fatalf("no ErrorInfo in %v", cerr)
	return nil
}

// Every rule the schema sets has words here: a pattern on a field without a sentence in
// fieldSentences, or a rule id without one in ruleSentences, fails this test rather than
// reaching a client as protovalidate's own text (pebble writes such rules as tests).
func TestEveryRuleOfTheSchemaHasASentence(t *testing.T) {
	special := map[string]bool{"enum.defined_only": true, "enum.not_in": true} // "kind", in explainViolation
	checked := 0
	protoregistry.GlobalFiles.RangeFilesByPackage("securepay.ledger.v1", func(f protoreflect.FileDescriptor) bool {
		msgs := f.Messages()
		for i := range msgs.Len() {
			fields := msgs.Get(i).Fields()
			for j := range fields.Len() {
				fd := fields.Get(j)
				rules, _ := proto.GetExtension(fd.Options(), validatepb.E_Field).(*validatepb.FieldRules)
				if rules == nil {
					continue
				}
				for _, id := range ruleIDs(rules.ProtoReflect(), "") {
					checked++
					switch {
					case id == "string.pattern":
						if _, ok := fieldSentences[string(fd.Name())]; !ok {
							t.Errorf("%s: a pattern without a sentence in fieldSentences", fd.FullName())
						}
					case id == "map.keys.string.pattern":
						// keySentence
					case strings.HasPrefix(id, "map.keys."), strings.HasPrefix(id, "map.values."), strings.HasPrefix(id, "repeated.items."):
						// protovalidate reports these under the element's own rule id.
						inner := strings.SplitN(id, ".", 3)[2] // "map.keys.string.min_len" -> "string.min_len"
						if _, ok := ruleSentences[inner]; !ok {
							t.Errorf("%s: element rule %s without a sentence in ruleSentences", fd.FullName(), id)
						}
					default:
						if _, ok := ruleSentences[id]; !ok && !special[id] {
							t.Errorf("%s: rule %s without a sentence in ruleSentences", fd.FullName(), id)
						}
					}
				}
			}
		}
		return true
	})
	if checked == 0 {
		t.Fatal("no rules found: the schema's descriptors were not registered")
	}
}

// ruleIDs lists the rule ids set in a FieldRules message ("string.max_len", "required"),
// descending into map keys.
func ruleIDs(m protoreflect.Message, prefix string) []string {
	var ids []string
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := string(fd.Name())
		switch {
		case fd.Message() == nil:
			ids = append(ids, prefix+name)
		case name == "keys" || name == "values" || name == "items":
			ids = append(ids, ruleIDs(v.Message(), prefix+name+".")...)
		default: // the typed rules: string, uint32, map, enum, ...
			v.Message().Range(func(rd protoreflect.FieldDescriptor, rv protoreflect.Value) bool {
				if rd.Message() != nil && (rd.Name() == "keys" || rd.Name() == "values" || rd.Name() == "items") {
					ids = append(ids, ruleIDs(rv.Message(), prefix+name+"."+string(rd.Name())+".")...)
					return true
				}
				ids = append(ids, prefix+name+"."+string(rd.Name()))
				return true
			})
		}
		return true
	})
	return ids
}
