package ledger

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// batchState is the working set of one batch: the aggregates as the batch's decisions
// leave them, on top of the cache, plus what must be appended.
type batchState struct {
	base    map[string]*aggregate // state before the batch (from cache or store)
	work    map[string]*aggregate // state after the decisions so far
	assumed map[string]bool       // payment streams assumed absent without a read
	fresh   map[string]bool       // streams read from the store in this batch
	appends []eventstore.StreamAppend
	index   map[string]int // stream -> index in appends
	refs    map[*call][]eventRef
	order   []int    // appends' indexes in the order they are sent to the store
	starts  []uint64 // first position of each append, once the store answered
	now     time.Time
}

type eventRef struct{ stream, event int }

// prepare makes sure every aggregate the batch touches is in the cache and up to date,
// reading from the store in parallel what is missing or stale.
func (p *Processor) prepare(ctx context.Context, calls []*call, readEveryPayment bool, confirm map[string]bool) (*batchState, error) {
	bs := &batchState{
		base: map[string]*aggregate{}, work: map[string]*aggregate{}, assumed: map[string]bool{}, fresh: map[string]bool{},
		index: map[string]int{}, refs: map[*call][]eventRef{}, now: p.cfg.Clock(),
	}
	var jobs []loadJob
	want := func(stream string, optimistic bool) {
		if _, seen := bs.base[stream]; seen {
			return
		}
		if agg, ok := p.cache.get(stream); ok {
			bs.base[stream] = agg
			if p.stale[stream] {
				jobs = append(jobs, loadJob{stream, agg})
			}
			return
		}
		if agg := p.inflightState(stream); agg != nil {
			// Evicted from the cache while a batch in flight writes it: the store does not
			// have that state yet, the flight does.
			bs.base[stream] = agg
			p.cache.put(agg)
			return
		}
		if optimistic && !readEveryPayment && !p.mustRead[stream] && !confirm[stream] {
			// A new payment id: assume the stream is absent. The append's NoStream
			// expectation checks it atomically; a retry of an old payment that fell out of
			// the cache costs one conflict and one read.
			bs.base[stream] = &aggregate{stream: stream}
			bs.assumed[stream] = true
			return
		}
		bs.base[stream] = nil
		jobs = append(jobs, loadJob{stream, nil})
	}
	// Payments first: commands on existing payments touch the payment's accounts.
	for _, c := range calls {
		switch c.kind {
		case callReadPayment:
			want(domain.PaymentStream(c.payment), false)
		case callCommand:
			creates := false
			switch c.req.Command.(type) {
			case domain.Transfer, domain.BatchTransfer, domain.Authorise:
				creates = true
			}
			for _, id := range c.req.Command.Payments() {
				want(domain.PaymentStream(id), creates)
			}
		}
	}
	if err := p.runLoads(ctx, bs, jobs); err != nil {
		return nil, err
	}
	jobs = jobs[:0]
	for _, c := range calls {
		switch c.kind {
		case callReadAccount:
			want(domain.AccountStream(c.account), false)
		case callCommand:
			for _, id := range c.req.Command.Accounts() {
				want(domain.AccountStream(id), false)
			}
			for _, id := range c.req.Command.Payments() {
				if agg := bs.base[domain.PaymentStream(id)]; agg != nil {
					for _, acc := range domain.AccountsOf(agg.payment) {
						want(domain.AccountStream(acc), false)
					}
				}
			}
		}
	}
	if err := p.runLoads(ctx, bs, jobs); err != nil {
		return nil, err
	}
	return bs, nil
}

// inflightState returns the newest state of stream that a batch in flight will write, or
// nil. With speculation the cache holds that state, but a cache smaller than the working
// set may have evicted it.
func (p *Processor) inflightState(stream string) *aggregate {
	for i := len(p.inflight) - 1; i >= 0; i-- {
		if agg, ok := p.inflight[i].bs.work[stream]; ok {
			return agg
		}
	}
	return nil
}

// loadJob reads one stream: from scratch, or catching up from a cached state.
type loadJob struct {
	stream string
	from   *aggregate // nil: load from scratch (with snapshots for accounts)
}

func (p *Processor) runLoads(ctx context.Context, bs *batchState, jobs []loadJob) error {
	if len(jobs) == 0 {
		return nil
	}
	results := make([]*aggregate, len(jobs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(p.cfg.LoadWorkers)
	for i, j := range jobs {
		g.Go(func() error {
			var agg *aggregate
			var err error
			switch {
			case j.from != nil:
				agg, err = loadStream(gctx, p.store, j.from)
			default:
				id, isAccount, ok := streamKind(j.stream)
				switch {
				case !ok:
					err = fmt.Errorf("ledger: %q is not an account or payment stream", j.stream)
				case isAccount:
					agg, err = loadAccount(gctx, p.store, p.cfg.Snapshots, p.snapAuth, p.snapWarn, domain.AccountID(id))
				default:
					agg, err = loadPayment(gctx, p.store, domain.PaymentID(id))
				}
			}
			results[i] = agg
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("ledger: load aggregates: %w", err)
	}
	for i, j := range jobs {
		bs.base[j.stream] = results[i]
		bs.fresh[j.stream] = true
		delete(p.stale, j.stream)
		delete(p.mustRead, j.stream)
		p.cache.put(results[i])
	}
	return nil
}
