package services

import (
	"bytes"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/anypb"

	hopv1 "github.com/securepay/securepay/api/gen/securepay/hop/v1"
)

// resultWriter is the http.ResponseWriter a forwarded call is served into: the status,
// the headers and the body, kept in memory up to maxHopResultBytes. It supports nothing
// else (no Flusher, no deadlines): a unary Connect handler needs nothing else.
type resultWriter struct {
	header   http.Header
	status   int
	body     bytes.Buffer
	overflow bool
}

func newResultWriter() *resultWriter { return &resultWriter{header: make(http.Header, 4)} }

func (w *resultWriter) Header() http.Header { return w.header }

func (w *resultWriter) WriteHeader(status int) {
	// Informational answers (1xx) are not the response, as in net/http.
	if w.status == 0 && status >= 200 {
		w.status = status
	}
}

var errResultTooLarge = errors.New("hop: a forwarded call's answer exceeds its bound")

func (w *resultWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	if w.body.Len()+len(p) > maxHopResultBytes {
		w.overflow = true
		return 0, errResultTooLarge
	}
	return w.body.Write(p)
}

// result is the call's answer as Forward sends it: the message of a 200, else the
// Connect error the body holds; the response headers but the transport's.
func (w *resultWriter) result() *hopv1.Result {
	res := &hopv1.Result{Headers: forwardedHeaders(w.header)}
	switch {
	case w.overflow:
		res.Outcome = &hopv1.Result_Error{Error: hopError(newError(connect.CodeInternal, ReasonInternal, "internal error"))}
	case w.status == 0 || w.status == http.StatusOK:
		res.Outcome = &hopv1.Result_Message{Message: w.body.Bytes()}
	default:
		res.Outcome = &hopv1.Result_Error{Error: parseConnectError(w.status, w.header.Get("Content-Type"), w.body.Bytes())}
	}
	return res
}

// forwardedHeaders lists h but the transport headers, sorted by name: what the call's
// client would read (Idempotent-Replayed, Retry-After, error metadata), and not what
// describes the HTTP exchange, which the Forward's own response has.
func forwardedHeaders(h http.Header) []*hopv1.Header {
	names := make([]string, 0, len(h))
	for name := range h {
		if !transportHeader(name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var out []*hopv1.Header
	for _, name := range names {
		for _, v := range h[name] {
			out = append(out, &hopv1.Header{Name: name, Value: v})
		}
	}
	return out
}

func transportHeader(name string) bool {
	name = http.CanonicalHeaderKey(name)
	for _, prefix := range []string{"Content-", "Connect-", "Accept-"} {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	switch name {
	case "Date", "Vary", "Connection", "Keep-Alive", "Transfer-Encoding", "Trailer", "Te", "Upgrade", "Proxy-Connection":
		return true
	}
	return false
}

// errorResult is a refusal of one call by Forward itself.
func errorResult(cerr *connect.Error) *hopv1.Result {
	return &hopv1.Result{Outcome: &hopv1.Result_Error{Error: hopError(cerr)}}
}

// hopError is cerr as Error: as it would have travelled in a Connect error's JSON.
func hopError(cerr *connect.Error) *hopv1.Error {
	out := &hopv1.Error{Code: cerr.Code().String(), Message: cerr.Message()}
	for _, d := range cerr.Details() {
		out.Details = append(out.Details, &anypb.Any{TypeUrl: anyTypePrefix + d.Type(), Value: d.Bytes()})
	}
	return out
}

const anyTypePrefix = "type.googleapis.com/"

// parseConnectError reads a Connect unary error as connect-go's client does
// (protocol_connect.go, unmarshalResponseError): the JSON body {"code", "message",
// "details": [{"type", "value", "debug"}]}, each detail's value in base64 with or without
// padding (connect-go writes it without); a type without a '/' is a name under
// type.googleapis.com. A body that is not such JSON, or has no known code, is answered
// by the HTTP status alone, with the status as the message, as the client would.
func parseConnectError(status int, contentType string, body []byte) *hopv1.Error {
	byStatus := &hopv1.Error{
		Code:    connectCodeOfHTTP(status).String(),
		Message: strconv.Itoa(status) + " " + http.StatusText(status),
	}
	if mt, _, err := mime.ParseMediaType(contentType); err != nil || mt != "application/json" {
		return byStatus
	}
	var wire struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Details []struct {
			Type  string `json:"type"`
			Value string `json:"value"`
		} `json:"details"`
	}
	if err := json.Unmarshal(body, &wire); err != nil {
		return byStatus
	}
	out := &hopv1.Error{Code: byStatus.Code, Message: wire.Message}
	var code connect.Code
	if err := code.UnmarshalText([]byte(wire.Code)); err == nil && code != 0 {
		out.Code = code.String()
	}
	for _, d := range wire.Details {
		value, err := connect.DecodeBinaryHeader(d.Value)
		if err != nil {
			return byStatus
		}
		typeURL := d.Type
		if !strings.Contains(typeURL, "/") {
			typeURL = anyTypePrefix + typeURL
		}
		out.Details = append(out.Details, &anypb.Any{TypeUrl: typeURL, Value: value})
	}
	return out
}

// connectCodeOfHTTP is the code a Connect client gives an error answer without one: the
// HTTP-to-gRPC mapping connect-go uses (httpToCode), which is not the inverse of the
// code-to-HTTP one.
func connectCodeOfHTTP(status int) connect.Code {
	switch status {
	case 400:
		return connect.CodeInternal
	case 401:
		return connect.CodeUnauthenticated
	case 403:
		return connect.CodePermissionDenied
	case 404:
		return connect.CodeUnimplemented
	case 429, 502, 503, 504:
		return connect.CodeUnavailable
	}
	return connect.CodeUnknown
}
