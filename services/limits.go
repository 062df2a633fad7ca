package services

import (
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"connectrpc.com/connect"
)

// envelopeSlack is what an enveloped body (gRPC, gRPC-web, Connect streaming) may hold
// besides its one message: the 5-byte prefix and, from some clients, an empty end
// envelope. It is generous so the message limit, not this, is what a client meets.
const envelopeSlack = 64 << 10

// requestLimits refuses a request body larger than the message limit with one error that
// says the limit, in the caller's protocol, before the body is read into memory:
//   - a Content-Length over the limit is refused without reading the body;
//   - an enveloped body is refused as soon as a prefix declares a message over the limit;
//   - any other body is refused at the first byte past the limit.
//
// connect-go has its own checks, but they answer "http: request body too large" after
// reading (or, for gzip, inflating) everything the client sends in order to count it, and
// http.MaxBytesReader makes HTTP/2 reset the stream, so h2c clients got no answer at all.
// Connect passes a *connect.Error returned by the body through unchanged, which is how the
// errors below reach the client in its own protocol.
func requestLimits(next http.Handler, maxMessageBytes int, errs *connect.ErrorWriter) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		enveloped := isEnveloped(r.Header.Get("Content-Type"))
		maxBody := int64(maxMessageBytes)
		if enveloped {
			maxBody += envelopeSlack
		}
		if r.ContentLength > maxBody {
			refuse(w, r, errs, requestTooLarge(r.ContentLength, "", maxMessageBytes))
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &limitedBody{ReadCloser: r.Body, maxBody: maxBody, maxMessage: int64(maxMessageBytes), enveloped: enveloped}
		}
		next.ServeHTTP(w, r)
	})
}

// refuse answers err in the request's RPC protocol, or as plain HTTP 413 to anything else.
func refuse(w http.ResponseWriter, r *http.Request, errs *connect.ErrorWriter, err *connect.Error) {
	// The unread body is not worth draining: an HTTP/1.1 client is told to stop and the
	// connection is closed rather than read. Not on HTTP/2, where Go's server takes
	// "Connection: close" as a GOAWAY for every other stream on the connection; the one
	// stream is reset instead.
	if r.ProtoMajor == 1 {
		w.Header().Set("Connection", "close")
	}
	if errs.IsSupported(r) {
		_ = errs.Write(w, r, err)
		return
	}
	http.Error(w, err.Message(), http.StatusRequestEntityTooLarge)
}

func isEnveloped(contentType string) bool {
	return strings.HasPrefix(contentType, "application/grpc") || strings.HasPrefix(contentType, "application/connect+")
}

// limitedBody counts a request body and fails the read that crosses a limit. For enveloped
// bodies it also reads the 5-byte prefixes as they pass (1 flag byte, 4 bytes of big-endian
// length) to refuse an oversized message before any of it is read.
type limitedBody struct {
	io.ReadCloser
	maxBody, maxMessage int64
	enveloped           bool

	err    error   // the refusal, returned again by every later read
	read   int64   // bytes of body so far
	prefix [5]byte // the envelope prefix being read
	inPre  int     // bytes of prefix read so far
	left   int64   // bytes of the current message still to come, after its prefix
}

// Read returns no bytes with a refusal: io.ReadFull, which connect-go reads prefixes with,
// drops an error that comes with enough bytes, and connect-go would then count the
// oversized message itself.
func (b *limitedBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.ReadCloser.Read(p)
	b.read += int64(n)
	if b.read > b.maxBody {
		b.err = requestTooLarge(-1, "", int(b.maxMessage))
		return 0, b.err
	}
	if b.enveloped {
		if size, over := b.scan(p[:n]); over {
			b.err = requestTooLarge(size, "", int(b.maxMessage))
			return 0, b.err
		}
	}
	return n, err
}

// scan follows the envelopes through chunk and reports a declared size over the limit.
func (b *limitedBody) scan(chunk []byte) (size int64, over bool) {
	for len(chunk) > 0 {
		if b.left > 0 {
			skip := min(b.left, int64(len(chunk)))
			b.left -= skip
			chunk = chunk[skip:]
			continue
		}
		c := copy(b.prefix[b.inPre:], chunk)
		b.inPre += c
		chunk = chunk[c:]
		if b.inPre < len(b.prefix) {
			return 0, false
		}
		b.inPre = 0
		b.left = int64(binary.BigEndian.Uint32(b.prefix[1:]))
		if b.left > b.maxMessage {
			return b.left, true
		}
	}
	return 0, false
}

// requestTooLarge is the one refusal of an oversized request. size is what the request
// declared, or -1 when only "more than the limit" is known; how says what was measured
// ("inflates to" for a compressed message).
func requestTooLarge(size int64, how string, limit int) *connect.Error {
	if how == "" {
		how = "is"
	}
	var msg string
	if size >= 0 {
		msg = fmt.Sprintf("the request %s %s bytes; the limit is %s (--max-request-bytes)", how, thousands(size), byteSize(limit))
	} else {
		msg = fmt.Sprintf("the request %s more than %s; the limit is %s (--max-request-bytes)", how, byteSize(limit), byteSize(limit))
	}
	return newError(connect.CodeResourceExhausted, ReasonRequestTooLarge, msg)
}

// byteSize writes n as people write limits: "1 MiB", "64 KiB", else "1,000,000 bytes".
func byteSize(n int) string {
	switch {
	case n > 0 && n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + " MiB"
	case n > 0 && n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + " KiB"
	}
	return thousands(int64(n)) + " bytes"
}

func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	if n < 0 {
		return s
	}
	var out strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out.WriteByte(',')
		}
		out.WriteRune(c)
	}
	return out.String()
}

// boundedGzip replaces connect-go's gzip decompressor. connect-go stops reading a message
// at its limit but then inflates the rest to report its size: a 1 MB gzip bomb cost 0.4 s
// of CPU inflating 1 GiB. This one fails the read that crosses the limit, so a message
// costs at most the limit in inflated bytes, whatever its compression ratio; no ratio
// bound is needed on top, and one would refuse honest, repetitive messages.
type boundedGzip struct {
	gz       *gzip.Reader
	maxBytes int64
	inflated int64
}

func newBoundedGzip(maxBytes int) func() connect.Decompressor {
	return func() connect.Decompressor { return &boundedGzip{maxBytes: int64(maxBytes)} }
}

func (d *boundedGzip) Read(p []byte) (int, error) {
	if d.gz == nil {
		return 0, io.ErrUnexpectedEOF // Reset failed or was never called; connect-go reports it
	}
	n, err := d.gz.Read(p)
	d.inflated += int64(n)
	if d.inflated > d.maxBytes {
		return n, requestTooLarge(-1, "inflates to", int(d.maxBytes))
	}
	return n, err
}

func (d *boundedGzip) Reset(r io.Reader) error {
	d.inflated = 0
	if d.gz == nil {
		gz, err := gzip.NewReader(r)
		if err != nil {
			return err
		}
		d.gz = gz
		return nil
	}
	return d.gz.Reset(r)
}

func (d *boundedGzip) Close() error {
	if d.gz == nil {
		return nil
	}
	return d.gz.Close()
}
