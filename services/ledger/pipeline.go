package ledger

import (
	"context"
	"errors"
	"fmt"

	"github.com/securepay/securepay/eventstore"
)

// flight is a decided batch on its way to the store and back.
type flight struct {
	calls   []*call
	bs      *batchState
	appends []eventstore.StreamAppend // bs.appends in store order
	res     eventstore.AppendResult
	err     error
}

// loop runs the pipeline outlined on Processor: it decides batches on the cache, keeps at
// most depth of them in flight to the committer, and answers them in order.
func (p *Processor) loop() {
	defer close(p.done)
	defer close(p.snapQueue)
	depth := 1
	if p.speculative() {
		depth = speculativeDepth
	}
	toStore := make(chan *flight, depth)
	fromStore := make(chan *flight, depth)
	go p.committer(toStore, fromStore)
	defer close(toStore)

	closing := p.closing
	for {
		if closing == nil && len(p.inflight) == 0 {
			p.drain()
			return
		}
		// After a failed append, no batch starts until those in flight are answered: their
		// state is gone from the cache, and a batch decided on the store's state meanwhile
		// could reuse a version number an in-flight batch is about to write with other
		// content — the one way an expected version could match a state that was never
		// decided on.
		room := len(p.inflight) < depth && closing != nil && !p.poisoned
		if room && len(p.backlog) > 0 {
			p.start(p.fill(), toStore)
			continue
		}
		var queue <-chan *call
		if room {
			queue = p.queue
		}
		select {
		case c := <-queue:
			p.backlog = append(p.backlog, c)
			p.start(p.fill(), toStore)
		case f := <-fromStore:
			// Shift in place so the slice keeps its capacity (an append per batch otherwise).
			p.inflight[0] = nil
			p.inflight = p.inflight[:copy(p.inflight, p.inflight[1:])]
			// Retries go first: they were asked before anything still queued.
			p.backlog = append(p.complete(f, p.inflight), p.backlog...)
		case <-closing:
			closing = nil
		}
	}
}

// speculativeDepth is how many batches may be in flight on a store this process owns
// alone: one being made durable, one decided on the state it leaves. A third would wait
// for the same fsync as the second, so it would only add state to throw away on failure.
const speculativeDepth = 2

func (p *Processor) speculative() bool { return !p.cfg.SharedStore }

func (p *Processor) committer(in <-chan *flight, out chan<- *flight) {
	for f := range in {
		if len(f.appends) > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), p.cfg.BatchTimeout)
			f.res, f.err = p.observeAppend(ctx, f)
			cancel()
		}
		out <- f
	}
}

// readPaymentsAfterAttempts: once a call has failed this many attempts, its batch reads
// every payment stream instead of assuming new ids absent. One conflict on an assumed
// stream marks that stream to be read; a second failure means assumptions keep costing
// round trips, and one read per payment is cheaper than another conflict.
const readPaymentsAfterAttempts = 2

// start decides a batch and hands it to the committer.
//
// A refusal is only returned once it is known to rest on the real state of every payment
// stream the command names. A payment id missing from the cache is assumed new without a
// read (the append's NoStream expectation checks that for free); but a refusal appends
// nothing, so nothing would check the assumption, and a retry of a payment that was
// applied before a restart or an eviction would be decided anew against today's balances
// and refused — telling a client "refused" for money that moved. So a refusal made on an
// assumed stream sends the batch round again with that stream read from the store.
// Each such round reads at least one stream that the previous round assumed, so the
// rounds end; they cost one read per refused new payment, none for accepted ones.
func (p *Processor) start(batch []*call, toStore chan<- *flight) {
	live := make([]*call, 0, len(batch))
	readEveryPayment := false
	for _, c := range batch {
		if err := c.ctx.Err(); err != nil {
			c.err = err // the caller is gone; do not commit what nobody waits for
			close(c.done)
			continue
		}
		readEveryPayment = readEveryPayment || c.attempt >= readPaymentsAfterAttempts
		live = append(live, c)
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.BatchTimeout)
	defer cancel()
	var confirm map[string]bool // payment streams this batch must read, not assume absent; made on first need
	for attempt := 1; ; attempt++ {
		bs, err := p.prepare(ctx, live, readEveryPayment, confirm)
		if err != nil {
			p.failAll(live, err)
			return
		}
		assumed, recheck := p.decideAll(bs, live)
		if len(assumed) > 0 {
			if confirm == nil {
				confirm = map[string]bool{}
			}
			for _, s := range assumed {
				confirm[s] = true
			}
			p.resetResults(live)
			p.retried(RetryConfirm, len(live))
			continue
		}
		if len(recheck) > 0 && attempt < p.cfg.MaxAttempts {
			// Shared store: refusals made on cached state are confirmed on fresh state.
			for _, s := range recheck {
				p.stale[s] = true
			}
			p.resetResults(live)
			p.retried(RetryConfirm, len(live))
			continue
		}
		if p.speculative() {
			for _, agg := range bs.work {
				p.cache.put(agg)
			}
		}
		f := &flight{calls: live, bs: bs, appends: bs.ordered()}
		toStore <- f // never blocks: the channel holds as many flights as may be in flight
		p.inflight = append(p.inflight, f)
		if p.hooks.decided != nil {
			p.hooks.decided(len(live))
		}
		return
	}
}

// complete handles a batch the store has answered and returns the calls to retry.
func (p *Processor) complete(f *flight, later []*flight) (retry []*call) {
	defer func() {
		if len(later) == 0 {
			p.poisoned = false
		}
	}()
	if f.err == nil {
		p.applyAppended(f.bs, f.res)
		for _, c := range f.calls {
			if p.poisoned && len(f.bs.refs[c]) == 0 && c.attempt+1 < p.cfg.MaxAttempts {
				// An earlier batch failed: an answer that appended nothing may rest on
				// its speculative state. Decide it again.
				c.attempt++
				p.resetResults([]*call{c})
				retry = append(retry, c)
				p.retried(RetrySpeculation, 1)
				continue
			}
			p.finishCall(c, f.bs, f.res)
		}
		return retry
	}
	// The append failed. Forget the touched streams' cached state: with speculation the
	// cache holds this batch's (and later batches') unconfirmed state; with a shared
	// store the outcome may be unknown (a timeout after commit).
	var conflict *eventstore.ConflictError
	isConflict := errors.As(f.err, &conflict)
	if isConflict {
		p.mustRead[conflict.Stream] = true
	}
	if p.speculative() {
		p.poisoned = len(later) > 0
		for _, g := range append([]*flight{f}, later...) {
			for _, a := range g.appends {
				p.cache.remove(a.Stream)
			}
		}
	} else {
		for _, a := range f.appends {
			p.stale[a.Stream] = true
		}
	}
	// The store refused the append as malformed: the cause is one command's input, but
	// the refusal names no command. Each call of a shared batch is tried again alone, so
	// only the one that carries the cause fails.
	isolate := errors.Is(f.err, eventstore.ErrInvalidAppend) && countCommands(f.calls) > 1
	for _, c := range f.calls {
		c.attempt++
		if (isConflict && c.attempt < p.cfg.MaxAttempts) || (isolate && !c.alone) {
			c.alone = c.alone || isolate
			p.resetResults([]*call{c})
			retry = append(retry, c)
			if isConflict {
				p.retried(RetryConflict, 1)
			} else {
				p.retried(RetryIsolate, 1)
			}
			continue
		}
		if isConflict {
			c.err = fmt.Errorf("ledger: %d attempts conflicted with other writers: %w", c.attempt, f.err)
		} else {
			c.err = fmt.Errorf("ledger: append: %w", f.err)
		}
		c.res = Result{}
		close(c.done)
	}
	return retry
}

func countCommands(calls []*call) int {
	n := 0
	for _, c := range calls {
		if c.kind == callCommand {
			n++
		}
	}
	return n
}

func (p *Processor) resetResults(calls []*call) {
	for _, c := range calls {
		c.res, c.err, c.replayStream, c.replayVersion = Result{}, nil, "", 0
		c.at, c.paymentAt = c.at[:0], stateAt{}
	}
}

func (p *Processor) failAll(calls []*call, err error) {
	for _, c := range calls {
		c.err = err
		c.res = Result{}
		close(c.done)
	}
}
