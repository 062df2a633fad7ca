package storetest

import (
	"bytes"
	"testing"

	"github.com/securepay/securepay/eventstore"
)

// testSnapshots: a store that keeps snapshots keeps one per stream, replaced only by a
// higher version, and outside the log.
func testSnapshots(t *testing.T, h Harness) {
	ctx := testContext(t)
	s := fresh(t, h)
	ss, ok := s.(eventstore.SnapshotStore)
	if !ok {
		t.Logf("%T does not implement eventstore.SnapshotStore; nothing to test", s)
		return
	}
	mustAppend(t, ctx, s, one("snap-1", eventstore.NoStream(), evs("snap", 6)...))
	if _, found, err := ss.LoadSnapshot(ctx, "snap-1"); err != nil || found {
		t.Fatalf("LoadSnapshot before any save = found %v, %v; want not found, nil", found, err)
	}
	steps := []struct {
		save        eventstore.Snapshot
		wantVersion uint64
		wantState   string
	}{
		{eventstore.Snapshot{Stream: "snap-1", Version: 3, Schema: "storetest.v1", State: []byte("three")}, 3, "three"},
		{eventstore.Snapshot{Stream: "snap-1", Version: 2, Schema: "storetest.v1", State: []byte("two")}, 3, "three"},
		{eventstore.Snapshot{Stream: "snap-1", Version: 3, Schema: "storetest.v1", State: []byte("three again")}, 3, "three"},
		{eventstore.Snapshot{Stream: "snap-1", Version: 5, Schema: "storetest.v2", State: []byte{0, 1, 2, 0xff}}, 5, "\x00\x01\x02\xff"},
	}
	for i, st := range steps {
		if err := ss.SaveSnapshot(ctx, st.save); err != nil {
			t.Fatalf("step %d: SaveSnapshot(version %d): %v", i, st.save.Version, err)
		}
		got, found, err := ss.LoadSnapshot(ctx, "snap-1")
		if err != nil || !found {
			t.Fatalf("step %d: LoadSnapshot = found %v, %v; want found", i, found, err)
		}
		if got.Stream != "snap-1" || got.Version != st.wantVersion || !bytes.Equal(got.State, []byte(st.wantState)) {
			t.Fatalf("step %d: after saving version %d, LoadSnapshot = %s v%d %q, want snap-1 v%d %q", i, st.save.Version, got.Stream, got.Version, got.State, st.wantVersion, st.wantState)
		}
	}
	if got, _, _ := ss.LoadSnapshot(ctx, "snap-1"); got.Schema != "storetest.v2" {
		t.Fatalf("snapshot schema %q, want storetest.v2", got.Schema)
	}
	if _, found, err := ss.LoadSnapshot(ctx, "snap-2"); err != nil || found {
		t.Fatalf("LoadSnapshot of another stream = found %v, %v; want not found, nil", found, err)
	}
	if got := head(t, ctx, s); got != 6 {
		t.Fatalf("Head = %d after saving snapshots, want 6: snapshots are not events", got)
	}
	if n, err := eventstore.VerifyChain(ctx, s, 100, nil); err != nil || n != 6 {
		t.Fatalf("VerifyChain with snapshots saved = %d, %v; want 6, nil", n, err)
	}
}
