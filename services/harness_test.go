package services_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/redis/go-redis/v9"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/projections/memory"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/ledger"
)

// node is one SecurePay server over a real loopback listener: embedded store, ledger
// processor, in-memory projections, the Connect server with all its interceptors.
type node struct {
	url   string
	addr  string
	store *embedded.Store
	proc  *ledger.Processor
	exec  *countingCommands
	srv   *services.Server
	stop  func() error // graceful shutdown; returns Serve's error
	// shutdown stops the server, the processor and the views and closes the store, as a
	// process exiting would; safe to call twice.
	shutdown func()
}

// countingCommands counts the commands that reach the ledger, so tests can tell how many
// times a request was really executed (as opposed to replayed by the idempotency layer).
type countingCommands struct {
	*ledger.Processor
	executed atomic.Int64
	delay    atomic.Int64  // nanoseconds each command is held, to widen race windows on purpose
	started  chan struct{} // gets a token as each command starts (dropped when full)
}

func (c *countingCommands) Execute(ctx context.Context, r ledger.Request) (ledger.Result, error) {
	c.executed.Add(1)
	select {
	case c.started <- struct{}{}:
	default:
	}
	if d := time.Duration(c.delay.Load()); d > 0 {
		time.Sleep(d)
	}
	return c.Processor.Execute(ctx, r)
}

type nodeOptions struct {
	// dir keeps the embedded store there, so a second node on the same dir is the same
	// ledger after a restart; empty: a new temporary directory.
	dir         string
	idem        services.IdempotencyStore
	delay       time.Duration
	readWait    time.Duration
	maxStreams  int
	corsOrigins []string
	// components the server runs; empty: every API component.
	components        []services.Component
	loopbackHostsOnly bool
	// writeTimeout, readTimeout override the server's whole-request timeouts,
	// readHeaderTimeout its header deadline.
	writeTimeout, readTimeout, readHeaderTimeout time.Duration
	// observer watches the ledger, interceptors run first on every RPC (telemetry's).
	observer     ledger.Observer
	interceptors []connect.Interceptor
}

func startNode(t testing.TB, o nodeOptions) *node {
	t.Helper()
	if o.dir == "" {
		o.dir = t.TempDir()
	}
	store, err := embedded.Open(o.dir, embedded.Options{Logger: quietPebble{}})
	if err != nil {
		t.Fatalf("open embedded store: %v", err)
	}
	proc, err := ledger.New(store, ledger.Config{Observer: o.observer})
	if err != nil {
		t.Fatalf("start processor: %v", err)
	}
	views := memory.New(0)
	runner, err := projections.NewRunner(projections.RunnerConfig{Store: store, Projectors: views.Projectors()})
	if err != nil {
		t.Fatalf("projections runner: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runnerDone := make(chan struct{})
	go func() {
		defer close(runnerDone)
		_ = runner.Run(ctx)
	}()
	if o.idem == nil {
		o.idem = services.NewMemoryIdempotencyStore(0, nil)
	}
	if o.readWait == 0 {
		o.readWait = 2 * time.Second
	}
	exec := &countingCommands{Processor: proc, started: make(chan struct{}, 1)}
	exec.delay.Store(int64(o.delay))
	srv, err := services.NewServer(services.Config{
		Commands:          exec,
		Reader:            views.Reader(),
		Store:             store,
		Idempotency:       o.idem,
		AllowH2C:          true,
		Reflection:        true,
		ReadWait:          o.readWait,
		MaxStreams:        o.maxStreams,
		CORSOrigins:       o.corsOrigins,
		Components:        o.components,
		LoopbackHostsOnly: o.loopbackHostsOnly,
		WriteTimeout:      o.writeTimeout,
		ReadTimeout:       o.readTimeout,
		ReadHeaderTimeout: o.readHeaderTimeout,
		Interceptors:      o.interceptors,
	})
	if err != nil {
		t.Fatalf("new server: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	serveCtx, stopServe := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx, ln) }()
	var stopped atomic.Bool
	var serveErr error
	n := &node{url: "http://" + ln.Addr().String(), addr: ln.Addr().String(), store: store, proc: proc, exec: exec, srv: srv}
	n.stop = func() error {
		if stopped.CompareAndSwap(false, true) {
			stopServe()
			serveErr = <-served
		}
		return serveErr
	}
	var once sync.Once
	n.shutdown = func() {
		once.Do(func() {
			if err := n.stop(); err != nil {
				t.Errorf("server shutdown: %v", err)
			}
			cancel()
			<-runnerDone
			_ = proc.Close()
			_ = store.Close()
		})
	}
	t.Cleanup(n.shutdown)
	return n
}

// The three kinds of client a user of the API has.
type clientKind string

const (
	kindConnect clientKind = "connect"  // generated Connect client, HTTP/2 cleartext
	kindGRPC    clientKind = "grpc"     // google.golang.org/grpc
	kindGRPCWeb clientKind = "grpc-web" // connect-go with WithGRPCWeb, HTTP/1.1 like a browser
)

var allKinds = []clientKind{kindConnect, kindGRPC, kindGRPCWeb}

// client calls any unary RPC of the API with one of the three protocols.
type client struct {
	kind clientKind
	url  string
	http connect.HTTPClient
	opts []connect.ClientOption
	conn *grpc.ClientConn
}

func h2cClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}}
}

func newClient(t testing.TB, n *node, kind clientKind) *client {
	t.Helper()
	c := &client{kind: kind, url: n.url}
	switch kind {
	case kindConnect:
		c.http = h2cClient()
	case kindGRPCWeb:
		c.http = &http.Client{Transport: &http.Transport{}}
		c.opts = []connect.ClientOption{connect.WithGRPCWeb()}
	case kindGRPC:
		conn, err := grpc.NewClient(n.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatalf("grpc client: %v", err)
		}
		t.Cleanup(func() { conn.Close() })
		c.conn = conn
	}
	return c
}

// call invokes procedure with req; header carries e.g. Idempotency-Key.
func call[Req, Res any, PRes interface {
	*Res
	proto.Message
}](ctx context.Context, c *client, procedure string, req *Req, header http.Header) (*Res, error) {
	if c.kind == kindGRPC {
		md := metadata.MD{}
		for k, vs := range header {
			md.Append(strings.ToLower(k), vs...)
		}
		out := PRes(new(Res))
		err := c.conn.Invoke(metadata.NewOutgoingContext(ctx, md), procedure, req, out)
		if err != nil {
			return nil, err
		}
		return (*Res)(out), nil
	}
	cl := connect.NewClient[Req, Res](c.http, c.url+procedure, c.opts...)
	r := connect.NewRequest(req)
	for k, vs := range header {
		for _, v := range vs {
			r.Header().Add(k, v)
		}
	}
	res, err := cl.CallUnary(ctx, r)
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// codeOf and reasonOf read an error from any of the three clients.
func codeOf(err error) connect.Code {
	var cerr *connect.Error
	if errors.As(err, &cerr) {
		return cerr.Code()
	}
	if st, ok := status.FromError(err); ok {
		return connect.Code(st.Code())
	}
	return connect.CodeUnknown
}

func reasonOf(err error) services.Reason {
	if r := services.ReasonOf(err); r != "" {
		return r
	}
	if st, ok := status.FromError(err); ok {
		for _, d := range st.Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == services.ErrorDomain {
				return services.Reason(info.GetReason())
			}
		}
	}
	return ""
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func usd(v string) *ledgerv1.Money { return &ledgerv1.Money{Value: v, Asset: "USD"} }

// redisDB is the logical database the services tests use: other packages' tests share the
// same Redis server at the same time, and these tests flush their database on purpose.
const redisDB = 11

// redisClient connects to the test Redis (database redisDB, flushed), or fails the test with
// how to start it.
func redisClient(t testing.TB) *redis.Client {
	t.Helper()
	addr := os.Getenv("SECUREPAY_TEST_REDIS_ADDR")
	if addr == "" {
		t.Fatal("SECUREPAY_TEST_REDIS_ADDR is not set: run the tests with infra/local/test.sh (or start one with infra/local/redis.sh start DIR PORT)")
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, DB: redisDB})
	t.Cleanup(func() { rdb.Close() })
	ctx := testContext(t)
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("redis at %s does not answer (%v): run the tests with infra/local/test.sh", addr, err)
	}
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		t.Fatalf("flush redis: %v", err)
	}
	return rdb
}

// quietPebble drops the embedded store's informational chatter from test output.
type quietPebble struct{}

func (quietPebble) Infof(string, ...any) {}
func (quietPebble) Errorf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pebble: "+format+"\n", args...)
}
func (quietPebble) Fatalf(format string, args ...any) { panic(fmt.Sprintf("pebble: "+format, args...)) }
