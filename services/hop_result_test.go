package services

import (
	"bytes"
	"errors"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	hopv1 "github.com/securepay/securepay/api/gen/securepay/hop/v1"
	"github.com/securepay/securepay/domain"
)

// writeConnectError is what connect-go's handler writes for err on a Connect unary call.
func writeConnectError(t testing.TB, err *connect.Error) *resultWriter {
	t.Helper()
	r, rerr := http.NewRequest(http.MethodPost, "/securepay.ledger.v1.PaymentService/Transfer", http.NoBody)
	if rerr != nil {
		t.Fatal(rerr)
	}
	r.Header.Set("Content-Type", "application/proto")
	w := newResultWriter()
	if werr := connect.NewErrorWriter().Write(w, r, err); werr != nil {
		t.Fatalf("connect's error writer: %v", werr)
	}
	return w
}

// roundTrip checks that an error written by connect-go reads back as the same code,
// message and details.
func roundTrip(t *testing.T, cerr *connect.Error) {
	t.Helper()
	w := writeConnectError(t, cerr)
	got := w.result().GetError()
	want := hopError(cerr)
	if !proto.Equal(got, want) {
		t.Fatalf("connect wrote %s (status %d); parsed %v, want %v", w.body.Bytes(), w.status, got, want)
	}
}

func TestParseConnectErrorRoundTrip(t *testing.T) {
	withDetails := newFieldError(connect.CodeInvalidArgument, ReasonInvalidInput, "amount must be positive", "amount.value")
	raw := connect.NewError(connect.CodeFailedPrecondition, errors.New("insufficient funds"))
	// A detail of a type this binary does not know: connect writes it without "debug".
	unknown, err := connect.NewErrorDetail(&anypb.Any{TypeUrl: "type.googleapis.com/acme.v1.Unknown", Value: []byte{0x08, 0x96, 0x01}})
	if err != nil {
		t.Fatal(err)
	}
	raw.AddDetail(unknown)
	for _, cerr := range []*connect.Error{
		withDetails,
		raw,
		newError(connect.CodeFailedPrecondition, Reason(domain.ReasonInsufficientFunds), "insufficient funds: account carol does not have 5000.00 USD available"),
		newError(connect.CodeResourceExhausted, ReasonRateLimited, "slow down"),
		connect.NewError(connect.CodeUnimplemented, errors.New("naïve message with “quotes” and \"escapes\"\n")),
		connect.NewError(connect.CodeDeadlineExceeded, errors.New("")),
	} {
		t.Run(cerr.Code().String(), func(t *testing.T) { roundTrip(t, cerr) })
	}
}

func TestParseConnectErrorWithoutABody(t *testing.T) {
	for _, tc := range []struct {
		name        string
		status      int
		contentType string
		body        string
		want        *hopv1.Error
	}{
		{"plain 404", 404, "text/plain", "404 page not found", &hopv1.Error{Code: "unimplemented", Message: "404 Not Found"}},
		{"JSON without a code", 503, "application/json", `{"message":"down"}`, &hopv1.Error{Code: "unavailable", Message: "down"}},
		{"unknown code", 400, "application/json", `{"code":"bogus","message":"m"}`, &hopv1.Error{Code: "internal", Message: "m"}},
		{"broken JSON", 500, "application/json", `{"code":`, &hopv1.Error{Code: "unknown", Message: "500 Internal Server Error"}},
		{"padded base64", 412, "application/json; charset=utf-8", `{"code":"failed_precondition","details":[{"type":"a.B","value":"AQI="}]}`,
			&hopv1.Error{Code: "failed_precondition", Details: []*anypb.Any{{TypeUrl: "type.googleapis.com/a.B", Value: []byte{1, 2}}}}},
		{"a type URL kept", 412, "application/json", `{"code":"aborted","details":[{"type":"example.com/a.B","value":"AQI"}]}`,
			&hopv1.Error{Code: "aborted", Details: []*anypb.Any{{TypeUrl: "example.com/a.B", Value: []byte{1, 2}}}}},
		{"bad base64", 412, "application/json", `{"code":"aborted","details":[{"type":"a.B","value":"!!"}]}`, &hopv1.Error{Code: "unknown", Message: "412 Precondition Failed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseConnectError(tc.status, tc.contentType, []byte(tc.body)); !proto.Equal(got, tc.want) {
				t.Errorf("parsed %v, want %v", got, tc.want)
			}
		})
	}
}

// FuzzParseConnectError: any answer parses without a panic into a known code and details
// with a type URL; and an error connect-go writes from fuzzed parts reads back the same.
func FuzzParseConnectError(f *testing.F) {
	f.Add(412, "application/json", []byte(`{"code":"failed_precondition","message":"m","details":[{"type":"google.rpc.ErrorInfo","value":"CgFh"}]}`), uint32(9), "m", "google.rpc.ErrorInfo", []byte("\x0a\x01a"))
	f.Add(404, "text/plain", []byte("404 page not found"), uint32(12), "", "x", []byte{})
	f.Add(0, "", []byte(nil), uint32(0), "\xff", "", []byte(nil))
	f.Fuzz(func(t *testing.T, status int, contentType string, body []byte, code uint32, message, detailType string, detailValue []byte) {
		got := parseConnectError(status, contentType, body)
		var c connect.Code
		if err := c.UnmarshalText([]byte(got.GetCode())); err != nil {
			t.Fatalf("parsed code %q is not a Connect code", got.GetCode())
		}
		for _, d := range got.GetDetails() {
			if !strings.Contains(d.GetTypeUrl(), "/") {
				t.Fatalf("detail type URL %q has no '/'", d.GetTypeUrl())
			}
		}

		// Round trip: connect writes a valid code, any message and any detail.
		if code < 1 || code > 16 || !utf8.ValidString(message) || !validTypeName(detailType) {
			return
		}
		cerr := connect.NewError(connect.Code(code), errors.New(message))
		d, err := connect.NewErrorDetail(&anypb.Any{TypeUrl: anyTypePrefix + detailType, Value: detailValue})
		if err != nil {
			t.Fatal(err)
		}
		cerr.AddDetail(d)
		w := writeConnectError(t, cerr)
		back := w.result().GetError()
		want := hopError(cerr)
		// connect writes an empty detail value, and we read it back, as empty: proto.Equal
		// tells nil from empty bytes in neither direction.
		if back.GetCode() != want.GetCode() || back.GetMessage() != want.GetMessage() || len(back.GetDetails()) != 1 ||
			back.GetDetails()[0].GetTypeUrl() != want.GetDetails()[0].GetTypeUrl() || !bytes.Equal(back.GetDetails()[0].GetValue(), detailValue) {
			t.Fatalf("connect wrote %s; parsed %v, want %v", w.body.Bytes(), back, want)
		}
	})
}

// validTypeName: a protobuf full name as connect writes it (no '/', so it is a name
// under type.googleapis.com and not a URL); what JSON cannot hold unchanged is left out.
func validTypeName(s string) bool {
	if s == "" || strings.Contains(s, "/") || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < ' ' || r == '"' || r == '\\' {
			return false
		}
	}
	return true
}

func TestForwardedHeadersLeaveTheTransportOut(t *testing.T) {
	h := http.Header{}
	for _, name := range []string{"Content-Type", "Content-Length", "Connect-Accept-Encoding", "Accept-Encoding", "Date", "Vary", "Connection"} {
		h.Set(name, "x")
	}
	h.Set(ReplayedHeader, "true")
	h.Set("Retry-After", "3")
	h.Add("Trailer-X", "1")
	got := forwardedHeaders(h)
	var names []string
	for _, g := range got {
		names = append(names, g.GetName())
	}
	if want := []string{ReplayedHeader, "Retry-After", "Trailer-X"}; strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("forwarded %v, want %v", names, want)
	}
}
