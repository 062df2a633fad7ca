package services

import "net/http"

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
	steps := max(1, (stackBytes+stackStepBytes-1)/stackStepBytes)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		growStack(steps)
		next.ServeHTTP(w, r)
	})
}

// RequestStackBytes is what a component's unary request needs: with what the HTTP/2
// server already uses below GrowStackFirst, enough that the stack doubles once.
const RequestStackBytes = 12 << 10

// stackStepBytes is one growStack frame. The stack grows by doubling, so a few frames
// of this size nested take it to the size asked for, each copy moving only the frames
// of growStack above the handler's few.
const stackStepBytes = 4 << 10

// growStack takes steps nested frames of stackStepBytes, so that their prologues grow
// the stack.
//
//go:noinline
func growStack(steps int) {
	var frame [stackStepBytes]byte
	if steps > 1 {
		growStack(steps - 1)
	}
	touchStack(frame[:])
}

// touchStack keeps growStack's frame from being optimised away.
//
//go:noinline
func touchStack(b []byte) { b[len(b)-1] = 0 }
