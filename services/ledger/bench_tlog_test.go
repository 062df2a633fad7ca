package ledger_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/securepay/securepay/audit/tlog"
	"github.com/securepay/securepay/eventstore"
)

// BenchmarkTransfersCheckpoints measures what the Merkle tree and the checkpoint signer
// cost the write path: the same transfers with neither ("off") and with a follower
// extending the tree from the log and a signer publishing a checkpoint every second
// ("on"), back to back in one run, on each backend. The target is at most 5% fewer
// transfers/s with them on.
//
//	go test ./services/ledger -run '^$' -bench TransfersCheckpoints -benchtime 5000x
func BenchmarkTransfersCheckpoints(b *testing.B) {
	for _, be := range backends() {
		for _, conc := range []int{16, 64} {
			for _, mode := range []string{"off", "on"} {
				b.Run(fmt.Sprintf("%s/uniform/c%d/%s", be.name, conc, mode), func(b *testing.B) {
					if mode == "off" {
						benchTransfers(b, be, false, conc, nil)
						return
					}
					benchTransfers(b, be, false, conc, nil, startCheckpoints)
				})
			}
		}
	}
}

// startCheckpoints runs a tree follower and a signer (1s interval) on store until the
// benchmark ends, and reports how far the tree got.
func startCheckpoints(t testing.TB, store eventstore.Store) {
	dir := t.TempDir()
	tree, err := tlog.OpenTree(filepath.Join(dir, tlog.TreeDir))
	if err != nil {
		t.Fatal(err)
	}
	private, _, err := tlog.GenerateKey("bench.securepay/ledger")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := tlog.NewSigner(tlog.SignerConfig{Tree: tree, PrivateKey: private, Dir: dir, Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = (&tlog.Follower{Store: store, Tree: tree}).Run(ctx) })
	wg.Go(func() { _ = signer.Run(ctx) })
	// Let the tree catch up with the set-up's history (2,048 commands, as many events as
	// a third of a 5000x run) before the clock starts: otherwise that one-off backlog is
	// charged to the measured transfers, and what is measured is the steady state.
	head, err := store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); tree.Size() < head; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("tree follower reached %d of the set-up's %d events in 2 minutes", tree.Size(), head)
		}
	}
	// Cleanups run last-in first-out: these stop before the store closes.
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		tree.Close()
	})
}
