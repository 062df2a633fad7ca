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
	replayStream  string     // for a replay: where the original was recorded ...
	replayVersion uint64     // ... and at which stream version
	attempt       int        // failed attempts so far (conflicts)
	alone         bool       // a batch it was in was refused as malformed: it goes in a batch of its own
	at            []stateAt  // where each of res.Accounts is in the log, resolved when the batch is answered
	atBuf         [4]stateAt // backs at for the usual two to four accounts, saving an allocation per call
	paymentAt     stateAt    // the same for res.Payment
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
	batch := make([]*call, 0, min(p.cfg.MaxBatch, len(p.backlog)+len(p.queue)))
	events, taken := 0, 0
	defer func() {
		// Compact in place: the backlog keeps its capacity instead of shrinking off the
		// front and being reallocated by the next append.
		n := copy(p.backlog, p.backlog[taken:])
		clear(p.backlog[n:]) // drop references to calls that left, for the collector
		p.backlog = p.backlog[:n]
	}()
	for len(batch) < p.cfg.MaxBatch {
		if taken == len(p.backlog) {
			select {
			case c := <-p.queue:
				p.backlog = append(p.backlog, c)
			default:
				return batch
			}
		}
		next := p.backlog[taken]
		if len(batch) > 0 && (events+next.maxEvents() > eventstore.MaxEventsPerAppend || next.alone || batch[0].alone) {
			return batch
		}
		events += next.maxEvents()
		batch = append(batch, next)
		taken++
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
