package relay

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
)

// Why a fence: sarama keeps a partition's order across its own retries, but not across a
// failure it gives up on. A message it returns as failed (its retries exhausted, or the
// partition's leader not found) is dropped, and the next message of the same partition is
// sent as soon as the broker answers again. The relay re-publishes the failed event only in
// its next session, from the checkpoint: after the later event, for consumers a key's
// events out of log order. Draining the producer after a failure made this likely, not
// rare: the drain waited up to DrainTimeout for the later messages to go through a broker
// that was coming back.
//
// So a session's connections to Kafka go through a fence, closed at the first failed
// publish: every connection is closed, no write or dial succeeds afterwards, and whatever
// sarama still holds fails fast instead of reaching the broker. What remains is a write that
// began before the relay saw the failure. Sarama sends a failed message's successors after
// a backoff (ProducerConfig's is 50 ms at least) or a metadata round trip, while the relay
// sees the failure as soon as sarama reports it, so that race is narrow; if it happens the
// relay logs it (acks).

// errFenced is what a fenced connection answers.
var errFenced = errors.New("relay: the session's Kafka connections are fenced after a failed publish")

// dialer is golang.org/x/net/proxy.Dialer, the type of sarama's Net.Proxy.Dialer.
type dialer interface {
	Dial(network, addr string) (net.Conn, error)
}

// fence hands out connections that stop working, together, when it closes.
type fence struct {
	next   dialer
	closed atomic.Bool

	mu    sync.Mutex
	conns map[*fencedConn]struct{}
}

func newFence(next dialer) *fence {
	return &fence{next: next, conns: make(map[*fencedConn]struct{})}
}

// Dial connects through the next dialer unless the fence is closed.
func (f *fence) Dial(network, addr string) (net.Conn, error) {
	if f.closed.Load() {
		return nil, errFenced
	}
	c, err := f.next.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	fc := &fencedConn{Conn: c, fence: f}
	f.mu.Lock()
	// Checked under the lock that close takes: a connection is either closed by close or
	// refused here, never missed.
	if f.closed.Load() {
		f.mu.Unlock()
		_ = c.Close()
		return nil, errFenced
	}
	f.conns[fc] = struct{}{}
	f.mu.Unlock()
	return fc, nil
}

// close fences every connection, present and future. Connections are closed so that reads
// and writes under way fail now rather than at their timeouts.
func (f *fence) close() {
	if f.closed.Swap(true) {
		return
	}
	f.mu.Lock()
	conns := f.conns
	f.conns = nil
	f.mu.Unlock()
	for c := range conns {
		_ = c.Conn.Close()
	}
}

type fencedConn struct {
	net.Conn
	fence *fence
}

func (c *fencedConn) Write(b []byte) (int, error) {
	if c.fence.closed.Load() {
		return 0, errFenced
	}
	return c.Conn.Write(b)
}

func (c *fencedConn) Close() error {
	c.fence.mu.Lock()
	if c.fence.conns != nil {
		delete(c.fence.conns, c)
	}
	c.fence.mu.Unlock()
	return c.Conn.Close()
}
