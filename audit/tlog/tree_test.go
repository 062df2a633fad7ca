package tlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/transparency-dev/merkle/proof"
)

// syntheticLeaves returns n distinct event hashes, the same for the same n and seed.
func syntheticLeaves(seed, n uint64) []eventHash {
	out := make([]eventHash, n)
	for i := range out {
		var b [16]byte
		binary.BigEndian.PutUint64(b[:8], seed)
		binary.BigEndian.PutUint64(b[8:], uint64(i))
		out[i] = sha256.Sum256(b[:])
	}
	return out
}

// referenceRoot computes the root of leaves with the library's compact range alone, in
// memory: the model the file-backed tree must agree with.
func referenceRoot(t testing.TB, leaves []eventHash) []byte {
	t.Helper()
	if len(leaves) == 0 {
		return hasher.EmptyRoot()
	}
	r := rangeFactory.NewEmptyRange(0)
	for _, l := range leaves {
		if err := r.Append(LeafHash(l), nil); err != nil {
			t.Fatal(err)
		}
	}
	root, err := r.GetRootHash(nil)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// appendRandomBatches appends leaves in batches of random sizes (seeded).
func appendRandomBatches(t testing.TB, tr *Tree, leaves []eventHash, rnd *rand.Rand) {
	t.Helper()
	for len(leaves) > 0 {
		k := min(len(leaves), 1+rnd.IntN(37))
		if err := tr.Append(leaves[:k]); err != nil {
			t.Fatal(err)
		}
		leaves = leaves[k:]
	}
}

func TestTreeAgreesWithTheReferenceAndItsProofsVerify(t *testing.T) {
	seed := uint64(rand.Uint32())
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 1))
	const n = 300
	leaves := syntheticLeaves(seed, n)
	tr, err := OpenTree(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	appendRandomBatches(t, tr, leaves, rnd)
	if tr.Size() != n {
		t.Fatalf("size %d after appending %d leaves", tr.Size(), n)
	}
	roots := make([][]byte, n+1)
	for size := uint64(0); size <= n; size++ {
		roots[size] = referenceRoot(t, leaves[:size])
		got, err := tr.Root(size)
		if err != nil {
			t.Fatalf("root %d: %v", size, err)
		}
		if !bytes.Equal(got, roots[size]) {
			t.Fatalf("root at size %d: got %x, the reference says %x", size, got, roots[size])
		}
	}
	for size := uint64(1); size <= n; size += 1 + uint64(rnd.IntN(7)) {
		for index := uint64(0); index < size; index += 1 + uint64(rnd.IntN(5)) {
			p, err := tr.InclusionProof(index, size)
			if err != nil {
				t.Fatalf("inclusion %d in %d: %v", index, size, err)
			}
			if err := proof.VerifyInclusion(hasher, index, size, LeafHash(leaves[index]), p, roots[size]); err != nil {
				t.Fatalf("inclusion proof of %d in %d does not verify: %v", index, size, err)
			}
		}
		for size1 := uint64(1); size1 <= size; size1 += 1 + uint64(rnd.IntN(9)) {
			p, err := tr.ConsistencyProof(size1, size)
			if err != nil {
				t.Fatalf("consistency %d..%d: %v", size1, size, err)
			}
			if err := proof.VerifyConsistency(hasher, size1, size, p, roots[size1], roots[size]); err != nil {
				t.Fatalf("consistency proof %d..%d does not verify: %v", size1, size, err)
			}
		}
	}
}

func TestTreeRefusesWhatItDoesNotHold(t *testing.T) {
	tr, err := OpenTree(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Append(syntheticLeaves(1, 10)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"root beyond", func() error { _, err := tr.Root(11); return err }},
		{"inclusion size beyond", func() error { _, err := tr.InclusionProof(3, 11); return err }},
		{"inclusion index not below size", func() error { _, err := tr.InclusionProof(5, 5); return err }},
		{"consistency beyond", func() error { _, err := tr.ConsistencyProof(3, 12); return err }},
		{"leaf beyond", func() error { _, err := tr.Leaf(10); return err }},
	} {
		if err := tc.call(); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
	if _, err := tr.ConsistencyProof(7, 4); err == nil {
		t.Error("consistency from a larger to a smaller size: no error")
	}
}

// A crash in the middle of Append leaves the level files out of step; OpenTree must bring
// them back to the state of a whole number of leaves, whatever was cut.
func TestTreeRecoversFromATornAppend(t *testing.T) {
	leaves := syntheticLeaves(7, 200)
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string)
		size   uint64
	}{
		{"half a leaf written", func(t *testing.T, dir string) {
			appendFile(t, filepath.Join(dir, "level-00.hashes"), make([]byte, 17))
		}, 200},
		{"parents lost", func(t *testing.T, dir string) {
			for _, l := range []int{1, 3, 5} {
				truncateFile(t, filepath.Join(dir, fmt.Sprintf("level-%02d.hashes", l)), 0)
			}
		}, 200},
		{"leaves lost, parents kept", func(t *testing.T, dir string) {
			truncateFile(t, filepath.Join(dir, "level-00.hashes"), 150*HashSize)
		}, 150},
		{"a level file missing", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "level-02.hashes")); err != nil {
				t.Fatal(err)
			}
		}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tr, err := OpenTree(dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := tr.Append(leaves); err != nil {
				t.Fatal(err)
			}
			tr.Close()
			tc.damage(t, dir)
			tr, err = OpenTree(dir)
			if err != nil {
				t.Fatalf("reopen after damage: %v", err)
			}
			defer tr.Close()
			if tr.Size() != tc.size {
				t.Fatalf("size after recovery %d, want %d", tr.Size(), tc.size)
			}
			if err := tr.Append(leaves[tc.size:]); err != nil {
				t.Fatal(err)
			}
			for _, size := range []uint64{1, 64, 127, 150, 199, 200} {
				got, err := tr.Root(size)
				if err != nil {
					t.Fatal(err)
				}
				if want := referenceRoot(t, leaves[:size]); !bytes.Equal(got, want) {
					t.Fatalf("root at %d after recovery: got %x, want %x", size, got, want)
				}
			}
		})
	}
}

func appendFile(t *testing.T, name string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

func truncateFile(t *testing.T, name string, size int64) {
	t.Helper()
	if err := os.Truncate(name, size); err != nil {
		t.Fatal(err)
	}
}
