package ledger

import (
	"fmt"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// ordered returns the batch's appends with every account stream before every payment
// stream. A payment command's payment event is then its last event in the log, so the
// position of that one event is "the command's position" — the same number whether the
// command was just made or is a retry answered from the payment stream alone.
func (bs *batchState) ordered() []eventstore.StreamAppend {
	bs.order = bs.order[:0]
	for pass := range 2 {
		for i, a := range bs.appends {
			_, isAccount, _ := streamKind(a.Stream)
			if isAccount == (pass == 0) {
				bs.order = append(bs.order, i)
			}
		}
	}
	out := make([]eventstore.StreamAppend, len(bs.appends))
	for k, i := range bs.order {
		out[k] = bs.appends[i]
	}
	return out
}

// current returns the working state of a stream in this batch.
func (bs *batchState) current(stream string) *aggregate {
	if a, ok := bs.work[stream]; ok {
		return a
	}
	if a := bs.base[stream]; a != nil {
		return a
	}
	return &aggregate{stream: stream}
}

// decideAll decides every call in order on the batch's working state and collects the
// events to append. It returns the payment streams a refusal assumed absent without a
// read (always to be confirmed), and the streams whose cached state a refusal relied on
// when those must be confirmed against the store (shared store only).
func (p *Processor) decideAll(bs *batchState, calls []*call) (assumed, recheck []string) {
	for _, c := range calls {
		switch c.kind {
		case callReadAccount:
			s := domain.AccountStream(c.account)
			a := bs.current(s).account
			if !a.Exists() {
				c.err = fmt.Errorf("%w: account %s does not exist", domain.ErrAccountUnknown, c.account)
			}
			c.res.Accounts = []domain.Account{a}
			c.at = append(c.atBuf[:0], bs.where(s))
			continue
		case callReadPayment:
			s := domain.PaymentStream(c.payment)
			pay := bs.current(s).payment
			if !pay.Exists() {
				c.err = fmt.Errorf("%w: payment %s does not exist", domain.ErrPaymentUnknown, c.payment)
			}
			c.res.Payment = &pay
			c.paymentAt = bs.where(s)
			continue
		}
		cmd := c.req.Command
		state := domain.State{Accounts: map[domain.AccountID]domain.Account{}, Payments: map[domain.PaymentID]domain.Payment{}, Limits: p.cfg.Limits}
		var touched []string
		for _, id := range cmd.Payments() {
			s := domain.PaymentStream(id)
			state.Payments[id] = bs.current(s).payment
			touched = append(touched, s)
		}
		accounts := cmd.Accounts()
		for _, id := range cmd.Payments() {
			accounts = append(accounts, domain.AccountsOf(state.Payments[id])...)
		}
		for _, id := range accounts {
			s := domain.AccountStream(id)
			state.Accounts[id] = bs.current(s).account
			touched = append(touched, s)
		}
		events, err := domain.Decide(state, cmd, bs.now)
		if err == nil {
			err = domain.CheckBalanced(events)
			if err != nil {
				err = fmt.Errorf("ledger: refusing an unbalanced decision (a bug): %w", err)
			}
		}
		if err != nil {
			c.err = err
			for _, id := range cmd.Payments() {
				if s := domain.PaymentStream(id); bs.assumed[s] {
					assumed = append(assumed, s)
				}
			}
			if p.cfg.SharedStore && domain.IsDomainError(err) {
				recheck = append(recheck, p.unconfirmed(bs, touched)...)
			}
			continue
		}
		if len(events) == 0 {
			p.replayResult(bs, c, state, accounts)
			continue
		}
		if err := p.stage(bs, c, events); err != nil {
			c.err = err
			continue
		}
		p.result(bs, c, accounts)
	}
	return assumed, recheck
}

// unconfirmed lists the touched streams whose state came from the cache rather than from a
// read in this batch.
func (p *Processor) unconfirmed(bs *batchState, streams []string) []string {
	var out []string
	for _, s := range streams {
		if !bs.fresh[s] && !bs.assumed[s] {
			out = append(out, s)
		}
	}
	return out
}

// stage encodes a decision's events, adds them to the batch's appends and folds them into
// the working state.
func (p *Processor) stage(bs *batchState, c *call, events []domain.Event) error {
	type encoded struct {
		stream string
		data   eventstore.EventData
	}
	enc := make([]encoded, 0, len(events))
	meta := c.req.Meta
	if meta.CorrelationID == "" {
		if ids := c.req.Command.Payments(); len(ids) > 0 {
			meta.CorrelationID = string(ids[0])
		}
	}
	for _, e := range events {
		name, data, err := domain.EncodeEvent(e)
		if err != nil {
			return fmt.Errorf("ledger: %w", err)
		}
		enc = append(enc, encoded{e.Stream(), eventstore.EventData{ID: p.cfg.NewEventID(), Type: name, Data: data, Metadata: meta}})
	}
	for i, e := range events {
		s := enc[i].stream
		idx, ok := bs.index[s]
		if !ok {
			base := bs.current(s)
			idx = len(bs.appends)
			bs.index[s] = idx
			bs.appends = append(bs.appends, eventstore.StreamAppend{Stream: s, Expected: eventstore.Exact(base.version)})
		}
		bs.appends[idx].Events = append(bs.appends[idx].Events, enc[i].data)
		bs.refs[c] = append(bs.refs[c], eventRef{idx, len(bs.appends[idx].Events) - 1})

		// The batch owns its work copies and may update them in place; the base (the
		// cache's state) is copied once, on the batch's first event for the stream.
		next, owned := bs.work[s]
		if !owned {
			copied := *bs.current(s)
			next = &copied
			bs.work[s] = next
		}
		switch e.(type) {
		case domain.AccountEvent:
			next.account = domain.EvolveAccount(next.account, e)
		case domain.PaymentEvent:
			next.payment = domain.EvolvePayment(next.payment, e)
		}
		next.version++
	}
	return nil
}

func (p *Processor) result(bs *batchState, c *call, accounts []domain.AccountID) {
	seen := make(map[domain.AccountID]bool, len(accounts))
	c.at = c.atBuf[:0]
	for _, id := range accounts {
		if !seen[id] {
			seen[id] = true
			s := domain.AccountStream(id)
			c.res.Accounts = append(c.res.Accounts, bs.current(s).account)
			c.at = append(c.at, bs.where(s))
		}
	}
	if ids := c.req.Command.Payments(); len(ids) > 0 {
		s := domain.PaymentStream(ids[0])
		pay := bs.current(s).payment
		c.res.Payment = &pay
		c.paymentAt = bs.where(s)
	}
}

// stateAt says where in the log a state taken during decision is true: at an event the
// batch staged for the stream (known once the store answers), or at the last event of a
// state from before the batch (whose position a batch still in flight may set later).
type stateAt struct {
	staged bool
	ref    eventRef
	before *aggregate
}

// where records where the stream's current working state will be in the log.
func (bs *batchState) where(stream string) stateAt {
	if idx, ok := bs.index[stream]; ok {
		return stateAt{staged: true, ref: eventRef{idx, len(bs.appends[idx].Events) - 1}}
	}
	return stateAt{before: bs.base[stream]}
}

// position resolves a stateAt once the batch's positions are known.
func (bs *batchState) position(at stateAt) uint64 {
	switch {
	case at.staged:
		return bs.starts[at.ref.stream] + uint64(at.ref.event)
	case at.before != nil:
		return at.before.position
	}
	return 0 // the stream does not exist
}

// replayResult answers a command that changes nothing: a retry of an applied command, or
// a no-op such as freezing a frozen account. It records where the original (or the latest
// state) was written so its position can be reported.
func (p *Processor) replayResult(bs *batchState, c *call, state domain.State, accounts []domain.AccountID) {
	c.res.Replayed = true
	p.result(bs, c, accounts)
	var op domain.Op
	switch cmd := c.req.Command.(type) {
	case domain.Transfer, domain.BatchTransfer, domain.Authorise:
		id := cmd.Payments()[0]
		op, _ = state.Payments[id].FindOp(domain.OpCreate, "")
		c.replayStream = domain.PaymentStream(id)
	case domain.Capture:
		op, _ = state.Payments[cmd.PaymentID].FindOp(domain.OpCapture, cmd.CaptureID)
		c.replayStream = domain.PaymentStream(cmd.PaymentID)
	case domain.Refund:
		op, _ = state.Payments[cmd.PaymentID].FindOp(domain.OpRefund, cmd.RefundID)
		c.replayStream = domain.PaymentStream(cmd.PaymentID)
	case domain.Void, domain.Expire:
		// Nothing to do: the answer is the payment as it stands.
		id := cmd.Payments()[0]
		op.Version = state.Payments[id].Version
		c.replayStream = domain.PaymentStream(id)
	case domain.OpenAccount:
		op.Version = 1
		c.replayStream = domain.AccountStream(cmd.AccountID)
	case domain.FreezeAccount, domain.UnfreezeAccount, domain.CloseAccount:
		id := cmd.Accounts()[0]
		op.Version = state.Accounts[id].Version
		c.replayStream = domain.AccountStream(id)
	}
	c.replayVersion = op.Version
}
