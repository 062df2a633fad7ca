package services_test

import (
	"context"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	hopv1 "github.com/securepay/securepay/api/gen/securepay/hop/v1"
	"github.com/securepay/securepay/api/gen/securepay/hop/v1/hopv1connect"
	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/postgres"
	"github.com/securepay/securepay/internal/pgtest"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/edge"
	"github.com/securepay/securepay/services/ledger"
	"github.com/securepay/securepay/services/mtls"
)

// paymentsNode is the payments component as `securepay serve payments` runs it: the
// PostgreSQL event store, the Redis idempotency store, its own SVID from a development
// CA, its policy table (ComponentPolicy) and the edge identity of the gateway's ID, served
// by Server.Serve over HTTP/2 mTLS on a loopback port.
type paymentsNode struct {
	url    string
	ca     *mtls.DevCA
	ids    mtls.IDs
	policy mtls.Policy
	store  *postgres.Store
}

// paymentsOptions vary a paymentsNode: interceptors run first on every RPC (telemetry's);
// every command waits for delay (nanoseconds, changed while the node runs) or its
// context, to hold calls past a deadline on purpose; the next command panics when
// panicNext is set; observer watches the processor.
type paymentsOptions struct {
	interceptors []connect.Interceptor
	delay        *atomic.Int64
	panicNext    *atomic.Bool
	observer     ledger.Observer
}

// appendCounter is a ledger.Observer that counts the processor's appends: the store
// transactions its batches commit in.
type appendCounter struct{ appends atomic.Int64 }

func (c *appendCounter) Command(ctx context.Context, _ domain.Command) (context.Context, string, func(ledger.Result, error)) {
	return ctx, "", func(ledger.Result, error) {}
}

func (c *appendCounter) Append(ctx context.Context, _ []context.Context, _ int) (context.Context, func(eventstore.AppendResult, error)) {
	c.appends.Add(1)
	return ctx, func(eventstore.AppendResult, error) {}
}

func (c *appendCounter) Retried(string) {}

// faultyCommands holds each command for delay, or until its context ends, and panics
// on the command after panicNext was set.
type faultyCommands struct {
	services.Commands
	delay     *atomic.Int64
	panicNext *atomic.Bool
}

func (c faultyCommands) Execute(ctx context.Context, r ledger.Request) (ledger.Result, error) {
	if c.panicNext != nil && c.panicNext.CompareAndSwap(true, false) {
		panic("faultyCommands: a command panics, as asked")
	}
	if c.delay == nil {
		return c.Commands.Execute(ctx, r)
	}
	if d := time.Duration(c.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return ledger.Result{}, ctx.Err()
		}
	}
	return c.Commands.Execute(ctx, r)
}

func startPaymentsNode(t testing.TB, opts ...paymentsOptions) *paymentsNode {
	t.Helper()
	var o paymentsOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	ctx := testContext(t)
	store, err := postgres.Open(ctx, postgres.Config{DSN: pgtest.DSN(t), Schema: pgtest.Schema(t, "sp_hop"), Migrate: true, MaxConns: 16})
	if err != nil {
		t.Fatalf("open the PostgreSQL store: %v", err)
	}
	proc, err := ledger.New(store, ledger.Config{Observer: o.observer})
	if err != nil {
		t.Fatalf("start processor: %v", err)
	}
	td := spiffeid.RequireTrustDomainFromString(mtls.DefaultTrustDomain)
	ca, err := mtls.NewDevCA(td, time.Hour, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	ids := mtls.WellKnownIDs(td)
	src, err := ca.Source(ids.Payments)
	if err != nil {
		t.Fatal(err)
	}
	payments := []services.Component{services.ComponentPayments}
	policy, err := services.ComponentPolicy(td, payments)
	if err != nil {
		t.Fatal(err)
	}
	caller, correlation := edge.ForComponent(ids.Gateway)
	var cmds services.Commands = proc
	if o.delay != nil || o.panicNext != nil {
		cmds = faultyCommands{Commands: proc, delay: o.delay, panicNext: o.panicNext}
	}
	srv, err := services.NewServer(services.Config{
		Components:    payments,
		Commands:      cmds,
		Interceptors:  o.interceptors,
		Store:         store,
		Idempotency:   services.NewRedisIdempotencyStore(redisClient(t), "hop-test-"+time.Now().Format("150405.000000000")),
		Caller:        caller,
		CorrelationID: correlation,
		TLS:           mtls.ServerTLS(src),
		Authorize:     policy.Handler,
	})
	if err != nil {
		t.Fatalf("new server: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx, ln) }()
	t.Cleanup(func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
		_ = proc.Close()
		_ = store.Close()
	})
	return &paymentsNode{url: "https://" + ln.Addr().String(), ca: ca, ids: ids, policy: policy, store: store}
}

// client is an mTLS HTTP/2 client of the node holding id's SVID.
func (n *paymentsNode) client(t testing.TB, id spiffeid.ID) *http.Client {
	t.Helper()
	src, err := n.ca.Source(id)
	if err != nil {
		t.Fatal(err)
	}
	hc := mtls.HTTPClient(src, n.ids.Payments)
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

func (n *paymentsNode) hop(t testing.TB, id spiffeid.ID) hopv1connect.HopServiceClient {
	return hopv1connect.NewHopServiceClient(n.client(t, id), n.url)
}

// asGateway is a request carrying the edge identity the gateway asserts.
func asGateway[T any](msg *T, principal, correlation string) *connect.Request[T] {
	r := connect.NewRequest(msg)
	edge.Set(r.Header(), edge.Identity{Principal: principal, CorrelationID: correlation})
	return r
}

// seedAccounts opens world (external) and each of customers (USD) as the operator, and
// funds each customer with 100.00, all as lone calls from the gateway.
func (n *paymentsNode) seedAccounts(t testing.TB, hc *http.Client, customers ...string) {
	t.Helper()
	ctx := testContext(t)
	accounts := ledgerv1connect.NewAccountServiceClient(hc, n.url)
	payments := ledgerv1connect.NewPaymentServiceClient(hc, n.url)
	open := func(id string, kind ledgerv1.AccountKind) {
		if _, err := accounts.OpenAccount(ctx, asGateway(&ledgerv1.OpenAccountRequest{AccountId: id, Asset: "USD", Kind: kind}, "operator", "seed")); err != nil {
			t.Fatalf("open %s: %v", id, err)
		}
	}
	open("world", ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL)
	for _, c := range customers {
		open(c, ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER)
		if _, err := payments.Transfer(ctx, asGateway(&ledgerv1.TransferRequest{
			PaymentId: "fund-" + c, SourceAccountId: "world", DestinationAccountId: c, Amount: usd("100.00"),
		}, "operator", "seed")); err != nil {
			t.Fatalf("fund %s: %v", c, err)
		}
	}
}

// hopCall is one Forward call of procedure with msg and headers as name, value pairs.
func hopCall(t testing.TB, procedure string, msg proto.Message, headers ...string) *hopv1.Call {
	t.Helper()
	b, err := proto.Marshal(msg)
	if err != nil {
		t.Fatalf("marshal %T: %v", msg, err)
	}
	c := &hopv1.Call{Procedure: procedure, Message: b}
	for i := 0; i+1 < len(headers); i += 2 {
		c.Headers = append(c.Headers, &hopv1.Header{Name: headers[i], Value: headers[i+1]})
	}
	return c
}
