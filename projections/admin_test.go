package projections_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/internal/projtest"
	"github.com/securepay/securepay/projections"
)

// fakeViews is a backend whose records the test sets; rebuildingViews also rebuilds, and
// remembers what it was asked to.
type fakeViews struct {
	info    []projections.ProjectorInfo
	records []projections.Record
}

func (v *fakeViews) Describe() []projections.ProjectorInfo { return v.info }
func (v *fakeViews) Records(context.Context) ([]projections.Record, error) {
	return v.records, nil
}

type rebuildingViews struct {
	fakeViews
	rebuilt []string
}

func (v *rebuildingViews) Rebuild(_ context.Context, _ eventstore.Store, name string, _ projections.RebuildOptions) (projections.RebuildResult, error) {
	v.rebuilt = append(v.rebuilt, name)
	return projections.RebuildResult{Name: name, Position: 7, Events: 7}, nil
}

// Admin turns each backend's records into states the same way for every backend: no
// checkpoint is not running, an error is stopped, a shadow is rebuilding, and a projector
// behind the head whose checkpoint has not moved for StallAfter is stalled, unless its
// backend does not keep when the checkpoint moved.
func TestAdminStatusFromRecords(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	ctx := projtest.Context(t, time.Minute)
	head, err := projtest.NewWriter(store, projtest.NewLedger(2, "adm-")).Write(ctx, 20, 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Add(time.Hour)
	recent, old := now.Add(-time.Second), now.Add(-2*projections.StallAfter)
	pgLike := &rebuildingViews{fakeViews: fakeViews{
		info: []projections.ProjectorInfo{
			{Name: "current.v1", Rebuildable: true}, {Name: "new.v1", Rebuildable: true}, {Name: "poisoned.v1", Rebuildable: true},
			{Name: "shadowed.v1", Rebuildable: true}, {Name: "stuck.v1", Rebuildable: true}, {Name: "behind.v1", Rebuildable: true},
		},
		records: []projections.Record{
			{Name: "current.v1", Checkpoint: head, UpdatedAt: old},
			{Name: "new.v1", NoCheckpoint: true},
			{Name: "poisoned.v1", Checkpoint: 4, Error: "event at position 5: boom", ErrorPosition: 5, UpdatedAt: old},
			{Name: "shadowed.v1", Checkpoint: head, Rebuilding: true, RebuildCheckpoint: 3, UpdatedAt: recent},
			{Name: "stuck.v1", Checkpoint: 1, UpdatedAt: old},
			{Name: "behind.v1", Checkpoint: 1, UpdatedAt: recent},
		},
	}}
	redisLike := &fakeViews{
		info:    []projections.ProjectorInfo{{Name: "cache.v1", Backend: "kv", NotRebuilt: "delete its key and it replays the log"}},
		records: []projections.Record{{Name: "cache.v1", Checkpoint: 1}},
	}
	admin := &projections.Admin{Store: store, Views: []projections.Views{pgLike, redisLike}, Clock: func() time.Time { return now }}
	sts, err := admin.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]projections.State{
		"current.v1": projections.StateRunning, "new.v1": projections.StateIdle, "poisoned.v1": projections.StateStopped,
		"shadowed.v1": projections.StateRebuilding, "stuck.v1": projections.StateStalled, "behind.v1": projections.StateRunning,
		"cache.v1": projections.StateRunning,
	}
	if len(sts) != len(want) {
		t.Fatalf("status has %d projectors: %+v; want %d", len(sts), sts, len(want))
	}
	for _, s := range sts {
		if s.State != want[s.Name] || s.Head != head || s.LagEvents != head-min(head, s.Checkpoint) {
			t.Errorf("%s: state %s, head %d, lag %d; want %s, head %d, lag %d", s.Name, s.State, s.Head, s.LagEvents, want[s.Name], head, head-min(head, s.Checkpoint))
		}
	}
	if s := sts[2]; s.Error == "" || s.ErrorPosition != 5 {
		t.Errorf("poisoned.v1 status %+v; want its error and position", s)
	}
	if s := sts[3]; s.RebuildCheckpoint != 3 {
		t.Errorf("shadowed.v1 status %+v; want the shadow at 3", s)
	}

	var out strings.Builder
	if _, err := admin.Rebuild(ctx, "current.v1", &out, projections.RebuildOptions{}); err != nil || len(pgLike.rebuilt) != 1 || !strings.Contains(out.String(), "rebuilt current.v1") {
		t.Fatalf("rebuild current.v1: %v, rebuilt %v, printed %q", err, pgLike.rebuilt, out.String())
	}
	if _, err := admin.Rebuild(ctx, "cache.v1", &out, projections.RebuildOptions{}); err == nil || !strings.Contains(err.Error(), "delete its key") {
		t.Fatalf("rebuild of a projector its backend does not rebuild: err = %v; want what restores it instead", err)
	}
	if _, err := admin.Rebuild(ctx, "nosuch.v1", &out, projections.RebuildOptions{}); err == nil || !strings.Contains(err.Error(), "current.v1") {
		t.Fatalf("rebuild of an unknown projector: err = %v; want the known names", err)
	}
}
