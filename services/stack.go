package services

import (
	"net/http"
	"unsafe"
)

// GrowStackFirst grows each request's goroutine stack once, at the top, to at least
// stackBytes, before next runs. The components serve behind it (RequestStackBytes), and
// so does the gateway, whose chain goes deeper: it makes a client call of its own.
//
// Every HTTP/2 request runs in a goroutine of its own, started with a small stack. The
// server's chain (limits, interceptors, validation, the handler) takes a unary request
// just past that size, so the goroutine grew its stack deep inside protovalidate, where
// the copy adjusts dozens of frames, and one more interceptor (the RPC metrics alone)
// made every request pay it: 10-21 µs of CPU per transfer in CPU profiles of
// BenchmarkTransferTelemetry on a loaded machine, against 3 µs with no interceptor
// (docs/PERFORMANCE.md). Grown here, the copy moves a few shallow frames.
func GrowStackFirst(next http.Handler, stackBytes int) http.Handler {
	// One frame of the whole size, not several nested: the runtime then grows the stack
	// once, straight to a size that fits it, copying only the server's frames below.
	grow := growStack[[RequestStackBytes]byte]
	if stackBytes > RequestStackBytes {
		grow = growStack[[maxStackBytes]byte]
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		grow()
		next.ServeHTTP(w, r)
	})
}

// RequestStackBytes is what a component's unary request needs: with what the HTTP/2
// server already uses below GrowStackFirst, enough that the stack doubles once.
const RequestStackBytes = 12 << 10

// maxStackBytes is the larger frame GrowStackFirst takes, for a size above
// RequestStackBytes: the stack grows to 32 KiB.
const maxStackBytes = 24 << 10

// growStack takes a frame of F's size, so that its prologue grows the stack.
//
//go:noinline
func growStack[F any]() {
	var frame F
	touchStack(unsafe.Pointer(&frame))
}

// touchStack keeps growStack's frame from being optimised away.
//
//go:noinline
func touchStack(p unsafe.Pointer) { *(*byte)(p) = 0 }
