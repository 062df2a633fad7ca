package tlog

import (
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/proof"
)

// benchLeaves is the tree size of the proof benchmarks: 10 million events, or
// SECUREPAY_TLOG_BENCH_LEAVES.
func benchLeaves(b *testing.B) uint64 {
	if v := os.Getenv("SECUREPAY_TLOG_BENCH_LEAVES"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n < 2 {
			b.Fatalf("SECUREPAY_TLOG_BENCH_LEAVES=%q: want a number >= 2", v)
		}
		return n
	}
	return 10_000_000
}

// buildBenchTree builds a tree of n synthetic leaves (SHA-256 of the index) through the
// same Append the follower uses, in batches of 65,536, so the node files are what a real
// log of n events leaves. It reports the build rate and the heap in use after it: the
// tree's whole memory is its compact range and one batch.
func buildBenchTree(b *testing.B, n uint64) (*Tree, string) {
	dir := filepath.Join(b.TempDir(), "tree")
	tr, err := OpenTree(dir)
	if err != nil {
		b.Fatal(err)
	}
	const batch = 1 << 16
	leaves := make([]eventHash, 0, batch)
	start := time.Now()
	var ms runtime.MemStats
	var peakHeap uint64
	batches := 0
	for i := uint64(0); i < n; i++ {
		var k [8]byte
		binary.BigEndian.PutUint64(k[:], i)
		leaves = append(leaves, sha256.Sum256(k[:]))
		if len(leaves) == batch || i == n-1 {
			if err := tr.Append(leaves); err != nil {
				b.Fatal(err)
			}
			leaves = leaves[:0]
			if batches++; batches%16 == 0 {
				runtime.ReadMemStats(&ms)
				peakHeap = max(peakHeap, ms.HeapInuse)
			}
		}
	}
	if err := tr.Sync(); err != nil {
		b.Fatal(err)
	}
	b.Logf("built a tree of %d leaves in %s (%.0f leaves/s), heap in use at most %.1f MiB while building",
		n, time.Since(start).Round(time.Millisecond), float64(n)/time.Since(start).Seconds(), float64(peakHeap)/(1<<20))
	return tr, dir
}

// BenchmarkProofs measures inclusion and consistency proofs at 10 million leaves: each
// op is one proof, of a random leaf (or pair of sizes), read from the node files and
// verified against the root. Reported: p50 and p99 latency of making the proof (what the
// API pays), the files' size and the heap after a reopen (the tree's memory at rest).
//
//	go test ./audit/tlog -run '^$' -bench Proofs -benchtime 20000x
func BenchmarkProofs(b *testing.B) {
	n := benchLeaves(b)
	tr, dir := buildBenchTree(b, n)
	tr.Close()
	tr, err := OpenTree(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	var diskBytes int64
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if fi, err := e.Info(); err == nil {
			diskBytes += fi.Size()
		}
	}
	root, err := tr.Root(n)
	if err != nil {
		b.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	report := func(b *testing.B, lat []time.Duration) {
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-us")
		b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-us")
		b.ReportMetric(float64(diskBytes)/(1<<20), "files-MiB")
		// The whole process's heap with the 10M-leaf tree open: the tree adds its right
		// edge (at most 64 hashes) and 64 file handles, whatever its size.
		b.ReportMetric(float64(after.HeapInuse)/1024, "heap-KiB")
	}
	b.Run("inclusion", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		for b.Loop() {
			i := rnd.Uint64N(n)
			t0 := time.Now()
			p, err := tr.InclusionProof(i, n)
			lat = append(lat, time.Since(t0))
			if err != nil {
				b.Fatal(err)
			}
			var k [8]byte
			binary.BigEndian.PutUint64(k[:], i)
			if err := proof.VerifyInclusion(hasher, i, n, LeafHash(sha256.Sum256(k[:])), p, root); err != nil {
				b.Fatalf("leaf %d: %v", i, err)
			}
		}
		report(b, lat)
	})
	b.Run("consistency", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		for b.Loop() {
			size1 := 1 + rnd.Uint64N(n-1)
			t0 := time.Now()
			p, err := tr.ConsistencyProof(size1, n)
			lat = append(lat, time.Since(t0))
			if err != nil {
				b.Fatal(err)
			}
			root1, err := tr.Root(size1)
			if err != nil {
				b.Fatal(err)
			}
			if err := proof.VerifyConsistency(hasher, size1, n, p, root1, root); err != nil {
				b.Fatalf("consistency %d..%d: %v", size1, n, err)
			}
		}
		report(b, lat)
	})
}
