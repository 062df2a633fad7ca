package gateway

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/securepay/securepay/services"
)

// router mounts the gateway's procedures on its mux, each with a client of its own to
// the component that serves it (services.ComponentOf). Handlers and clients carry frames
// (relay.go), not the generated messages, so the generated service handlers and clients
// are not used; what they would check at compile time, router checks when New runs:
// each procedure is in the API's schema with the message types given, and mounted once.
type router struct {
	g           *Gateway
	mux         *http.ServeMux
	components  map[services.Component]component
	handlerOpts []connect.HandlerOption
	clientOpts  []connect.ClientOption
	mounted     map[string]bool
	// batcher, when set, carries the unary calls to the payments component
	// (Config.Hop); streams and the other components' calls go alone.
	batcher *hopBatcher
	err     error // the first mistake; New fails with it
}

// component is where the gateway calls one component.
type component struct {
	client connect.HTTPClient
	url    string
}

// hop is the gateway's client of one unary or server-stream procedure at its component.
type hop[Req, Res any] struct {
	client *connect.Client[frame[Req], frame[Res]]
	// writes is true when the answer holds a WriteResult, whose position (the fields
	// result and position) the gateway remembers (lastWrite).
	writes           bool
	result, position protowire.Number
}

// newHop builds procedure's client and returns it with the procedure's schema; ok is
// false after a mistake (recorded in r.err).
func newHop[Req, Res any](r *router, procedure string, streaming bool) (h *hop[Req, Res], md protoreflect.MethodDescriptor, ok bool) {
	if r.err != nil {
		return nil, nil, false
	}
	fail := func(format string, args ...any) (*hop[Req, Res], protoreflect.MethodDescriptor, bool) {
		r.err = fmt.Errorf("gateway: route %s: "+format, append([]any{procedure}, args...)...)
		return nil, nil, false
	}
	if err := checkRelayable[Req](); err != nil {
		return fail("%v", err)
	}
	if err := checkRelayable[Res](); err != nil {
		return fail("%v", err)
	}
	md, err := methodOf(procedure)
	if err != nil {
		return fail("%v", err)
	}
	in, out := protoOf(new(Req)).ProtoReflect().Descriptor(), protoOf(new(Res)).ProtoReflect().Descriptor()
	switch {
	case md.Input().FullName() != in.FullName() || md.Output().FullName() != out.FullName():
		return fail("the schema takes %s and answers %s, the route %s and %s", md.Input().FullName(), md.Output().FullName(), in.FullName(), out.FullName())
	case md.IsStreamingClient() || md.IsStreamingServer() != streaming:
		return fail("the schema's streaming (client %v, server %v) is not the route's (server %v)", md.IsStreamingClient(), md.IsStreamingServer(), streaming)
	case r.mounted[procedure]:
		return fail("mounted twice")
	}
	name, routed := services.ComponentOf(procedure)
	c, known := r.components[name]
	if !routed || !known {
		return fail("no component serves it")
	}
	r.mounted[procedure] = true
	opts := []connect.ClientOption{connect.WithSchema(md), connect.WithClientOptions(r.clientOpts...)}
	if r.batcher != nil && name == services.ComponentPayments && !streaming {
		// Innermost, after Config.Interceptors: the call's client span is made as for a
		// call of its own, and only the HTTP call is replaced.
		opts = append(opts, connect.WithInterceptors(hopBatching[Req, Res]{batcher: r.batcher}))
	}
	h = &hop[Req, Res]{client: connect.NewClient[frame[Req], frame[Res]](c.client, c.url+procedure, opts...)}
	h.result, h.position, h.writes = resultField[Res]()
	return h, md, true
}

// methodOf is the schema of procedure ("/package.Service/Method").
func methodOf(procedure string) (protoreflect.MethodDescriptor, error) {
	svc, method, ok := strings.Cut(strings.TrimPrefix(procedure, "/"), "/")
	if !ok {
		return nil, fmt.Errorf("%q is not /package.Service/Method", procedure)
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", svc, err)
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a service", svc)
	}
	md := sd.Methods().ByName(protoreflect.Name(method))
	if md == nil {
		return nil, fmt.Errorf("service %s has no method %s", svc, method)
	}
	return md, nil
}

// unary mounts a unary procedure whose handling is its own (handle gets the
// procedure's hop to forward with).
func unary[Req, Res any](r *router, procedure string,
	handle func(context.Context, *connect.Request[frame[Req]], *hop[Req, Res]) (*connect.Response[frame[Res]], error),
) {
	h, md, ok := newHop[Req, Res](r, procedure, false)
	if !ok {
		return
	}
	r.mux.Handle(procedure, connect.NewUnaryHandler(procedure,
		func(ctx context.Context, req *connect.Request[frame[Req]]) (*connect.Response[frame[Res]], error) {
			return handle(ctx, req, h)
		},
		connect.WithSchema(md), connect.WithHandlerOptions(r.handlerOpts...)))
}

// forwarded mounts the common unary procedure: the request names its objects (of), the
// policy decides, and the call goes on.
func forwarded[Req, Res any](r *router, procedure string, of func(*Req) target) {
	g := r.g
	unary(r, procedure, func(ctx context.Context, req *connect.Request[frame[Req]], h *hop[Req, Res]) (*connect.Response[frame[Res]], error) {
		if _, err := g.authorize(ctx, procedure, of(req.Msg.msg()), 0); err != nil {
			return nil, err
		}
		return forward(ctx, g, req, h)
	})
}

// streamed mounts a server stream as forwarded does a unary procedure.
func streamed[Req, Res any](r *router, procedure string, of func(*Req) target) {
	h, md, ok := newHop[Req, Res](r, procedure, true)
	if !ok {
		return
	}
	g := r.g
	r.mux.Handle(procedure, connect.NewServerStreamHandler(procedure,
		func(ctx context.Context, req *connect.Request[frame[Req]], stream *connect.ServerStream[frame[Res]]) error {
			if _, err := g.authorize(ctx, procedure, of(req.Msg.msg()), 0); err != nil {
				return err
			}
			return relayStream(ctx, g, req, stream, h)
		},
		connect.WithSchema(md), connect.WithHandlerOptions(r.handlerOpts...)))
}
