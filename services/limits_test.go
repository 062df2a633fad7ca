package services_test

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
)

const limitMessage = "the limit is 1 MiB (--max-request-bytes)"

// TestOversizedRequestSaysTheLimit: a 2,000,000-byte request gets one error naming the
// limit in every protocol a client may speak, and never reaches the ledger. Before, the
// message leaked "http: request body too large" and h2c clients got no answer at all.
func TestOversizedRequestSaysTheLimit(t *testing.T) {
	n := startNode(t, nodeOptions{})
	ctx := testContext(t)
	connectH1 := &client{kind: "connect-http1", url: n.url, http: &http.Client{Transport: &http.Transport{}}}
	clients := []*client{connectH1}
	for _, kind := range allKinds {
		clients = append(clients, newClient(t, n, kind))
	}
	for _, c := range clients {
		t.Run(string(c.kind), func(t *testing.T) {
			req := transferReq("big-"+string(c.kind), "alice", "bob", usd("1.00"))
			req.Reference = strings.Repeat("x", 2_000_000)
			_, err := call[ledgerv1.TransferRequest, ledgerv1.TransferResponse](ctx, c, ledgerv1connect.PaymentServiceTransferProcedure, req, nil)
			assertTooLarge(t, err)
		})
	}
	t.Run("h2c, length unknown", func(t *testing.T) {
		// A body streamed without Content-Length is refused at the first byte past the limit.
		body := io.MultiReader(strings.NewReader("\x0a"), bytes.NewReader(make([]byte, 2_000_000)))
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, n.url+ledgerv1connect.PaymentServiceTransferProcedure, body)
		req.Header.Set("Content-Type", "application/proto")
		res, err := h2cClient().Do(req)
		if err != nil {
			t.Fatalf("post 2,000,001 bytes of unknown length over h2c: want an answer, got %v", err)
		}
		got, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(got), "more than 1 MiB; "+limitMessage) {
			t.Fatalf("want Connect's resource_exhausted (HTTP 429) naming the limit, got %d %q", res.StatusCode, got)
		}
	})
	t.Run("h2c connection survives", func(t *testing.T) {
		// A refusal ends the one stream, not the HTTP/2 connection others share.
		hc := h2cClient()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, n.url+ledgerv1connect.PaymentServiceTransferProcedure, bytes.NewReader(make([]byte, 2_000_000)))
		req.Header.Set("Content-Type", "application/proto")
		res, err := hc.Do(req)
		if err != nil {
			t.Fatalf("post 2,000,000 bytes over h2c: %v", err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("want HTTP 429, got %d", res.StatusCode)
		}
		var reused bool
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused }}
		next, _ := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet, n.url+"/healthz", nil)
		res, err = hc.Do(next)
		if err != nil {
			t.Fatalf("next request on the connection: %v", err)
		}
		res.Body.Close()
		if !reused {
			t.Fatalf("the HTTP/2 connection was closed after one oversized request; want it kept for the others")
		}
	})
	if got := n.exec.executed.Load(); got != 0 {
		t.Fatalf("oversized requests reached the ledger %d times, want 0", got)
	}
}

func assertTooLarge(t *testing.T, err error) {
	t.Helper()
	if codeOf(err) != connect.CodeResourceExhausted || reasonOf(err) != services.ReasonRequestTooLarge {
		t.Fatalf("want ResourceExhausted %s, got %v (reason %q)", services.ReasonRequestTooLarge, err, reasonOf(err))
	}
	if msg := err.Error(); !strings.Contains(msg, limitMessage) || strings.Contains(msg, "http:") {
		t.Fatalf("want a message that says %q and nothing of net/http, got %q", limitMessage, msg)
	}
}

// gzipBomb is a gzip stream of 900 MiB of zeros in about 950 KB, under the 1 MiB limit:
// one member of 1 MiB repeated, which gzip readers inflate as one stream. Cheap to build,
// unlike compressing 900 MiB.
func gzipBomb(t *testing.T) []byte {
	t.Helper()
	var member bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&member, gzip.BestCompression)
	if _, err := zw.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return bytes.Repeat(member.Bytes(), 900)
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestGzipBombIsRefusedAtTheLimit: a compressed message that inflates past the limit is
// refused after inflating at most the limit, unary (Content-Encoding) and enveloped
// (gRPC-web's compressed flag). The CPU it cost is logged, not asserted: the test machine
// is shared. Before the fix the whole bomb was inflated, to be counted.
func TestGzipBombIsRefusedAtTheLimit(t *testing.T) {
	n := startNode(t, nodeOptions{})
	bomb := gzipBomb(t)
	enveloped := binary.BigEndian.AppendUint32([]byte{1}, uint32(len(bomb)))
	enveloped = append(enveloped, bomb...)
	for _, tc := range []struct {
		name   string
		body   []byte
		header map[string]string
	}{
		{"connect unary", bomb, map[string]string{"Content-Type": "application/proto", "Content-Encoding": "gzip", "Connect-Protocol-Version": "1"}},
		{"grpc-web", enveloped, map[string]string{"Content-Type": "application/grpc-web+proto", "Grpc-Encoding": "gzip"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, n.url+ledgerv1connect.PaymentServiceTransferProcedure, bytes.NewReader(tc.body))
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			before := cpuTime()
			start := time.Now()
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("post a %d-byte gzip bomb: %v", len(tc.body), err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			t.Logf("%d-byte gzip bomb (900 MiB inflated): refused in %v wall, %v of process CPU (client included)", len(tc.body), time.Since(start), cpuTime()-before)
			// Both protocols put the reason in the body (Connect JSON) or the trailers
			// that gRPC-web sends in the body.
			all := string(body) + res.Header.Get("Grpc-Message") + res.Trailer.Get("Grpc-Message")
			if !strings.Contains(all, "inflates to more than 1 MiB") || !strings.Contains(all, "1 MiB (--max-request-bytes)") {
				t.Fatalf("want a refusal naming the 1 MiB limit, got HTTP %d %q %v", res.StatusCode, body, res.Header)
			}
		})
	}
	if got := n.exec.executed.Load(); got != 0 {
		t.Fatalf("gzip bombs reached the ledger %d times, want 0", got)
	}
}
