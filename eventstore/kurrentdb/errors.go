package kurrentdb

import (
	"errors"

	kdb "github.com/kurrent-io/KurrentDB-Client-Go/kurrentdb"
)

// ErrOutcomeUnknown reports an append whose fate could not be learned: the request may or
// may not have been committed (the connection failed mid-request and the server could not
// be asked afterwards). The caller must read the affected streams before trying again.
var ErrOutcomeUnknown = errors.New("kurrentdb: append outcome unknown")

// ErrContention reports a write given up after MaxAppendAttempts attempts, each beaten by
// another process (to the next slot of the global log, or to a snapshot stream). Nothing
// was written. It does not wrap eventstore.ErrConflict: no expectation of the caller failed.
var ErrContention = errors.New("kurrentdb: other writers kept winning the race; nothing written")

// ErrUnsupportedServer reports a server without multi-stream appends (KurrentDB < 25.0).
var ErrUnsupportedServer = errors.New("kurrentdb: server does not support multi-stream appends (KurrentDB 25.0 or later is required)")

// streamConflict is a revision conflict the server named: the stream (a KurrentDB name) and,
// when the server said it, the version the stream was actually at.
type streamConflict struct {
	stream      string
	actual      uint64
	actualKnown bool
}

// revisionConflict finds a per-stream revision conflict in a client error.
// MultiStreamAppend reports one as a *kdb.Error with ErrorCodeStreamRevisionConflict that
// wraps a *kdb.StreamRevisionConflictError; errors.As finds it through any wrapping.
func revisionConflict(err error) (streamConflict, bool) {
	var rc *kdb.StreamRevisionConflictError
	if !errors.As(err, &rc) {
		return streamConflict{}, false
	}
	c := streamConflict{stream: rc.Stream}
	if rc.ActualRevision != nil {
		c.actual, c.actualKnown = stateVersion(rc.ActualRevision)
	}
	return c, true
}

// errorCode is the client's error code, or ErrorCodeUnknown for an error that is not a
// *kdb.Error (the client returns some plain errors, and context errors stay plain).
func errorCode(err error) kdb.ErrorCode {
	var e *kdb.Error
	if errors.As(err, &e) {
		return e.Code()
	}
	return kdb.ErrorCodeUnknown
}

// isConflict reports an optimistic-concurrency rejection, with or without the stream.
func isConflict(err error) bool {
	if _, ok := revisionConflict(err); ok {
		return true
	}
	switch errorCode(err) {
	case kdb.ErrorCodeWrongExpectedVersion, kdb.ErrorCodeStreamRevisionConflict, kdb.ErrorCodeAppendConsistencyViolation:
		return true
	}
	return false
}

// definitelyNotApplied reports errors after which the server has certainly not committed
// the request and never will. Everything else (deadline, lost connection, unavailable
// node, an unclassified error) may hide a commit, and the caller must find out.
func definitelyNotApplied(err error) bool {
	if isConflict(err) {
		return true
	}
	switch errorCode(err) {
	case kdb.ErrorCodeStreamTombstoned,
		kdb.ErrorCodeStreamDeleted,
		kdb.ErrorCodeAppendRecordSizeExceeded,
		kdb.ErrorCodeAppendTransactionSizeExceeded,
		kdb.ErrorCodeAccessDenied,
		kdb.ErrorCodeUnauthenticated,
		kdb.ErrorCodeUnsupportedFeature,
		kdb.ErrorCodeNotLeader:
		return true
	}
	return false
}

// isTooLarge reports a request the server refuses for its size: a caller problem.
func isTooLarge(err error) bool {
	switch errorCode(err) {
	case kdb.ErrorCodeAppendRecordSizeExceeded, kdb.ErrorCodeAppendTransactionSizeExceeded:
		return true
	}
	var rec *kdb.AppendRecordSizeExceededError
	var txn *kdb.AppendTransactionSizeExceededError
	return errors.As(err, &rec) || errors.As(err, &txn)
}

// isNotFound reports a read of a stream that does not exist.
func isNotFound(err error) bool { return errorCode(err) == kdb.ErrorCodeResourceNotFound }
