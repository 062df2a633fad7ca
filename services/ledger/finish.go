package ledger

import (
	"github.com/securepay/securepay/eventstore"
)

// applyAppended records a successful append: the batch's state becomes the cache's (with
// speculation it already is), and accounts that crossed a snapshot boundary are
// snapshotted.
func (p *Processor) applyAppended(bs *batchState, res eventstore.AppendResult) {
	bs.resolveStarts(res)
	for s, agg := range bs.work {
		if idx, ok := bs.index[s]; ok {
			agg.position = bs.starts[idx] + uint64(len(bs.appends[idx].Events)) - 1
		}
		if v, ok := res.Versions[s]; ok && v != agg.version {
			// The store and our fold disagree: never trust the cache for this stream again.
			p.cfg.Logger.Error("stream version mismatch after append", "stream", s, "store", v, "cache", agg.version)
			p.cache.remove(s)
			continue
		}
		if !p.speculative() {
			p.cache.put(agg)
		}
		var before uint64
		if base := bs.base[s]; base != nil {
			before = base.version
		}
		if p.cfg.Snapshots != nil && agg.account.Exists() && agg.version/p.cfg.SnapshotEvery > before/p.cfg.SnapshotEvery {
			select {
			case p.snapQueue <- snapshotRequest{stream: s, account: agg.account}:
			default: // the writer is behind; the next boundary will do
			}
		}
	}
}

// finishCall computes a call's position and wakes its caller.
func (p *Processor) finishCall(c *call, bs *batchState, res eventstore.AppendResult) {
	bs.resolveStarts(res)
	for _, r := range bs.refs[c] {
		if pos := bs.starts[r.stream] + uint64(r.event); pos > c.res.Position {
			c.res.Position = pos
		}
	}
	if len(c.at) > 0 {
		c.res.AccountPositions = make([]uint64, len(c.at))
		for i, at := range c.at {
			c.res.AccountPositions[i] = bs.position(at)
		}
	}
	c.res.PaymentPosition = bs.position(c.paymentAt)
	if c.res.Replayed && c.replayVersion > 0 {
		// The original may be in this very batch: then its position is known here;
		// otherwise Execute looks it up in the store.
		if idx, ok := bs.index[c.replayStream]; ok {
			if base := bs.base[c.replayStream]; base != nil && c.replayVersion > base.version {
				c.res.Position = bs.starts[idx] + (c.replayVersion - base.version - 1)
				c.replayVersion = 0
			}
		}
	}
	close(c.done)
}

// resolveStarts computes, once, the first log position of each of the batch's appends from
// where the store put the first one (the appends are consecutive, in bs.order).
func (bs *batchState) resolveStarts(res eventstore.AppendResult) {
	if bs.starts != nil || len(bs.order) == 0 {
		return
	}
	bs.starts = make([]uint64, len(bs.appends))
	next := res.FirstPosition
	for _, i := range bs.order {
		bs.starts[i] = next
		next += uint64(len(bs.appends[i].Events))
	}
}
