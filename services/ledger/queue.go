package ledger

import (
	"context"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

type callKind uint8

const (
	callCommand callKind = iota
	callReadAccount
	callReadPayment
)

// call is one request travelling to the loop and back.
type call struct {
	ctx     context.Context
	kind    callKind
	req     Request
	account domain.AccountID // for reads
	payment domain.PaymentID // for reads

	// Filled by the loop before done is closed.
	res           Result
	err           error
	replayStream  string // for a replay: where the original was recorded ...
	replayVersion uint64 // ... and at which stream version
	attempt       int    // failed attempts so far (conflicts)
	done          chan struct{}
}

func (p *Processor) submit(ctx context.Context, c *call) error {
	select {
	case <-p.closing:
		return ErrClosed
	default:
	}
	select {
	case p.queue <- c:
	case <-ctx.Done():
		return ctx.Err()
	case <-p.closing:
		return ErrClosed
	}
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fill takes the next batch from the backlog, then from whatever is already queued,
// without waiting, as long as the batch stays within MaxBatch commands and its events
// within one append's limit: the store refuses a larger append whole, which would fail
// every command in it for the size of the others. A call that does not fit stays first
// in the backlog for the next batch.
func (p *Processor) fill() []*call {
	var batch []*call
	events := 0
	for len(batch) < p.cfg.MaxBatch {
		if len(p.backlog) == 0 {
			select {
			case c := <-p.queue:
				p.backlog = append(p.backlog, c)
			default:
				return batch
			}
		}
		next := p.backlog[0]
		if len(batch) > 0 && events+next.maxEvents() > eventstore.MaxEventsPerAppend {
			return batch
		}
		events += next.maxEvents()
		batch = append(batch, next)
		p.backlog = p.backlog[1:]
	}
	return batch
}

// maxEvents is the most events the call can append.
func (c *call) maxEvents() int {
	if c.kind != callCommand {
		return 0
	}
	return domain.MaxEvents(c.req.Command)
}

// drain answers every call still waiting, in the backlog or the queue, with ErrClosed.
func (p *Processor) drain() {
	for _, c := range p.backlog {
		c.err = ErrClosed
		close(c.done)
	}
	p.backlog = nil
	for {
		select {
		case c := <-p.queue:
			c.err = ErrClosed
			close(c.done)
		default:
			return
		}
	}
}
