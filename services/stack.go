package services

import "net/http"

// growStackFirst grows each request's goroutine stack once, at the top, before the
// handler chain runs.
//
// Every HTTP/2 request runs in a goroutine of its own, started with a small stack. The
// server's chain (limits, interceptors, validation, the handler) takes a unary request
// just past that size, so the goroutine grew its stack deep inside protovalidate, where
// the copy adjusts dozens of frames, and one more interceptor (the RPC metrics alone)
// made every request pay it: 10-21 µs of CPU per transfer in CPU profiles of
// BenchmarkTransferTelemetry on a loaded machine, against 3 µs with no interceptor
// (docs/PERFORMANCE.md). Grown here, the copy moves a few shallow frames.
func growStackFirst(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		growStack()
		next.ServeHTTP(w, r)
	})
}

// requestStackBytes is the frame growStack takes: with what the HTTP/2 server already
// uses below it, enough that the stack doubles once, to what a unary request needs.
const requestStackBytes = 12 << 10

// growStack needs requestStackBytes of stack, so that its prologue grows the stack.
//
//go:noinline
func growStack() {
	var frame [requestStackBytes]byte
	touchStack(frame[:])
}

// touchStack keeps growStack's frame from being optimised away.
//
//go:noinline
func touchStack(b []byte) { b[len(b)-1] = 0 }
