package dispatch

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The request headers of a webhook (docs/WEBHOOKS.md).
const (
	// HeaderSignature carries the timestamp and the signature: "t=<unix seconds>,v1=<hex>".
	HeaderSignature = "SecurePay-Signature"
	// HeaderEventID is the event's id: receivers dedupe on it (a notification can arrive
	// more than once, never with a different body).
	HeaderEventID = "SecurePay-Event-Id"
	// HeaderEventType is the versioned event name, e.g. ledger.account.credited.v1.
	HeaderEventType = "SecurePay-Event-Type"
	// HeaderEndpointID names the endpoint the request was sent for.
	HeaderEndpointID = "SecurePay-Endpoint-Id"
	// HeaderAttempt is the attempt's number, from 1.
	HeaderAttempt = "SecurePay-Delivery-Attempt"
	// HeaderTraceParent is the W3C trace context of the delivery.
	HeaderTraceParent = "traceparent"
)

// Limits of the signature header a receiver accepts: more is not something the dispatcher
// sends, and parsing it would only cost the receiver.
const (
	maxSignatureHeaderBytes = 4096
	maxSignatures           = 8
	maxTimestampDigits      = 12 // up to year 33658: enough, and never an int64 overflow
)

// Errors of Verify; callers test them with errors.Is.
var (
	// ErrSignatureHeader: the header is missing or malformed.
	ErrSignatureHeader = errors.New("webhook signature: malformed SecurePay-Signature header")
	// ErrBadSignature: no v1 signature matches the body and timestamp under the secret.
	ErrBadSignature = errors.New("webhook signature: no signature matches")
	// ErrStaleSignature: the signature is valid but its timestamp is further than the
	// tolerance from now (a replay, or a clock far off).
	ErrStaleSignature = errors.New("webhook signature: timestamp outside the tolerance")
)

// Sign returns the SecurePay-Signature header value of body sent at t under secret:
// "t=<t in Unix seconds>,v1=<lowercase hex of HMAC-SHA256(secret, "<t>.<body>")>".
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// SignatureHeader is a parsed SecurePay-Signature header.
type SignatureHeader struct {
	// Timestamp is the "t" value as sent: decimal Unix seconds, signed with the body.
	Timestamp string
	Unix      int64
	// V1 are the HMAC-SHA256 signatures (32 bytes each); a receiver accepts the request
	// when any of them matches.
	V1 [][]byte
}

// ParseSignatureHeader reads a SecurePay-Signature header: comma-separated key=value
// items; exactly one t (1 to 12 decimal digits); at least one v1 (64 hex digits), at most
// 8; items with other keys are ignored (room for future schemes), and spaces around items
// are allowed.
func ParseSignatureHeader(h string) (SignatureHeader, error) {
	var s SignatureHeader
	if h == "" {
		return s, fmt.Errorf("%w: empty", ErrSignatureHeader)
	}
	if len(h) > maxSignatureHeaderBytes {
		return s, fmt.Errorf("%w: longer than %d bytes", ErrSignatureHeader, maxSignatureHeaderBytes)
	}
	for item := range strings.SplitSeq(h, ",") {
		key, value, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok {
			return SignatureHeader{}, fmt.Errorf("%w: item %q is not key=value", ErrSignatureHeader, clip(item))
		}
		switch key {
		case "t":
			if s.Timestamp != "" {
				return SignatureHeader{}, fmt.Errorf("%w: more than one t", ErrSignatureHeader)
			}
			if value == "" || len(value) > maxTimestampDigits || strings.Trim(value, "0123456789") != "" {
				return SignatureHeader{}, fmt.Errorf("%w: t=%q is not 1 to %d decimal digits", ErrSignatureHeader, clip(value), maxTimestampDigits)
			}
			s.Timestamp = value
			s.Unix, _ = strconv.ParseInt(value, 10, 64) // cannot fail: at most 12 digits
		case "v1":
			if len(s.V1) == maxSignatures {
				return SignatureHeader{}, fmt.Errorf("%w: more than %d v1 signatures", ErrSignatureHeader, maxSignatures)
			}
			sig, err := hex.DecodeString(value)
			if err != nil || len(sig) != sha256.Size {
				return SignatureHeader{}, fmt.Errorf("%w: v1=%q is not %d hex digits", ErrSignatureHeader, clip(value), 2*sha256.Size)
			}
			s.V1 = append(s.V1, sig)
		}
	}
	switch {
	case s.Timestamp == "":
		return SignatureHeader{}, fmt.Errorf("%w: no t", ErrSignatureHeader)
	case len(s.V1) == 0:
		return SignatureHeader{}, fmt.Errorf("%w: no v1 signature", ErrSignatureHeader)
	}
	return s, nil
}

// clip bounds what an error repeats of hostile input.
func clip(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}

// Verify is what a receiver does with a webhook request: header is its SecurePay-Signature
// value, body the request body exactly as received (before any JSON decoding). It returns
// nil when a v1 signature is HMAC-SHA256(secret, t + "." + body) and t is within tolerance
// of now (either side: a replayed request is refused once it is older than tolerance).
// The comparison is constant-time. tolerance must be positive; 5 minutes is the usual.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		return fmt.Errorf("webhook signature: tolerance %s must be positive (without it any old request replays)", tolerance)
	}
	s, err := ParseSignatureHeader(header)
	if err != nil {
		return err
	}
	want := mac(secret, s.Timestamp, body)
	match := false
	for _, sig := range s.V1 {
		if hmac.Equal(sig, want) {
			match = true
		}
	}
	if !match {
		return ErrBadSignature
	}
	// In seconds, so that a timestamp of any size compares without overflowing a Duration.
	age := now.Unix() - s.Unix
	if limit := int64(tolerance / time.Second); age > limit || age < -limit {
		return fmt.Errorf("%w: signed at %d, now %d, tolerance %s", ErrStaleSignature, s.Unix, now.Unix(), tolerance)
	}
	return nil
}
