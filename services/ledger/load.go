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

// loadAccount starts from the newest usable snapshot, then reads the rest of the stream.
func loadAccount(ctx context.Context, store eventstore.Store, snaps eventstore.SnapshotStore, id domain.AccountID) (*aggregate, error) {
	base := &aggregate{stream: domain.AccountStream(id)}
	if snaps != nil {
		snap, ok, err := snaps.LoadSnapshot(ctx, base.stream)
		if err != nil {
			return nil, fmt.Errorf("load snapshot of %s: %w", base.stream, err)
		}
		if ok && snap.Schema == accountSnapshotSchema {
			if a, err := decodeAccountSnapshot(snap.State); err == nil && a.Version == snap.Version && a.ID == id {
				// The snapshot must describe a version the log really has.
				last, err := store.ReadStream(ctx, base.stream, snap.Version-1, 1)
				if err != nil {
					return nil, fmt.Errorf("check snapshot of %s: %w", base.stream, err)
				}
				if len(last) == 1 && last[0].StreamVersion == snap.Version {
					base.account, base.version, base.position = a, snap.Version, last[0].Position
				}
			}
		}
	}
	agg, err := loadStream(ctx, store, base)
	if err != nil && base.version > 0 {
		// A snapshot that does not fit the log (a log restored from backup, say) is only a
		// cache: fall back to a full replay rather than fail.
		return loadStream(ctx, store, &aggregate{stream: base.stream})
	}
	return agg, err
}

func loadPayment(ctx context.Context, store eventstore.Store, id domain.PaymentID) (*aggregate, error) {
	return loadStream(ctx, store, &aggregate{stream: domain.PaymentStream(id)})
}
