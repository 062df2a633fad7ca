package ledger

import (
	"context"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// Observer watches the write path for traces and metrics; services/telemetry implements
// it. The ledger knows no tracing or metrics library: a nil Config.Observer costs one nil
// check per call site, which is what "telemetry off" must cost.
//
// Methods are called from callers' goroutines (Command and its done), the committer
// (Append and its done) and the loop (Retried). They must be safe for concurrent use,
// quick, and must never block: the loop and the committer are every caller's path.
type Observer interface {
	// Command is called by Execute before the command queues. The context it returns
	// replaces the caller's for the command's life (it must be derived from it: the
	// pipeline watches it for cancellation); the batch the command joins hands it to
	// Append. traceParent, when not empty, is recorded on the command's events instead of
	// the request's, so that whoever reads the events (projectors, the relay) continues
	// the command's trace from the command's own span. done is called exactly once, with
	// what Execute returns.
	Command(ctx context.Context, cmd domain.Command) (_ context.Context, traceParent string, done func(Result, error))
	// Append is called by the committer just before one batch's atomic append, with the
	// append's context (its deadline), the context of each command in the batch and the
	// number of events. The store call runs in the returned context, which must be derived
	// from ctx; done is called exactly once with the store's answer.
	Append(ctx context.Context, commands []context.Context, events int) (context.Context, func(eventstore.AppendResult, error))
	// Retried is called each time a command is decided again, for one of the Retry* reasons.
	Retried(reason string)
}

// Why a command is decided again (the label values of the retry metric).
const (
	RetryConflict    = "conflict"    // the store refused the batch: another writer moved a stream
	RetrySpeculation = "speculation" // an earlier speculative batch failed while this one was in flight
	RetryIsolate     = "isolate"     // the store refused a shared batch as malformed: each call goes alone
	RetryConfirm     = "confirm"     // a refusal is confirmed on state read from the store
)

// RetryReasons lists every reason Retried is called with.
func RetryReasons() []string {
	return []string{RetryConflict, RetrySpeculation, RetryIsolate, RetryConfirm}
}

func (p *Processor) retried(reason string, n int) {
	if p.cfg.Observer == nil {
		return
	}
	for range n {
		p.cfg.Observer.Retried(reason)
	}
}

// observeAppend calls the observer around one batch's append; without one it only appends.
func (p *Processor) observeAppend(ctx context.Context, f *flight) (eventstore.AppendResult, error) {
	if p.cfg.Observer == nil {
		return p.store.Append(ctx, f.appends...)
	}
	cmds := make([]context.Context, 0, len(f.calls))
	for _, c := range f.calls {
		if c.kind == callCommand {
			cmds = append(cmds, c.ctx)
		}
	}
	events := 0
	for _, a := range f.appends {
		events += len(a.Events)
	}
	ctx, done := p.cfg.Observer.Append(ctx, cmds, events)
	res, err := p.store.Append(ctx, f.appends...)
	done(res, err)
	return res, err
}
