package telemetry

import (
	"bytes"
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/securepay/securepay/api/gen/securepay/hop/v1/hopv1connect"
)

// The server decides whether a request is recorded before otelconnect runs, and a request
// it does not record gets no span at all, only an unsampled span context for what runs
// under it; one it does record is recorded once (not drawn a second time by the SDK).
func TestRPCSamplingBeforeTheSpan(t *testing.T) {
	const (
		sampledTP   = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
		unsampledTP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
		callerTrace = "0af7651916cd43dd8448eb211c80319c"
	)
	cases := []struct {
		name        string
		trusted     bool
		traceparent string
		draw        uint64 // the random bits: 0 is recorded at any ratio, MaxUint64 at none below 1
		wantSpans   int
		wantSampled bool
		wantTrace   string // the handler's trace id, when it must be the caller's
	}{
		{"new trace drawn out", false, "", math.MaxUint64, 0, false, ""},
		{"new trace drawn in", false, "", 0, 1, true, ""},
		{"stranger's sampled trace does not choose", false, sampledTP, math.MaxUint64, 0, false, ""},
		{"stranger's trace drawn in: a new trace", false, sampledTP, 0, 1, true, ""},
		{"our caller sampled: continued whatever the draw", true, sampledTP, math.MaxUint64, 1, true, callerTrace},
		{"our caller did not sample: nor do we", true, unsampledTP, 0, 0, false, callerTrace},
		{"our caller sent nothing: drawn out", true, "", math.MaxUint64, 0, false, ""},
	}
	body, err := proto.Marshal(wrapperspb.String("x"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			spans := tracetest.NewInMemoryExporter()
			tel, err := New(context.Background(), Config{ServiceName: "test", Exporter: spans, SampleRatio: 0.1})
			if err != nil {
				t.Fatal(err)
			}
			defer tel.Shutdown(context.Background())
			ics, err := tel.RPCInterceptors(func(context.Context) bool { return c.trusted })
			if err != nil {
				t.Fatal(err)
			}
			sw, ok := ics[0].(trustSwitch)
			if !ok {
				t.Fatalf("first interceptor is %T, want the trust switch", ics[0])
			}
			sw.draw = func() uint64 { return c.draw }
			ics[0] = sw
			var seen trace.SpanContext
			h := connect.NewUnaryHandler("/test.v1.T/Call", func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
				seen = trace.SpanContextFromContext(ctx)
				return connect.NewResponse(req.Msg), nil
			}, connect.WithInterceptors(ics...))
			req := httptest.NewRequest(http.MethodPost, "/test.v1.T/Call", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/proto")
			if c.traceparent != "" {
				req.Header.Set("traceparent", c.traceparent)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				t.Fatalf("handler answered %d: %s", rec.Code, rec.Body)
			}
			if !seen.IsValid() {
				t.Fatal("the handler's context holds no span context: what runs under it would start traces of its own")
			}
			if seen.IsSampled() != c.wantSampled {
				t.Errorf("handler's span context sampled = %v, want %v", seen.IsSampled(), c.wantSampled)
			}
			if c.wantTrace != "" && seen.TraceID().String() != c.wantTrace {
				t.Errorf("handler's trace %s, want the caller's %s", seen.TraceID(), c.wantTrace)
			}
			if c.wantTrace == "" && seen.TraceID().String() == callerTrace {
				t.Errorf("handler joined the caller's trace %s, want a trace of its own", callerTrace)
			}
			got := spans.GetSpans()
			if len(got) != c.wantSpans {
				t.Fatalf("%d spans exported, want %d: %v", len(got), c.wantSpans, got.Snapshots())
			}
			if c.wantSpans == 1 && got[0].SpanContext.SpanID() != seen.SpanID() {
				t.Errorf("exported span %s, the handler ran under %s", got[0].SpanContext.SpanID(), seen.SpanID())
			}
		})
	}
}

// A Forward (services/hop.go) gets no span of its own, on the server or the client, at any
// sampling ratio: each call it carries is traced under its own caller's span, and the
// Forward's would be a trace of nothing. Another procedure, same settings, is recorded.
func TestRPCForwardIsNotTraced(t *testing.T) {
	body, err := proto.Marshal(wrapperspb.String("x"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		procedure string
		wantSpans int
	}{
		{hopv1connect.HopServiceForwardProcedure, 0},
		{"/test.v1.T/Call", 1},
	} {
		t.Run(c.procedure, func(t *testing.T) {
			spans := tracetest.NewInMemoryExporter()
			tel, err := New(context.Background(), Config{ServiceName: "test", Exporter: spans, SampleRatio: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer tel.Shutdown(context.Background())
			ics, err := tel.RPCInterceptors(TrustAll)
			if err != nil {
				t.Fatal(err)
			}
			h := connect.NewUnaryHandler(c.procedure, func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
				return connect.NewResponse(req.Msg), nil
			}, connect.WithInterceptors(ics...))
			srv := httptest.NewServer(h)
			defer srv.Close()
			client := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](srv.Client(), srv.URL+c.procedure,
				connect.WithProtoJSON(), connect.WithInterceptors(ics...))
			if _, err := client.CallUnary(context.Background(), connect.NewRequest(wrapperspb.String("x"))); err != nil {
				t.Fatalf("call: %v", err)
			}
			// The server, once more without a client in front.
			req := httptest.NewRequest(http.MethodPost, c.procedure, bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/proto")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				t.Fatalf("handler answered %d: %s", rec.Code, rec.Body)
			}
			// Client and server spans of the call, and the lone server span.
			if got, want := len(spans.GetSpans()), 3*c.wantSpans; got != want {
				t.Errorf("%d spans exported for %s, want %d: %v", got, c.procedure, want, spans.GetSpans().Snapshots())
			}
		})
	}
}
