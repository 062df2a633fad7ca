// Package coalesce gathers a connection's small writes into fewer write system calls.
//
// Go's HTTP/2 client flushes every frame it writes on its own: the HEADERS of a request,
// then its DATA, each one TLS record and one write(2), and many streams multiplexed on
// one connection each flush separately (the transport serialises them with a mutex, so
// they never go out together). Under load that is several system calls per call, and the
// system calls were a fifth of the gateway's CPU. A [Conn] placed under TLS (it wraps the
// TCP connection a dialer returns or a listener accepts, so TLS, ALPN and SPIFFE peer
// verification are unchanged) accepts a write into a bounded buffer and returns; one
// goroutine per connection hands everything accepted so far to the kernel in one
// write(2). There is no artificial delay: when the connection is idle a write goes out at
// once (the only wait is the hand-off to the writer goroutine, a few microseconds); writes
// that arrive while one is in the kernel go out together after it.
package coalesce

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// Defaults of [Options].
const (
	// DefaultMaxPending holds well over what 64 concurrent calls write at once (a few
	// hundred bytes each, as TLS records) while bounding what a peer that stopped reading
	// can make a connection hold, on top of the kernel's send buffer.
	DefaultMaxPending = 256 << 10
	// DefaultCloseTimeout bounds how long Close waits for accepted bytes to reach the
	// kernel: a healthy peer takes microseconds, a stalled one must not hold Close.
	DefaultCloseTimeout = 2 * time.Second
)

// maxRetained bounds the capacity of the buffers an idle connection keeps for reuse: one
// that once carried a burst does not hold its large buffers while idle (a public
// listener may hold many idle connections). A TLS record is at most ~16 KiB.
const maxRetained = 32 << 10

// Options tune a [Conn]. The zero value takes the defaults.
type Options struct {
	// MaxPending bounds the bytes accepted by Write and not yet handed to the kernel; a
	// Write waits (within the write deadline) for room beyond it. 0 or less: the default.
	MaxPending int
	// CloseTimeout bounds how long Close waits for the accepted bytes to be written
	// before it closes the connection anyway. 0 or less: the default.
	CloseTimeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.MaxPending <= 0 {
		o.MaxPending = DefaultMaxPending
	}
	if o.CloseTimeout <= 0 {
		o.CloseTimeout = DefaultCloseTimeout
	}
	return o
}

// Conn is a net.Conn whose writes are coalesced. Reads, addresses and read deadlines are
// the wrapped connection's.
//
// Its contract differs from a plain connection's in what "written" means: a Write
// returns once its bytes are in the Conn's buffer, as a plain Write returns once they are
// in the kernel's, so the buffer acts as a larger send buffer.
//   - Write deadline (SetWriteDeadline, SetDeadline): bounds how long a Write may wait,
//     for room in the buffer; a Write that cannot place all its bytes in time returns
//     the bytes it placed and an error for which errors.Is(err, os.ErrDeadlineExceeded)
//     holds, as a plain connection's, and the connection stays usable. A deadline in the
//     past fails every Write at once. The deadline does not cut the background write of
//     bytes already accepted: those are the connection's, and go out unless the
//     connection fails or is closed. (HTTP/2's WriteByteTimeout thus notices a peer
//     that stopped reading once this buffer and the kernel's are both full.)
//   - Errors: the first error writing to the wrapped connection is sticky: every later
//     Write returns it, the bytes not yet written are dropped, and the wrapped connection
//     is closed so that a Read blocked on it fails too (a byte stream with a hole in it
//     must not be continued).
//   - Close writes what was accepted, waiting at most Options.CloseTimeout, then closes
//     the wrapped connection. A Write waiting for room returns net.ErrClosed.
type Conn struct {
	raw          net.Conn
	maxPending   int
	closeTimeout time.Duration

	// wmu keeps each Write's bytes together: a Write that waits for room holds it, so
	// that another Write cannot slip its bytes in between. Above TLS or an HTTP/2
	// framer it is never contended (they serialise their writes already).
	wmu sync.Mutex
	// wake, buffered 1, tells the idle writer goroutine that there are bytes, or that
	// Close wants it to finish.
	wake chan struct{}
	// done is closed when the writer goroutine has returned.
	done chan struct{}

	mu       sync.Mutex
	pending  []byte // accepted by Write, not yet taken by the writer
	spare    []byte // the writer's previous buffer, reused for pending
	writing  bool   // the writer holds bytes it took, or is taking them
	err      error  // the first error writing to raw; sticky
	closing  bool   // Close was called
	deadline time.Time
	// changed is closed (and set to nil) when what a waiting Write waits for may have
	// changed: room freed, an error, Close, a new deadline. It exists only while a Write
	// waits.
	changed chan struct{}
}

// New wraps conn. The Conn owns conn from now on: close the Conn, not conn, so that what
// was accepted is written first.
func New(conn net.Conn, opts Options) *Conn {
	opts = opts.withDefaults()
	c := &Conn{
		raw:          conn,
		maxPending:   opts.MaxPending,
		closeTimeout: opts.CloseTimeout,
		wake:         make(chan struct{}, 1),
		done:         make(chan struct{}),
	}
	go c.writeLoop()
	return c
}

// Write accepts p into the buffer, waiting for room when it is full (bounded by the
// write deadline), and returns; the bytes reach the kernel in the background.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for {
		if err := c.writeErrLocked(); err != nil {
			return n, err
		}
		if len(p) == 0 {
			return 0, nil
		}
		if room := c.maxPending - len(c.pending); room > 0 {
			k := min(room, len(p)-n)
			if len(c.pending) == 0 && !c.writing {
				// The writer is idle: wake it. It takes the wake-up before it waits
				// again, so the channel is never full here; if it were, the writer
				// would be awake already.
				select {
				case c.wake <- struct{}{}:
				default:
				}
			}
			c.pending = append(c.pending, p[n:n+k]...)
			n += k
			if n == len(p) {
				return n, nil
			}
			continue
		}
		c.waitLocked()
	}
}

// writeErrLocked is why a Write cannot place bytes now: the connection failed or is
// closing, or the write deadline passed.
func (c *Conn) writeErrLocked() error {
	switch {
	case c.err != nil:
		return c.err
	case c.closing:
		return c.opError(net.ErrClosed)
	case !c.deadline.IsZero() && !time.Now().Before(c.deadline):
		return c.opError(os.ErrDeadlineExceeded)
	}
	return nil
}

// waitLocked waits, with c.mu released, until what Write waits for may have changed or
// the write deadline passes.
func (c *Conn) waitLocked() {
	if c.changed == nil {
		c.changed = make(chan struct{})
	}
	changed, deadline := c.changed, c.deadline
	c.mu.Unlock()
	defer c.mu.Lock()
	if deadline.IsZero() {
		<-changed
		return
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-changed:
	case <-t.C:
	}
}

func (c *Conn) notifyLocked() {
	if c.changed != nil {
		close(c.changed)
		c.changed = nil
	}
}

func (c *Conn) opError(err error) error {
	return &net.OpError{Op: "write", Net: c.raw.LocalAddr().Network(), Source: c.raw.LocalAddr(), Addr: c.raw.RemoteAddr(), Err: err}
}

// writeLoop is the connection's one writer: it takes everything pending and writes it
// in one call, until the connection fails, or Close was called and nothing is pending.
func (c *Conn) writeLoop() {
	defer close(c.done)
	c.mu.Lock()
	for {
		for len(c.pending) == 0 && !c.closing {
			if cap(c.pending) > maxRetained || cap(c.spare) > maxRetained {
				c.pending, c.spare = nil, nil // a burst's buffers, not kept while idle
			}
			c.mu.Unlock()
			<-c.wake
			c.mu.Lock()
		}
		if len(c.pending) == 0 { // closing, everything written
			c.mu.Unlock()
			return
		}
		buf := c.pending
		c.pending, c.spare = c.spare[:0], nil
		c.writing = true
		c.mu.Unlock()

		_, err := c.raw.Write(buf) // a net.Conn writes all of buf or returns an error

		c.mu.Lock()
		c.writing = false
		c.spare = buf[:0]
		c.notifyLocked()
		if err != nil {
			c.err = err
			c.pending, c.spare = nil, nil
			c.mu.Unlock()
			// Readers must learn of it too; what was not written is lost.
			_ = c.raw.Close()
			return
		}
	}
}

// Close writes what Write accepted, within Options.CloseTimeout, then closes the
// wrapped connection. It returns the error of the background write if it failed (the
// wrapped connection is then closed already), and net.ErrClosed when called again.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return &net.OpError{Op: "close", Net: c.raw.LocalAddr().Network(), Source: c.raw.LocalAddr(), Addr: c.raw.RemoteAddr(), Err: net.ErrClosed}
	}
	c.closing = true
	c.notifyLocked()
	idle := len(c.pending) == 0 && !c.writing
	c.mu.Unlock()
	if !idle {
		// Bounds the writer's last write(2); the connection is closed right after, so the
		// deadline is never seen by anything else.
		_ = c.raw.SetWriteDeadline(time.Now().Add(c.closeTimeout))
	}
	select {
	case c.wake <- struct{}{}:
	default: // the writer has a wake-up pending already: it sees closing when it takes it
	}
	<-c.done
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return err // the writer closed raw
	}
	return c.raw.Close()
}

// Read reads from the wrapped connection.
func (c *Conn) Read(p []byte) (int, error) { return c.raw.Read(p) }

// LocalAddr is the wrapped connection's.
func (c *Conn) LocalAddr() net.Addr { return c.raw.LocalAddr() }

// RemoteAddr is the wrapped connection's.
func (c *Conn) RemoteAddr() net.Addr { return c.raw.RemoteAddr() }

// SetDeadline sets the read deadline of the wrapped connection and the write deadline of
// the Conn (see [Conn] for what it bounds).
func (c *Conn) SetDeadline(t time.Time) error {
	err := c.raw.SetReadDeadline(t)
	c.setWriteDeadline(t)
	return err
}

// SetReadDeadline sets the wrapped connection's.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.raw.SetReadDeadline(t) }

// SetWriteDeadline bounds how long a Write, now waiting or later, may wait for room
// (see [Conn]). A zero t means no bound.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.setWriteDeadline(t)
	return nil
}

func (c *Conn) setWriteDeadline(t time.Time) {
	c.mu.Lock()
	c.deadline = t
	c.notifyLocked()
	c.mu.Unlock()
}

// Listener returns a listener whose accepted connections are wrapped in [Conn]s.
func Listener(ln net.Listener, opts Options) net.Listener { return listener{ln, opts} }

type listener struct {
	net.Listener
	opts Options
}

func (l listener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return New(conn, l.opts), nil
}

// DialFunc is the shape of net.Dialer.DialContext and http.Transport.DialContext.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Dial returns a DialFunc whose connections are dial's wrapped in [Conn]s.
func Dial(dial DialFunc, opts Options) DialFunc {
	if dial == nil {
		panic(errors.New("coalesce: Dial needs a dial function")) // a wiring error, found at start
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return New(conn, opts), nil
	}
}
