package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	hopv1 "github.com/securepay/securepay/api/gen/securepay/hop/v1"
)

// Bounds of one HopService.Forward (api/proto/securepay/hop/v1/hop.proto allows 1,024
// calls and 4 MiB): a batch is closed at maxBatchCalls calls or maxBatchBytes bytes,
// whichever comes first, so that one Forward's answer does not wait on a megabyte of
// others' requests. A call larger than maxBatchedCallBytes (possible when
// Config.MaxRequestBytes is raised) never joins a batch: it goes alone.
const (
	maxBatchCalls       = 1024
	maxBatchBytes       = 1 << 20
	maxBatchedCallBytes = 3 << 20
	maxForwardBytes     = 4 << 20
)

// DefaultHopInFlight is how many Forwards the gateway keeps in flight to payments when
// Config.HopInFlight is 0.
const DefaultHopInFlight = 4

// forwardFunc sends one Forward: one result per call, in order, or the error of the
// whole Forward.
type forwardFunc func(ctx context.Context, calls []*hopv1.Call) ([]*hopv1.Result, error)

// hopBatcher gathers the calls that callers forward to the payments component into
// HopService.Forward calls. There is no timer: a call waits only while every Forward
// slot is busy, and a slot that frees takes everything queued (up to one batch's
// bounds). Under low load each call goes alone at once; under load the batches grow with
// the number of callers waiting, which is where a call of its own (an HTTP/2 stream, its
// headers and frames, at both ends) cost more than the ledger's work.
//
// Invariants (checked by batch_internal_test.go):
//  1. 0 <= inFlight <= maxInFlight; each slot counted in inFlight is one sender
//     goroutine, which holds it from its first Forward until it finds nothing to send.
//  2. The queue holds calls only while every slot is busy (inFlight == maxInFlight):
//     enqueue starts senders while slots are free, and a sender takes the queue after
//     each Forward before it lets its slot go.
//  3. Every call enqueued is answered exactly once (its done channel closed): by the
//     result at its index in its Forward's answer, by the Forward's error, or, abandoned
//     by its caller before it was sent, by errAbandoned, which nobody reads.
//  4. The queue holds at most maxQueued calls; a caller beyond that is refused at once
//     (UNAVAILABLE, as a payments component that cannot take the call).
type hopBatcher struct {
	forward     forwardFunc
	maxInFlight int
	maxQueued   int
	// noDeadline bounds a Forward one of whose calls has no deadline (the component's own
	// request timeout applies to each call; this only frees the slot of a hung hop).
	noDeadline time.Duration
	// observe, if set, is told the size of each Forward sent.
	observe func(calls int)

	// aloneUntil (Unix nanoseconds) is when to try Forward again after payments answered
	// one with UNIMPLEMENTED (a component older than the gateway, during a rolling
	// upgrade): until then calls go alone, instead of each paying a refused Forward first.
	aloneUntil atomic.Int64

	mu       sync.Mutex
	queue    []*hopCall
	inFlight int
}

// forwardRetryAfter is how long the gateway sends calls alone after payments refused a
// Forward as unimplemented: an upgraded component is found within it.
const forwardRetryAfter = time.Minute

// alone reports whether calls go alone for now (aloneUntil).
func (b *hopBatcher) alone(now time.Time) bool { return now.UnixNano() < b.aloneUntil.Load() }

// unsupported records that payments does not serve Forward, as of now.
func (b *hopBatcher) unsupported(now time.Time) {
	b.aloneUntil.Store(now.Add(forwardRetryAfter).UnixNano())
}

// hopCall is one caller's call and, once done is closed, its answer.
type hopCall struct {
	call *hopv1.Call
	// size approximates the call's encoded size, for the batch's byte bound.
	size int
	// deadline is the caller's (zero: none), which bounds the Forward it travels in.
	deadline time.Time
	// abandoned is set by a caller that stopped waiting; a call not yet sent is dropped.
	abandoned atomic.Bool

	done   chan struct{}
	result *hopv1.Result
	err    error
}

// errAbandoned answers a call whose caller left before it was sent.
var errAbandoned = errors.New("gateway: the caller left before the call was sent")

func newHopBatcher(forward forwardFunc, maxInFlight int) *hopBatcher {
	return &hopBatcher{forward: forward, maxInFlight: maxInFlight, maxQueued: 64 << 10, noDeadline: time.Minute}
}

// newHopCall is call ready to be queued; deadline is the caller's (zero: none).
func newHopCall(call *hopv1.Call, deadline time.Time) *hopCall {
	size := len(call.GetProcedure()) + len(call.GetMessage()) + 16
	for _, h := range call.GetHeaders() {
		size += len(h.GetName()) + len(h.GetValue()) + 6
	}
	return &hopCall{call: call, size: size, deadline: deadline, done: make(chan struct{})}
}

// do queues c and waits for its answer or for ctx to end. A caller that leaves gets
// CANCELED or DEADLINE_EXCEEDED at once; its call, if already sent, still runs at the
// component, as a lone call whose client hung up may.
func (b *hopBatcher) do(ctx context.Context, c *hopCall) (*hopv1.Result, error) {
	if ctx.Err() != nil {
		return nil, contextError(ctx) // gone already: a lone call would not be sent either
	}
	if err := b.enqueue(c); err != nil {
		return nil, err
	}
	select {
	case <-c.done:
		return c.result, c.err
	case <-ctx.Done():
		c.abandoned.Store(true)
		return nil, contextError(ctx)
	}
}

func contextError(ctx context.Context) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	}
	return connect.NewError(connect.CodeCanceled, err)
}

func (b *hopBatcher) enqueue(c *hopCall) error {
	var start [][]*hopCall
	b.mu.Lock()
	if len(b.queue) >= b.maxQueued {
		b.mu.Unlock()
		// Reasonless UNAVAILABLE: upstreamError answers it as an unreachable ledger.
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("gateway: %d calls already wait for the hop to payments", b.maxQueued))
	}
	b.queue = append(b.queue, c)
	for b.inFlight < b.maxInFlight && len(b.queue) > 0 {
		batch := b.takeLocked()
		if len(batch) == 0 {
			break // only abandoned calls were queued; takeLocked dropped them
		}
		b.inFlight++
		start = append(start, batch)
	}
	b.mu.Unlock()
	for _, batch := range start {
		go b.send(batch)
	}
	return nil
}

// takeLocked removes the next batch from the queue: the calls still awaited, in queue
// order, up to maxBatchCalls and maxBatchBytes (at least one call, however large).
// Abandoned calls it passes over are answered and dropped.
func (b *hopBatcher) takeLocked() []*hopCall {
	var batch []*hopCall
	bytes, n := 0, 0
	for ; n < len(b.queue); n++ {
		c := b.queue[n]
		if c.abandoned.Load() {
			c.err = errAbandoned
			close(c.done)
			continue
		}
		if len(batch) == maxBatchCalls || (len(batch) > 0 && bytes+c.size > maxBatchBytes) {
			break
		}
		batch = append(batch, c)
		bytes += c.size
	}
	rest := copy(b.queue, b.queue[n:])
	clear(b.queue[rest:])
	b.queue = b.queue[:rest]
	return batch
}

// send holds one slot: it forwards batch, answers its calls, and goes on with what was
// queued meanwhile until the queue is empty.
func (b *hopBatcher) send(batch []*hopCall) {
	for len(batch) > 0 {
		b.forwardBatch(batch)
		b.mu.Lock()
		batch = b.takeLocked()
		if len(batch) == 0 {
			b.inFlight--
		}
		b.mu.Unlock()
	}
}

// forwardBatch sends one Forward and answers each of its calls.
func (b *hopBatcher) forwardBatch(batch []*hopCall) {
	calls := make([]*hopv1.Call, len(batch))
	var latest time.Time
	bounded := true
	for i, c := range batch {
		calls[i] = c.call
		if c.deadline.IsZero() {
			bounded = false
		} else if c.deadline.After(latest) {
			latest = c.deadline
		}
	}
	// The Forward is no caller's: one caller leaving must not cancel the others' calls.
	// Its deadline is the latest of its calls' (a little later, so that the component's
	// own DEADLINE_EXCEEDED reaches them rather than the hop's).
	var ctx context.Context
	var cancel context.CancelFunc
	if bounded {
		ctx, cancel = context.WithDeadline(context.Background(), latest.Add(time.Second))
	} else {
		ctx, cancel = context.WithTimeout(context.Background(), b.noDeadline)
	}
	if b.observe != nil {
		b.observe(len(calls))
	}
	results, err := b.forward(ctx, calls)
	cancel()
	if err == nil && len(results) != len(batch) {
		// Not a *connect.Error: upstreamError logs it and answers INTERNAL.
		err = fmt.Errorf("gateway: payments answered %d results to a Forward of %d calls", len(results), len(batch))
	}
	for i, c := range batch {
		if err != nil {
			c.err = err
		} else if c.result = results[i]; c.result == nil {
			c.err = fmt.Errorf("gateway: payments answered no result for call %d of a Forward", i)
		}
		close(c.done)
	}
}
