package services_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/services"
)

// idempotencyStores are the two stores with the same semantics: in-process (dev) and
// Redis (serve). Every idempotency test runs against both.
func idempotencyStores() []struct {
	name string
	open func(t *testing.T) services.IdempotencyStore
} {
	return []struct {
		name string
		open func(t *testing.T) services.IdempotencyStore
	}{
		{"memory", func(t *testing.T) services.IdempotencyStore { return services.NewMemoryIdempotencyStore(0, nil) }},
		{"redis", func(t *testing.T) services.IdempotencyStore {
			return services.NewRedisIdempotencyStore(redisClient(t), "")
		}},
	}
}

func keyHeader(key string) http.Header {
	h := http.Header{}
	h.Set(services.IdempotencyKeyHeader, key)
	return h
}

// rawPost sends one Connect unary request by hand and returns the response body exactly
// as it came over the wire.
func rawPost(t *testing.T, n *node, procedure, contentType string, body []byte, key string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, n.url+procedure, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set(services.IdempotencyKeyHeader, key)
	res, err := h2cClient().Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", procedure, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read response of %s: %v", procedure, err)
	}
	return res.StatusCode, res.Header, b
}

func TestIdempotencyKey(t *testing.T) {
	for _, st := range idempotencyStores() {
		t.Run(st.name, func(t *testing.T) {
			n := startNode(t, nodeOptions{idem: st.open(t)})
			ctx := testContext(t)
			c := newClient(t, n, kindConnect)
			seedLedger(t, ctx, c)

			t.Run("replay is byte-identical", func(t *testing.T) {
				req := transferReq("idem-1", "alice", "bob", usd("1.00"))
				req.Metadata = map[string]string{"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"} // map order must not matter
				body, err := proto.Marshal(req)
				if err != nil {
					t.Fatal(err)
				}
				before := n.exec.executed.Load()
				code1, _, first := rawPost(t, n, ledgerv1connect.PaymentServiceTransferProcedure, "application/proto", body, `"key-1"`)
				code2, h2, second := rawPost(t, n, ledgerv1connect.PaymentServiceTransferProcedure, "application/proto", body, `"key-1"`)
				if code1 != http.StatusOK || code2 != http.StatusOK {
					t.Fatalf("want 200 twice, got %d and %d (%s)", code1, code2, second)
				}
				if !bytes.Equal(first, second) {
					t.Fatalf("replayed body differs from the first:\nfirst  %x\nreplay %x", first, second)
				}
				if h2.Get(services.ReplayedHeader) != "true" {
					t.Fatalf("replay: want header %s: true, got %q", services.ReplayedHeader, h2.Get(services.ReplayedHeader))
				}
				// The same key over gRPC (another encoding of the same request) is the same request.
				res, err := call[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ctx, newClient(t, n, kindGRPC),
					ledgerv1connect.PaymentServiceTransferProcedure, req, keyHeader("key-1"))
				if err != nil {
					t.Fatalf("replay over gRPC: %v", err)
				}
				var want ledgerv1.TransferResponse
				if err := proto.Unmarshal(first, &want); err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(res, &want) {
					t.Fatalf("replay over gRPC: want the stored response %v, got %v", &want, res)
				}
				if got := n.exec.executed.Load() - before; got != 1 {
					t.Fatalf("three sends with one key: want 1 execution, got %d", got)
				}
			})

			t.Run("same key, different request is refused", func(t *testing.T) {
				before := n.exec.executed.Load()
				_, err := call[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ctx, c, ledgerv1connect.PaymentServiceTransferProcedure,
					transferReq("idem-1", "alice", "bob", usd("2.00")), keyHeader("key-1"))
				if codeOf(err) != connect.CodeAlreadyExists || reasonOf(err) != services.ReasonIdempotencyMismatch {
					t.Fatalf("want AlreadyExists %s, got %v %q", services.ReasonIdempotencyMismatch, err, reasonOf(err))
				}
				// Another RPC under the same key is a different request too.
				_, err = call[ledgerv1.VoidRequest, ledgerv1.VoidResponse](ctx, c, ledgerv1connect.PaymentServiceVoidProcedure,
					&ledgerv1.VoidRequest{PaymentId: "auth-1"}, keyHeader("key-1"))
				if codeOf(err) != connect.CodeAlreadyExists || reasonOf(err) != services.ReasonIdempotencyMismatch {
					t.Fatalf("other RPC, same key: want AlreadyExists %s, got %v %q", services.ReasonIdempotencyMismatch, err, reasonOf(err))
				}
				if got := n.exec.executed.Load() - before; got != 0 {
					t.Fatalf("refused requests: want 0 executions, got %d", got)
				}
			})

			t.Run("a refusal is replayed too", func(t *testing.T) {
				before := n.exec.executed.Load()
				req := transferReq("idem-poor", "bob", "alice", usd("1000.00"))
				for i := 0; i < 2; i++ {
					_, err := call[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ctx, c, ledgerv1connect.PaymentServiceTransferProcedure, req, keyHeader("key-poor"))
					if codeOf(err) != connect.CodeFailedPrecondition || reasonOf(err) != "INSUFFICIENT_FUNDS" {
						t.Fatalf("send %d: want FailedPrecondition INSUFFICIENT_FUNDS, got %v %q", i+1, err, reasonOf(err))
					}
				}
				if got := n.exec.executed.Load() - before; got != 1 {
					t.Fatalf("two sends of a refused request: want 1 execution, got %d", got)
				}
			})

			t.Run("malformed key", func(t *testing.T) {
				for _, key := range []string{strings.Repeat("k", 256), "bad key", `"`} {
					_, err := call[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ctx, c, ledgerv1connect.PaymentServiceTransferProcedure,
						transferReq("idem-x", "alice", "bob", usd("1.00")), keyHeader(key))
					if codeOf(err) != connect.CodeInvalidArgument || reasonOf(err) != services.ReasonIdempotencyKey {
						t.Fatalf("key %.20q: want InvalidArgument %s, got %v %q", key, services.ReasonIdempotencyKey, err, reasonOf(err))
					}
				}
			})

			t.Run("reads ignore the key", func(t *testing.T) {
				for i := 0; i < 2; i++ {
					if _, err := call[ledgerv1.GetAccountRequest, ledgerv1.GetAccountResponse](ctx, c, ledgerv1connect.AccountServiceGetAccountProcedure,
						&ledgerv1.GetAccountRequest{AccountId: []string{"alice", "bob"}[i]}, keyHeader("key-read")); err != nil {
						t.Fatalf("read %d with a reused key: %v", i, err)
					}
				}
			})
		})
	}
}

// outcome of one of many concurrent duplicates.
type outcome struct {
	res *ledgerv1.TransferResponse
	err error
}

func sendDuplicates(ctx context.Context, c *client, req *ledgerv1.TransferRequest, key string, n int) []outcome {
	out := make([]outcome, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			res, err := call[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ctx, c, ledgerv1connect.PaymentServiceTransferProcedure, req, keyHeader(key))
			out[i] = outcome{res, err}
		}()
	}
	close(start)
	wg.Wait()
	return out
}

// checkOutcomes: every duplicate either got the one result or was told the first is in
// progress; it returns how many got the result.
func checkOutcomes(t *testing.T, outs []outcome, position *uint64) int {
	t.Helper()
	ok := 0
	for i, o := range outs {
		switch {
		case o.err == nil:
			ok++
			if *position == 0 {
				*position = o.res.GetResult().GetPosition()
			}
			if o.res.GetResult().GetPosition() != *position {
				t.Fatalf("duplicate %d: want the result at position %d, got %d", i, *position, o.res.GetResult().GetPosition())
			}
		case codeOf(o.err) == connect.CodeAborted && reasonOf(o.err) == services.ReasonIdempotencyInFlight:
		default:
			t.Fatalf("duplicate %d: want success or Aborted %s, got %v %q", i, services.ReasonIdempotencyInFlight, o.err, reasonOf(o.err))
		}
	}
	return ok
}

// paymentEvents counts the events of a payment's stream: 1 for a transfer applied once.
func paymentEvents(t *testing.T, ctx context.Context, n *node, id string) int {
	t.Helper()
	events, err := n.store.ReadStream(ctx, domain.PaymentStream(domain.PaymentID(id)), 0, 100)
	if err != nil {
		t.Fatalf("read payment stream %s: %v", id, err)
	}
	return len(events)
}

func TestIdempotencyConcurrentDuplicates(t *testing.T) {
	for _, st := range idempotencyStores() {
		t.Run(st.name, func(t *testing.T) {
			// Each execution is held for 50ms so the duplicates really overlap it.
			n := startNode(t, nodeOptions{idem: st.open(t), delay: 50 * time.Millisecond})
			ctx := testContext(t)
			c := newClient(t, n, kindConnect)
			seedLedger(t, ctx, c)
			before := n.exec.executed.Load()
			req := transferReq("dup-100", "alice", "bob", usd("3.00"))
			var position uint64
			ok := checkOutcomes(t, sendDuplicates(ctx, c, req, "key-dup-100", 100), &position)
			if got := n.exec.executed.Load() - before; got != 1 {
				t.Fatalf("100 concurrent duplicates: want exactly 1 execution, got %d", got)
			}
			if ok < 1 {
				t.Fatalf("100 concurrent duplicates: want at least the first to succeed, got none")
			}
			// Once the first is done, a retry gets its result.
			res, err := call[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ctx, c, ledgerv1connect.PaymentServiceTransferProcedure, req, keyHeader("key-dup-100"))
			if err != nil || res.GetResult().GetPosition() != position {
				t.Fatalf("retry after the duplicates: want the result at %d, got %v %v", position, res, err)
			}
			if got := paymentEvents(t, ctx, n, "dup-100"); got != 1 {
				t.Fatalf("payment dup-100: want 1 event in its stream, got %d", got)
			}
			bal := mustCall[ledgerv1.GetAccountRequest, ledgerv1.GetAccountResponse](t, ctx, c, ledgerv1connect.AccountServiceGetAccountProcedure, &ledgerv1.GetAccountRequest{AccountId: "bob"})
			if bal.GetAccount().GetBalance().GetPosted() != "3.00" {
				t.Fatalf("bob after 100 duplicates of 3.00: want 3.00, got %s", bal.GetAccount().GetBalance().GetPosted())
			}
		})
	}
}

// TestIdempotencyRedisFlushed: the idempotency store is a cache of responses. When Redis
// loses everything in the middle of a storm of duplicates, requests run again, and the
// ledger's own payment-id check still applies the payment exactly once.
func TestIdempotencyRedisFlushed(t *testing.T) {
	rdb := redisClient(t)
	n := startNode(t, nodeOptions{idem: services.NewRedisIdempotencyStore(rdb, ""), delay: 20 * time.Millisecond})
	ctx := testContext(t)
	c := newClient(t, n, kindConnect)
	seedLedger(t, ctx, c)
	req := transferReq("flush-1", "alice", "bob", usd("7.00"))
	before := n.exec.executed.Load()
	var position uint64
	ok := 0
	const waves, perWave = 10, 10
	for w := 0; w < waves; w++ {
		if w == waves/2 {
			if err := rdb.FlushDB(ctx).Err(); err != nil {
				t.Fatalf("flush redis mid-run: %v", err)
			}
		}
		ok += checkOutcomes(t, sendDuplicates(ctx, c, req, "key-flush-1", perWave), &position)
	}
	if ok < 2 {
		t.Fatalf("duplicates before and after the flush: want successes in both halves, got %d in all", ok)
	}
	if got := paymentEvents(t, ctx, n, "flush-1"); got != 1 {
		t.Fatalf("payment flush-1 after a Redis flush: want exactly 1 event, got %d", got)
	}
	bal := mustCall[ledgerv1.GetAccountRequest, ledgerv1.GetAccountResponse](t, ctx, c, ledgerv1connect.AccountServiceGetAccountProcedure, &ledgerv1.GetAccountRequest{AccountId: "bob"})
	if bal.GetAccount().GetBalance().GetPosted() != "7.00" {
		t.Fatalf("bob after %d duplicates of 7.00 with a Redis flush: want 7.00, got %s", waves*perWave, bal.GetAccount().GetBalance().GetPosted())
	}
	// The flush made the idempotency layer forget: the request reached the ledger again,
	// which recognised the payment id. That is what this test is about.
	if executed := n.exec.executed.Load() - before; executed < 2 {
		t.Fatalf("a Redis flush between waves: want the ledger to see the request again (>= 2 executions), got %d", executed)
	}
}
