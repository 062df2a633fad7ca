package services_test

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
)

// The server's timeouts are short here so each test takes seconds, not the minutes the
// defaults allow; cutOff is how long a test waits for the server to act on them.
const (
	slowTimeout = 300 * time.Millisecond
	cutOff      = 5 * time.Second
)

// closedWithin reports whether the server ends conn (EOF or reset) within d, reading and
// dropping whatever it answers first.
func closedWithin(conn net.Conn, d time.Duration) error {
	deadline := time.Now().Add(d)
	_ = conn.SetReadDeadline(deadline)
	buf := make([]byte, 4096)
	for {
		_, err := conn.Read(buf)
		var ne net.Error
		switch {
		case err == nil:
		case errors.As(err, &ne) && ne.Timeout():
			return fmt.Errorf("still open after %v", d)
		default:
			return nil // EOF or reset: the server let go
		}
	}
}

// endedWithin reports whether the server ends the one request sent on conn within d: it
// closes the connection, or it answers a whole response (over HTTP/1.1 the server may then
// keep the connection for a next request, up to its idle timeout: that is keep-alive, not
// this request being held open).
func endedWithin(conn net.Conn, d time.Duration) error {
	_ = conn.SetReadDeadline(time.Now().Add(d))
	stillOpen := func(err error) bool {
		var ne net.Error
		return errors.As(err, &ne) && ne.Timeout()
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		if stillOpen(err) {
			return fmt.Errorf("still open after %v, nothing answered", d)
		}
		return nil // closed (EOF or reset) before answering
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); stillOpen(err) {
		return fmt.Errorf("still open after %v, the answer (HTTP %d) not finished", d, resp.StatusCode)
	}
	return nil // the whole answer, or closed in the middle of it
}

// TestSlowBodyOnAStreamIsCut: a watch whose request body trickles in over HTTP/1.1 is held
// to ReadTimeout like any request; before, its deadlines were lifted before the body was
// read and it stayed open past 75 s.
func TestSlowBodyOnAStreamIsCut(t *testing.T) {
	n := startNode(t, nodeOptions{readTimeout: slowTimeout, writeTimeout: slowTimeout})
	conn, err := net.Dial("tcp", n.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A Connect server-stream request promising 20 bytes, of which one is sent.
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/connect+proto\r\nConnect-Protocol-Version: 1\r\nContent-Length: 20\r\n\r\n\x00",
		ledgerv1connect.BalanceServiceWatchAccountProcedure)
	start := time.Now()
	if err := endedWithin(conn, cutOff); err != nil {
		t.Fatalf("a watch whose body never completes, ReadTimeout %v: %v", slowTimeout, err)
	}
	t.Logf("cut after %v (ReadTimeout %v)", time.Since(start).Round(time.Millisecond), slowTimeout)
}

// h2conn is a raw cleartext HTTP/2 connection, for what no well-behaved client sends.
type h2conn struct {
	net.Conn
	fr  *http2.Framer
	enc *hpack.Encoder
	hb  bytes.Buffer
}

func dialH2C(t *testing.T, addr string) *h2conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &h2conn{Conn: conn}
	c.fr = http2.NewFramer(conn, bufio.NewReader(conn))
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.hb)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return c
}

// headerBlock encodes a gRPC request's headers for path.
func (c *h2conn) headerBlock(path string) []byte {
	c.hb.Reset()
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "x"}, {":path", path}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return bytes.Clone(c.hb.Bytes())
}

// TestHalfSentStreamsCountAgainstMaxStreams: streams whose request never completes are
// counted against MaxStreams from their headers and cut at ReadTimeout. Before, 250 of them
// per connection waited outside the bound for as long as the client liked.
func TestHalfSentStreamsCountAgainstMaxStreams(t *testing.T) {
	const maxStreams = 2
	n := startNode(t, nodeOptions{maxStreams: maxStreams, readTimeout: slowTimeout, writeTimeout: slowTimeout})
	c := dialH2C(t, n.addr)
	const streams = maxStreams + 2
	for i := range streams {
		id := uint32(2*i + 1)
		if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.headerBlock(ledgerv1connect.BalanceServiceWatchAccountProcedure), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
	}
	// Each stream ends with a status in trailers (or headers, for trailers-only answers) or
	// a reset; record the first of these, and when.
	start := time.Now()
	ended := map[uint32]string{}
	_ = c.SetReadDeadline(time.Now().Add(cutOff))
	for len(ended) < streams {
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %v, %d of %d half-sent streams ended (%v): %v", time.Since(start), len(ended), streams, ended, err)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if st := field(f, "grpc-status"); st != "" && ended[f.StreamID] == "" {
				ended[f.StreamID] = fmt.Sprintf("grpc-status %s (%s) %q after %v", st, reasonFrom(f), field(f, "grpc-message"), time.Since(start).Round(time.Millisecond))
			}
		case *http2.RSTStreamFrame:
			if ended[f.StreamID] != "" {
				break // the reset that follows an answer
			}
			ended[f.StreamID] = fmt.Sprintf("reset %v after %v", f.ErrCode, time.Since(start).Round(time.Millisecond))
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = c.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = c.fr.WritePing(true, f.Data)
			}
		}
	}
	for id, how := range ended {
		t.Logf("stream %d: %s", id, how)
	}
	tooMany := 0
	for _, how := range ended {
		if strings.HasPrefix(how, "grpc-status 8 ("+string(services.ReasonTooManyStreams)) {
			tooMany++
		}
	}
	if tooMany != streams-maxStreams {
		t.Fatalf("%d half-sent streams with MaxStreams %d: want %d refused with %s, got %v", streams, maxStreams, streams-maxStreams, services.ReasonTooManyStreams, ended)
	}
}

func field(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.Fields {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// reasonFrom reads the ErrorInfo reason out of grpc-status-details-bin without decoding
// the protobuf: the reason is one of the API's reasons, as ASCII, inside it.
func reasonFrom(f *http2.MetaHeadersFrame) string {
	details, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(field(f, "grpc-status-details-bin"), "="))
	if err != nil {
		return ""
	}
	for _, r := range services.Reasons() {
		if bytes.Contains(details, []byte(r)) {
			return string(r)
		}
	}
	return ""
}

// TestSlowHeadersOnHTTP2AreCut: a HEADERS frame that trickles in a byte at a time ends
// the HTTP/2 connection about as soon as ReadHeaderTimeout ends an HTTP/1.1 one; before,
// it lasted until IdleTimeout (121 s).
func TestSlowHeadersOnHTTP2AreCut(t *testing.T) {
	n := startNode(t, nodeOptions{readHeaderTimeout: slowTimeout})
	c := dialH2C(t, n.addr)
	var frame bytes.Buffer
	if err := http2.NewFramer(&frame, nil).WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.headerBlock(ledgerv1connect.BalanceServiceWatchAccountProcedure), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	raw := frame.Bytes()
	start := time.Now()
	closed := make(chan error, 1)
	go func() { closed <- closedWithin(c.Conn, cutOff) }()
	for i := 0; i < len(raw)-1; i++ { // never the last byte
		select {
		case err := <-closed:
			if err != nil {
				t.Fatalf("slow HEADERS, ReadHeaderTimeout %v: %v", slowTimeout, err)
			}
			t.Logf("connection cut after %v, %d of %d bytes of HEADERS sent (ReadHeaderTimeout %v)", time.Since(start).Round(time.Millisecond), i, len(raw), slowTimeout)
			return
		case <-time.After(100 * time.Millisecond):
		}
		if _, err := c.Write(raw[i : i+1]); err != nil {
			t.Logf("connection cut after %v, %d of %d bytes of HEADERS sent (ReadHeaderTimeout %v): %v", time.Since(start).Round(time.Millisecond), i, len(raw), slowTimeout, err)
			return
		}
	}
	if err := <-closed; err != nil {
		t.Fatalf("slow HEADERS, ReadHeaderTimeout %v: %v", slowTimeout, err)
	}
}
