package kurrentdb

import (
	"context"
	"errors"
	"fmt"
	"testing"

	kdb "github.com/kurrent-io/KurrentDB-Client-Go/kurrentdb"
)

// The client's *kdb.Error has unexported fields, so only its exported detail types and
// FromError (which yields ErrorCodeUnknown for a foreign error) can be built here; the
// translations that need a server-made *kdb.Error run in the conformance suite.
func TestRevisionConflictIsFoundThroughWrapping(t *testing.T) {
	cases := []struct {
		name       string
		err        error
		wantStream string
		wantActual uint64
		wantKnown  bool
	}{
		{"bare, stream exists", &kdb.StreamRevisionConflictError{Stream: "ns-a", ExpectedRevision: kdb.NoStream{}, ActualRevision: kdb.StreamRevision{Value: 0}}, "ns-a", 1, true},
		{"wrapped, no stream", fmt.Errorf("append: %w", &kdb.StreamRevisionConflictError{Stream: "ns-b", ExpectedRevision: kdb.StreamRevision{Value: 4}, ActualRevision: kdb.NoStream{}}), "ns-b", 0, true},
		{"actual is a state without a version", &kdb.StreamRevisionConflictError{Stream: "c", ActualRevision: kdb.StreamExists{}}, "c", 0, false},
		{"actual missing", &kdb.StreamRevisionConflictError{Stream: "d"}, "d", 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, ok := revisionConflict(tc.err)
			if !ok || c.stream != tc.wantStream || c.actual != tc.wantActual || c.actualKnown != tc.wantKnown {
				t.Fatalf("revisionConflict = %+v, %v; want {%s %d %v}, true", c, ok, tc.wantStream, tc.wantActual, tc.wantKnown)
			}
			if !isConflict(tc.err) || !definitelyNotApplied(tc.err) {
				t.Fatalf("a revision conflict must be a conflict and definitely not applied")
			}
		})
	}
}

func TestErrorClassification(t *testing.T) {
	unknown, _ := kdb.FromError(errors.New("transport is closing"))
	cases := []struct {
		name        string
		err         error
		conflict    bool
		notApplied  bool
		tooLarge    bool
		notFound    bool
		wantUnknown bool // errorCode reports ErrorCodeUnknown
	}{
		{"plain error", errors.New("boom"), false, false, false, false, true},
		{"deadline", context.DeadlineExceeded, false, false, false, false, true},
		{"cancelled, wrapped", fmt.Errorf("send: %w", context.Canceled), false, false, false, false, true},
		{"client error with unknown code", unknown, false, false, false, false, true},
		{"record too large", &kdb.AppendRecordSizeExceededError{Stream: "s", Size: 2 << 20, MaxSize: 1 << 20}, false, false, true, false, true},
		{"transaction too large, wrapped", fmt.Errorf("x: %w", &kdb.AppendTransactionSizeExceededError{Size: 9, MaxSize: 8}), false, false, true, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := isConflict(tc.err); got != tc.conflict {
				t.Errorf("isConflict = %v, want %v", got, tc.conflict)
			}
			if got := definitelyNotApplied(tc.err); got != tc.notApplied {
				t.Errorf("definitelyNotApplied = %v, want %v (anything not known to be a rejection must be settled)", got, tc.notApplied)
			}
			if got := isTooLarge(tc.err); got != tc.tooLarge {
				t.Errorf("isTooLarge = %v, want %v", got, tc.tooLarge)
			}
			if got := isNotFound(tc.err); got != tc.notFound {
				t.Errorf("isNotFound = %v, want %v", got, tc.notFound)
			}
			if got := errorCode(tc.err) == kdb.ErrorCodeUnknown; got != tc.wantUnknown {
				t.Errorf("errorCode = %v, want unknown: %v", errorCode(tc.err), tc.wantUnknown)
			}
		})
	}
}
