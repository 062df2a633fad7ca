package telemetry_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/projections/memory"
	"github.com/securepay/securepay/services/ledger"
	"github.com/securepay/securepay/services/telemetry"
)

var usd = domain.Asset{Code: "USD", Scale: 2}

const (
	edgeProcedure    = "/securepay.test.v1.Edge/Transfer"
	paymentProcedure = "/securepay.test.v1.Payments/Transfer"
)

// paymentPath is two SecurePay processes in one test: an edge that faces clients and a
// payment component behind it, each with its own Telemetry writing to one span exporter,
// the payment component running a real ledger on the embedded store.
type paymentPath struct {
	store  eventstore.Store
	proc   *ledger.Processor
	edge   *httptest.Server
	client *connect.Client[wrapperspb.StringValue, wrapperspb.StringValue]
	spans  *tracetest.InMemoryExporter
	edgeT  *telemetry.Telemetry
	payT   *telemetry.Telemetry
}

func newTelemetry(t testing.TB, name string, cfg telemetry.Config) *telemetry.Telemetry {
	t.Helper()
	cfg.ServiceName = name
	tel, err := telemetry.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("telemetry.New(%s): %v", name, err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return tel
}

func newPaymentPath(t *testing.T) *paymentPath {
	t.Helper()
	spans := tracetest.NewInMemoryExporter()
	pp := &paymentPath{spans: spans}
	pp.edgeT = newTelemetry(t, "securepay-gateway", telemetry.Config{Exporter: spans})
	pp.payT = newTelemetry(t, "securepay-payments", telemetry.Config{Exporter: spans})

	store, err := embedded.Open(t.TempDir(), embedded.Options{})
	if err != nil {
		t.Fatalf("open embedded store: %v", err)
	}
	t.Cleanup(func() { _ = store.Close() })
	obs, err := pp.payT.LedgerObserver()
	if err != nil {
		t.Fatalf("LedgerObserver: %v", err)
	}
	proc, err := ledger.New(store, ledger.Config{Observer: obs})
	if err != nil {
		t.Fatalf("ledger.New: %v", err)
	}
	t.Cleanup(func() { _ = proc.Close() })
	pp.store, pp.proc = store, proc

	// The payment component trusts the edge's trace context (mTLS peers in production).
	payIcs, err := pp.payT.RPCInterceptors(telemetry.TrustAll)
	if err != nil {
		t.Fatalf("payment interceptors: %v", err)
	}
	payMux := http.NewServeMux()
	payMux.Handle(paymentProcedure, connect.NewUnaryHandler(paymentProcedure,
		func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
			id := req.Msg.GetValue()
			cmd := domain.Transfer{PaymentID: domain.PaymentID(id), Source: "world", Destination: "alice", Amount: domain.Money{Asset: usd, Minor: 100}}
			if strings.HasPrefix(id, "overdraw-") {
				cmd.Source, cmd.Destination, cmd.Amount.Minor = "alice", "world", 1_000_000_000
			}
			res, err := proc.Execute(ctx, ledger.Request{Command: cmd, Meta: eventstore.Metadata{CorrelationID: id, Actor: "test"}})
			if domain.IsDomainError(err) {
				return nil, connect.NewError(connect.CodeFailedPrecondition, err)
			}
			if err != nil {
				return nil, connect.NewError(connect.CodeInternal, err)
			}
			return connect.NewResponse(wrapperspb.String(fmt.Sprint(res.Position))), nil
		}, connect.WithInterceptors(payIcs...)))
	paySrv := httptest.NewServer(payMux)
	t.Cleanup(paySrv.Close)

	// The edge does not trust its callers' trace context; its client to the payment
	// component propagates the edge's.
	edgeIcs, err := pp.edgeT.RPCInterceptors(nil)
	if err != nil {
		t.Fatalf("edge interceptors: %v", err)
	}
	toPayments := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](paySrv.Client(), paySrv.URL+paymentProcedure, connect.WithInterceptors(edgeIcs...))
	edgeMux := http.NewServeMux()
	edgeMux.Handle(edgeProcedure, connect.NewUnaryHandler(edgeProcedure,
		func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
			res, err := toPayments.CallUnary(ctx, connect.NewRequest(req.Msg))
			if err != nil {
				return nil, err
			}
			return connect.NewResponse(res.Msg), nil
		}, connect.WithInterceptors(edgeIcs...)))
	pp.edge = httptest.NewServer(edgeMux)
	t.Cleanup(pp.edge.Close)
	pp.client = connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](pp.edge.Client(), pp.edge.URL+edgeProcedure)

	for _, c := range []domain.Command{
		domain.OpenAccount{AccountID: "world", Asset: usd, Kind: domain.KindExternal},
		domain.OpenAccount{AccountID: "alice", Asset: usd, Kind: domain.KindCustomer},
	} {
		if _, err := proc.Execute(context.Background(), ledger.Request{Command: c}); err != nil {
			t.Fatalf("setup %T: %v", c, err)
		}
	}
	spans.Reset()
	return pp
}

// One transfer is one trace: the edge's server span, its call to the payment component,
// the payment handler, the ledger command and the command's store append, all under one
// trace id; the batch that appended it (with the other transfers committed at the same
// time) is a span of its own that links to the command; and the transfer's events carry
// the command's span as their traceparent, for the projectors and the relay to continue.
func TestOneTransferIsOneTrace(t *testing.T) {
	pp := newPaymentPath(t)

	// Transfers in parallel, so batches hold several commands.
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := pp.client.CallUnary(context.Background(), connect.NewRequest(wrapperspb.String(fmt.Sprintf("pay-%d", i))))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("transfer: %v", err)
		}
	}

	spans := pp.spans.GetSpans()
	byID := map[trace.SpanID]tracetest.SpanStub{}
	for _, s := range spans {
		byID[s.SpanContext.SpanID()] = s
	}
	// Follow pay-7 from its events in the store.
	events, err := pp.store.ReadStream(context.Background(), "payment-pay-7", 0, 10)
	if err != nil || len(events) == 0 {
		// The stream name is the ledger's business; find the event by correlation id.
		events = nil
		all, err := pp.store.ReadAll(context.Background(), 0, 1000)
		if err != nil {
			t.Fatalf("read log: %v", err)
		}
		for _, e := range all {
			if e.Metadata.CorrelationID == "pay-7" {
				events = append(events, e)
			}
		}
	}
	if len(events) == 0 {
		t.Fatal("no event of transfer pay-7 in the log")
	}
	sc, ok := telemetry.ParseTraceParent(events[0].Metadata.TraceParent)
	if !ok {
		t.Fatalf("event traceparent %q is not a W3C traceparent", events[0].Metadata.TraceParent)
	}
	for _, e := range events {
		if e.Metadata.TraceParent != events[0].Metadata.TraceParent {
			t.Errorf("events of one transfer carry different traceparents: %q and %q", e.Metadata.TraceParent, events[0].Metadata.TraceParent)
		}
	}
	command, ok := byID[sc.SpanID()]
	if !ok || command.Name != "ledger.Transfer" {
		t.Fatalf("the events' traceparent names span %s (%q), want the ledger.Transfer span", sc.SpanID(), command.Name)
	}

	// Walk up from the command span: payment handler, edge client call, edge handler.
	var chain []string
	for s := command; ; {
		chain = append(chain, fmt.Sprintf("%s/%s", s.Resource.Attributes()[0].Value.String(), s.Name))
		if s.SpanContext.TraceID() != sc.TraceID() {
			t.Errorf("span %q is in trace %s, want %s", s.Name, s.SpanContext.TraceID(), sc.TraceID())
		}
		p, ok := byID[s.Parent.SpanID()]
		if !s.Parent.IsValid() {
			break
		}
		if !ok {
			t.Fatalf("span %q has parent %s, which was not exported; chain so far %v", s.Name, s.Parent.SpanID(), chain)
		}
		s = p
	}
	want := []string{
		"securepay-payments/ledger.Transfer",
		"securepay-payments/securepay.test.v1.Payments/Transfer", // the payment handler (server span)
		"securepay-gateway/securepay.test.v1.Payments/Transfer",  // the edge's call (client span)
		"securepay-gateway/securepay.test.v1.Edge/Transfer",      // the edge (server span, root)
	}
	if fmt.Sprint(chain) != fmt.Sprint(want) {
		t.Fatalf("span chain of one transfer:\n got %v\nwant %v", chain, want)
	}

	// The command's trace leads to the batch that appended it: the command span links to
	// the batch span, a root of its own, which links back to the command.
	var batch tracetest.SpanStub
	for _, l := range command.Links {
		if s, ok := byID[l.SpanContext.SpanID()]; ok && s.Name == telemetry.SpanBatchAppend {
			batch = s
		}
	}
	if batch.Name == "" {
		t.Fatalf("the command span links to %v, none of them an exported %s span", command.Links, telemetry.SpanBatchAppend)
	}
	if batch.Parent.IsValid() {
		t.Errorf("the batch span has parent %s; want a root (it serves many traces)", batch.Parent.SpanID())
	}
	linked := false
	for _, l := range batch.Links {
		linked = linked || l.SpanContext.SpanID() == command.SpanContext.SpanID()
	}
	if !linked {
		t.Errorf("batch span has %d links, none to the command span %s", len(batch.Links), command.SpanContext.SpanID())
	}
	for _, s := range spans {
		if s.SpanContext.TraceID() == sc.TraceID() && s.Name != "ledger.Transfer" && s.Parent.SpanID() == command.SpanContext.SpanID() {
			t.Errorf("span %q under the command span: the append is the batch's span, reached by the link", s.Name)
		}
	}
	// Every command span is linked from exactly one batch.
	linkedFrom := map[trace.SpanID]int{}
	for _, s := range spans {
		if s.Name == telemetry.SpanBatchAppend {
			for _, l := range s.Links {
				linkedFrom[l.SpanContext.SpanID()]++
			}
		}
	}
	commands := 0
	for _, s := range spans {
		if s.Name == "ledger.Transfer" {
			commands++
			if linkedFrom[s.SpanContext.SpanID()] != 1 {
				t.Errorf("command span %s is linked from %d batch spans, want 1", s.SpanContext.SpanID(), linkedFrom[s.SpanContext.SpanID()])
			}
		}
	}
	if commands != n {
		t.Errorf("%d ledger.Transfer spans, want %d", commands, n)
	}
}

// A client's own traceparent does not make the edge join the client's trace: the edge
// starts a trace of its own and links to the client's span.
func TestEdgeDoesNotTrustClientTraceContext(t *testing.T) {
	pp := newPaymentPath(t)
	const clientTP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	req := connect.NewRequest(wrapperspb.String("pay-x"))
	req.Header().Set("traceparent", clientTP)
	if _, err := pp.client.CallUnary(context.Background(), req); err != nil {
		t.Fatalf("transfer: %v", err)
	}
	for _, s := range pp.spans.GetSpans() {
		if s.SpanContext.TraceID().String() == "0af7651916cd43dd8448eb211c80319c" {
			t.Errorf("span %q joined the client's trace", s.Name)
		}
		if s.Name == "securepay.test.v1.Edge/Transfer" {
			if len(s.Links) != 1 || s.Links[0].SpanContext.TraceID().String() != "0af7651916cd43dd8448eb211c80319c" {
				t.Errorf("edge span links %v, want one link to the client's span", s.Links)
			}
		}
	}
}

// A failed append marks the batch span as an error; the command's span links to it.
func TestFailedAppendIsAnErrorSpan(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tel := newTelemetry(t, "securepay-payments", telemetry.Config{Exporter: spans})
	obs, err := tel.LedgerObserver()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cmdSpan := tel.Tracer("test").Start(context.Background(), "command")
	actx, done := obs.Append(context.Background(), []context.Context{ctx}, 3)
	batchSC := trace.SpanContextFromContext(actx)
	if !batchSC.IsValid() {
		t.Fatal("Append returned a context without the batch span")
	}
	done(eventstore.AppendResult{}, fmt.Errorf("append: %w", errors.Join(eventstore.ErrUnavailable)))
	cmdSpan.End()
	var errorSpans []string
	for _, s := range spans.GetSpans() {
		if s.Status.Code.String() == "Error" {
			errorSpans = append(errorSpans, s.Name)
		}
		if s.Name == "command" && (len(s.Links) != 1 || s.Links[0].SpanContext.SpanID() != batchSC.SpanID()) {
			t.Errorf("command span links %v, want one link to the batch span %s", s.Links, batchSC.SpanID())
		}
	}
	if fmt.Sprint(errorSpans) != fmt.Sprint([]string{telemetry.SpanBatchAppend}) {
		t.Errorf("error spans %v, want the batch span", errorSpans)
	}
}

// A request its caller did not sample costs the ledger no span: the command gets no span
// id and no traceparent of its own (its events keep the request's), and a batch of such
// commands starts no span, even though new traces are sampled.
func TestUnsampledCommandStartsNoSpan(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tel := newTelemetry(t, "securepay-payments", telemetry.Config{Exporter: spans})
	obs, err := tel.LedgerObserver()
	if err != nil {
		t.Fatal(err)
	}
	parent, ok := telemetry.ParseTraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
	if !ok {
		t.Fatal("test traceparent does not parse")
	}
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), parent)
	cctx, tp, done := obs.Command(ctx, domain.Transfer{})
	if tp != "" {
		t.Errorf("traceparent of an unsampled command = %q, want \"\" (the events keep the request's)", tp)
	}
	if got := trace.SpanContextFromContext(cctx); !got.Equal(parent) {
		t.Errorf("command context holds span %s, want the request's %s: no span started", got.SpanID(), parent.SpanID())
	}
	actx, appended := obs.Append(context.Background(), []context.Context{cctx}, 2)
	if sc := trace.SpanContextFromContext(actx); sc.IsValid() {
		t.Errorf("a batch of unsampled commands started span %s, want none", sc.SpanID())
	}
	appended(eventstore.AppendResult{FirstPosition: 1, LastPosition: 2}, nil)
	done(ledger.Result{Position: 2}, nil)
	if got := spans.GetSpans(); len(got) != 0 {
		t.Errorf("%d spans exported for an unsampled command, want 0: %v", len(got), got.Snapshots())
	}
}

// At a low ratio a batch is still recorded when one of its commands is sampled (else the
// command's link would lead nowhere); one with only unsampled commands is not.
func TestBatchOfASampledCommandIsRecorded(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	// One new trace in a billion: no root is sampled by chance in this test.
	tel := newTelemetry(t, "securepay-payments", telemetry.Config{Exporter: spans, SampleRatio: 1e-9})
	obs, err := tel.LedgerObserver()
	if err != nil {
		t.Fatal(err)
	}
	sampled, ok := telemetry.ParseTraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	if !ok {
		t.Fatal("test traceparent does not parse")
	}
	sctx, tp, sdone := obs.Command(trace.ContextWithRemoteSpanContext(context.Background(), sampled), domain.Transfer{})
	if tp == "" || !strings.HasPrefix(tp, "00-4bf92f3577b34da6a3ce929d0e0e4736-") || !strings.HasSuffix(tp, "-01") {
		t.Errorf("traceparent of a sampled command = %q, want its own span in the caller's trace, sampled", tp)
	}
	uctx, utp, udone := obs.Command(context.Background(), domain.Transfer{}) // a new trace: not sampled at 1e-9
	if utp != "" {
		t.Errorf("traceparent of an unsampled new trace = %q, want \"\"", utp)
	}
	actx, appended := obs.Append(context.Background(), []context.Context{uctx, sctx}, 4)
	batchSC := trace.SpanContextFromContext(actx)
	if !batchSC.IsSampled() {
		t.Fatal("the batch of a sampled command is not sampled")
	}
	appended(eventstore.AppendResult{FirstPosition: 1, LastPosition: 4}, nil)
	sdone(ledger.Result{Position: 4}, nil)
	udone(ledger.Result{Position: 2}, nil)

	octx, others := obs.Append(context.Background(), []context.Context{uctx}, 2)
	if sc := trace.SpanContextFromContext(octx); sc.IsValid() {
		t.Errorf("a batch of unsampled commands started span %s, want none", sc.SpanID())
	}
	others(eventstore.AppendResult{FirstPosition: 5, LastPosition: 6}, nil)

	var names []string
	for _, s := range spans.GetSpans() {
		names = append(names, s.Name)
		if s.Name == telemetry.SpanBatchAppend && (len(s.Links) != 1 || s.Links[0].SpanContext.SpanID() != trace.SpanContextFromContext(sctx).SpanID()) {
			t.Errorf("batch span links %v, want only the sampled command", s.Links)
		}
	}
	if fmt.Sprint(names) != fmt.Sprint([]string{telemetry.SpanBatchAppend, "ledger.Transfer"}) {
		t.Errorf("spans %v, want the batch and the sampled command", names)
	}
}

var _ sdktrace.SpanExporter = (*telemetry.JSONSpanExporter)(nil)

// The projectors continue the trace: the span of the batch a view applied links to the
// command span named by the events' traceparent, and each projector's apply is a child
// of that command span too.
func TestProjectorLinksToTheCommand(t *testing.T) {
	pp := newPaymentPath(t)
	if _, err := pp.client.CallUnary(context.Background(), connect.NewRequest(wrapperspb.String("proj-1"))); err != nil {
		t.Fatalf("transfer: %v", err)
	}
	var command tracetest.SpanStub
	for _, s := range pp.spans.GetSpans() {
		if s.Name == "ledger.Transfer" {
			command = s
		}
	}
	if !command.SpanContext.IsValid() {
		t.Fatal("no ledger.Transfer span")
	}
	views := memory.New(10)
	runner, err := projections.NewRunner(projections.RunnerConfig{Store: pp.store, Projectors: views.Projectors(), Observe: pp.payT.ProjectionObserver()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = runner.Run(ctx) }()
	defer func() { cancel(); <-done }()
	head, err := pp.store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitCtx, stop := context.WithTimeout(ctx, 20*time.Second)
	defer stop()
	for _, p := range views.Projectors() {
		if err := runner.Wait(waitCtx, p.Name(), head); err != nil {
			t.Fatalf("projector %s did not reach %d: %v", p.Name(), head, err)
		}
	}
	linked := 0
	for _, s := range pp.spans.GetSpans() {
		if s.Name != telemetry.SpanProjectionApply {
			continue
		}
		for _, l := range s.Links {
			if l.SpanContext.SpanID() == command.SpanContext.SpanID() && l.SpanContext.TraceID() == command.SpanContext.TraceID() {
				linked++
			}
		}
	}
	if linked != len(views.Projectors()) {
		t.Errorf("%d projection spans link to the transfer's command span, want one per projector (%d)", linked, len(views.Projectors()))
	}
	// Each projector's apply is also a span in the transfer's own trace, under the command.
	children := map[string]int{}
	for _, s := range pp.spans.GetSpans() {
		if s.Name == telemetry.SpanProjectionApply && s.Parent.SpanID() == command.SpanContext.SpanID() && s.SpanContext.TraceID() == command.SpanContext.TraceID() {
			for _, kv := range s.Attributes {
				if kv.Key == "securepay.projector" {
					children[kv.Value.AsString()]++
				}
			}
		}
	}
	for _, p := range views.Projectors() {
		if children[p.Name()] != 1 {
			t.Errorf("projector %s has %d apply spans under the transfer's command span, want 1 (all: %v)", p.Name(), children[p.Name()], children)
		}
	}
}
