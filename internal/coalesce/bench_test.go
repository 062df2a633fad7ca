package coalesce_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/securepay/securepay/internal/coalesce"
)

// countingConn counts the writes that reach the TCP connection: the write system calls.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// benchConn returns the client end of a loopback TCP pair, coalescing or not, whose
// peer echoes (echo) or discards what it reads, and the counter of its system calls.
func benchConn(b *testing.B, coalescing, echo bool) (net.Conn, *countingConn) {
	b.Helper()
	counted := &countingConn{}
	var conn net.Conn
	var srv *net.TCPConn
	if coalescing {
		conn, srv = pair(b, coalesce.Options{}, func(raw net.Conn) net.Conn { counted.Conn = raw; return counted })
	} else {
		counted.Conn, srv = tcpPair(b)
		conn = counted
	}
	if echo {
		go func() { _, _ = io.Copy(srv, srv) }()
	} else {
		go func() { _, _ = io.Copy(io.Discard, srv) }()
	}
	return conn, counted
}

// BenchmarkSerialisedWriters: parallel goroutines write 300-byte messages (a small
// HTTP/2 frame in a TLS record) through one mutex, as tls.Conn and the HTTP/2 transport
// serialise them; the peer discards. writes/op is the write system calls per message.
func BenchmarkSerialisedWriters(b *testing.B) {
	for _, coalescing := range []bool{false, true} {
		b.Run(map[bool]string{false: "plain", true: "coalesce"}[coalescing], func(b *testing.B) {
			conn, counted := benchConn(b, coalescing, false)
			msg := bytes.Repeat([]byte{'m'}, 300)
			var mu sync.Mutex
			b.SetParallelism(16)
			b.SetBytes(int64(len(msg)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					mu.Lock()
					_, err := conn.Write(msg)
					mu.Unlock()
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(counted.writes.Load())/float64(b.N), "writes/op")
		})
	}
}

// BenchmarkPingPong: one caller writes 100 bytes and waits for them back: the round
// trip at no load, where coalescing can only cost (the hand-off to the writer).
func BenchmarkPingPong(b *testing.B) {
	for _, coalescing := range []bool{false, true} {
		b.Run(map[bool]string{false: "plain", true: "coalesce"}[coalescing], func(b *testing.B) {
			conn, _ := benchConn(b, coalescing, true)
			msg := bytes.Repeat([]byte{'p'}, 100)
			back := make([]byte, len(msg))
			b.ResetTimer()
			for b.Loop() {
				if _, err := conn.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(conn, back); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHTTP2: parallel small calls on one HTTP/2 connection over TLS, both ends
// coalescing or neither.
func BenchmarkHTTP2(b *testing.B) {
	for _, coalescing := range []bool{false, true} {
		b.Run(map[bool]string{false: "plain", true: "coalesce"}[coalescing], func(b *testing.B) {
			url, client, _ := h2Pair(b, coalescing, coalescing)
			ctx := context.Background()
			body := bytes.Repeat([]byte{'t'}, 200)
			if err := echo(ctx, client, url, body); err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := echo(ctx, client, url, body); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
