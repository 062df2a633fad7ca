package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	hopv1 "github.com/securepay/securepay/api/gen/securepay/hop/v1"
	"github.com/securepay/securepay/api/gen/securepay/hop/v1/hopv1connect"
	"github.com/securepay/securepay/services/edge"
)

// HopMode says how the gateway's unary calls to the payments component travel.
type HopMode int

const (
	// HopDefault is HopBatched.
	HopDefault HopMode = iota
	// HopBatched gathers the calls that arrive while others are in flight into one
	// HopService.Forward (batch.go).
	HopBatched
	// HopAlone sends each call as an HTTP/2 call of its own.
	HopAlone
)

func (m HopMode) batched() bool { return m == HopBatched }

// hopBatching is how the routes' clients of the payments component reach the batcher:
// a client interceptor, the innermost one, in place of the HTTP call. Everything outside
// it runs as for a call of its own: the tracing interceptor's client span (whose
// traceparent it finds in the request's headers, so that the component's server span is
// that span's child), forward's upstreamError and concealCounterparty on its error, and
// noteWrite on its answer.
type hopBatching[Req, Res any] struct {
	batcher *hopBatcher
}

// newForwarder is the batcher's Forward: HopService on the payments component's
// connection (the same HTTP client as every other call to it). It carries no
// interceptors: each call inside it has its own client span already, and a span per
// Forward would start a trace of its own for every batch.
func newForwarder(hc connect.HTTPClient, baseURL string) forwardFunc {
	client := hopv1connect.NewHopServiceClient(hc, baseURL,
		connect.WithSendMaxBytes(maxForwardBytes), connect.WithReadMaxBytes(64<<20),
		// A batch's answer is larger than the components' compression threshold; gzip
		// of it at both ends would cost what batching saves, for no saving on loopback
		// or in a data centre.
		connect.WithAcceptCompression("gzip", nil, nil))
	return func(ctx context.Context, calls []*hopv1.Call) ([]*hopv1.Result, error) {
		res, err := client.Forward(ctx, connect.NewRequest(&hopv1.ForwardRequest{Calls: calls}))
		if err != nil {
			return nil, err
		}
		return res.Msg.GetResults(), nil
	}
}

func (h hopBatching[Req, Res]) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if !req.Spec().IsClient || h.batcher.alone(time.Now()) {
			return next(ctx, req)
		}
		call, err := hopCallOf(ctx, req)
		if err != nil {
			return nil, err
		}
		if call == nil {
			return next(ctx, req) // too large for a batch: alone, as before
		}
		deadline, _ := ctx.Deadline()
		result, err := h.batcher.do(ctx, newHopCall(call, deadline))
		if err != nil {
			if connect.CodeOf(err) == connect.CodeUnimplemented {
				// A payments component that does not serve HopService yet (a gateway
				// upgraded first): the call goes alone, as before, and so do the next
				// ones for a while.
				h.batcher.unsupported(time.Now())
				return next(ctx, req)
			}
			return nil, err
		}
		return resultResponse[Res](result)
	}
}

func (h hopBatching[Req, Res]) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (h hopBatching[Req, Res]) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// callHeaders are the request headers a call of a Forward carries: those stamp writes
// (the forwarded client headers, the edge identity) and the trace context the tracing
// interceptor injects. Connect's transport headers are the Forward's own, and the
// component refuses any other (services/hop.go); each goes once, its first value, which
// is the one the component would read of a lone call.
var callHeaders = append(slices.Clip(forwardedHeaders), edge.PrincipalHeader, edge.CorrelationHeader, "Traceparent", "Tracestate")

// hopCallOf is req as one call of a Forward: its procedure, its callHeaders, its message
// as binary protobuf, and what remains of ctx's deadline. It is nil for a message too
// large to share a Forward.
func hopCallOf(ctx context.Context, req connect.AnyRequest) (*hopv1.Call, error) {
	msg, err := wireOf(req.Any())
	if err != nil {
		return nil, err
	}
	if len(msg) > maxBatchedCallBytes {
		return nil, nil
	}
	call := &hopv1.Call{Procedure: req.Spec().Procedure, Message: msg, Headers: make([]*hopv1.Header, 0, len(callHeaders))}
	h := req.Header()
	for _, name := range callHeaders {
		if v := h.Values(name); len(v) > 0 {
			call.Headers = append(call.Headers, &hopv1.Header{Name: name, Value: v[0]})
		}
	}
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, connect.NewError(connect.CodeDeadlineExceeded, context.DeadlineExceeded)
		}
		call.Timeout = durationpb.New(left)
	}
	return call, nil
}

// wireOf is a request's binary protobuf: the bytes the client sent, or the message
// encoded (a frame decoded from JSON, or a message the gateway built).
func wireOf(m any) ([]byte, error) {
	switch f := m.(type) {
	case relayed:
		if b, ok := f.wireBytes(); ok {
			// The frame owns these bytes and nothing changes them once the call is sent.
			return b, nil
		}
		pm, err := f.protoMessage()
		if err != nil {
			return nil, err
		}
		return proto.Marshal(pm)
	case proto.Message:
		return proto.Marshal(f)
	}
	return nil, errNotProto(m)
}

// resultResponse is a Result as the answer a call of its own would have had: the
// message as the component's bytes (decoded only when a JSON client or the gateway
// needs it), the response headers, or the component's error with its code, message,
// details and headers (Retry-After) in its metadata.
func resultResponse[Res any](r *hopv1.Result) (*connect.Response[frame[Res]], error) {
	switch o := r.GetOutcome().(type) {
	case *hopv1.Result_Message:
		f := &frame[Res]{}
		f.keepWire(o.Message)
		res := connect.NewResponse(f)
		setHeaders(res.Header(), r.GetHeaders())
		return res, nil
	case *hopv1.Result_Error:
		return nil, resultError(o.Error, r.GetHeaders())
	}
	// Not a *connect.Error: upstreamError logs it and answers INTERNAL.
	return nil, errors.New("gateway: payments answered a Forward's call with neither a message nor an error")
}

// resultError is a Result's error as the *connect.Error the component would have sent.
func resultError(e *hopv1.Error, headers []*hopv1.Header) error {
	var code connect.Code
	if err := code.UnmarshalText([]byte(e.GetCode())); err != nil || code == 0 {
		return fmt.Errorf("gateway: payments answered a Forward's call with the unknown code %q", e.GetCode())
	}
	cerr := connect.NewError(code, errors.New(e.GetMessage()))
	for _, d := range e.GetDetails() {
		detail, err := connect.NewErrorDetail(d)
		if err != nil {
			return fmt.Errorf("gateway: a Forward's error detail: %w", err)
		}
		cerr.AddDetail(detail)
	}
	setHeaders(cerr.Meta(), headers)
	return cerr
}

func setHeaders(to http.Header, from []*hopv1.Header) {
	for _, h := range from {
		to.Add(h.GetName(), h.GetValue())
	}
}
