package coalesce_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/securepay/securepay/internal/coalesce"
)

// patience bounds every wait in these tests. It is no timing assertion: on a loaded
// machine things take long, but a wait this long means a hang.
const patience = 20 * time.Second

// tcpPair returns both ends of a loopback TCP connection, closed at cleanup.
func tcpPair(t testing.TB) (client net.Conn, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv := <-accepted
	if srv == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() {
		_ = client.Close()
		_ = srv.Close()
	})
	return client, srv.(*net.TCPConn)
}

// pair returns a coalescing client end and the plain server end of a loopback TCP
// connection. The raw client conn is passed through wrapRaw first, when not nil.
func pair(t testing.TB, opts coalesce.Options, wrapRaw func(net.Conn) net.Conn) (*coalesce.Conn, *net.TCPConn) {
	t.Helper()
	raw, srv := tcpPair(t)
	if wrapRaw != nil {
		raw = wrapRaw(raw)
	}
	c := coalesce.New(raw, opts)
	t.Cleanup(func() { _ = c.Close() })
	return c, srv
}

// record is one writer's numbered message: writer, seq, length, then length bytes that
// are a function of (writer, seq), so that a torn or misplaced record is detected.
func record(writer, seq uint32, length int) []byte {
	b := make([]byte, 10+length)
	binary.BigEndian.PutUint16(b, uint16(writer))
	binary.BigEndian.PutUint32(b[2:], seq)
	binary.BigEndian.PutUint32(b[6:], uint32(length))
	for i := range length {
		b[10+i] = byte(writer*31 + seq*7 + uint32(i))
	}
	return b
}

// TestConcurrentWritersKeepOrder: many goroutines write records of random sizes through
// a small buffer (so that Writes wait for room and are split across system calls); the
// peer must read every record whole, each writer's in its order.
func TestConcurrentWritersKeepOrder(t *testing.T) {
	const writers, perWriter = 16, 400
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	c, srv := pair(t, coalesce.Options{MaxPending: 4096}, nil)

	readErr := make(chan error, 1)
	go func() {
		r := bufio.NewReader(srv)
		next := make([]uint32, writers)
		hdr := make([]byte, 10)
		for got := 0; got < writers*perWriter; got++ {
			if _, err := io.ReadFull(r, hdr); err != nil {
				readErr <- fmt.Errorf("record %d: %w", got, err)
				return
			}
			w, seq, n := uint32(binary.BigEndian.Uint16(hdr)), binary.BigEndian.Uint32(hdr[2:]), binary.BigEndian.Uint32(hdr[6:])
			if w >= writers || n > 20000 {
				readErr <- fmt.Errorf("record %d: header %x is garbage: bytes were torn or reordered", got, hdr)
				return
			}
			body := make([]byte, n)
			if _, err := io.ReadFull(r, body); err != nil {
				readErr <- fmt.Errorf("record %d: %w", got, err)
				return
			}
			if seq != next[w] {
				readErr <- fmt.Errorf("writer %d: got record %d, want %d", w, seq, next[w])
				return
			}
			if want := record(w, seq, int(n))[10:]; !bytes.Equal(body, want) {
				readErr <- fmt.Errorf("writer %d record %d: body differs", w, seq)
				return
			}
			next[w]++
		}
		readErr <- nil
	}()

	var wg sync.WaitGroup
	for w := range uint32(writers) {
		rng := rand.New(rand.NewPCG(seed, uint64(w)))
		wg.Go(func() {
			for seq := range uint32(perWriter) {
				p := record(w, seq, rng.IntN(10000))
				if n, err := c.Write(p); n != len(p) || err != nil {
					t.Errorf("writer %d: Write = %d, %v; want %d, nil", w, n, err, len(p))
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-readErr:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(patience):
		t.Fatal("the peer did not receive every record")
	}
}

// TestLargeWrites: writes of sizes around the buffer's bound and far beyond it arrive
// whole and in order.
func TestLargeWrites(t *testing.T) {
	const bound = 64 << 10
	for _, size := range []int{1, bound - 1, bound, bound + 1, 3*bound + 17, 8 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			c, srv := pair(t, coalesce.Options{MaxPending: bound}, nil)
			p := make([]byte, size)
			for i := range p {
				p[i] = byte(i * 13)
			}
			got := make(chan []byte, 1)
			go func() {
				b := make([]byte, 2*size)
				n, _ := io.ReadFull(srv, b)
				got <- b[:n]
			}()
			for range 2 {
				if n, err := c.Write(p); n != size || err != nil {
					t.Fatalf("Write = %d, %v; want %d, nil", n, err, size)
				}
			}
			if err := c.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			b := <-got
			if len(b) != 2*size || !bytes.Equal(b[:size], p) || !bytes.Equal(b[size:], p) {
				t.Fatalf("the peer read %d bytes, want the %d written, identical", len(b), 2*size)
			}
		})
	}
}

// fill writes to c until a Write stops short (the peer does not read), and returns how
// many bytes c accepted and the error of the last Write.
func fill(t *testing.T, c *coalesce.Conn) (int, error) {
	t.Helper()
	total := 0
	chunk := make([]byte, 64<<10)
	for range 10000 { // 640 MB: far beyond any send buffer
		n, err := c.Write(chunk)
		total += n
		if err != nil {
			return total, err
		}
	}
	t.Fatal("Write never stopped although the peer does not read")
	return 0, nil
}

// TestWriteDeadline: a Write that cannot place its bytes before the write deadline
// returns a timeout, as a plain connection's does; the connection stays usable and what
// was accepted still arrives; a deadline in the past fails a Write at once; a deadline
// set while a Write waits wakes it.
func TestWriteDeadline(t *testing.T) {
	c, srv := pair(t, coalesce.Options{MaxPending: 64 << 10}, nil)
	_ = srv.SetReadBuffer(64 << 10)

	// The peer does not read: Writes fill both buffers, then wait, until the deadline.
	if err := c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	accepted, err := fill(t, c)
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("a Write past the deadline returned %v; want a net.Error timeout wrapping os.ErrDeadlineExceeded", err)
	}
	if n, err := c.Write([]byte("x")); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a Write with the deadline passed = %d, %v; want 0 and a timeout at once", n, err)
	}

	// A Write waiting without a deadline is woken by one set in the past, as net/http
	// does to abort a write.
	if err := c.SetWriteDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	var moreAccepted atomic.Int64
	go func() {
		n, err := c.Write(make([]byte, 1<<20))
		moreAccepted.Store(int64(n))
		waited <- err
	}()
	time.Sleep(50 * time.Millisecond) // let it wait; if it has not yet, it fails on entry, which is also right
	_ = c.SetWriteDeadline(time.Now().Add(-time.Second))
	select {
	case err := <-waited:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the waiting Write returned %v after a past deadline was set; want a timeout", err)
		}
	case <-time.After(patience):
		t.Fatal("a past write deadline did not wake a waiting Write")
	}
	accepted += int(moreAccepted.Load())

	// The timeout did not break the connection: lift the deadline, write a tail, and
	// the peer reads everything accepted, then the tail, then EOF.
	if err := c.SetWriteDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	got := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, srv)
		got <- n
	}()
	tail := []byte("tail")
	if n, err := c.Write(tail); n != len(tail) || err != nil {
		t.Fatalf("Write after the deadline was lifted = %d, %v; want %d, nil", n, err, len(tail))
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case n := <-got:
		if want := int64(accepted + len(tail)); n != want {
			t.Fatalf("the peer read %d bytes; want the %d accepted", n, want)
		}
	case <-time.After(patience):
		t.Fatal("the peer did not reach EOF")
	}
}

// TestPeerResetIsSticky: once writing fails (the peer reset the connection), every
// later Write returns that same error, and Close reports it.
func TestPeerResetIsSticky(t *testing.T) {
	c, srv := pair(t, coalesce.Options{}, nil)
	_ = srv.SetLinger(0) // close with RST
	_ = srv.Close()
	var first error
	deadline := time.Now().Add(patience)
	for first == nil && time.Now().Before(deadline) {
		_, first = c.Write([]byte("hello"))
		time.Sleep(time.Millisecond)
	}
	if first == nil {
		t.Fatal("Writes kept succeeding after the peer reset the connection")
	}
	for range 3 {
		if _, err := c.Write([]byte("again")); err != first {
			t.Fatalf("a later Write returned %v; want the first error %v again", err, first)
		}
	}
	if err := c.Close(); err != first {
		t.Fatalf("Close returned %v; want the write error %v", err, first)
	}
}

// failingWriter lets reads through to the TCP connection but fails writes after limit
// bytes, standing for a write error that the read side would not see by itself.
type failingWriter struct {
	net.Conn
	limit atomic.Int64
}

var errInjected = errors.New("injected write failure")

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.limit.Add(-int64(len(p))) < 0 {
		return 0, errInjected
	}
	return f.Conn.Write(p)
}

// TestWriteErrorFailsReaders: a Read blocked on the connection fails when a background
// write fails, and later Writes return that error.
func TestWriteErrorFailsReaders(t *testing.T) {
	fw := &failingWriter{}
	fw.limit.Store(100)
	c, _ := pair(t, coalesce.Options{}, func(raw net.Conn) net.Conn { fw.Conn = raw; return fw })
	readErr := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1)) // the peer never writes
		readErr <- err
	}()
	if _, err := c.Write(make([]byte, 50)); err != nil {
		t.Fatalf("first Write: %v", err)
	}
	if _, err := c.Write(make([]byte, 200)); err != nil && !errors.Is(err, errInjected) {
		t.Fatalf("second Write: %v; want nil (accepted) or the injected error", err)
	}
	select {
	case err := <-readErr:
		if err == nil {
			t.Fatal("Read succeeded; the peer never wrote")
		}
	case <-time.After(patience):
		t.Fatal("a blocked Read did not fail after a background write failed")
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, errInjected) {
		t.Fatalf("Write after the failure returned %v; want the injected error", err)
	}
}

// TestCloseFlushes: what Write accepted reaches the peer before Close closes.
func TestCloseFlushes(t *testing.T) {
	c, srv := pair(t, coalesce.Options{}, nil)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(srv)
		got <- b
	}()
	var want bytes.Buffer
	for i := range 1000 {
		p := fmt.Appendf(nil, "line %d\n", i)
		want.Write(p)
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("the peer read %d bytes; want the %d written, identical", len(b), want.Len())
	}
	if _, err := c.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close returned %v; want net.ErrClosed", err)
	}
	if err := c.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("a second Close returned %v; want net.ErrClosed", err)
	}
}

// TestCloseStalledPeer: with a peer that does not read, Close gives up after
// CloseTimeout, closes, and a Write waiting for room returns net.ErrClosed.
func TestCloseStalledPeer(t *testing.T) {
	c, srv := pair(t, coalesce.Options{MaxPending: 64 << 10, CloseTimeout: 100 * time.Millisecond}, nil)
	_ = srv.SetReadBuffer(64 << 10)
	waiting := make(chan error, 1)
	go func() {
		_, err := fill(t, c)
		waiting <- err
	}()
	time.Sleep(100 * time.Millisecond) // let it fill the buffers and wait
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err := <-waiting:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("the waiting Write returned %v at Close; want net.ErrClosed", err)
		}
	case <-time.After(patience):
		t.Fatal("Close did not wake a waiting Write")
	}
	select {
	case err := <-closed:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Close of a stalled connection returned %v; want the flush's timeout", err)
		}
	case <-time.After(patience):
		t.Fatal("Close did not return with a stalled peer")
	}
	// The peer sees the connection end once it reads what arrived.
	_ = srv.SetReadDeadline(time.Now().Add(patience))
	if _, err := io.Copy(io.Discard, srv); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("the peer's read ended with %v; want EOF or a reset", err)
	}
}

// writers counts the goroutines running a Conn's writer.
func writers() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte("coalesce.(*Conn).writeLoop"))
}

// TestNoGoroutineLeak: the writer goroutine ends with Close, and with a write failure.
func TestNoGoroutineLeak(t *testing.T) {
	before := writers()
	for i := range 20 {
		c, srv := pair(t, coalesce.Options{}, nil)
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			_ = c.Close()
			continue
		}
		_ = srv.SetLinger(0)
		_ = srv.Close()
		for range 1000 {
			if _, err := c.Write([]byte("y")); err != nil {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	deadline := time.Now().Add(patience)
	for writers() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d writer goroutines left after their connections closed or failed", writers()-before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSetDeadline sets both deadlines: a past one fails a Read and a Write at once with a
// timeout, and lifting it makes the connection usable again in both directions.
func TestSetDeadline(t *testing.T) {
	c, srv := pair(t, coalesce.Options{}, nil)
	if err := c.SetDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline returned %v; want a timeout", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write past the deadline returned %v; want a timeout", err)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatalf("Write after the deadline was lifted: %v", err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(srv, got); err != nil || string(got) != "ping" {
		t.Fatalf("the peer read %q, %v; want \"ping\"", got, err)
	}
	if _, err := srv.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "pong" {
		t.Fatalf("Read after the deadline was lifted: %q, %v; want \"pong\"", got, err)
	}
}
