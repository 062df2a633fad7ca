// Package kurrentdb is the event store backend on KurrentDB (formerly EventStoreDB),
// through github.com/kurrent-io/KurrentDB-Client-Go v1.3.0. It needs KurrentDB 25.0 or
// later: every append is one MultiStreamAppend, which commits events to several streams
// atomically; Open refuses older servers.
//
// Not tested against a server here. No KurrentDB server can be installed on the machines
// this code was written on. `go test` runs the pure parts (plan building, position
// arithmetic, record encodings, error classification) and, through the real client
// library, the whole conformance suite (eventstore/storetest) against fakeKurrent, an
// in-process model of the KurrentDB gRPC protocol written from the client's source
// (fakeserver_test.go). The model checks this package's logic and its use of the client;
// it cannot check KurrentDB's own behaviour (how the server reports a conflict, what it
// returns as metadata, its size limits). The same suite runs against a real server
// whenever SECUREPAY_KURRENTDB_URL is set, e.g.
//
//	SECUREPAY_KURRENTDB_URL='kurrentdb://admin:changeit@localhost:2113?tls=false' \
//	  go test -race ./eventstore/kurrentdb/
//
// Until that has been run, treat this backend as unproven against KurrentDB.
//
// # Why a log stream
//
// The contract wants gap-free 1-based global positions in commit order and a SHA-256 chain
// over that order (eventstore.ChainHash). KurrentDB's $all gives commit positions that are
// neither gap-free nor known before the commit, so the hash of an event could not be
// computed before it is written. The store therefore keeps its own global log in one
// KurrentDB stream, the log stream (namespace + "securepay-$log"), with exactly one entry
// per event: the event at global position p is named by the log stream's event at revision
// p-1. Position arithmetic is then KurrentDB's own revision arithmetic.
//
// # Append
//
// One Append is one MultiStreamAppend carrying, in this order:
//
//   - each user stream's events, with the expected state the caller asked for translated
//     to KurrentDB terms (version v means revision v-1; NoStream is NoStream). Any is
//     pinned to an exact revision, because the stream version is part of each event's
//     hash and must be known before the write: the version this process last saw of the
//     stream, or else one read just before. A conflict on a pinned stream only means
//     another writer got there first; it is retried like a log-stream conflict, reading
//     the version afresh.
//   - the log stream's entries for all those events, expected at exactly the log's tip
//     (the number of events in the log).
//
// Everything an event needs is computed before sending: positions tip+1..tip+n in the
// order given, stream versions, one record time (the store's Clock, UTC, microseconds),
// previous hash and hash. The event's KurrentDB payload is its Data (binary, so the bytes
// are kept exactly) and its KurrentDB metadata is a JSON object of strings:
//
//	securepay.id, securepay.type, securepay.position, securepay.version,
//	securepay.recorded_at_unix_us, securepay.prev_hash, securepay.hash (hex),
//	securepay.correlation_id, securepay.causation_id, securepay.actor, securepay.traceparent
//
// (numbers as decimal strings; MultiStreamAppend accepts metadata only in this shape, and
// the server adds "$schema.*" keys of its own on read). A log entry is the JSON object
//
//	{"position": p, "stream": "<stream>", "version": v, "hash": "<64 hex digits>"}
//
// of event type securepay.log.entry.v1. KurrentDB event ids are random UUIDs made fresh for
// every attempt (the writer's id is kept in the metadata, so it need not be a UUID). Reusing
// ids across attempts would be dangerous: KurrentDB treats an append whose events carry the
// ids already stored at the expected revision as an idempotent success, and an attempt
// planned for other positions must never be taken for one already committed.
//
// Because the log stream's expectation is exact, two attempts planned from the same tip
// cannot both commit, whichever processes they come from: positions are unique and
// gap-free, and their order is the order of the log stream, which is commit order. A
// conflict reported on the log stream means another writer took the slot: the store
// re-reads the tip, plans again (new positions, hashes and ids) and retries, with a short
// random backoff, at most Config.MaxAppendAttempts times (then ErrContention, nothing
// written). A conflict reported on a user stream with an explicit expectation is the
// caller's: *eventstore.ConflictError (errors.Is ErrConflict) naming the first stream whose
// expectation fails (the streams before the one the server named are re-read to find it)
// and its actual version. Within one process appends are queued on a one-slot semaphore,
// because they would only race each other for the log's next slot; the process then also
// knows the tip after its own commit and need not read it before its next append. It also
// remembers, per stream, a version the stream is known to have reached (its own commits,
// conflicts); since versions only grow, an Exact or NoStream expectation below it is
// refused at once, without a round trip. Actual is then that remembered version: certain
// to contradict the expectation, but older than the stream's current version if another
// process wrote the stream since.
//
// # Partial failures
//
//   - Crash of the writer (kill -9) at any point: MultiStreamAppend is atomic on the
//     server, so the user events and their log entries are all there or none is. Nothing
//     is ever written outside that one request, so there is nothing to repair.
//   - Outcome unknown (deadline, lost connection, node unavailable, any error not known to
//     be a rejection): the request may have committed, may not, or may still commit. The
//     log stream's slot at the attempt's first position settles it: every attempt planned
//     from that tip expects the log stream at the same revision, so at most one of them
//     ever commits and it is the entry found in that slot. The store reads the slot: its
//     own entry id there means committed (success is returned); another id means it never
//     will (plan again); an empty slot means undecided, and the identical request (same
//     ids) is sent again, at most Config.MaxResends times. Any later rejection is checked
//     against the slot too, since an earlier send may have committed and moved the
//     streams itself. When the server cannot be asked, Append returns ErrOutcomeUnknown:
//     the caller must read before retrying (command processing reloads on error anyway).
//   - A conflict on a user stream after an unknown outcome, with the slot still empty,
//     is final: every write to a store stream also writes the log stream, so a stream
//     cannot have moved while the slot stayed empty unless the attempt's expectation was
//     already wrong, and it can never become right while the log stays fenced.
//   - Server-side size limits (record or transaction too large) are reported as
//     eventstore.ErrInvalidAppend: this backend cannot take that request.
//
// # Reads
//
// ReadStream reads the user stream from the leader and rebuilds each event from its
// metadata, checking that the version recorded there is KurrentDB's revision + 1.
//
// ReadAll reads up to limit log entries from revision afterPosition, then fetches the
// events they name: within one page a stream's events are a contiguous run of versions
// (both versions and positions follow commit order), so each stream costs one read, and
// up to Config.ReadConcurrency reads run at once. The log entry is authoritative for
// position and hash; the event's own metadata gives the other fields (its prev hash
// included), so an event altered behind the store's back fails eventstore.ChainHash at its
// position, and an event the log names but the stream lacks is an *eventstore.ChainBreak
// at its position. Because an event and its log entry commit together and the log stream
// is read in revision order from the leader, ReadAll never returns an event unless every
// earlier one is visible.
//
// Head is the last log entry's position. Subscribe is eventstore.PollSubscription over
// ReadAll, woken by this process's commits and by a KurrentDB catch-up subscription to the
// log stream (commits of other processes), with Config.PollInterval as the safety net.
//
// # Names and limits
//
// User stream S is stored as KurrentDB stream namespace + S (Config.Namespace lets
// several stores share one server, e.g. tests). Stream names containing '$' are refused
// (eventstore.ErrInvalidAppend) because KurrentDB reserves '$' for system and metadata
// streams and this store uses it for its own streams; all text must be valid UTF-8
// because KurrentDB carries it in protobuf and JSON strings. These two rules are stricter
// than the contract's; every other limit is eventstore's.
//
// Each event costs two KurrentDB events (the event and its log entry), and all appends
// are serialised through the log stream, one round trip each (two when another process
// appended in between). That bounds write throughput to roughly one append per round trip
// across all processes; batching several commands into one append (command processing
// does) is how to go faster.
//
// The server must accept the largest append the contract allows (10,000 events of up to
// 64 KiB, plus about 0.7 KiB of metadata and log entry per event): raise KurrentDB's
// append size limits accordingly, or such appends fail with eventstore.ErrInvalidAppend.
//
// The client library gives up reconnecting after its discovery attempts fail
// (MaxDiscoverAttempts in the connection string) and from then on fails every call; the
// store does not replace its client, so its owner must Close it and Open a new one.
// Config.Logger receives the client's log lines (nil discards them).
//
// Snapshots (eventstore.SnapshotStore) are kept in one stream per snapshotted stream,
// outside the log; see SaveSnapshot.
package kurrentdb
