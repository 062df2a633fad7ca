package ledger

import (
	"context"
	"encoding/json"
	"time"

	"github.com/securepay/securepay/domain"
)

// Snapshots are a cache of account state in the store: a long stream (a merchant with a
// million postings) is folded from its newest snapshot instead of from its first event.
// They are written off the loop by one goroutine, through a bounded queue, and losing one
// costs replay time at the next load, never a wrong answer (loadAccount checks that a
// snapshot's version exists in the log).

const (
	// snapshotQueueSize bounds the snapshots waiting for the writer; when it is full the
	// loop drops the snapshot rather than wait, and the stream's next boundary makes one.
	snapshotQueueSize = 1024
	// snapshotSaveTimeout bounds one save, so a slow store cannot hold Close for long.
	snapshotSaveTimeout = 10 * time.Second
)

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

func (p *Processor) snapshotter() {
	defer close(p.snapDone)
	for s := range p.snapQueue {
		ctx, cancel := context.WithTimeout(context.Background(), snapshotSaveTimeout)
		if err := p.cfg.Snapshots.SaveSnapshot(ctx, s); err != nil {
			// Snapshots are only a cache: a failure costs replay time later, nothing else.
			p.cfg.Logger.Warn("save snapshot", "stream", s.Stream, "version", s.Version, "err", err)
		}
		cancel()
	}
}
