package ledger

import (
	"context"
	"fmt"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// loadPage bounds one read while folding a stream.
const loadPage = 1000

// loadStream folds a stream into an aggregate, starting from base (a cached or snapshot
// state at base.version) and reading only the events after it. A million-event merchant is
// therefore replayed once per process at most, and with snapshots not even once.
func loadStream(ctx context.Context, store eventstore.Store, base *aggregate) (*aggregate, error) {
	out := *base
	for {
		page, err := store.ReadStream(ctx, out.stream, out.version, loadPage)
		if err != nil {
			return nil, fmt.Errorf("load %s after version %d: %w", out.stream, out.version, err)
		}
		for i := range page {
			rec := &page[i]
			if rec.StreamVersion != out.version+1 {
				return nil, fmt.Errorf("load %s: expected version %d, store returned %d", out.stream, out.version+1, rec.StreamVersion)
			}
			ev, err := domain.DecodeEvent(rec.Type, rec.Data)
			if err != nil {
				return nil, fmt.Errorf("load %s version %d (position %d): %w", out.stream, rec.StreamVersion, rec.Position, err)
			}
			if _, isAccount, _ := streamKind(out.stream); isAccount {
				out.account = domain.EvolveAccount(out.account, ev)
			} else {
				out.payment = domain.EvolvePayment(out.payment, ev)
			}
			out.version = rec.StreamVersion
			out.position = rec.Position
		}
		if len(page) < loadPage {
			return &out, nil
		}
	}
}

// streamKind parses a stream name; ok is false for streams that are not ours.
func streamKind(stream string) (id string, isAccount bool, ok bool) {
	acc, pay, ok := domain.ParseStream(stream)
	if !ok {
		return "", false, false
	}
	if acc != "" {
		return string(acc), true, true
	}
	return string(pay), false, true
}

// loadAccount starts from the newest snapshot that checks out (snapshot.go), then reads
// the rest of the stream. A snapshot that does not check out is ignored and logged.
func loadAccount(ctx context.Context, store eventstore.Store, snaps eventstore.SnapshotStore, auth snapshotAuth, warn *snapshotWarnings, id domain.AccountID) (*aggregate, error) {
	base := &aggregate{stream: domain.AccountStream(id)}
	if snaps != nil {
		snap, ok, err := snaps.LoadSnapshot(ctx, base.stream)
		if err != nil {
			return nil, fmt.Errorf("load snapshot of %s: %w", base.stream, err)
		}
		if ok {
			body, err := auth.open(snap, id)
			if err == nil {
				// The snapshot must describe the event the log really has at its version.
				var last []eventstore.RecordedEvent
				if last, err = store.ReadStream(ctx, base.stream, body.Version-1, 1); err != nil {
					return nil, fmt.Errorf("check snapshot of %s: %w", base.stream, err)
				}
				if len(last) != 1 {
					err = fmt.Errorf("the log has no version %d of the stream", body.Version)
				} else {
					err = body.fits(last[0])
				}
			}
			if err != nil {
				warn.ignored(base.stream, snap.Version, err)
			} else {
				base.account, base.version, base.position = body.account(), body.Version, body.Position
			}
		}
	}
	agg, err := loadStream(ctx, store, base)
	if err != nil && base.version > 0 {
		// A snapshot that checked out but does not fold on (a decoding change, say) is
		// only a cache: fall back to a full replay rather than fail.
		warn.ignored(base.stream, base.version, fmt.Errorf("folding on from it failed: %w", err))
		return loadStream(ctx, store, &aggregate{stream: base.stream})
	}
	return agg, err
}

func loadPayment(ctx context.Context, store eventstore.Store, id domain.PaymentID) (*aggregate, error) {
	return loadStream(ctx, store, &aggregate{stream: domain.PaymentStream(id)})
}
