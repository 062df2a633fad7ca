package ledger

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// loadPage bounds one read while folding a stream.
const loadPage = 1000

// accountSnapshotSchema names the snapshot encoding below; a reader ignores other schemas,
// so changing the encoding only needs a new name (old snapshots are then rebuilt).
const accountSnapshotSchema = "securepay.account-snapshot.v1"

type accountSnapshot struct {
	ID          string            `json:"id"`
	AssetCode   string            `json:"asset_code"`
	AssetScale  uint8             `json:"asset_scale"`
	Kind        uint8             `json:"kind"`
	CreditLimit int64             `json:"credit_limit"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	Status      uint8             `json:"status"`
	Posted      int64             `json:"posted"`
	Held        int64             `json:"held"`
	OpenHolds   int               `json:"open_holds"`
	Version     uint64            `json:"version"`
	Fingerprint string            `json:"fingerprint"`
}

func encodeAccountSnapshot(a domain.Account) ([]byte, error) {
	return json.Marshal(accountSnapshot{
		ID: string(a.ID), AssetCode: a.Asset.Code, AssetScale: a.Asset.Scale, Kind: uint8(a.Kind),
		CreditLimit: a.CreditLimit, Metadata: a.Metadata, Status: uint8(a.Status), Posted: a.Posted,
		Held: a.Held, OpenHolds: a.OpenHolds, Version: a.Version, Fingerprint: a.Fingerprint,
	})
}

func decodeAccountSnapshot(b []byte) (domain.Account, error) {
	var s accountSnapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return domain.Account{}, err
	}
	return domain.Account{
		ID: domain.AccountID(s.ID), Asset: domain.Asset{Code: s.AssetCode, Scale: s.AssetScale},
		Kind: domain.AccountKind(s.Kind), CreditLimit: s.CreditLimit, Metadata: s.Metadata,
		Status: domain.AccountStatus(s.Status), Posted: s.Posted, Held: s.Held, OpenHolds: s.OpenHolds,
		Version: s.Version, Fingerprint: s.Fingerprint,
	}, nil
}

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
					base.account, base.version = a, snap.Version
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
