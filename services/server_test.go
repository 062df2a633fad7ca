package services_test

import (
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
)

func TestHealthAndReflection(t *testing.T) {
	n := startNode(t, nodeOptions{})
	ctx := testContext(t)
	health := grpchealth.NewClient(h2cClient(), n.url)
	for _, svc := range []string{"", ledgerv1connect.PaymentServiceName} {
		res, err := health.Check(ctx, &grpchealth.CheckRequest{Service: svc})
		if err != nil || res.Status != grpchealth.StatusServing {
			t.Fatalf("health of %q: want SERVING, got %v %v", svc, res, err)
		}
	}

	conn, err := grpc.NewClient(n.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc client: %v", err)
	}
	defer conn.Close()
	want := []string{
		"grpc.health.v1.Health",
		ledgerv1connect.AccountServiceName,
		ledgerv1connect.AuditServiceName,
		ledgerv1connect.BalanceServiceName,
		ledgerv1connect.PaymentServiceName,
		ledgerv1connect.WebhookServiceName,
	}
	// v1 (grpcurl >= 1.9, buf curl) and v1alpha (older grpcurl, most tools).
	v1, err := reflectionv1.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatalf("reflection v1: %v", err)
	}
	if err := v1.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatalf("reflection v1 send: %v", err)
	}
	r1, err := v1.Recv()
	if err != nil {
		t.Fatalf("reflection v1 recv: %v", err)
	}
	var got []string
	for _, s := range r1.GetListServicesResponse().GetService() {
		got = append(got, s.GetName())
	}
	sort.Strings(got)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("reflection v1 services: want %v, got %v", want, got)
	}
	// v1alpha is deprecated, and the point: grpcurl and older clients still ask for it.
	alpha, err := reflectionv1alpha.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatalf("reflection v1alpha: %v", err)
	}
	//lint:ignore SA1019 this test proves the server still answers the deprecated v1alpha reflection
	if err := alpha.Send(&reflectionv1alpha.ServerReflectionRequest{MessageRequest: &reflectionv1alpha.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: ledgerv1connect.PaymentServiceName}}); err != nil {
		t.Fatalf("reflection v1alpha send: %v", err)
	}
	r2, err := alpha.Recv()
	if err != nil {
		t.Fatalf("reflection v1alpha recv: %v", err)
	}
	//lint:ignore SA1019 reads the deprecated v1alpha response, on purpose (see above)
	if len(r2.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Fatalf("reflection v1alpha: want the file of %s, got %v", ledgerv1connect.PaymentServiceName, r2)
	}
}

func TestCORSPreflight(t *testing.T) {
	n := startNode(t, nodeOptions{corsOrigins: []string{"https://app.example"}})
	for _, tc := range []struct {
		origin    string
		wantAllow string
	}{
		{"https://app.example", "https://app.example"},
		{"https://evil.example", ""},
	} {
		req, _ := http.NewRequest(http.MethodOptions, n.url+ledgerv1connect.PaymentServiceTransferProcedure, nil)
		req.Header.Set("Origin", tc.origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		// Browsers send the names lower-case and sorted (Fetch standard).
		req.Header.Set("Access-Control-Request-Headers", "connect-protocol-version,content-type,idempotency-key,x-grpc-web")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("preflight from %s: %v", tc.origin, err)
		}
		res.Body.Close()
		if got := res.Header.Get("Access-Control-Allow-Origin"); got != tc.wantAllow {
			t.Fatalf("preflight from %s: want Access-Control-Allow-Origin %q, got %q (status %d)", tc.origin, tc.wantAllow, got, res.StatusCode)
		}
	}
}

func TestRequestSizeLimit(t *testing.T) {
	n := startNode(t, nodeOptions{})
	ctx := testContext(t)
	c := newClient(t, n, kindConnect)
	req := transferReq("big", "alice", "bob", usd("1.00"))
	req.Reference = strings.Repeat("x", 2<<20) // 2 MiB, over the 1 MiB default
	_, err := call[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ctx, c, ledgerv1connect.PaymentServiceTransferProcedure, req, nil)
	if code := codeOf(err); code != connect.CodeResourceExhausted {
		t.Fatalf("a 2 MiB request: want ResourceExhausted, got %v (%v)", code, err)
	}
}

func TestStreamLimit(t *testing.T) {
	n := startNode(t, nodeOptions{maxStreams: 1})
	ctx := testContext(t)
	c := newClient(t, n, kindConnect)
	seedLedger(t, ctx, c)
	first, err := serverStream[ledgerv1.WatchAccountRequest, ledgerv1.WatchAccountResponse](ctx, c, ledgerv1connect.BalanceServiceWatchAccountProcedure, &ledgerv1.WatchAccountRequest{AccountId: "alice"})
	if err != nil {
		t.Fatalf("first watch: %v", err)
	}
	defer first.close()
	if _, err := first.next(); err != nil {
		t.Fatalf("first watch, first message: %v", err)
	}
	err = firstOfStream[ledgerv1.WatchAccountRequest, ledgerv1.WatchAccountResponse](ledgerv1connect.BalanceServiceWatchAccountProcedure, &ledgerv1.WatchAccountRequest{AccountId: "bob"})(ctx, c)
	if codeOf(err) != connect.CodeResourceExhausted || reasonOf(err) != services.ReasonTooManyStreams {
		t.Fatalf("second watch with MaxStreams 1: want ResourceExhausted %s, got %v %q", services.ReasonTooManyStreams, err, reasonOf(err))
	}
}

// TestGracefulShutdown: a request in flight when shutdown starts completes; live streams
// end with UNAVAILABLE so clients reconnect; afterwards the port is closed.
func TestGracefulShutdown(t *testing.T) {
	n := startNode(t, nodeOptions{})
	ctx := testContext(t)
	c := newClient(t, n, kindConnect)
	seedLedger(t, ctx, c)
	watch, err := serverStream[ledgerv1.WatchAccountRequest, ledgerv1.WatchAccountResponse](ctx, c, ledgerv1connect.BalanceServiceWatchAccountProcedure, &ledgerv1.WatchAccountRequest{AccountId: "alice"})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	defer watch.close()
	if _, err := watch.next(); err != nil {
		t.Fatalf("watch, first message: %v", err)
	}

	n.exec.delay.Store(int64(300 * time.Millisecond))
	select { // drop the tokens of the seeding commands
	case <-n.exec.started:
	default:
	}
	type result struct {
		res *ledgerv1.TransferResponse
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := call[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ctx, c, ledgerv1connect.PaymentServiceTransferProcedure, transferReq("in-flight", "alice", "bob", usd("1.00")), nil)
		done <- result{res, err}
	}()
	select {
	case <-n.exec.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the in-flight request never reached the ledger")
	}
	if err := n.stop(); err != nil {
		t.Fatalf("graceful shutdown: %v", err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("request in flight during shutdown: want success, got %v", r.err)
	}
	if _, err := watch.next(); codeOf(err) != connect.CodeUnavailable {
		t.Fatalf("watch at shutdown: want Unavailable, got %v", err)
	}
	_, err = call[ledgerv1.GetAccountRequest, ledgerv1.GetAccountResponse](ctx, newClient(t, n, kindConnect), ledgerv1connect.AccountServiceGetAccountProcedure, &ledgerv1.GetAccountRequest{AccountId: "alice"}, nil)
	if err == nil {
		t.Fatalf("request after shutdown: want a failure to connect, got success")
	}
}

// TestStreamsOutliveRequestTimeouts: the server's read and write timeouts bound ordinary
// requests, but a watch lives as long as its client wants, over HTTP/2 and HTTP/1.1.
func TestStreamsOutliveRequestTimeouts(t *testing.T) {
	const timeout = 300 * time.Millisecond
	n := startNode(t, nodeOptions{writeTimeout: timeout, readTimeout: timeout})
	ctx := testContext(t)
	seedLedger(t, ctx, newClient(t, n, kindConnect))
	for _, kind := range allKinds {
		t.Run(string(kind), func(t *testing.T) {
			c := newClient(t, n, kind)
			watch, err := serverStream[ledgerv1.WatchAccountRequest, ledgerv1.WatchAccountResponse](ctx, c, ledgerv1connect.BalanceServiceWatchAccountProcedure, &ledgerv1.WatchAccountRequest{AccountId: "bob"})
			if err != nil {
				t.Fatalf("watch: %v", err)
			}
			defer watch.close()
			first, err := watch.next()
			if err != nil {
				t.Fatalf("watch, first message: %v", err)
			}
			time.Sleep(3 * timeout)
			id := "late-" + string(kind)
			mustCall[ledgerv1.TransferRequest, ledgerv1.TransferResponse](t, ctx, c, ledgerv1connect.PaymentServiceTransferProcedure, transferReq(id, "world", "bob", usd("1.00")))
			// The first message is the view's balance, which may lag the log: credits of the
			// earlier subtests can still follow it, in order, before this one's.
			posted := first.GetBalance().GetPostedMinor()
			for range len(allKinds) {
				update, err := watch.next()
				if err != nil {
					t.Fatalf("watch after %v (3x the write timeout): want an update, got %v", 3*timeout, err)
				}
				if update.GetPaymentId() != id {
					posted = update.GetBalance().GetPostedMinor()
					continue
				}
				if update.GetBalance().GetPostedMinor() != posted+100 {
					t.Fatalf("watch: want bob credited 1.00 by %s (posted %d), got %v", id, posted+100, update)
				}
				return
			}
			t.Fatalf("watch: no credit by %s among %d updates", id, len(allKinds))
		})
	}
}
