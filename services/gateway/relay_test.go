package gateway_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services/gateway"
)

// rawMessage is a message as bytes, for a client or component that must say or see
// exactly what is on the wire: rawCodec neither encodes nor decodes it.
type rawMessage struct{ b []byte }

type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) ([]byte, error) {
	if m, ok := v.(*rawMessage); ok {
		return append([]byte(nil), m.b...), nil
	}
	return proto.Marshal(v.(proto.Message)) // gRPC's error status
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	if m, ok := v.(*rawMessage); ok {
		m.b = append([]byte(nil), data...)
		return nil
	}
	return proto.Unmarshal(data, v.(proto.Message)) // gRPC's error status
}

// recordingComponent is a payments component that records the bytes of every Transfer
// it receives and answers with the bytes it is given, so that a test sees what crossed
// the gateway in both directions.
type recordingComponent struct {
	mu       sync.Mutex
	received [][]byte
	answer   []byte
}

func (c *recordingComponent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(ledgerv1connect.PaymentServiceTransferProcedure, connect.NewUnaryHandler(ledgerv1connect.PaymentServiceTransferProcedure,
		func(_ context.Context, req *connect.Request[rawMessage]) (*connect.Response[rawMessage], error) {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.received = append(c.received, req.Msg.b)
			return connect.NewResponse(&rawMessage{b: c.answer}), nil
		}, connect.WithCodec(rawCodec{})))
	return mux
}

func (c *recordingComponent) calls() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.received...)
}

// startRelayGateway starts a gateway whose three components are comp, and returns its
// URL and a client of it.
func startRelayGateway(t *testing.T, is *issuer, comp http.Handler) (string, *http.Client) {
	t.Helper()
	up := serveH2(t, comp)
	u := gateway.Upstream{URL: up.URL, Client: up.Client()}
	gw, err := gateway.New(gateway.Config{
		Payments: u, Queries: u, Audit: u,
		Auth:     gateway.Auth{Issuer: testIssuer, Audience: testAudience, JWKSURL: is.srv.URL + "/certs", JWKSClient: is.srv.Client()},
		AllowH2C: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := serveH2(t, gw.Handler())
	return hs.URL, hs.Client()
}

// serveH2 serves h over TLS with HTTP/2 until the test ends.
func serveH2(t testing.TB, h http.Handler) *httptest.Server {
	hs := httptest.NewUnstartedServer(h)
	hs.EnableHTTP2 = true
	hs.StartTLS()
	t.Cleanup(hs.Close)
	return hs
}

// Wire building blocks: a string field and the encoded forms of the messages below.
func stringField(num protowire.Number, v string) []byte {
	return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), v)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// TestRelayForwardsTheBytesThePolicyRead: a binary request goes upstream as the very
// bytes the client sent, whatever the protocol and compression, including fields the
// schema does not know and fields given twice (the policy and the component both read
// the last, as one library decodes both), and the component's answer comes back as its
// bytes. A request the policy refuses, or that is not protobuf, reaches nobody.
func TestRelayForwardsTheBytesThePolicyRead(t *testing.T) {
	is := newIssuer(t)
	// A payment answer with a field the schema does not know (99): relayed as it is.
	answer := cat(
		protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), stringField(1, "p-1")),
		protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 42)),
		stringField(99, "from a newer component"),
	)
	comp := &recordingComponent{answer: answer}
	url, httpClient := startRelayGateway(t, is, comp.handler())
	tok := is.token(t, "alice", []string{"customer"}, "alice")

	plain := cat(stringField(1, "p-1"), stringField(2, "alice"), stringField(3, "bob"))
	protocols := map[string][]connect.ClientOption{
		"connect":      nil,
		"connect-gzip": {connect.WithSendGzip()},
		"grpc":         {connect.WithGRPC()},
		"grpc-gzip":    {connect.WithGRPC(), connect.WithSendGzip()},
		"grpc-web":     {connect.WithGRPCWeb()},
	}
	requests := []struct {
		name    string
		wire    []byte
		allowed bool
	}{
		{"plain", plain, true},
		{"unknown field", cat(plain, stringField(77, "a field of a newer schema")), true},
		// The last source_account_id wins, for the policy and the component alike.
		{"source given twice, own last", cat(stringField(1, "p-1"), stringField(2, "bob"), stringField(3, "bob"), stringField(2, "alice")), true},
		{"source given twice, another's last", cat(stringField(1, "p-1"), stringField(2, "alice"), stringField(3, "bob"), stringField(2, "bob")), false},
	}
	for protocol, opts := range protocols {
		client := connect.NewClient[rawMessage, rawMessage](httpClient, url+ledgerv1connect.PaymentServiceTransferProcedure,
			append([]connect.ClientOption{connect.WithCodec(rawCodec{}), connect.WithInterceptors(bearerInterceptor(tok))}, opts...)...)
		for _, rq := range requests {
			t.Run(protocol+"/"+rq.name, func(t *testing.T) {
				before := len(comp.calls())
				res, err := client.CallUnary(context.Background(), connect.NewRequest(&rawMessage{b: rq.wire}))
				calls := comp.calls()[before:]
				if !rq.allowed {
					if connect.CodeOf(err) != connect.CodeNotFound || len(calls) != 0 {
						t.Fatalf("got %v with %d calls forwarded, want NOT_FOUND (not alice's account) and none", err, len(calls))
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if len(calls) != 1 || !bytes.Equal(calls[0], rq.wire) {
					t.Errorf("the component received %x, want the client's bytes %x", calls, rq.wire)
				}
				if !bytes.Equal(res.Msg.b, answer) {
					t.Errorf("the client received %x, want the component's bytes %x", res.Msg.b, answer)
				}
			})
		}
	}

	// Connect JSON: decoded, sent upstream as binary protobuf; the answer decoded from
	// the component's bytes and written as JSON.
	t.Run("json", func(t *testing.T) {
		before := len(comp.calls())
		c := ledgerv1connect.NewPaymentServiceClient(httpClient, url, connect.WithProtoJSON(), connect.WithInterceptors(bearerInterceptor(tok)))
		sent := &ledgerv1.TransferRequest{PaymentId: "p-1", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")}
		res, err := c.Transfer(context.Background(), connect.NewRequest(sent))
		if err != nil {
			t.Fatal(err)
		}
		calls := comp.calls()[before:]
		var got ledgerv1.TransferRequest
		if len(calls) != 1 || proto.Unmarshal(calls[0], &got) != nil || !proto.Equal(&got, sent) {
			t.Fatalf("the component received %x, want the binary form of %v", calls, sent)
		}
		if res.Msg.GetPayment().GetPaymentId() != "p-1" || res.Msg.GetResult().GetPosition() != 42 {
			t.Errorf("the JSON answer is %v, want payment p-1 at position 42", res.Msg)
		}
	})

	// Not protobuf, or protobuf whose string is not UTF-8: INVALID_ARGUMENT, nothing
	// forwarded, for every protocol.
	hostile := map[string][]byte{
		"truncated length":  {0x0a, 0x05, 'p'},
		"truncated varint":  {0x08, 0xff},
		"invalid wire type": {0x0f},
		"invalid UTF-8":     cat(stringField(1, "p-1"), stringField(2, "ali\xffce")),
		"end group alone":   {0x0c},
	}
	for protocol, opts := range protocols {
		client := connect.NewClient[rawMessage, rawMessage](httpClient, url+ledgerv1connect.PaymentServiceTransferProcedure,
			append([]connect.ClientOption{connect.WithCodec(rawCodec{}), connect.WithInterceptors(bearerInterceptor(tok))}, opts...)...)
		for name, wire := range hostile {
			t.Run(fmt.Sprintf("%s/hostile %s", protocol, name), func(t *testing.T) {
				before := len(comp.calls())
				_, err := client.CallUnary(context.Background(), connect.NewRequest(&rawMessage{b: wire}))
				if connect.CodeOf(err) != connect.CodeInvalidArgument {
					t.Errorf("got %v, want INVALID_ARGUMENT", err)
				}
				if n := len(comp.calls()) - before; n != 0 {
					t.Errorf("%d calls forwarded, want none", n)
				}
			})
		}
	}
}

// TestRelayAnswersEveryProtocol: the component's answer, relayed as bytes, reads the
// same through Connect, Connect JSON, gRPC and gRPC-web clients of the generated API,
// with and without compression.
func TestRelayAnswersEveryProtocol(t *testing.T) {
	is := newIssuer(t)
	want := &ledgerv1.TransferResponse{
		Payment: &ledgerv1.Payment{PaymentId: "p-1", Kind: ledgerv1.PaymentKind_PAYMENT_KIND_TRANSFER, Status: ledgerv1.PaymentStatus_PAYMENT_STATUS_COMPLETED},
		Result:  &ledgerv1.WriteResult{Position: 7, Balances: []*ledgerv1.Balance{{AccountId: "alice", Asset: "USD/2", Posted: "99.00"}}},
	}
	answer, err := proto.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	comp := &recordingComponent{answer: answer}
	url, httpClient := startRelayGateway(t, is, comp.handler())
	tok := is.token(t, "alice", []string{"customer"}, "alice")
	for name, opts := range map[string][]connect.ClientOption{
		"connect": nil, "connect-json": {connect.WithProtoJSON()}, "connect-json-gzip": {connect.WithProtoJSON(), connect.WithSendGzip()},
		"grpc": {connect.WithGRPC()}, "grpc-json": {connect.WithGRPC(), connect.WithProtoJSON()}, "grpc-web": {connect.WithGRPCWeb()},
		"grpc-web-json": {connect.WithGRPCWeb(), connect.WithProtoJSON()},
	} {
		t.Run(name, func(t *testing.T) {
			c := ledgerv1connect.NewPaymentServiceClient(httpClient, url, append(opts, connect.WithInterceptors(bearerInterceptor(tok)))...)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			res, err := c.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{PaymentId: "p-1", SourceAccountId: "alice", DestinationAccountId: "bob", Amount: usd("1.00")}))
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(res.Msg, want) {
				t.Errorf("got %v, want %v", res.Msg, want)
			}
		})
	}
}

// TestRelayStreamsEveryProtocol: a server stream's messages are relayed as the
// component's bytes (a field the schema does not know included) to a binary client, and
// decoded and written as JSON to a JSON client; a watch of another's account is refused
// before any stream is opened upstream.
func TestRelayStreamsEveryProtocol(t *testing.T) {
	is := newIssuer(t)
	first := cat(protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), stringField(1, "alice")), stringField(99, "from a newer component"))
	second := cat(protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), stringField(1, "alice")), stringField(2, "ledger.payment.captured.v1"), stringField(3, "p-1"))
	var mu sync.Mutex
	var opened [][]byte
	mux := http.NewServeMux()
	mux.Handle(ledgerv1connect.BalanceServiceWatchAccountProcedure, connect.NewServerStreamHandler(ledgerv1connect.BalanceServiceWatchAccountProcedure,
		func(_ context.Context, req *connect.Request[rawMessage], stream *connect.ServerStream[rawMessage]) error {
			mu.Lock()
			opened = append(opened, req.Msg.b)
			mu.Unlock()
			for _, m := range [][]byte{first, second} {
				if err := stream.Send(&rawMessage{b: m}); err != nil {
					return err
				}
			}
			return nil
		}, connect.WithCodec(rawCodec{})))
	url, httpClient := startRelayGateway(t, is, mux)
	tok := is.token(t, "alice", []string{"customer"}, "alice")
	watch := cat(stringField(1, "alice"))
	for name, opts := range map[string][]connect.ClientOption{
		"connect": nil, "grpc": {connect.WithGRPC()}, "grpc-web": {connect.WithGRPCWeb()},
	} {
		t.Run(name, func(t *testing.T) {
			c := connect.NewClient[rawMessage, rawMessage](httpClient, url+ledgerv1connect.BalanceServiceWatchAccountProcedure,
				append([]connect.ClientOption{connect.WithCodec(rawCodec{}), connect.WithInterceptors(bearerInterceptor(tok))}, opts...)...)
			s, err := c.CallServerStream(context.Background(), connect.NewRequest(&rawMessage{b: watch}))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var got [][]byte
			for s.Receive() {
				got = append(got, s.Msg().b)
			}
			if err := s.Err(); err != nil {
				t.Fatal(err)
			}
			if len(got) != 2 || !bytes.Equal(got[0], first) || !bytes.Equal(got[1], second) {
				t.Errorf("received %x, want the component's bytes %x and %x", got, first, second)
			}
			mu.Lock()
			last := opened[len(opened)-1]
			mu.Unlock()
			if !bytes.Equal(last, watch) {
				t.Errorf("the component was asked %x, want the client's bytes %x", last, watch)
			}
		})
	}
	for name, opts := range map[string][]connect.ClientOption{
		"connect-json": {connect.WithProtoJSON()}, "grpc-web-json": {connect.WithGRPCWeb(), connect.WithProtoJSON()},
	} {
		t.Run(name, func(t *testing.T) {
			c := ledgerv1connect.NewBalanceServiceClient(httpClient, url, append(opts, connect.WithInterceptors(bearerInterceptor(tok)))...)
			s, err := c.WatchAccount(context.Background(), connect.NewRequest(&ledgerv1.WatchAccountRequest{AccountId: "alice"}))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var got []*ledgerv1.WatchAccountResponse
			for s.Receive() {
				got = append(got, s.Msg())
			}
			if err := s.Err(); err != nil {
				t.Fatal(err)
			}
			if len(got) != 2 || got[0].GetBalance().GetAccountId() != "alice" || got[1].GetPaymentId() != "p-1" {
				t.Errorf("received %v, want alice's balance, then payment p-1", got)
			}
		})
	}
	mu.Lock()
	before := len(opened)
	mu.Unlock()
	c := ledgerv1connect.NewBalanceServiceClient(httpClient, url, connect.WithInterceptors(bearerInterceptor(tok)))
	s, err := c.WatchAccount(context.Background(), connect.NewRequest(&ledgerv1.WatchAccountRequest{AccountId: "bob"}))
	if err == nil {
		for s.Receive() {
			t.Errorf("a watch of bob's account got %v", s.Msg())
		}
		err = s.Err()
		s.Close()
	}
	mu.Lock()
	after := len(opened)
	mu.Unlock()
	if connect.CodeOf(err) != connect.CodeNotFound || after != before {
		t.Errorf("alice watching bob: %v with %d streams opened upstream, want NOT_FOUND and none", err, after-before)
	}
}
