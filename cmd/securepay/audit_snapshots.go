package main

import (
	"context"
	"fmt"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/services/ledger"
)

// checkSnapshots is the snapshot part of `audit verify`, with or without --since-checkpoint:
// every stored snapshot is checked against the events, without the server's snapshot key
// (ledger.VerifySnapshots). It runs in both forms because it does not depend on a
// checkpoint: a snapshot binds itself to a log position and chain hash, which the log
// itself confirms or refutes. It prints what it found and returns an error when a snapshot
// fails or the snapshots cannot be read.
func checkSnapshots(ctx context.Context, e env, store eventstore.Store) error {
	lister, ok := store.(eventstore.SnapshotLister)
	if !ok {
		fmt.Fprintln(e.stdout, "snapshots: NOT checked: this store cannot list them")
		return nil
	}
	rep, err := ledger.VerifySnapshots(ctx, store, lister)
	if err != nil {
		return fmt.Errorf("audit verify: check the snapshots: %w", err)
	}
	for _, f := range rep.Failures {
		fmt.Fprintf(e.stdout, "FAILED: %s\n", f)
	}
	for _, s := range rep.Ignored {
		fmt.Fprintf(e.stdout, "snapshot not checked: %s\n", s)
	}
	if n := rep.IgnoredCount - len(rep.Ignored); n > 0 {
		fmt.Fprintf(e.stdout, "snapshot not checked: %d more the ledger never loads\n", n)
	}
	if len(rep.Failures) > 0 {
		return fmt.Errorf("audit verify: %d of %d snapshots do not match the events (see above)", len(rep.Failures), rep.Checked)
	}
	fmt.Fprintf(e.stdout, "OK: %d snapshots match the events (bound event at its position with its chain hash, state equal to the fold)\n", rep.Checked)
	return nil
}
