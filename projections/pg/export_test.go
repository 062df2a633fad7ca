package pg

import "github.com/securepay/securepay/eventstore"

// SetBeforeCommit installs a hook that runs inside every batch transaction of v's
// projectors after the writes and before COMMIT.
func SetBeforeCommit(v *Views, f func(projector string, batch []eventstore.RecordedEvent)) {
	v.beforeCommit = f
}
