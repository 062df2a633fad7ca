package redis

import (
	"context"

	"github.com/securepay/securepay/projections"
)

// What operators see of these views (projections.Views). Redis keeps only each
// projector's checkpoint: no error (a poison event stops the projector in the process
// that runs it, and its log says why) and no time of the last move, so these projectors
// are reported running at their checkpoint and never stalled. They are not rebuilt into
// shadows: a lost checkpoint makes them replay the log, which their idempotent writes
// allow.

var _ projections.Views = (*Views)(nil)

// Describe lists the balance cache and notifications projectors and the keys they keep.
func (v *Views) Describe() []projections.ProjectorInfo {
	info := func(name, views string) projections.ProjectorInfo {
		return projections.ProjectorInfo{Name: name, Backend: "redis", Views: views,
			NotRebuilt: "delete its checkpoint key " + v.CheckpointKey(name) + " and it replays the log"}
	}
	return []projections.ProjectorInfo{
		info(BalanceCacheProjector, v.key("bal", "*")+" (read-aside cache)"),
		info(NotificationsProjector, v.key("notify", "*")+" (streams)"),
	}
}

// Records reads both projectors' checkpoints.
func (v *Views) Records(ctx context.Context) ([]projections.Record, error) {
	var out []projections.Record
	for _, p := range v.Describe() {
		cp, err := v.checkpoint(ctx, p.Name)
		if err != nil {
			return nil, err
		}
		out = append(out, projections.Record{Name: p.Name, Checkpoint: cp})
	}
	return out, nil
}
