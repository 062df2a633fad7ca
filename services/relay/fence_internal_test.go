package relay

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestFence: connections work until the fence closes; then every one of them, and every
// later dial, fails, and the peer sees its connection closed.
func TestFence(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	f := newFence(&net.Dialer{Timeout: 5 * time.Second})
	a, err := f.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial before the fence closed: %v", err)
	}
	b, err := f.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("second dial before the fence closed: %v", err)
	}
	peerA, peerB := <-accepted, <-accepted
	defer peerA.Close()
	defer peerB.Close()
	if _, err := a.Write([]byte("x")); err != nil {
		t.Fatalf("write before the fence closed: %v", err)
	}
	buf := make([]byte, 1)
	if _, err := io.ReadFull(peerA, buf); err != nil || buf[0] != 'x' {
		t.Fatalf("peer read %q, %v; want \"x\"", buf, err)
	}
	// A connection closed by sarama itself leaves the fence's set.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	f.close()
	f.close() // idempotent
	if n, err := a.Write([]byte("y")); !errors.Is(err, errFenced) || n != 0 {
		t.Errorf("write after the fence closed: %d, %v; want 0, errFenced", n, err)
	}
	_ = peerA.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := peerA.Read(buf); err != io.EOF {
		t.Errorf("peer of a fenced connection read %d bytes, %v; want io.EOF (closed by the fence)", n, err)
	}
	if c, err := f.Dial("tcp", ln.Addr().String()); !errors.Is(err, errFenced) {
		t.Errorf("dial after the fence closed: %v, %v; want errFenced", c, err)
	}
}

// TestFenceDialRacingClose: a dial that completes while the fence closes is refused and
// its connection closed, never handed out unfenced.
func TestFenceDialRacingClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	for range 50 {
		f := newFence(&net.Dialer{Timeout: 5 * time.Second})
		done := make(chan struct{})
		go func() { defer close(done); f.close() }()
		c, err := f.Dial("tcp", ln.Addr().String())
		<-done
		if err == nil {
			// The dial won the race: close must have closed it.
			if _, werr := c.Write([]byte("z")); !errors.Is(werr, errFenced) {
				t.Fatalf("a connection dialled while the fence closed still writes: %v", werr)
			}
			c.Close()
		} else if !errors.Is(err, errFenced) {
			t.Fatalf("dial: %v", err)
		}
	}
}
