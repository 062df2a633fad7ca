package ledger

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
)

// An auditor's check of the stored snapshots, without the server's snapshot key.
//
// The MAC only says that the server wrote a snapshot; an auditor cannot check it (the key
// is the server's) and need not: everything a snapshot claims can be recomputed from the
// log. For each snapshot in the store, the event at its stream version must be at its
// position with its chain hash, and its account must equal the fold of the stream's
// events up to that version, folded with domain.EvolveAccount as the ledger does
// (loadStream). A forged snapshot, whatever key it was signed with, fails one of these;
// a genuine one always passes, however old.
//
// A stream has at most one snapshot, so this folds each snapshotted stream once, up to
// the snapshot's version, and the log once for the expirer's checkpoint (its open
// authorisations must be the fold of the log up to its position): the work is bounded by
// twice the log's size, not by snapshots × log.

// SnapshotCheck names the check a snapshot failed.
type SnapshotCheck string

// The checks, in the order they are made.
const (
	SnapshotMalformed       SnapshotCheck = "malformed"        // not a decodable account snapshot
	SnapshotWrongStream     SnapshotCheck = "wrong stream"     // the body is another stream's (or account's)
	SnapshotWrongVersion    SnapshotCheck = "wrong version"    // stored under a version it did not fold
	SnapshotUnknownPosition SnapshotCheck = "unknown position" // the log has no such event at that version and position
	SnapshotHashMismatch    SnapshotCheck = "hash mismatch"    // the event is there, with another chain hash
	SnapshotFoldFailed      SnapshotCheck = "fold failed"      // the stream's events up to the version do not decode
	SnapshotStateDiffers    SnapshotCheck = "state differs"    // the account is not the fold of the events
)

// SnapshotFailure is one snapshot that does not check out.
type SnapshotFailure struct {
	Stream   string // the stream the snapshot is stored under
	Version  uint64 // the version it is stored under
	Position uint64 // the log position its body names (0 when the body could not be read)
	Check    SnapshotCheck
	Detail   string
}

func (f SnapshotFailure) String() string {
	return fmt.Sprintf("snapshot of %s at version %d (position %d): %s: %s", f.Stream, f.Version, f.Position, f.Check, f.Detail)
}

// SnapshotReport is what VerifySnapshots found.
type SnapshotReport struct {
	Checked      int      // account snapshots and expirer checkpoints checked (Failures included)
	IgnoredCount int      // snapshots the ledger never reads, not checked
	Ignored      []string // the first maxIgnoredListed of them, with why
	Failures     []SnapshotFailure
}

// maxIgnoredListed bounds SnapshotReport.Ignored; the count goes on in IgnoredCount.
const maxIgnoredListed = 100

// VerifySnapshots checks every snapshot snaps lists against the log in store (see above).
// Snapshots the ledger never reads (another schema, a stream that is not an account's) are
// counted in IgnoredCount, not checked: they cannot change an answer. The error is for a store
// that cannot be read; a snapshot that fails is in the report.
func VerifySnapshots(ctx context.Context, store eventstore.Store, snaps eventstore.SnapshotLister) (SnapshotReport, error) {
	var rep SnapshotReport
	err := snaps.EachSnapshot(ctx, func(snap eventstore.Snapshot) error {
		if snap.Stream == ExpirerCheckpointStream && snap.Schema == expirerCheckpointSchema {
			rep.Checked++
			f, err := checkExpirerCheckpoint(ctx, store, snap)
			if err != nil {
				return err
			}
			if f != nil {
				rep.Failures = append(rep.Failures, *f)
			}
			return nil
		}
		id, isAccount, ok := streamKind(snap.Stream)
		if !ok || !isAccount || snap.Schema != accountSnapshotSchema {
			rep.IgnoredCount++
			if len(rep.Ignored) < maxIgnoredListed {
				rep.Ignored = append(rep.Ignored, fmt.Sprintf("%s (version %d, schema %q): the ledger never loads it", snap.Stream, snap.Version, snap.Schema))
			}
			return nil
		}
		rep.Checked++
		f, err := checkSnapshot(ctx, store, snap, domain.AccountID(id))
		if err != nil {
			return err
		}
		if f != nil {
			rep.Failures = append(rep.Failures, *f)
		}
		return nil
	})
	return rep, err
}

// checkSnapshot returns the failure of one account snapshot, or nil when it checks out.
func checkSnapshot(ctx context.Context, store eventstore.Store, snap eventstore.Snapshot, id domain.AccountID) (*SnapshotFailure, error) {
	fail := func(pos uint64, check SnapshotCheck, format string, args ...any) (*SnapshotFailure, error) {
		return &SnapshotFailure{Stream: snap.Stream, Version: snap.Version, Position: pos, Check: check, Detail: fmt.Sprintf(format, args...)}, nil
	}
	if len(snap.State) < sha256.Size {
		return fail(0, SnapshotMalformed, "%d bytes, shorter than its MAC", len(snap.State))
	}
	var b snapshotBody
	if err := json.Unmarshal(snap.State[sha256.Size:], &b); err != nil {
		return fail(0, SnapshotMalformed, "the body does not decode: %v", err)
	}
	switch {
	case b.Stream != snap.Stream || b.Account.ID != string(id):
		return fail(b.Position, SnapshotWrongStream, "stored for %s, but its body is the snapshot of %s (account %q)", snap.Stream, b.Stream, b.Account.ID)
	case b.Version != snap.Version || b.Account.Version != b.Version:
		return fail(b.Position, SnapshotWrongVersion, "stored at version %d, but its body folded version %d (account version %d)", snap.Version, b.Version, b.Account.Version)
	case b.Position == 0:
		return fail(0, SnapshotUnknownPosition, "its body names position 0, which no event has")
	}
	acc, last, folded, err := foldAccountTo(ctx, store, snap.Stream, b.Version)
	switch {
	case err != nil:
		return nil, err
	case folded < b.Version:
		return fail(b.Position, SnapshotUnknownPosition, "the log's stream has %d events, none at version %d", folded, b.Version)
	case last.Position != b.Position:
		return fail(b.Position, SnapshotUnknownPosition, "the log's event at version %d is at position %d, not %d", b.Version, last.Position, b.Position)
	case hex.EncodeToString(last.Hash[:]) != b.ChainHash:
		return fail(b.Position, SnapshotHashMismatch, "the log's event at position %d has chain hash %x, the snapshot names %s", b.Position, last.Hash[:], b.ChainHash)
	}
	if acc.err != nil {
		return fail(b.Position, SnapshotFoldFailed, "%v", acc.err)
	}
	if diffs := accountDiffs(b.Account, snapshotOfAccount(acc.account)); len(diffs) > 0 {
		return fail(b.Position, SnapshotStateDiffers, "snapshot vs the fold of the events: %s", strings.Join(diffs, "; "))
	}
	return nil, nil
}

// foldedAccount is an account folded from events, or why the events did not fold.
type foldedAccount struct {
	account domain.Account
	err     error
}

// foldAccountTo folds a stream's events up to version (as loadStream does) and returns the
// account, the last event read and how many were read. A decoding failure is returned in
// the foldedAccount, not as the error, which is only for a store that cannot be read.
func foldAccountTo(ctx context.Context, store eventstore.Store, stream string, version uint64) (foldedAccount, eventstore.RecordedEvent, uint64, error) {
	var out foldedAccount
	var last eventstore.RecordedEvent
	var done uint64
	for done < version {
		page, err := store.ReadStream(ctx, stream, done, int(min(uint64(loadPage), version-done)))
		if err != nil {
			return out, last, done, fmt.Errorf("read %s after version %d: %w", stream, done, err)
		}
		for i := range page {
			rec := &page[i]
			if rec.StreamVersion != done+1 {
				return out, last, done, fmt.Errorf("read %s: expected version %d, the store returned %d", stream, done+1, rec.StreamVersion)
			}
			if out.err == nil {
				ev, err := domain.DecodeEvent(rec.Type, rec.Data)
				if err != nil {
					out.err = fmt.Errorf("version %d (position %d): %w", rec.StreamVersion, rec.Position, err)
				} else {
					out.account = domain.EvolveAccount(out.account, ev)
				}
			}
			last, done = *rec, rec.StreamVersion
		}
		if len(page) == 0 {
			break
		}
	}
	return out, last, done, nil
}

// accountDiffs names every field where the snapshot's account (s) differs from the fold (f).
func accountDiffs(s, f accountSnapshot) []string {
	var d []string
	field := func(name string, sv, fv any) {
		if sv != fv {
			d = append(d, fmt.Sprintf("%s %v vs %v", name, sv, fv))
		}
	}
	asset := domain.Asset{Code: f.AssetCode, Scale: f.AssetScale}
	money := func(name string, sv, fv int64) {
		if sv != fv {
			d = append(d, fmt.Sprintf("%s %s vs %s %s", name, domain.FormatMinor(sv, asset), domain.FormatMinor(fv, asset), asset.Code))
		}
	}
	field("id", s.ID, f.ID)
	field("asset_code", s.AssetCode, f.AssetCode)
	field("asset_scale", s.AssetScale, f.AssetScale)
	field("kind", s.Kind, f.Kind)
	money("credit_limit", s.CreditLimit, f.CreditLimit)
	if !maps.Equal(s.Metadata, f.Metadata) {
		d = append(d, fmt.Sprintf("metadata %v vs %v", s.Metadata, f.Metadata))
	}
	field("status", s.Status, f.Status)
	money("posted balance", s.Posted, f.Posted)
	money("held", s.Held, f.Held)
	field("open_holds", s.OpenHolds, f.OpenHolds)
	field("version", s.Version, f.Version)
	field("fingerprint", s.Fingerprint, f.Fingerprint)
	return d
}

// checkExpirerCheckpoint checks the expirer's checkpoint (expirercheckpoint.go) as an
// account snapshot is checked: the event at its position has its chain hash, and its open
// authorisations are exactly the expirer's fold of the log up to that position (same
// payments, deadlines, authorised and captured amounts). A checkpoint that left an
// authorisation out would keep its hold forever, so this is worth one read of the log.
func checkExpirerCheckpoint(ctx context.Context, store eventstore.Store, snap eventstore.Snapshot) (*SnapshotFailure, error) {
	fail := func(pos uint64, check SnapshotCheck, format string, args ...any) (*SnapshotFailure, error) {
		return &SnapshotFailure{Stream: snap.Stream, Version: snap.Version, Position: pos, Check: check, Detail: fmt.Sprintf(format, args...)}, nil
	}
	if len(snap.State) < sha256.Size {
		return fail(0, SnapshotMalformed, "%d bytes, shorter than its MAC", len(snap.State))
	}
	var b checkpointBody
	if err := json.Unmarshal(snap.State[sha256.Size:], &b); err != nil {
		return fail(0, SnapshotMalformed, "the body does not decode: %v", err)
	}
	switch {
	case b.Position != snap.Version:
		return fail(b.Position, SnapshotWrongVersion, "stored at position %d, but its body folded position %d", snap.Version, b.Position)
	case b.Position == 0:
		return fail(0, SnapshotUnknownPosition, "its body names position 0, which no event has")
	}
	x := &Expirer{open: map[domain.PaymentID]*openAuth{}}
	var foldErr error
	for x.pos < b.Position {
		page, err := store.ReadAll(ctx, x.pos, int(min(uint64(loadPage), b.Position-x.pos)))
		if err != nil {
			return nil, fmt.Errorf("read the log after position %d: %w", x.pos, err)
		}
		if len(page) == 0 {
			break
		}
		if foldErr == nil {
			foldErr = x.observe(ctx, page)
		}
		x.pos, x.hash = page[len(page)-1].Position, page[len(page)-1].Hash
	}
	switch {
	case x.pos < b.Position:
		return fail(b.Position, SnapshotUnknownPosition, "the log ends at position %d", x.pos)
	case hex.EncodeToString(x.hash[:]) != b.ChainHash:
		return fail(b.Position, SnapshotHashMismatch, "the log's event at position %d has chain hash %x, the checkpoint names %s", b.Position, x.hash[:], b.ChainHash)
	case foldErr != nil:
		return fail(b.Position, SnapshotFoldFailed, "%v", foldErr)
	}
	var diffs []string
	claimed := map[domain.PaymentID]bool{}
	for _, a := range b.Open {
		id := domain.PaymentID(a.Payment)
		claimed[id] = true
		f := x.open[id]
		switch {
		case f == nil:
			diffs = append(diffs, fmt.Sprintf("%s is not open in the log", id))
		case a.Deadline != f.expiresAt.UnixNano() || a.Authorised != f.authorised || a.Captured != f.captured:
			diffs = append(diffs, fmt.Sprintf("%s: deadline %s authorised %d captured %d vs %s %d %d", id,
				time.Unix(0, a.Deadline).UTC().Format(time.RFC3339Nano), a.Authorised, a.Captured, f.expiresAt.UTC().Format(time.RFC3339Nano), f.authorised, f.captured))
		}
	}
	for id := range x.open {
		if !claimed[id] {
			diffs = append(diffs, fmt.Sprintf("%s is open in the log but missing (its hold would never be released)", id))
		}
	}
	if len(diffs) > 0 {
		slices.Sort(diffs)
		const maxListed = 10
		more := ""
		if len(diffs) > maxListed {
			more = fmt.Sprintf("; and %d more", len(diffs)-maxListed)
			diffs = diffs[:maxListed]
		}
		return fail(b.Position, SnapshotStateDiffers, "checkpoint vs the fold of the log: %s%s", strings.Join(diffs, "; "), more)
	}
	return nil, nil
}
