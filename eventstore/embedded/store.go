// Package embedded is SecurePay's single-process event store: a durable, hash-chained log
// on local disk in a pebble database, with no server. It is the default for
// `securepay dev`.
//
// Writes go through one writer goroutine that group-commits: it takes every append
// waiting in its queue, checks their expectations in order (each against the stream
// versions left by the ones before it), assigns positions and hashes, writes the accepted
// ones into one pebble batch and commits it with a WAL fsync. While that fsync runs, the
// writer already prepares the next group; an append is acknowledged, and its events
// become visible to readers, only once its group is durable.
package embedded

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"

	"github.com/securepay/securepay/eventstore"
)

// Options tune a store. The zero value is valid: every field has a default.
type Options struct {
	// Clock gives record times; default time.Now. The store never lets recorded times go
	// backwards along the log, whatever the clock does.
	Clock func() time.Time

	// CacheBytes is pebble's block cache; default 192 MiB. Pebble reserves the memtables'
	// memory out of it, so it must be well above what they take (up to 4 memtables), or
	// no block stays cached and every lookup reads the disk.
	CacheBytes int64
	// MemTableBytes is the size of one pebble memtable; default 16 MiB (at most 4 exist
	// at once before writes stall).
	MemTableBytes uint64
	// StreamCacheEntries bounds the in-memory cache of stream versions; default 262,144.
	StreamCacheEntries int
	// QueueLength bounds appends waiting for the writer; default 4096. A full queue
	// blocks Append until the writer catches up (or the caller's context ends).
	QueueLength int
	// MaxGroupBytes bounds the encoded size of one group commit; default 8 MiB. A single
	// append larger than that is committed alone.
	MaxGroupBytes int
	// PollInterval is how often an idle subscription re-reads without a wake-up; default
	// one second. Every commit wakes subscriptions, so this is only a safety net.
	PollInterval time.Duration
	// Logger receives pebble's log; default: pebble's logger (the standard log package).
	Logger pebble.Logger
}

const (
	defaultCacheBytes         = 192 << 20
	defaultMemTableBytes      = 16 << 20
	defaultStreamCacheEntries = 1 << 18
	defaultQueueLength        = 4096
	defaultMaxGroupBytes      = 8 << 20
	defaultPollInterval       = time.Second

	// maxGroupRequests bounds the appends in one group, so answers are not held back
	// behind an arbitrarily long queue.
	maxGroupRequests = 2048
	// minSeparatedValueBytes is the smallest value pebble stores in a blob file: the log
	// records of the events every payment writes (113 bytes of header, then ids, type and
	// JSON: about 400 bytes), never the 8-byte index values.
	minSeparatedValueBytes = 192
	// syncPipelineDepth is how many applied groups may wait for their fsync while the
	// writer prepares the next one. Two keep the disk busy; more only add latency.
	syncPipelineDepth = 2
)

// Validate reports options that cannot work.
func (o Options) Validate() error {
	switch {
	case o.CacheBytes < 0:
		return fmt.Errorf("embedded: CacheBytes %d is negative", o.CacheBytes)
	case o.MemTableBytes > 1<<30:
		return fmt.Errorf("embedded: MemTableBytes %d is above 1 GiB", o.MemTableBytes)
	case o.CacheBytes != 0 && o.CacheBytes < 2*int64(max(o.MemTableBytes, defaultMemTableBytes)):
		return fmt.Errorf("embedded: CacheBytes %d is less than two memtables (%d each), which pebble reserves out of it", o.CacheBytes, max(o.MemTableBytes, defaultMemTableBytes))
	case o.StreamCacheEntries < 0:
		return fmt.Errorf("embedded: StreamCacheEntries %d is negative", o.StreamCacheEntries)
	case o.QueueLength < 0:
		return fmt.Errorf("embedded: QueueLength %d is negative", o.QueueLength)
	case o.MaxGroupBytes < 0:
		return fmt.Errorf("embedded: MaxGroupBytes %d is negative", o.MaxGroupBytes)
	case o.PollInterval < 0:
		return fmt.Errorf("embedded: PollInterval %v is negative", o.PollInterval)
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.CacheBytes == 0 {
		o.CacheBytes = defaultCacheBytes
	}
	if o.MemTableBytes == 0 {
		o.MemTableBytes = defaultMemTableBytes
	}
	if o.StreamCacheEntries == 0 {
		o.StreamCacheEntries = defaultStreamCacheEntries
	}
	if o.QueueLength == 0 {
		o.QueueLength = defaultQueueLength
	}
	if o.MaxGroupBytes == 0 {
		o.MaxGroupBytes = defaultMaxGroupBytes
	}
	if o.PollInterval == 0 {
		o.PollInterval = defaultPollInterval
	}
	return o
}

// Store is the embedded event store. It is safe for concurrent use.
type Store struct {
	db   *pebble.DB
	dir  string
	opts Options

	// closeMu orders Close against everything else: every call holds it shared while it
	// touches pebble or enqueues, Close holds it exclusively to flip closed, so pebble is
	// never used after it is closed.
	closeMu sync.RWMutex
	closed  bool

	requests chan *request
	quit     chan struct{} // closed by Close: the writer drains and stops
	done     chan struct{} // closed when the writer and syncer have stopped

	// durable is the last position whose group is fsynced. Readers never look past it, so
	// nothing is read that a crash could still take back.
	durable atomic.Uint64
	// failed holds the first error that made the store unusable for writes (a failed WAL
	// write or sync: pebble's state after that is unknown).
	failed atomic.Pointer[error]
	signal *eventstore.Signal
	// cacheGen is the writer's version cache generation (see versionCache).
	cacheGen atomic.Uint64

	snapshotMu sync.Mutex // serialises snapshot read-compare-writes

	requestPool sync.Pool
}

var _ eventstore.Store = (*Store)(nil)
var _ eventstore.SnapshotStore = (*Store)(nil)
var _ eventstore.LinkReader = (*Store)(nil)

// Open opens (creating it if needed) the store in dir. Only one Store may have a
// directory open at a time; pebble's lock file refuses a second.
func Open(dir string, opts Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	// The directory holds every payment ever made: only its owner may enter it. Pebble
	// creates its files with the process umask (often world-readable), so the directory's
	// mode is what keeps them private; an existing directory is tightened too.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded store: create %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded store: make %s private: %w", dir, err)
	}
	cache := pebble.NewCache(opts.CacheBytes)
	defer cache.Unref()
	popts := &pebble.Options{
		Cache:                       cache,
		MemTableSize:                opts.MemTableBytes,
		MemTableStopWritesThreshold: 4,
		Logger:                      opts.Logger,
		FormatMajorVersion:          pebble.FormatNewest,
	}
	// Every append of a new stream (each payment is one) looks up a version that does not
	// exist yet; without bloom filters that miss reads a block of every sstable.
	popts.Levels[0].FilterPolicy = bloom.FilterPolicy(10)
	// The log is written once and never changed, and its records (~400 bytes each) are
	// most of the bytes, while the index keys, which arrive in random order, are what
	// compactions must sort. With value separation a flush writes each record once into a
	// blob file, and compactions move only keys and small references to it; without it,
	// every compaction that merged index keys around a run of records copied the records
	// again. Reads of a record pay one more block lookup (the blob file's).
	//
	// Blob files are never rewritten to reclaim garbage (TargetGarbageRatio 1): log records
	// are never overwritten or deleted, so the only garbage is superseded snapshots, whose
	// total is a tiny fraction of the log (the ledger saves one per thousand events of an
	// account). Compactions still copy values into new blob files when an sstable would
	// otherwise reference more than MaxBlobReferenceDepth of them, which keeps reads local.
	popts.Experimental.ValueSeparationPolicy = func() pebble.ValueSeparationPolicy {
		return pebble.ValueSeparationPolicy{
			Enabled:               true,
			MinimumSize:           minSeparatedValueBytes,
			MaxBlobReferenceDepth: 10,
			RewriteMinimumAge:     5 * time.Minute,
			TargetGarbageRatio:    1,
		}
	}
	db, err := pebble.Open(dir, popts)
	if err != nil {
		return nil, fmt.Errorf("embedded: open %s: %w", dir, err)
	}
	s := &Store{
		db:       db,
		dir:      dir,
		opts:     opts,
		requests: make(chan *request, opts.QueueLength),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
		signal:   eventstore.NewSignal(),
	}
	s.requestPool.New = func() any { return &request{done: make(chan struct{}, 1)} }
	w, err := s.recover()
	if err != nil {
		return nil, errors.Join(err, db.Close())
	}
	s.durable.Store(w.next - 1)
	go w.run()
	return s, nil
}

// recover reads the head of the log (its last record) and returns a writer that continues
// after it. The log key is the source of truth: a group is one pebble batch, so after a
// crash the log is a whole prefix of what was committed, with no gap to repair.
func (s *Store) recover() (*writer, error) {
	w := newWriter(s)
	iter, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixLog}, UpperBound: []byte{prefixLog + 1}})
	if err != nil {
		return nil, fmt.Errorf("embedded: open %s: read head: %w", s.dir, err)
	}
	defer iter.Close()
	if !iter.Last() {
		if err := iter.Error(); err != nil {
			return nil, fmt.Errorf("embedded: open %s: read head: %w", s.dir, err)
		}
		return w, nil // an empty log
	}
	key := iter.Key()
	if len(key) != 9 {
		return nil, fmt.Errorf("embedded: open %s: %w: log key %x is not 9 bytes", s.dir, errCorrupt, key)
	}
	pos := binary.BigEndian.Uint64(key[1:])
	val, err := iter.ValueAndErr()
	if err != nil {
		return nil, fmt.Errorf("embedded: open %s: read head at %d: %w", s.dir, pos, err)
	}
	last, err := decodeRecord(pos, val)
	if err != nil {
		return nil, fmt.Errorf("embedded: open %s: %w", s.dir, err)
	}
	w.next = pos + 1
	w.prev = last.Hash
	w.lastMicros = last.RecordedAt.UnixMicro()
	return w, nil
}

// use takes the shared side of closeMu for one call; the caller must call the returned
// release. It fails with ErrClosed after Close.
func (s *Store) use() (release func(), err error) {
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return nil, eventstore.ErrClosed
	}
	return s.closeMu.RUnlock, nil
}

// Close stops the writer (appends already committed are answered; queued and new ones
// fail with ErrClosed) and closes pebble. Closing twice returns ErrClosed.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return eventstore.ErrClosed
	}
	s.closed = true
	s.closeMu.Unlock()
	close(s.quit)
	<-s.done
	s.signal.Broadcast() // idle subscriptions wake, read, and see ErrClosed
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("embedded: close %s: %w", s.dir, err)
	}
	return nil
}

// Head returns the last durable position.
func (s *Store) Head(ctx context.Context) (uint64, error) {
	release, err := s.use()
	if err != nil {
		return 0, err
	}
	defer release()
	return s.durable.Load(), nil
}

// ReadAll returns up to limit durable events after afterPosition.
func (s *Store) ReadAll(ctx context.Context, afterPosition uint64, limit int) ([]eventstore.RecordedEvent, error) {
	return readLog(ctx, s, afterPosition, limit, "read all", decodeRecord)
}

// ReadLinks implements eventstore.LinkReader: the same iteration as ReadAll, but each
// record is only checked for its header and its two hashes copied out — no strings, no
// payload, no allocation per event.
func (s *Store) ReadLinks(ctx context.Context, afterPosition uint64, limit int) ([]eventstore.ChainLink, error) {
	return readLog(ctx, s, afterPosition, limit, "read links", decodeLink)
}

// readLog walks up to limit durable log records after afterPosition and decodes each with
// decode: whole events for ReadAll, only the chain links for ReadLinks.
func readLog[T any](ctx context.Context, s *Store, afterPosition uint64, limit int, op string, decode func(pos uint64, val []byte) (T, error)) ([]T, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	release, err := s.use()
	if err != nil {
		return nil, err
	}
	defer release()
	limit = eventstore.ClampLimit(limit)
	durable := s.durable.Load()
	if afterPosition >= durable {
		return nil, nil
	}
	last := durable
	if n := durable - afterPosition; n > uint64(limit) {
		last = afterPosition + uint64(limit)
	}
	var lo, hi [9]byte
	iter, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: logKey(lo[:0], afterPosition+1),
		UpperBound: logKey(hi[:0], last+1),
	})
	if err != nil {
		return nil, fmt.Errorf("embedded: %s after %d: %w", op, afterPosition, err)
	}
	defer iter.Close()
	out := make([]T, 0, last-afterPosition)
	want := afterPosition + 1
	for ok := iter.First(); ok; ok = iter.Next() {
		pos := binary.BigEndian.Uint64(iter.Key()[1:])
		if pos != want {
			// The log is a gap-free prefix up to durable, so this is damage, not a race.
			return nil, fmt.Errorf("embedded: %s: %w: position %d missing (next stored is %d)", op, errCorrupt, want, pos)
		}
		val, err := iter.ValueAndErr()
		if err != nil {
			return nil, fmt.Errorf("embedded: %s at %d: %w", op, pos, err)
		}
		v, err := decode(pos, val)
		if err != nil {
			return nil, fmt.Errorf("embedded: %s: %w", op, err)
		}
		out = append(out, v)
		want++
	}
	if err := iter.Error(); err != nil {
		return nil, fmt.Errorf("embedded: %s after %d: %w", op, afterPosition, err)
	}
	if want != last+1 {
		return nil, fmt.Errorf("embedded: %s: %w: position %d missing (durable head is %d)", op, errCorrupt, want, durable)
	}
	return out, nil
}

// ReadStream returns up to limit durable events of stream after afterVersion.
func (s *Store) ReadStream(ctx context.Context, stream string, afterVersion uint64, limit int) ([]eventstore.RecordedEvent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if stream == "" || len(stream) > eventstore.MaxStreamNameBytes || afterVersion == math.MaxUint64 {
		return nil, nil // no such stream can exist
	}
	release, err := s.use()
	if err != nil {
		return nil, err
	}
	defer release()
	limit = eventstore.ClampLimit(limit)
	durable := s.durable.Load()
	lo := indexKey(make([]byte, 0, 2+len(stream)+8), stream, afterVersion+1)
	hi := streamKey(make([]byte, 0, 3+len(stream)), prefixIndex, stream)
	hi = binary.BigEndian.AppendUint64(hi, math.MaxUint64)
	hi = append(hi, 0) // just past version MaxUint64
	idx, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, fmt.Errorf("embedded: read %s: %w", stream, err)
	}
	defer idx.Close()
	logIter, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixLog}, UpperBound: []byte{prefixLog + 1}})
	if err != nil {
		return nil, fmt.Errorf("embedded: read %s: %w", stream, err)
	}
	defer logIter.Close()

	var out []eventstore.RecordedEvent
	want := afterVersion + 1
	var key [9]byte
	for ok := idx.First(); ok && len(out) < limit; ok = idx.Next() {
		k := idx.Key()
		version := binary.BigEndian.Uint64(k[len(k)-8:])
		val, err := idx.ValueAndErr()
		if err != nil {
			return nil, fmt.Errorf("embedded: read %s version %d: %w", stream, version, err)
		}
		if len(val) != 8 {
			return nil, fmt.Errorf("embedded: read %s version %d: %w: index value is %d bytes, want 8", stream, version, errCorrupt, len(val))
		}
		pos := binary.BigEndian.Uint64(val)
		if pos > durable {
			break // committed by a group whose fsync has not finished: not ours to show yet
		}
		if version != want {
			return nil, fmt.Errorf("embedded: read %s: %w: version %d missing (next indexed is %d)", stream, errCorrupt, want, version)
		}
		if !logIter.SeekGE(logKey(key[:0], pos)) || binary.BigEndian.Uint64(logIter.Key()[1:]) != pos {
			if err := logIter.Error(); err != nil {
				return nil, fmt.Errorf("embedded: read %s at position %d: %w", stream, pos, err)
			}
			return nil, fmt.Errorf("embedded: read %s: %w: version %d points at missing position %d", stream, errCorrupt, version, pos)
		}
		rec, err := logIter.ValueAndErr()
		if err != nil {
			return nil, fmt.Errorf("embedded: read %s at position %d: %w", stream, pos, err)
		}
		e, err := decodeRecord(pos, rec)
		if err != nil {
			return nil, fmt.Errorf("embedded: read %s: %w", stream, err)
		}
		if e.Stream != stream || e.StreamVersion != version {
			return nil, fmt.Errorf("embedded: read %s: %w: index says version %d is at position %d, which holds %s version %d", stream, errCorrupt, version, pos, e.Stream, e.StreamVersion)
		}
		out = append(out, e)
		want++
	}
	if err := idx.Error(); err != nil {
		return nil, fmt.Errorf("embedded: read %s: %w", stream, err)
	}
	return out, nil
}

// Subscribe delivers every event after afterPosition, in order, exactly once.
func (s *Store) Subscribe(ctx context.Context, afterPosition uint64, maxBatch int, handle func(context.Context, []eventstore.RecordedEvent) error) error {
	if _, err := s.Head(ctx); err != nil {
		return err
	}
	sub := eventstore.PollSubscription{ReadAll: s.ReadAll, Signal: s.signal, PollInterval: s.opts.PollInterval}
	return sub.Run(ctx, afterPosition, maxBatch, handle)
}
