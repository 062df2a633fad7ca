package services

import "net/http"

// GrowStackFirst grows each request's goroutine stack once, at the top, before next
// runs: the components serve behind it, and so does the gateway, whose chain also makes
// a client call of its own.
//
// Every HTTP/2 request runs in a goroutine of its own, started with a small stack. The
// server's chain (limits, interceptors, validation, the handler) takes a unary request
// just past that size, so the goroutine grew its stack deep inside protovalidate, where
// the copy adjusts dozens of frames, and one more interceptor (the RPC metrics alone)
// made every request pay it: 10-21 µs of CPU per transfer in CPU profiles of
// BenchmarkTransferTelemetry on a loaded machine, against 3 µs with no interceptor
// (docs/PERFORMANCE.md). Grown here, the copy moves a few shallow frames.
func GrowStackFirst(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		growStack(false)
		next.ServeHTTP(w, r)
	})
}

// requestStackBytes is the frame growStack takes: with what the HTTP/2 server already
// uses below it, enough that the stack doubles once, to 16 KiB, what a unary request
// needs, the gateway's included. Not more: the runtime keeps stacks under 32 KiB in
// per-P caches, and allocates one of 32 KiB from the heap, under its lock, for each
// request (and in CPU profiles of the gateway that cost as much as it saved).
const requestStackBytes = 12 << 10

// growStack's frame is requestStackBytes, so its prologue grows the stack. The frame
// is reserved whether or not the branch runs; the caller passes false, so the array is
// never zeroed (12 KiB of stores per request), and the branch the compiler cannot rule
// out keeps it from dropping the frame.
//
//go:noinline
func growStack(touch bool) {
	if touch {
		var frame [requestStackBytes]byte
		touchStack(frame[:])
	}
}

// touchStack uses growStack's frame.
//
//go:noinline
func touchStack(b []byte) { b[len(b)-1] = 0 }
