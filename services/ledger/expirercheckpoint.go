package ledger

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// The expirer's checkpoint: its fold of the log (the open authorisations) and the log
// position it folded up to, kept as a snapshot of the stream ExpirerCheckpointStream. At
// start the expirer loads it and follows the log after that position, so a restart reads
// the events since the last checkpoint, not the whole log.
//
// It is trusted as much as an account snapshot (snapshot.go) and for the same reasons:
// whoever can write the snapshot table could otherwise hide an authorisation from every
// expirer, and its hold would never be released. So it is
//
//   - bound to the log: it names the position and chain hash of the last event it folded,
//     and that event must be in the log at that position with that hash;
//   - authenticated: HMAC-SHA256 with the processor's snapshot key, over the schema name
//     (so an account snapshot's MAC never verifies as a checkpoint), a zero byte and the body.
//
// A checkpoint that is missing or does not check out is logged and the expirer folds the
// log from position 0: slower, never a later position and so never a missed expiry. An old
// but genuine checkpoint is still right (it is the fold of the log up to its position):
// the store keeps the one with the highest position, whichever instance saved it, so
// several expirers may save into the same stream.
//
// Format (docs/SECURITY.md lists the snapshot formats): Snapshot.Schema is
// expirerCheckpointSchema, Snapshot.Version the position folded, Snapshot.State = MAC (32
// bytes) || body, body the JSON of checkpointBody.

// ExpirerCheckpointStream is the snapshot stream holding the expirer's checkpoint. It is
// not a stream of the log (no event is ever appended to it).
const ExpirerCheckpointStream = "expirer-state"

const expirerCheckpointSchema = "securepay.expirer-checkpoint.v1"

// checkpointBody is what the MAC covers.
type checkpointBody struct {
	Position  uint64           `json:"position"`   // the last log position folded
	ChainHash string           `json:"chain_hash"` // that event's chain hash, hex
	Open      []checkpointAuth `json:"open"`
}

type checkpointAuth struct {
	Payment    string `json:"p"`
	Deadline   int64  `json:"d"` // Unix nanoseconds, UTC
	Authorised int64  `json:"a"`
	Captured   int64  `json:"c"`
}

func checkpointMAC(key, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(expirerCheckpointSchema))
	m.Write([]byte{0})
	m.Write(body)
	return m.Sum(nil)
}

// checkpointOf copies the fold; the caller holds the expirer's lock, and encodes the copy
// after releasing it, so a large fold does not stall the log's follower while it is encoded.
func checkpointOf(open map[domain.PaymentID]*openAuth) []checkpointAuth {
	out := make([]checkpointAuth, 0, len(open))
	for id, a := range open {
		out = append(out, checkpointAuth{Payment: string(id), Deadline: a.expiresAt.UnixNano(), Authorised: a.authorised, Captured: a.captured})
	}
	return out
}

// encodeCheckpoint signs the fold open, made up to the event at (position, hash).
func encodeCheckpoint(key []byte, position uint64, hash eventstore.Hash, open []checkpointAuth) (eventstore.Snapshot, error) {
	body, err := json.Marshal(checkpointBody{Position: position, ChainHash: hex.EncodeToString(hash[:]), Open: open})
	if err != nil {
		return eventstore.Snapshot{}, err
	}
	state := append(checkpointMAC(key, body), body...)
	return eventstore.Snapshot{Stream: ExpirerCheckpointStream, Version: position, Schema: expirerCheckpointSchema, State: state}, nil
}

// openCheckpoint checks what can be checked without the log; the caller must still check
// the binding (body.Position, body.ChainHash) against the log.
func openCheckpoint(key []byte, snap eventstore.Snapshot) (checkpointBody, map[domain.PaymentID]*openAuth, error) {
	switch {
	case snap.Schema != expirerCheckpointSchema:
		return checkpointBody{}, nil, fmt.Errorf("schema %q is not %s", snap.Schema, expirerCheckpointSchema)
	case len(snap.State) < sha256.Size:
		return checkpointBody{}, nil, fmt.Errorf("%d bytes, shorter than its MAC", len(snap.State))
	}
	mac, body := snap.State[:sha256.Size], snap.State[sha256.Size:]
	if !hmac.Equal(mac, checkpointMAC(key, body)) {
		return checkpointBody{}, nil, errors.New("MAC does not verify: not written with this server's snapshot key")
	}
	var b checkpointBody
	if err := json.Unmarshal(body, &b); err != nil {
		return checkpointBody{}, nil, fmt.Errorf("authenticated but undecodable: %w", err)
	}
	if b.Position == 0 || b.Position != snap.Version {
		return checkpointBody{}, nil, fmt.Errorf("stored at position %d but it folded position %d", snap.Version, b.Position)
	}
	open := make(map[domain.PaymentID]*openAuth, len(b.Open))
	for _, a := range b.Open {
		if a.Payment == "" {
			return checkpointBody{}, nil, errors.New("an open authorisation without a payment id")
		}
		at := time.Unix(0, a.Deadline).UTC()
		open[domain.PaymentID(a.Payment)] = &openAuth{expiresAt: at, deadline: at, authorised: a.Authorised, captured: a.Captured}
	}
	return b, open, nil
}

// loadCheckpoint returns the checkpoint that checks out, or found=false with the reason
// (nil when there is simply none).
func loadCheckpoint(ctx context.Context, store eventstore.Store, snaps eventstore.SnapshotStore, key []byte) (pos uint64, hash eventstore.Hash, open map[domain.PaymentID]*openAuth, found bool, reason error) {
	snap, ok, err := snaps.LoadSnapshot(ctx, ExpirerCheckpointStream)
	if err != nil {
		return 0, hash, nil, false, fmt.Errorf("load: %w", err)
	}
	if !ok {
		return 0, hash, nil, false, nil
	}
	b, open, err := openCheckpoint(key, snap)
	if err != nil {
		return 0, hash, nil, false, err
	}
	recs, err := store.ReadAll(ctx, b.Position-1, 1)
	if err != nil {
		return 0, hash, nil, false, fmt.Errorf("read the event at position %d: %w", b.Position, err)
	}
	if len(recs) != 1 || recs[0].Position != b.Position || hex.EncodeToString(recs[0].Hash[:]) != b.ChainHash {
		return 0, hash, nil, false, fmt.Errorf("the log has no event at position %d with chain hash %s (another or a rewritten log)", b.Position, b.ChainHash)
	}
	return b.Position, recs[0].Hash, open, true, nil
}
