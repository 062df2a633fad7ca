package embedded

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/cockroachdb/pebble/v2"

	"github.com/securepay/securepay/eventstore"
)

// request is one Append waiting for the writer. The writer fills res or err and then
// signals done (capacity 1, so answering never blocks the writer).
type request struct {
	ctx     context.Context
	appends []eventstore.StreamAppend
	bytes   int // encoded size of all its records, to bound a group
	res     eventstore.AppendResult
	err     error
	done    chan struct{}

	// absent[i] says the caller found appends[i].Stream absent from pebble while the
	// version cache was at generation gen (see prefetch).
	absent []bool
	gen    uint64
	key    []byte
}

// group is the appends taken together from the queue. The accepted ones are committed in
// one pebble batch; the refused ones (conflicts) carry their error. All are answered in
// commit order, after the fsync of this group and every earlier one, so a caller told
// "conflict" then reads at least the version that beat it.
type group struct {
	batch *pebble.Batch // nil when nothing was accepted
	reqs  []*request    // all of them, in queue order; err set on the refused ones
	last  uint64        // last position written by the batch
}

// Append writes the events of all appends atomically and returns once they are durable.
func (s *Store) Append(ctx context.Context, appends ...eventstore.StreamAppend) (eventstore.AppendResult, error) {
	if err := eventstore.ValidateAppend(appends); err != nil {
		return eventstore.AppendResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("append: %w", err)
	}
	if errp := s.failed.Load(); errp != nil {
		return eventstore.AppendResult{}, *errp
	}
	req := s.requestPool.Get().(*request)
	req.ctx = ctx
	req.appends = appends
	req.bytes = 0
	for i := range appends {
		a := &appends[i]
		for j := range a.Events {
			req.bytes += recordSize(&a.Events[j], a.Stream) + 2*len(a.Stream) + 32
		}
	}

	release, err := s.use()
	if err != nil {
		s.recycle(req)
		return eventstore.AppendResult{}, err
	}
	if err := s.prefetch(req); err != nil {
		release()
		s.recycle(req)
		return eventstore.AppendResult{}, err
	}
	select {
	case s.requests <- req:
		release()
	case <-ctx.Done():
		release()
		s.recycle(req)
		return eventstore.AppendResult{}, fmt.Errorf("append: waiting for the writer queue: %w", ctx.Err())
	}
	select {
	case <-req.done:
		res, err := req.res, req.err
		s.recycle(req)
		return res, err
	case <-ctx.Done():
		// The writer still owns req (it may be committing it right now), so it is not
		// recycled; the caller must treat the outcome as unknown and retry idempotently.
		return eventstore.AppendResult{}, fmt.Errorf("append: outcome unknown, the append may still commit: %w", ctx.Err())
	}
}

func (s *Store) recycle(r *request) {
	*r = request{done: r.done, absent: r.absent[:0], key: r.key[:0]}
	s.requestPool.Put(r)
}

// prefetch does, on the caller's goroutine and so in parallel with the writer, the one
// lookup the writer would otherwise do for most new streams: whether a stream expected
// not to exist has an event. It only looks for NoStream expectations (a payment's own
// stream), since other streams are usually in the writer's cache.
//
// The answer stays true for the writer as long as the cache generation has not moved:
// every stream the writer commits to goes into the cache, and only a generation change
// drops entries, so a stream absent at the lookup and committed since is in the cache,
// which the writer reads first.
func (s *Store) prefetch(r *request) error {
	r.absent = r.absent[:0]
	r.gen = s.cacheGen.Load() // before the lookups: a later change voids them
	// One iterator serves all lookups of the request: a batch of transfers creates
	// hundreds of payment streams, and a point Get builds (and drops) a fresh iterator
	// stack over every memtable and level each time. SeekPrefixGE consults the same bloom
	// filters as Get, so a stream that does not exist still costs no data block read.
	var iter *pebble.Iterator
	defer func() {
		if iter != nil {
			_ = iter.Close()
		}
	}()
	for i := range r.appends {
		a := &r.appends[i]
		absent := false
		if a.Expected.IsNoStream() {
			if iter == nil {
				var err error
				if iter, err = s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixIndex}, UpperBound: []byte{prefixIndex + 1}}); err != nil {
					return fmt.Errorf("embedded: append %s: read version: %w", a.Stream, err)
				}
			}
			r.key = indexKey(r.key[:0], a.Stream, 1)
			found := iter.SeekPrefixGE(r.key) && bytes.Equal(iter.Key(), r.key)
			if err := iter.Error(); err != nil {
				return fmt.Errorf("embedded: append %s: read version: %w", a.Stream, err)
			}
			absent = !found
		}
		r.absent = append(r.absent, absent)
	}
	return nil
}

func answer(r *request, err error) {
	r.err = err
	r.done <- struct{}{}
}

// refuse marks r as refused; it is answered with the rest of its group.
func refuse(r *request, err error) { r.err = err }

// writer is the state only the writer goroutine touches.
type writer struct {
	s          *Store
	next       uint64          // position of the next event
	prev       eventstore.Hash // hash of the event at next-1
	lastMicros int64           // record time of the event at next-1, so time never goes back
	// cache holds the versions of streams in use; created holds streams just created
	// (most are payments that will not be appended to again soon), kept apart so a flood
	// of new streams does not push the accounts out of cache. A stream is in at most one
	// of them with a current version (putCache removes it from created).
	cache, created *versionCache
	pending        map[string]uint64   // versions written by the group being built
	newInGroup     map[string]struct{} // streams of pending that the group creates
	versions       []uint64            // versions check found for the request being built
	// index holds the group's index entries (key, then the 8-byte position), indexEnds
	// where each ends. They go into the batch after all log records: pebble inserts a
	// batch's keys into the memtable's skiplist in batch order, reusing the previous
	// insert's place as a hint, so a run of ascending log keys lands at the end of the
	// list without a search. Interleaved with the (random) index keys, every log insert
	// searched from the top. Bounded by MaxGroupBytes, like the group.
	index     []byte
	indexEnds []int
	hasher    chainHasher
	key       []byte
}

func newWriter(s *Store) *writer {
	return &writer{
		s:          s,
		next:       1,
		cache:      newVersionCache(s.opts.StreamCacheEntries, &s.cacheGen),
		created:    newVersionCache(max(1024, s.opts.StreamCacheEntries/8), &s.cacheGen),
		pending:    make(map[string]uint64),
		newInGroup: make(map[string]struct{}),
		hasher:     chainHasher{buf: make([]byte, 0, 1024)},
		key:        make([]byte, 0, 16+eventstore.MaxStreamNameBytes),
	}
}

// run is the writer goroutine: it builds and applies groups while the syncer goroutine
// waits for their fsyncs and answers them, in order.
func (w *writer) run() {
	s := w.s
	free := make(chan *group, syncPipelineDepth+1)
	for range syncPipelineDepth + 1 {
		free <- &group{reqs: make([]*request, 0, 64)}
	}
	syncing := make(chan *group, syncPipelineDepth)
	syncerDone := make(chan struct{})
	go func() {
		defer close(syncerDone)
		for g := range syncing {
			w.finish(g)
			free <- g
		}
	}()
	defer func() {
		close(syncing)
		<-syncerDone
		close(s.done)
	}()

	for {
		var first *request
		select {
		case first = <-s.requests:
		case <-s.quit:
			// Close has made sure nobody is still sending, so this drains everything.
			for {
				select {
				case r := <-s.requests:
					answer(r, eventstore.ErrClosed)
				default:
					return
				}
			}
		}
		// Waiting here for a free group, while the syncer waits for an fsync, is what
		// lets the queue fill up so that the next group is larger.
		g := <-free
		g.reqs = g.reqs[:0]
		reqs := append(g.reqs, first)
		size := first.bytes
	gather:
		for len(reqs) < maxGroupRequests && size < s.opts.MaxGroupBytes {
			select {
			case r := <-s.requests:
				reqs = append(reqs, r)
				size += r.bytes
			default:
				break gather
			}
		}
		g.reqs = reqs
		w.build(g)
		syncing <- g
	}
}

// build checks the group's requests in order, writes the accepted ones into one batch and
// applies it without waiting for the fsync (g.batch stays nil if none was accepted). The
// refused ones get their error set; finish answers everyone.
func (w *writer) build(g *group) {
	s := w.s
	g.batch = nil
	if errp := s.failed.Load(); errp != nil {
		for _, r := range g.reqs {
			refuse(r, *errp)
		}
		return
	}
	micros := eventstore.RecordTime(s.opts.Clock()).UnixMicro()
	if micros < w.lastMicros {
		micros = w.lastMicros
	}
	batch := s.db.NewBatch()
	accepted := 0
	clear(w.pending)
	clear(w.newInGroup)
	startNext, startPrev := w.next, w.prev
	w.index, w.indexEnds = w.index[:0], w.indexEnds[:0]
	for _, r := range g.reqs {
		if err := r.ctx.Err(); err != nil {
			refuse(r, fmt.Errorf("append: %w", err))
			continue
		}
		if err := w.check(r); err != nil {
			refuse(r, err)
			continue
		}
		if err := w.write(batch, r, micros); err != nil {
			// Only a failure to read a stream version or to encode into the batch lands
			// here; the batch may hold part of r, so none of it can be committed.
			w.abandon(g, batch, startNext, startPrev, fmt.Errorf("embedded: build batch: %w", err))
			return
		}
		accepted++
	}
	if accepted == 0 {
		_ = batch.Close()
		return
	}
	if err := w.writeIndex(batch); err != nil {
		w.abandon(g, batch, startNext, startPrev, fmt.Errorf("embedded: build batch: %w", err))
		return
	}
	if err := s.db.ApplyNoSyncWait(batch, pebble.Sync); err != nil {
		w.abandon(g, batch, startNext, startPrev, w.fail(fmt.Errorf("embedded: commit: %w", err)))
		return
	}
	for stream, v := range w.pending {
		if _, isNew := w.newInGroup[stream]; isNew {
			w.created.put(stream, v)
		} else {
			w.putCache(stream, v)
		}
	}
	w.lastMicros = micros
	g.batch = batch
	g.last = w.next - 1
}

// writeIndex adds the index entries that write collected to batch.
func (w *writer) writeIndex(batch *pebble.Batch) error {
	start := 0
	for _, end := range w.indexEnds {
		entry := w.index[start:end]
		key := entry[:len(entry)-8]
		op := batch.SetDeferred(len(key), 8)
		copy(op.Key, key)
		copy(op.Value, entry[len(key):])
		if err := op.Finish(); err != nil {
			return err
		}
		start = end
	}
	// Keep the buffers of an unusually large group only while they stay modest.
	if cap(w.index) > 4<<20 {
		w.index, w.indexEnds = nil, nil
	}
	return nil
}

// abandon drops a batch that will not be committed: every request of the group not
// already refused fails with err, and the writer's position and hash go back to where the
// group started.
func (w *writer) abandon(g *group, batch *pebble.Batch, next uint64, prev eventstore.Hash, err error) {
	for _, r := range g.reqs {
		if r.err == nil {
			refuse(r, err)
		}
	}
	w.next, w.prev = next, prev
	clear(w.pending)
	clear(w.newInGroup)
	_ = batch.Close()
}

// fail makes err the store's permanent write error (the first one wins) and returns it.
func (w *writer) fail(err error) error {
	if w.s.failed.CompareAndSwap(nil, &err) {
		return err
	}
	return *w.s.failed.Load()
}

// version is the stream's version as the writer sees it: this group's pending writes,
// then the cache, then pebble (which already holds groups applied but not yet synced).
//
// There is no "current version" key to read: a stream's version is its last index key.
// Most misses are streams that do not exist yet (every payment is a new stream), and a
// point lookup of version 1 answers those through the bloom filters without reading any
// data block; only an existing, uncached stream pays for a seek to its last version.
func (w *writer) version(stream string, absentHint bool) (uint64, error) {
	if v, ok := w.pending[stream]; ok {
		return v, nil
	}
	if v, ok := w.cache.get(stream); ok {
		return v, nil
	}
	if v, ok := w.created.get(stream); ok {
		return v, nil
	}
	if absentHint {
		return 0, nil
	}
	w.key = indexKey(w.key[:0], stream, 1)
	_, closer, err := w.s.db.Get(w.key)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil // unknown streams are not cached: a one-off read stays one-off
	}
	if err != nil {
		return 0, fmt.Errorf("embedded: read version of %s: %w", stream, err)
	}
	_ = closer.Close()
	v, err := lastVersion(w.s.db, stream)
	if err != nil {
		return 0, err
	}
	w.putCache(stream, v)
	return v, nil
}

// putCache records a stream in use, dropping any older entry created holds for it.
func (w *writer) putCache(stream string, v uint64) {
	w.created.remove(stream)
	w.cache.put(stream, v)
}

// lastVersion seeks to the stream's last index key.
func lastVersion(db *pebble.DB, stream string) (uint64, error) {
	lo := indexKey(make([]byte, 0, 10+len(stream)), stream, 1)
	hi := append(indexKey(make([]byte, 0, 11+len(stream)), stream, math.MaxUint64), 0)
	iter, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return 0, fmt.Errorf("embedded: read version of %s: %w", stream, err)
	}
	defer iter.Close()
	if !iter.Last() {
		if err := iter.Error(); err != nil {
			return 0, fmt.Errorf("embedded: read version of %s: %w", stream, err)
		}
		return 0, fmt.Errorf("embedded: read version of %s: %w: version 1 is indexed but no last version found", stream, errCorrupt)
	}
	k := iter.Key()
	return binary.BigEndian.Uint64(k[len(k)-8:]), nil
}

// check tests every expectation of r (the first failing one is the conflict) and leaves
// the versions it found in w.versions for write.
func (w *writer) check(r *request) error {
	w.versions = w.versions[:0]
	hintsValid := r.gen == w.cache.generation()
	for i := range r.appends {
		a := &r.appends[i]
		v, err := w.version(a.Stream, hintsValid && r.absent[i])
		if err != nil {
			return err
		}
		w.versions = append(w.versions, v)
		if !a.Expected.Allows(v) {
			return &eventstore.ConflictError{Stream: a.Stream, Expected: a.Expected, Actual: v}
		}
	}
	return nil
}

// write adds r's events to batch at the next positions and records r's result. It
// follows check, whose versions it uses.
func (w *writer) write(batch *pebble.Batch, r *request, micros int64) error {
	versions := make(map[string]uint64, len(r.appends))
	r.res.FirstPosition = w.next
	for i := range r.appends {
		a := &r.appends[i]
		v := w.versions[i]
		for j := range a.Events {
			e := &a.Events[j]
			v++
			pos := w.next
			hash := w.hasher.sum(&w.prev, pos, v, micros, a.Stream, e)

			op := batch.SetDeferred(9, recordSize(e, a.Stream))
			logKey(op.Key[:0], pos)
			encodeRecord(op.Value, a.Stream, v, micros, &w.prev, &hash, e)
			if err := op.Finish(); err != nil {
				return err
			}
			w.index = indexKey(w.index, a.Stream, v)
			w.index = binary.BigEndian.AppendUint64(w.index, pos)
			w.indexEnds = append(w.indexEnds, len(w.index))
			w.prev = hash
			w.next++
		}
		if w.versions[i] == 0 {
			w.newInGroup[a.Stream] = struct{}{}
		}
		w.pending[a.Stream] = v
		versions[a.Stream] = v
	}
	r.res.LastPosition = w.next - 1
	r.res.Versions = versions
	return nil
}

// finish waits for g's fsync, publishes its events to readers and answers its appends.
// It runs on the syncer goroutine, one group at a time in commit order.
func (w *writer) finish(g *group) {
	s := w.s
	var err error
	if g.batch != nil {
		err = g.batch.SyncWait()
		if err != nil {
			err = w.fail(fmt.Errorf("embedded: sync: %w", err))
		} else if errp := s.failed.Load(); errp != nil {
			// An earlier group failed to sync: the log may have a hole before this one,
			// so this group cannot be acknowledged either.
			err = *errp
		}
		if err == nil {
			s.durable.Store(g.last)
			s.signal.Broadcast()
		}
		_ = g.batch.Close()
		g.batch = nil
	}
	for _, r := range g.reqs {
		if r.err == nil {
			r.err = err
		}
		r.done <- struct{}{}
	}
	g.reqs = g.reqs[:0]
}
