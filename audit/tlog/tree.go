package tlog

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
)

// HashSize is the size of every hash in the tree (SHA-256).
const HashSize = sha256.Size

// maxLevels bounds the tree's height: a log of 2^63 events is more than any ledger holds.
const maxLevels = 64

// repairChunk bounds the memory of a repair after a crash: parents are recomputed from at
// most this many children at a time.
const repairChunk = 4096

// ErrBeyondTree reports a size or index the tree does not hold (yet).
var ErrBeyondTree = errors.New("tlog: beyond the tree")

var hasher = rfc6962.DefaultHasher

// rangeFactory builds compact ranges with RFC 6962 interior hashing.
var rangeFactory = &compact.RangeFactory{Hash: hashChildren}

// Tree is the Merkle tree over the log's event hashes, kept in files of a directory: one
// file per level, level L holding the hashes of the complete subtrees of 2^L leaves in
// order, 32 bytes each, so node (L, i) is at offset 32*i of file L. Level 0 holds the leaf
// data (each event's chain hash, see LeafHash); the levels above hold RFC 6962 interior
// hashes. Nodes of complete subtrees never change, so the files only grow.
//
// Invariants, numbered as the code refers to them:
//  1. Size() leaves are in the files with every complete subtree above them; a reader
//     asks only for nodes within Size(), which is published after they are written.
//  2. rng is the compact range [0, Size()): O(log n) hashes, the only tree state in RAM.
//  3. Level L holds exactly Size()>>L nodes (checked after every Append, restored by
//     OpenTree after a crash).
//
// One goroutine appends (the Follower); any number read proofs concurrently.
type Tree struct {
	dir    string
	mu     sync.Mutex // serialises Append and guards rng
	rng    *compact.Range
	size   atomic.Uint64
	levels [maxLevels]atomic.Pointer[os.File]
	// bufs is Append's scratch space per level, kept between calls (guarded by mu).
	bufs [maxLevels][]byte
}

// OpenTree opens (creating if needed) the tree kept in dir, repairing what a crash in the
// middle of an Append left: a torn leaf is dropped, missing parents are recomputed and
// parents of dropped leaves are cut off (invariant 3).
func OpenTree(dir string) (*Tree, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("tlog: create %s: %w", dir, err)
	}
	t := &Tree{dir: dir}
	if err := t.recover(); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

func (t *Tree) levelPath(level uint) string {
	return filepath.Join(t.dir, fmt.Sprintf("level-%02d.hashes", level))
}

// file returns level's file, opening (and with create, creating) it on first use.
func (t *Tree) file(level uint, create bool) (*os.File, error) {
	if f := t.levels[level].Load(); f != nil {
		return f, nil
	}
	flags := os.O_RDWR
	if create {
		flags |= os.O_CREATE
	}
	f, err := os.OpenFile(t.levelPath(level), flags, 0o600)
	if err != nil {
		return nil, err
	}
	if !t.levels[level].CompareAndSwap(nil, f) {
		f.Close()
	}
	return t.levels[level].Load(), nil
}

func (t *Tree) recover() error {
	f0, err := t.file(0, true)
	if err != nil {
		return fmt.Errorf("tlog: open leaves: %w", err)
	}
	fi, err := f0.Stat()
	if err != nil {
		return fmt.Errorf("tlog: stat leaves: %w", err)
	}
	n := uint64(fi.Size()) / HashSize
	if err := f0.Truncate(int64(n * HashSize)); err != nil {
		return fmt.Errorf("tlog: cut a torn leaf: %w", err)
	}
	for level := uint(1); level < maxLevels; level++ {
		want := n >> level
		f, err := t.file(level, want > 0)
		if errors.Is(err, os.ErrNotExist) {
			break // no higher level was ever written, and none is needed
		}
		if err != nil {
			return fmt.Errorf("tlog: open level %d: %w", level, err)
		}
		fi, err := f.Stat()
		if err != nil {
			return fmt.Errorf("tlog: stat level %d: %w", level, err)
		}
		have := uint64(fi.Size()) / HashSize
		if have >= want {
			if err := f.Truncate(int64(want * HashSize)); err != nil {
				return fmt.Errorf("tlog: cut level %d: %w", level, err)
			}
			continue
		}
		if err := f.Truncate(int64(have * HashSize)); err != nil {
			return fmt.Errorf("tlog: cut level %d: %w", level, err)
		}
		for have < want {
			k := min(want-have, repairChunk)
			buf := make([]byte, 0, k*HashSize)
			for i := have; i < have+k; i++ {
				l, err := t.node(level-1, 2*i)
				if err != nil {
					return err
				}
				r, err := t.node(level-1, 2*i+1)
				if err != nil {
					return err
				}
				buf = append(buf, hashChildren(l, r)...)
			}
			if _, err := f.WriteAt(buf, int64(have*HashSize)); err != nil {
				return fmt.Errorf("tlog: repair level %d: %w", level, err)
			}
			have += k
		}
	}
	hashes, err := t.nodes(compact.RangeNodes(0, n, nil))
	if err != nil {
		return err
	}
	rng, err := rangeFactory.NewRange(0, n, hashes)
	if err != nil {
		return fmt.Errorf("tlog: rebuild the tree's right edge: %w", err)
	}
	t.rng = rng
	t.size.Store(n)
	return nil
}

// Close closes the tree's files.
func (t *Tree) Close() error {
	var errs []error
	for i := range t.levels {
		if f := t.levels[i].Swap(nil); f != nil {
			errs = append(errs, f.Close())
		}
	}
	return errors.Join(errs...)
}

// Size is the number of leaves (events) in the tree.
func (t *Tree) Size() uint64 { return t.size.Load() }

// Append adds the next leaves: each is an event's chain hash, in log order. It writes
// every complete subtree they finish, then publishes the new size (invariant 1). It is
// not durable until Sync.
func (t *Tree) Append(leaves []eventHash) error {
	if len(leaves) == 0 {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.rng.End()
	for l := range t.bufs {
		t.bufs[l] = t.bufs[l][:0]
	}
	visit := func(id compact.NodeID, h []byte) {
		if id.Level > 0 { // level 0 keeps the leaf data, written below
			t.bufs[id.Level] = append(t.bufs[id.Level], h...)
		}
	}
	for i := range leaves {
		t.bufs[0] = append(t.bufs[0], leaves[i][:]...)
		if err := t.rng.Append(LeafHash(leaves[i]), visit); err != nil {
			return fmt.Errorf("tlog: append leaf %d: %w", old+uint64(i), err)
		}
	}
	size := t.rng.End()
	// Higher levels first, the leaves last: a crash in between leaves parents without
	// their leaves, which recover cuts off, or leaves without parents, which it recomputes.
	for level := uint(maxLevels - 1); ; level-- {
		buf := t.bufs[level]
		// Invariant 3, checked where it is produced: the level grows by exactly the
		// subtrees the new leaves completed.
		if got, want := uint64(len(buf))/HashSize, size>>level-old>>level; got != want {
			return fmt.Errorf("tlog: level %d: %d new nodes, want %d", level, got, want)
		}
		if len(buf) > 0 {
			f, err := t.file(level, true)
			if err != nil {
				return fmt.Errorf("tlog: open level %d: %w", level, err)
			}
			if _, err := f.WriteAt(buf, int64(old>>level)*HashSize); err != nil {
				return fmt.Errorf("tlog: write level %d: %w", level, err)
			}
		}
		if level == 0 {
			break
		}
	}
	t.size.Store(size)
	return nil
}

// Sync makes the tree's files durable: a checkpoint is only signed over a synced tree.
func (t *Tree) Sync() error {
	for i := range t.levels {
		if f := t.levels[i].Load(); f != nil {
			if err := f.Sync(); err != nil {
				return fmt.Errorf("tlog: sync level %d: %w", i, err)
			}
		}
	}
	return nil
}

// Leaf returns the leaf data at index: the chain hash of the event at position index+1,
// as it was when the tree took it.
func (t *Tree) Leaf(index uint64) (eventHash, error) {
	var h eventHash
	if index >= t.Size() {
		return h, fmt.Errorf("%w: leaf %d, tree size %d", ErrBeyondTree, index, t.Size())
	}
	f, err := t.file(0, false)
	if err != nil {
		return h, fmt.Errorf("tlog: open leaves: %w", err)
	}
	if _, err := f.ReadAt(h[:], int64(index)*HashSize); err != nil {
		return h, fmt.Errorf("tlog: read leaf %d: %w", index, err)
	}
	return h, nil
}

// node reads a complete subtree's hash; level 0 is hashed as a leaf.
func (t *Tree) node(level uint, index uint64) ([]byte, error) {
	f, err := t.file(level, false)
	if err != nil {
		return nil, fmt.Errorf("tlog: open level %d: %w", level, err)
	}
	h := make([]byte, HashSize)
	if _, err := f.ReadAt(h, int64(index)*HashSize); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("tlog: read node (%d, %d): %w", level, index, err)
	}
	if level == 0 {
		return LeafHash(eventHash(h)), nil
	}
	return h, nil
}

func (t *Tree) nodes(ids []compact.NodeID) ([][]byte, error) {
	out := make([][]byte, len(ids))
	for i, id := range ids {
		h, err := t.node(id.Level, id.Index)
		if err != nil {
			return nil, err
		}
		out[i] = h
	}
	return out, nil
}

func (t *Tree) checkSize(size uint64) error {
	if have := t.Size(); size > have {
		return fmt.Errorf("%w: size %d, the tree holds %d events", ErrBeyondTree, size, have)
	}
	return nil
}

// Root returns the root hash of the tree's first size leaves, from O(log size) reads.
func (t *Tree) Root(size uint64) ([]byte, error) {
	if err := t.checkSize(size); err != nil {
		return nil, err
	}
	if size == 0 {
		return hasher.EmptyRoot(), nil
	}
	hashes, err := t.nodes(compact.RangeNodes(0, size, nil))
	if err != nil {
		return nil, err
	}
	rng, err := rangeFactory.NewRange(0, size, hashes)
	if err != nil {
		return nil, fmt.Errorf("tlog: root of %d: %w", size, err)
	}
	return rng.GetRootHash(nil)
}

// InclusionProof proves leaf index in the tree of the given size (RFC 6962 audit path).
func (t *Tree) InclusionProof(index, size uint64) ([][]byte, error) {
	if err := t.checkSize(size); err != nil {
		return nil, err
	}
	if index >= size {
		return nil, fmt.Errorf("%w: leaf %d is not in a tree of size %d", ErrBeyondTree, index, size)
	}
	ns, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, fmt.Errorf("tlog: inclusion proof: %w", err)
	}
	return t.rehash(ns)
}

// ConsistencyProof proves that the tree of size2 extends the tree of size1 (RFC 6962).
func (t *Tree) ConsistencyProof(size1, size2 uint64) ([][]byte, error) {
	if err := t.checkSize(size2); err != nil {
		return nil, err
	}
	if size1 > size2 {
		return nil, fmt.Errorf("tlog: consistency from size %d to the smaller %d", size1, size2)
	}
	ns, err := proof.Consistency(size1, size2)
	if err != nil {
		return nil, fmt.Errorf("tlog: consistency proof: %w", err)
	}
	return t.rehash(ns)
}

func (t *Tree) rehash(ns proof.Nodes) ([][]byte, error) {
	hashes, err := t.nodes(ns.IDs)
	if err != nil {
		return nil, err
	}
	return ns.Rehash(hashes, hashChildren)
}
