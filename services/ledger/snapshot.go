package ledger

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// Snapshots are a cache of account state in the store: a long stream (a merchant with a
// million postings) is folded from its newest snapshot instead of from its first event.
// They are written off the loop by one goroutine, through a bounded queue, and losing one
// costs replay time at the next load, never a wrong answer.
//
// A snapshot is never trusted blindly: whoever can write the store's snapshot table (the
// database's serving role, a backup restored over it) could otherwise hand the processor
// any balance it likes, and the processor decides payments on it. So each snapshot is
//
//   - bound to the log: it names the stream, the version it folded, and the position and
//     chain hash of that version's event; at load the event at that version must have that
//     position and hash, so a snapshot moved to another version, another stream or another
//     log (a rewritten one) does not fit;
//   - authenticated: an HMAC-SHA256 over the above and the state, with a key the database
//     does not hold (Config.SnapshotKey; `serve` reads it from a secret file, `dev` keeps
//     one in its directory).
//
// Verifying against the events instead would mean folding them, which is what a snapshot
// exists to avoid; the check costs about 3 µs of CPU (BenchmarkSnapshotCheck). An old but
// genuine snapshot of the same stream still fits: loading from it folds the events after
// it, so it is slower, not wrong. A snapshot that does not check out is ignored, logged
// once per stream with the reason, and the account is folded from its first event.
//
// Format (docs/SECURITY.md): Snapshot.Schema is accountSnapshotSchema, Snapshot.Version the
// folded version, Snapshot.State = MAC (32 bytes) || body, where body is the JSON of
// snapshotBody and MAC = HMAC-SHA256(key, accountSnapshotSchema || 0x00 || body).

const (
	// snapshotQueueSize bounds the snapshots waiting for the writer; when it is full the
	// loop drops the snapshot rather than wait, and the stream's next boundary makes one.
	snapshotQueueSize = 1024
	// snapshotSaveTimeout bounds one save, so a slow store cannot hold Close for long.
	snapshotSaveTimeout = 10 * time.Second
	// MinSnapshotKeyBytes is the shortest Config.SnapshotKey accepted: HMAC-SHA256's own
	// block of entropy.
	MinSnapshotKeyBytes = 32
	// maxSnapshotWarnings bounds the streams remembered as already logged; past it the set
	// starts over (a stream may then be logged again, which is only noise).
	maxSnapshotWarnings = 4096
)

// accountSnapshotSchema names the snapshot encoding below; a reader ignores other schemas,
// so changing the encoding only needs a new name (old snapshots are then rebuilt). v1 was
// the same account JSON without binding or MAC: it is never used now.
const accountSnapshotSchema = "securepay.account-snapshot.v2"

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

// snapshotBody is what the MAC covers: the account and where in the log it was folded to.
type snapshotBody struct {
	Stream    string          `json:"stream"`
	Version   uint64          `json:"version"`    // the stream version folded
	Position  uint64          `json:"position"`   // the log position of that version's event
	ChainHash string          `json:"chain_hash"` // that event's hash, hex
	Account   accountSnapshot `json:"account"`
}

func snapshotOfAccount(acc domain.Account) accountSnapshot {
	return accountSnapshot{
		ID: string(acc.ID), AssetCode: acc.Asset.Code, AssetScale: acc.Asset.Scale, Kind: uint8(acc.Kind),
		CreditLimit: acc.CreditLimit, Metadata: acc.Metadata, Status: uint8(acc.Status), Posted: acc.Posted,
		Held: acc.Held, OpenHolds: acc.OpenHolds, Version: acc.Version, Fingerprint: acc.Fingerprint,
	}
}

// snapshotAuth signs and checks snapshots with one key.
type snapshotAuth struct{ key []byte }

func (a snapshotAuth) mac(body []byte) []byte {
	m := hmac.New(sha256.New, a.key)
	m.Write([]byte(accountSnapshotSchema))
	m.Write([]byte{0})
	m.Write(body)
	return m.Sum(nil)
}

// encode returns the snapshot of a, folded to the event at (position, hash).
func (a snapshotAuth) encode(acc domain.Account, stream string, position uint64, hash eventstore.Hash) (eventstore.Snapshot, error) {
	body, err := json.Marshal(snapshotBody{
		Stream: stream, Version: acc.Version, Position: position, ChainHash: hex.EncodeToString(hash[:]),
		Account: snapshotOfAccount(acc),
	})
	if err != nil {
		return eventstore.Snapshot{}, err
	}
	state := append(a.mac(body), body...)
	return eventstore.Snapshot{Stream: stream, Version: acc.Version, Schema: accountSnapshotSchema, State: state}, nil
}

// open checks what can be checked without the log and returns the body; the caller must
// still check the binding (Position, ChainHash) against the event at body.Version.
func (a snapshotAuth) open(snap eventstore.Snapshot, id domain.AccountID) (snapshotBody, error) {
	stream := domain.AccountStream(id)
	switch {
	case snap.Schema != accountSnapshotSchema:
		return snapshotBody{}, fmt.Errorf("schema %q is not %s", snap.Schema, accountSnapshotSchema)
	case len(snap.State) < sha256.Size:
		return snapshotBody{}, fmt.Errorf("%d bytes, shorter than its MAC", len(snap.State))
	}
	mac, body := snap.State[:sha256.Size], snap.State[sha256.Size:]
	if !hmac.Equal(mac, a.mac(body)) {
		return snapshotBody{}, errors.New("MAC does not verify: not written with this server's snapshot key")
	}
	var b snapshotBody
	if err := json.Unmarshal(body, &b); err != nil {
		return snapshotBody{}, fmt.Errorf("authenticated but undecodable: %w", err)
	}
	switch {
	case b.Stream != stream || b.Account.ID != string(id):
		return snapshotBody{}, fmt.Errorf("it is the snapshot of %s (account %q)", b.Stream, b.Account.ID)
	case b.Version != snap.Version || b.Account.Version != b.Version:
		return snapshotBody{}, fmt.Errorf("stored at version %d but it folded version %d", snap.Version, b.Version)
	case b.Version == 0 || b.Position == 0:
		return snapshotBody{}, errors.New("version or position 0")
	}
	return b, nil
}

func (b snapshotBody) account() domain.Account {
	s := b.Account
	return domain.Account{
		ID: domain.AccountID(s.ID), Asset: domain.Asset{Code: s.AssetCode, Scale: s.AssetScale},
		Kind: domain.AccountKind(s.Kind), CreditLimit: s.CreditLimit, Metadata: s.Metadata,
		Status: domain.AccountStatus(s.Status), Posted: s.Posted, Held: s.Held, OpenHolds: s.OpenHolds,
		Version: s.Version, Fingerprint: s.Fingerprint,
	}
}

// fits checks the binding: the log's event at the snapshot's version is the one it folded.
func (b snapshotBody) fits(ev eventstore.RecordedEvent) error {
	if ev.StreamVersion != b.Version || ev.Position != b.Position || hex.EncodeToString(ev.Hash[:]) != b.ChainHash {
		return fmt.Errorf("the log's event at version %d is at position %d with hash %x, the snapshot names position %d and hash %s",
			b.Version, ev.Position, ev.Hash[:], b.Position, b.ChainHash)
	}
	return nil
}

// snapshotWarnings remembers the streams whose rejected snapshot was logged, so a bad
// snapshot read at every cache miss is logged once, not at every load.
type snapshotWarnings struct {
	mu     sync.Mutex
	logged map[string]bool
	log    *slog.Logger
}

func (w *snapshotWarnings) ignored(stream string, version uint64, reason error) {
	w.mu.Lock()
	seen := w.logged[stream]
	if !seen {
		if len(w.logged) >= maxSnapshotWarnings {
			clear(w.logged)
		}
		w.logged[stream] = true
	}
	w.mu.Unlock()
	if !seen {
		w.log.Warn("snapshot ignored: folding the account from its events", "stream", stream, "version", version, "reason", reason.Error())
	}
}

// snapshotRequest is an account to snapshot, as folded to its Version.
type snapshotRequest struct {
	stream  string
	account domain.Account
}

func (p *Processor) snapshotter() {
	defer close(p.snapDone)
	for r := range p.snapQueue {
		ctx, cancel := context.WithTimeout(context.Background(), snapshotSaveTimeout)
		if err := p.saveSnapshot(ctx, r); err != nil {
			// Snapshots are only a cache: a failure costs replay time later, nothing else.
			p.cfg.Logger.Warn("save snapshot", "stream", r.stream, "version", r.account.Version, "err", err)
		}
		cancel()
	}
}

// saveSnapshot binds the snapshot to the event the store holds at its version (one
// read, off the loop) and saves it.
func (p *Processor) saveSnapshot(ctx context.Context, r snapshotRequest) error {
	v := r.account.Version
	last, err := p.store.ReadStream(ctx, r.stream, v-1, 1)
	if err != nil {
		return fmt.Errorf("read the event at version %d: %w", v, err)
	}
	if len(last) != 1 || last[0].StreamVersion != v {
		return fmt.Errorf("the store has no event at version %d", v)
	}
	snap, err := p.snapAuth.encode(r.account, r.stream, last[0].Position, last[0].Hash)
	if err != nil {
		return err
	}
	return p.cfg.Snapshots.SaveSnapshot(ctx, snap)
}
