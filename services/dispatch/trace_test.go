package dispatch_test

import (
	"net/http"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/securepay/securepay/services/dispatch"
)

// The dispatcher continues the trace of the message: dispatch.consume is a child of the
// traceparent header, dispatch.deliver a child of dispatch.consume, and the webhook
// request carries dispatch.deliver's context as its traceparent.
func TestTraceContinuesFromTheMessage(t *testing.T) {
	tp := newTopics(t, 1)
	rcv := newReceiver(t, "whsec-trace", func(int) int { return http.StatusOK })
	const (
		traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
		spanID  = "00f067aa0ba902b7"
	)
	tp.publish(t, event{id: "tr-1", typ: "ledger.account.credited.v1", account: "pat", position: 1, traceparent: "00-" + traceID + "-" + spanID + "-01"})
	exp := tracetest.NewInMemoryExporter()
	provider := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = provider.Shutdown(t.Context()) })
	cfg := fast(dispatch.StaticDirectory{"pat": {{ID: "ep-1", URL: rcv.srv.URL, Secret: rcv.secret}}}, nil)
	cfg.Tracer = provider.Tracer("github.com/securepay/securepay/services/dispatch")
	start(t, tp, cfg)
	rcv.waitFor(t, 2*time.Minute, "tr-1", func(_ int, ds []delivery) bool { return len(ds) == 1 })

	var consume, deliver tracetest.SpanStub
	deadline := time.Now().Add(time.Minute)
	for consume.Name == "" || deliver.Name == "" {
		if time.Now().After(deadline) {
			t.Fatalf("spans ended: %v; want dispatch.consume and dispatch.deliver", names(exp.GetSpans()))
		}
		for _, s := range exp.GetSpans() {
			switch s.Name {
			case "dispatch.consume":
				consume = s
			case "dispatch.deliver":
				deliver = s
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := consume.SpanContext.TraceID().String(); got != traceID {
		t.Errorf("dispatch.consume is in trace %s, want the message's %s", got, traceID)
	}
	if got := consume.Parent.SpanID().String(); got != spanID || !consume.Parent.IsRemote() {
		t.Errorf("dispatch.consume's parent is %s (remote %v), want the message's span %s", got, consume.Parent.IsRemote(), spanID)
	}
	if deliver.Parent.SpanID() != consume.SpanContext.SpanID() || deliver.SpanContext.TraceID() != consume.SpanContext.TraceID() {
		t.Errorf("dispatch.deliver's parent is %s in trace %s, want dispatch.consume %s", deliver.Parent.SpanID(), deliver.SpanContext.TraceID(), consume.SpanContext.SpanID())
	}
	_, ds := rcv.snapshot()
	want := "00-" + traceID + "-" + deliver.SpanContext.SpanID().String() + "-01"
	if ds[0].traceparent != want {
		t.Errorf("the webhook request's traceparent is %q, want dispatch.deliver's %q", ds[0].traceparent, want)
	}
}

func names(spans tracetest.SpanStubs) []string {
	out := make([]string, len(spans))
	for i, s := range spans {
		out[i] = s.Name
	}
	return out
}
