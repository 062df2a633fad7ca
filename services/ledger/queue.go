package ledger

import (
	"context"

	"github.com/securepay/securepay/domain"
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

// fill tops a batch up with whatever is already queued, without waiting.
func (p *Processor) fill(batch []*call) []*call {
	for len(batch) < p.cfg.MaxBatch {
		select {
		case c := <-p.queue:
			batch = append(batch, c)
		default:
			return batch
		}
	}
	return batch
}

func (p *Processor) drain() {
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
