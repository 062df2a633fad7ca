package services

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"connectrpc.com/connect"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// FuzzMetaFunc drives the header path into a command's metadata with arbitrary
// traceparent, caller and Idempotency-Key values: whatever comes in, the result is either a
// refusal of the one request (invalid input) or metadata every store can record.
func FuzzMetaFunc(f *testing.F) {
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "spiffe://securepay.dev/gateway", "key-1")
	f.Add("00-\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff-00f067aa0ba902b7-01", "user", "")
	f.Add("", "caf\xc3", "k\x00")
	f.Add("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", string(make([]byte, 300)), "")
	f.Fuzz(func(t *testing.T, traceparent, caller, key string) {
		meta := newMetaFunc(func(context.Context, http.Header) string { return caller }, nil)
		req := connect.NewRequest(&struct{}{})
		if traceparent != "" {
			req.Header()["Traceparent"] = []string{traceparent}
		}
		if key != "" {
			req.Header()[IdempotencyKeyHeader] = []string{key}
		}
		m, err := meta(context.Background(), req, "pay-1")
		if err != nil {
			if !errors.Is(err, domain.ErrInvalidInput) {
				t.Fatalf("traceparent %q: a refusal must be invalid input, got %v", traceparent, err)
			}
			return
		}
		if err := eventstore.ValidateMetadata(m); err != nil {
			t.Fatalf("accepted metadata %+v that a store refuses: %v", m, err)
		}
		if traceparent != "" && m.TraceParent != traceparent {
			t.Fatalf("traceparent %q accepted but recorded as %q", traceparent, m.TraceParent)
		}
	})
}

func TestValidTraceParent(t *testing.T) {
	for _, tc := range []struct {
		tp   string
		want bool
	}{
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", true},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", true},
		{"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more", true},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more", false},
		{"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false},
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", false},
		{"00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", false},
		{"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false},
		{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", false},
		{"", false},
	} {
		if got := validTraceParent(tc.tp); got != tc.want {
			t.Errorf("validTraceParent(%q) = %v, want %v", tc.tp, got, tc.want)
		}
	}
}
