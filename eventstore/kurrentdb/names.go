package kurrentdb

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/securepay/securepay/eventstore"
)

// Streams the store keeps for itself. Both contain '$', which user stream names and
// namespaces may not, so no user stream of any namespace can collide with them.
const (
	logStreamName        = "securepay-$log"
	snapshotStreamPrefix = "securepay-$snapshot-"
)

// Event types of the store's own records.
const (
	logEntryType = "securepay.log.entry.v1"
	snapshotType = "securepay.snapshot.v1"
)

// streamNames maps the contract's stream names to KurrentDB stream names.
type streamNames struct{ namespace string }

func (n streamNames) user(stream string) string { return n.namespace + stream }
func (n streamNames) log() string               { return n.namespace + logStreamName }
func (n streamNames) snapshot(stream string) string {
	return n.namespace + snapshotStreamPrefix + stream
}

// checkStreamName refuses names this backend cannot store faithfully. '$' is refused
// because KurrentDB gives it meaning (system streams start with '$', metadata streams with
// "$$") and because the store's own streams use it; invalid UTF-8 because KurrentDB stream
// names travel as protobuf strings, which must be valid UTF-8.
func checkStreamName(stream string) error {
	switch {
	case stream == "" || len(stream) > eventstore.MaxStreamNameBytes:
		return fmt.Errorf("stream name must be 1..%d bytes, got %d", eventstore.MaxStreamNameBytes, len(stream))
	case strings.ContainsRune(stream, '$'):
		return fmt.Errorf("stream name %q contains '$', which KurrentDB reserves", stream)
	case !utf8.ValidString(stream):
		return fmt.Errorf("stream name %q is not valid UTF-8", stream)
	}
	return nil
}

// checkAppendText refuses what eventstore.ValidateAppend lets through but KurrentDB cannot
// keep byte for byte: every string of an event travels as a protobuf or JSON string, so it
// must be valid UTF-8 (Go's JSON encoder would silently replace bad bytes, and the stored
// hash would then not match what the caller asked to store).
func checkAppendText(appends []eventstore.StreamAppend) error {
	for _, a := range appends {
		if err := checkStreamName(a.Stream); err != nil {
			return fmt.Errorf("%w: %w", eventstore.ErrInvalidAppend, err)
		}
		for i, e := range a.Events {
			for _, f := range [...]struct{ name, value string }{
				{"id", e.ID}, {"type", e.Type},
				{"correlation id", e.Metadata.CorrelationID}, {"causation id", e.Metadata.CausationID},
				{"actor", e.Metadata.Actor}, {"traceparent", e.Metadata.TraceParent},
			} {
				if !utf8.ValidString(f.value) {
					return fmt.Errorf("%w: stream %q event %d: %s is not valid UTF-8", eventstore.ErrInvalidAppend, a.Stream, i, f.name)
				}
			}
		}
	}
	return nil
}
