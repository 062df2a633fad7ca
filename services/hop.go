package services

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/trace"

	hopv1 "github.com/securepay/securepay/api/gen/securepay/hop/v1"
	"github.com/securepay/securepay/api/gen/securepay/hop/v1/hopv1connect"
	"github.com/securepay/securepay/services/edge"
)

// HopService (api/proto/securepay/hop/v1) is the gateway's hop to the payments
// component: one Forward carries many unary calls, each served exactly as if it had come
// alone on the same mTLS connection. It is internal: it is not one of the API's services
// (serviceDescriptors), so it is neither routed by the gateway, listed by reflection and
// health, nor in Procedures; ComponentPolicy admits only the gateway to it.
//
// Invariants:
//  1. A call reaches the component's whole API handler (Server.handler), the same one the
//     port serves: the mTLS policy decides its procedure for the connection's peer, and
//     the edge identity, idempotency, validation, deadlines, metrics and tracing apply
//     to it as to a lone call. Forward adds no right: its caller could have sent each
//     call alone.
//  2. A call's procedure is a unary procedure of the payments component, never
//     HopService's own, so a Forward never carries a Forward.
//  3. A call carries only hopHeaders; the transport headers are Forward's to set.
//  4. One call's refusal or failure leaves the others as they would have been alone.
//  5. Bounds: maxHopCalls calls and maxHopBytes per Forward, maxHopResultBytes per answer.
const (
	// maxHopCalls bounds the goroutines one Forward starts; the gateway sends what arrived
	// together, a few hundred calls under load.
	maxHopCalls = 1024
	// maxHopBytes bounds a Forward's request, compressed or not: 1,024 transfers of a few
	// hundred bytes each, with room for their headers.
	maxHopBytes = 4 << 20
	// maxHopResultBytes bounds one call's answer as Forward keeps it: payments answers in
	// hundreds of bytes, and Forward's answer must fit the gateway's read limit.
	maxHopResultBytes = 1 << 20
)

// hopHeaders are the request headers a call may carry (canonical names): what states
// who it acts for (the edge identity, believed only because the peer is the gateway),
// its idempotency key and its trace context. Content-*, Connect-*, Host, Authorization
// and the rest are refused: Forward sets what the transport needs itself.
var hopHeaders = []string{
	edge.PrincipalHeader,
	edge.CorrelationHeader,
	IdempotencyKeyHeader,
	"Traceparent",
	"Tracestate",
}

// hopRequestKey carries the outer Forward request from hopRouter to hopService, which
// builds each call's request on its TLS state, remote address and host.
type hopRequestKey struct{}

// hopRouter sends Forward to forward and everything else to api. It sits inside
// Config.Authorize, so Forward is authorised like any procedure (the gateway alone), and
// outside requestLimits, whose per-message bound Forward replaces with maxHopBytes.
func hopRouter(api, forward http.Handler, errs *connect.ErrorWriter) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != hopv1connect.HopServiceForwardProcedure {
			api.ServeHTTP(w, r)
			return
		}
		if r.ContentLength > maxHopBytes {
			refuse(w, r, errs, newError(connect.CodeResourceExhausted, ReasonRequestTooLarge,
				fmt.Sprintf("the Forward is %s bytes; a Forward is at most %s: split its calls over several", thousands(r.ContentLength), byteSize(maxHopBytes))))
			return
		}
		forward.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), hopRequestKey{}, r)))
	})
}

// newHopHandler is Forward's Connect handler. api is called once the server is built:
// it is the server's whole handler, which contains this one.
func newHopHandler(api func() http.Handler, interceptors []connect.Interceptor, logger *slog.Logger) http.Handler {
	svc := &hopService{api: api, procedures: map[string]bool{}, streams: streamingPaths(), logger: logger}
	for _, p := range Procedures(ComponentPayments) {
		if !svc.streams[p] {
			svc.procedures[p] = true
		}
	}
	_, h := hopv1connect.NewHopServiceHandler(svc,
		connect.WithCodec(deterministicCodec{}),
		connect.WithReadMaxBytes(maxHopBytes),
		connect.WithCompression("gzip", newBoundedGzip(maxHopBytes), func() connect.Compressor { return gzip.NewWriter(io.Discard) }),
		// Never compress the answer: 64 transfers' answers are 25 KiB, over the 4 KiB at
		// which the API compresses, and gzip cost more CPU per transfer on the hop (an
		// internal link) than the rest of Forward's own work (BenchmarkHop's profile).
		connect.WithCompressMinBytes(math.MaxInt32),
		connect.WithInterceptors(interceptors...),
	)
	return h
}

type hopService struct {
	api        func() http.Handler
	procedures map[string]bool // the payments component's unary procedures
	streams    map[string]bool // the API's streams, to say why one is refused
	logger     *slog.Logger
}

func (s *hopService) Forward(ctx context.Context, req *connect.Request[hopv1.ForwardRequest]) (*connect.Response[hopv1.ForwardResponse], error) {
	outer, ok := ctx.Value(hopRequestKey{}).(*http.Request)
	if !ok {
		// Only hopRouter mounts this handler; without the outer request there is no TLS
		// state to authorise the calls with, so nothing is served.
		return nil, newError(connect.CodeInternal, ReasonInternal, "internal error")
	}
	calls := req.Msg.GetCalls()
	if len(calls) > maxHopCalls {
		return nil, newError(connect.CodeInvalidArgument, ReasonInvalidInput,
			fmt.Sprintf("the Forward carries %d calls; at most %d: split them over several", len(calls), maxHopCalls))
	}
	results := make([]*hopv1.Result, len(calls))
	// Each call's trace context is the one its headers carry (the gateway's client span of
	// that call), as for a lone call. Forward's own server span, in ctx, would otherwise
	// parent every call, and the tracing interceptor, which reads a traceparent only into
	// a context without a span, would never read the call's.
	ctx = trace.ContextWithSpanContext(ctx, trace.SpanContext{})
	var wg sync.WaitGroup
	for i, call := range calls {
		r, cerr := s.request(ctx, outer, call)
		if cerr != nil {
			results[i] = errorResult(cerr)
			continue
		}
		// Each call on a goroutine of its own, as each lone call on its own HTTP/2 stream:
		// they reach the command batcher together and share its commits.
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = s.serve(r)
		}()
	}
	wg.Wait()
	return connect.NewResponse(&hopv1.ForwardResponse{Results: results}), nil
}

// serve runs one call through the API handler and reads its answer.
func (s *hopService) serve(r *http.Request) (res *hopv1.Result) {
	defer func() {
		// net/http survives a handler's panic on a lone call (it resets the stream); on
		// Forward's goroutine it would end the process with every other call.
		if p := recover(); p != nil {
			s.logger.Error("hop: a forwarded call panicked", "procedure", r.URL.Path, "panic", p)
			res = errorResult(newError(connect.CodeInternal, ReasonInternal, "internal error"))
		}
	}()
	w := newResultWriter()
	s.api().ServeHTTP(w, r)
	return w.result()
}

// request builds the request call would have been alone, on the outer request's
// connection, or the refusal of the call.
func (s *hopService) request(ctx context.Context, outer *http.Request, call *hopv1.Call) (*http.Request, *connect.Error) {
	proc := call.GetProcedure()
	if cerr := s.admitProcedure(proc); cerr != nil {
		return nil, cerr
	}
	header := make(http.Header, len(call.GetHeaders())+3)
	// Every value in one array: a call's request is built for each of up to 1,024 calls.
	values := make([]string, 0, len(call.GetHeaders())+3)
	set := func(name, value string) {
		values = append(values, value)
		header[name] = values[len(values)-1 : len(values) : len(values)]
	}
	for _, h := range call.GetHeaders() {
		name := http.CanonicalHeaderKey(h.GetName())
		switch {
		case !slices.Contains(hopHeaders, name):
			return nil, newFieldError(connect.CodeInvalidArgument, ReasonInvalidInput,
				fmt.Sprintf("header %q may not be forwarded: a call carries only %s", clipEcho(h.GetName()), strings.Join(hopHeaders, ", ")), "headers")
		case header[name] != nil:
			return nil, newFieldError(connect.CodeInvalidArgument, ReasonInvalidInput,
				fmt.Sprintf("header %s appears twice; a call carries each header once", name), "headers")
		case !validHeaderValue(h.GetValue()):
			return nil, newFieldError(connect.CodeInvalidArgument, ReasonInvalidInput,
				fmt.Sprintf("header %s has a value no HTTP request can carry (control characters)", name), "headers")
		}
		set(name, h.GetValue())
	}
	set("Content-Type", "application/proto")
	set("Connect-Protocol-Version", "1")
	if t := call.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil {
			return nil, newFieldError(connect.CodeInvalidArgument, ReasonInvalidInput, fmt.Sprintf("the timeout is not a valid duration: %v", err), "timeout")
		}
		d := t.AsDuration()
		if d <= 0 {
			// The caller's deadline passed before the call left the gateway: alone, it
			// would never have been sent.
			return nil, connect.NewError(connect.CodeDeadlineExceeded, fmt.Errorf("the call's deadline passed before it was forwarded (timeout %s)", d))
		}
		if ms := connectTimeoutMillis(d); ms != "" {
			set("Connect-Timeout-Ms", ms)
		}
	}
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, proc, bytes.NewReader(call.GetMessage()))
	if err != nil {
		return nil, newFieldError(connect.CodeInvalidArgument, ReasonInvalidInput, fmt.Sprintf("procedure %q: %v", clipEcho(proc), err), "procedure")
	}
	r.Header = header
	r.Proto, r.ProtoMajor, r.ProtoMinor = outer.Proto, outer.ProtoMajor, outer.ProtoMinor
	r.Host = outer.Host
	r.RemoteAddr = outer.RemoteAddr
	r.TLS = outer.TLS
	r.RequestURI = proc
	return r, nil
}

// admitProcedure refuses what Forward does not carry: anything but a unary procedure of
// the payments component.
func (s *hopService) admitProcedure(proc string) *connect.Error {
	if s.procedures[proc] {
		return nil
	}
	if strings.HasPrefix(proc, "/"+hopv1connect.HopServiceName+"/") {
		return newFieldError(connect.CodeInvalidArgument, ReasonInvalidInput,
			fmt.Sprintf("%q is HopService's own: a Forward does not carry another", clipEcho(proc)), "procedure")
	}
	if s.streams[proc] {
		return connect.NewError(connect.CodeUnimplemented, fmt.Errorf("%s is a stream; a Forward carries only unary calls", proc))
	}
	if owner, ok := ComponentOf(proc); ok && owner != ComponentPayments {
		return connect.NewError(connect.CodeUnimplemented,
			fmt.Errorf("%s is served by the %s component; a Forward carries only the payments component's unary procedures", proc, owner))
	}
	return connect.NewError(connect.CodeUnimplemented, fmt.Errorf("%q is not a procedure of the SecurePay API", clipEcho(proc)))
}

// connectTimeoutMillis encodes d as Connect's timeout header, as connect-go's client does
// (whole milliseconds, at least 1; "" past the protocol's ten digits, which means none).
func connectTimeoutMillis(d time.Duration) string {
	ms := strconv.FormatInt(max(int64(d/time.Millisecond), 1), 10)
	if len(ms) > 10 {
		return ""
	}
	return ms
}

// validHeaderValue reports whether v could arrive as an HTTP header value: no control
// characters but tab (RFC 9110 field-value). A lone call could not carry a newline.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// clipEcho bounds what a refusal repeats of what the gateway sent.
func clipEcho(s string) string {
	const maxEcho = 200
	if len(s) > maxEcho {
		s = s[:maxEcho] + "…"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
