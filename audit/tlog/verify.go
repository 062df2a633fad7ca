package tlog

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/transparency-dev/merkle/proof"
	"golang.org/x/mod/sumdb/note"

	"github.com/securepay/securepay/eventstore"
)

// Tampering says what in the log contradicts a signed checkpoint, and where.
type Tampering struct {
	Checkpoint uint64 // the checkpoint's size
	Position   uint64 // the first position found wrong; 0 when the check cannot say
	What       string
}

func (t *Tampering) Error() string {
	if t.Position == 0 {
		return fmt.Sprintf("the log is not an extension of checkpoint %d: %s", t.Checkpoint, t.What)
	}
	return fmt.Sprintf("the log is not an extension of checkpoint %d: position %d: %s", t.Checkpoint, t.Position, t.What)
}

// VerifyOptions tune VerifySince.
type VerifyOptions struct {
	// Witness, if set, is the signer's tree. It is trusted only once its root at the
	// checkpoint's size is the signed root; then its leaves name the first event that
	// differs from the checkpoint even when the hash chain was recomputed over a change.
	Witness  *Tree
	PageSize int
	Progress func(verified uint64)
}

// VerifyReport is what a successful VerifySince proved.
type VerifyReport struct {
	Checkpoint Checkpoint
	Head       uint64 // events in the log now; the first Checkpoint.Size are the signed ones
	Root       []byte // the root of the log now
	// WitnessNote says why the witness tree was not used (empty when it was, or none given).
	WitnessNote string
}

// VerifySince checks that the log now is the log a signed checkpoint covered, extended:
// it reads every event, recomputes its chain hash and its leaf from its fields, rebuilds
// the tree (O(log n) memory) and compares the root at the checkpoint's size with the
// signed root. A *Tampering names what differs and where; store errors are returned as is.
func VerifySince(ctx context.Context, s eventstore.Store, signed []byte, v note.Verifier, opts VerifyOptions) (VerifyReport, error) {
	cp, err := OpenCheckpoint(signed, v)
	if err != nil {
		return VerifyReport{}, err
	}
	rep := VerifyReport{Checkpoint: cp}
	witness := opts.Witness
	if witness != nil {
		root, err := witness.Root(cp.Size)
		switch {
		case err != nil:
			rep.WitnessNote, witness = fmt.Sprintf("the tree cannot give the root at %d: %v", cp.Size, err), nil
		case !bytes.Equal(root, cp.Root):
			rep.WitnessNote, witness = fmt.Sprintf("the tree's root at %d is not the signed root", cp.Size), nil
		}
	}
	tampered := func(pos uint64, format string, args ...any) error {
		return &Tampering{Checkpoint: cp.Size, Position: pos, What: fmt.Sprintf(format, args...)}
	}
	rng := rangeFactory.NewEmptyRange(0)
	checkRoot := func() error {
		root := hasher.EmptyRoot()
		if rng.End() > 0 {
			r, err := rng.GetRootHash(nil)
			if err != nil {
				return err
			}
			root = r
		}
		if !bytes.Equal(root, cp.Root) {
			return tampered(0, "the first %d events hash to root %s, the checkpoint signed %s: an event up to position %d was changed, replaced or reordered (give the signer's tree to name it)",
				cp.Size, base64.StdEncoding.EncodeToString(root), base64.StdEncoding.EncodeToString(cp.Root), cp.Size)
		}
		return nil
	}
	if cp.Size == 0 {
		if err := checkRoot(); err != nil {
			return rep, err
		}
	}
	chain := eventstore.NewChainVerifier(0, eventstore.Hash{})
	page := eventstore.ClampLimit(opts.PageSize)
	for {
		after, _ := chain.Verified()
		events, err := s.ReadAll(ctx, after, page)
		if err != nil {
			return rep, fmt.Errorf("verify since checkpoint: read after %d: %w", after, err)
		}
		for i := range events {
			e := &events[i]
			if err := chain.Check(e); err != nil {
				var brk *eventstore.ChainBreak
				if errors.As(err, &brk) {
					return rep, tampered(brk.Position, "%s%s", brk.Reason, describe(e, brk.Position))
				}
				return rep, err
			}
			if witness != nil && e.Position <= cp.Size {
				signedLeaf, err := witness.Leaf(e.Position - 1)
				if err != nil {
					return rep, err
				}
				if signedLeaf != e.Hash {
					return rep, tampered(e.Position, "the event here (%s version %d, %s, id %s) hashes to %s, the checkpoint covers an event hashing to %s: it was changed, replaced or moved",
						e.Stream, e.StreamVersion, e.Type, e.ID, e.Hash, signedLeaf)
				}
			}
			if err := rng.Append(LeafHash(e.Hash), nil); err != nil {
				return rep, fmt.Errorf("verify since checkpoint: %w", err)
			}
			if rng.End() == cp.Size {
				if err := checkRoot(); err != nil {
					return rep, err
				}
			}
		}
		if opts.Progress != nil {
			n, _ := chain.Verified()
			opts.Progress(n)
		}
		if len(events) < page {
			break
		}
	}
	rep.Head = rng.End()
	if rep.Head < cp.Size {
		return rep, tampered(rep.Head+1, "the log ends at position %d but the checkpoint covers %d events: positions %d to %d were deleted (the tail was truncated)",
			rep.Head, cp.Size, rep.Head+1, cp.Size)
	}
	root, err := rng.GetRootHash(nil)
	if err != nil {
		return rep, err
	}
	if rep.Head == 0 {
		root = hasher.EmptyRoot()
	}
	rep.Root = root
	return rep, nil
}

// describe names the event found at a break, if it is the one at that position.
func describe(e *eventstore.RecordedEvent, pos uint64) string {
	if e.Position != pos {
		return ""
	}
	return fmt.Sprintf(" (found %s version %d, %s, id %s)", e.Stream, e.StreamVersion, e.Type, e.ID)
}

// VerifyConsistency checks a consistency proof that checkpoint newer extends older.
func VerifyConsistency(older, newer Checkpoint, consistency [][]byte) error {
	if older.Origin != newer.Origin {
		return fmt.Errorf("tlog: checkpoints of two logs (%q, %q)", older.Origin, newer.Origin)
	}
	if older.Size > newer.Size {
		return fmt.Errorf("tlog: checkpoint %d is newer than %d", older.Size, newer.Size)
	}
	if err := proof.VerifyConsistency(hasher, older.Size, newer.Size, consistency, older.Root, newer.Root); err != nil {
		return fmt.Errorf("tlog: checkpoint %d is not an extension of checkpoint %d: %w", newer.Size, older.Size, err)
	}
	return nil
}
