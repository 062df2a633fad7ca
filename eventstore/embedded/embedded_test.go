package embedded

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/securepay/securepay/eventstore"
)

func openTest(t *testing.T, dir string, opts Options) *Store {
	t.Helper()
	opts.Logger = quietLogger{}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	return s
}

func closeTest(t *testing.T, s *Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

func single(stream string, exp eventstore.ExpectedVersion, id string) eventstore.StreamAppend {
	return eventstore.StreamAppend{Stream: stream, Expected: exp, Events: []eventstore.EventData{{ID: id, Type: "test.v1", Data: []byte(id)}}}
}

func TestOptionsValidate(t *testing.T) {
	cases := []struct {
		name string
		opts Options
		want string // "" when valid
	}{
		{"zero value", Options{}, ""},
		{"negative cache", Options{CacheBytes: -1}, "CacheBytes"},
		{"huge memtable", Options{MemTableBytes: 2 << 30}, "MemTableBytes"},
		{"negative stream cache", Options{StreamCacheEntries: -1}, "StreamCacheEntries"},
		{"negative queue", Options{QueueLength: -1}, "QueueLength"},
		{"negative group bytes", Options{MaxGroupBytes: -1}, "MaxGroupBytes"},
		{"negative poll interval", Options{PollInterval: -time.Second}, "PollInterval"},
	}
	for _, tc := range cases {
		err := tc.opts.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: Validate() = %v, want an error mentioning %q", tc.name, err, tc.want)
		}
		if tc.want != "" {
			if _, err := Open(t.TempDir(), tc.opts); err == nil {
				t.Errorf("%s: Open accepted invalid options", tc.name)
			}
		}
	}
}

// TestRecordTimes: the store stamps events with its injected clock, truncated to the
// microsecond in UTC, and never lets times go backwards along the log when the clock does.
func TestRecordTimes(t *testing.T) {
	ctx := context.Background()
	base := time.Date(2026, 11, 23, 9, 0, 0, 0, time.FixedZone("CET", 3600))
	readings := []time.Time{
		base.Add(1500 * time.Nanosecond), // truncated to 1µs
		base.Add(-time.Hour),             // the clock steps back
		base.Add(time.Minute),
	}
	var mu sync.Mutex
	next := 0
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		r := readings[min(next, len(readings)-1)]
		next++
		return r
	}
	s := openTest(t, t.TempDir(), Options{Clock: clock})
	defer closeTest(t, s)
	for i := range readings {
		if _, err := s.Append(ctx, single("clock", eventstore.Any(), fmt.Sprint("clock-", i))); err != nil {
			t.Fatal(err)
		}
	}
	events, err := s.ReadAll(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	want := []time.Time{base.Add(time.Microsecond).UTC(), base.Add(time.Microsecond).UTC(), base.Add(time.Minute).UTC()}
	for i, e := range events {
		if !e.RecordedAt.Equal(want[i]) || e.RecordedAt.Location() != time.UTC {
			t.Errorf("event %d recorded at %v, want %v in UTC", i, e.RecordedAt, want[i])
		}
	}
}

// TestVersionsSurviveCacheEviction: with a stream-version cache of two entries, appends to
// many streams still check their expectations against the true versions (read back from
// the index), before and after a reopen.
func TestVersionsSurviveCacheEviction(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openTest(t, dir, Options{StreamCacheEntries: 2})
	const streams, rounds = 10, 4
	check := func(s *Store, round int) {
		t.Helper()
		for k := range streams {
			stream := fmt.Sprint("evict-", k)
			if _, err := s.Append(ctx, single(stream, eventstore.Exact(uint64(round)+1), "stale")); !errors.Is(err, eventstore.ErrConflict) {
				t.Fatalf("round %d: Exact(%d) on %s at version %d: err = %v, want ErrConflict", round, round+1, stream, round, err)
			}
			res, err := s.Append(ctx, single(stream, eventstore.Exact(uint64(round)), fmt.Sprintf("evict-%d-%d", k, round)))
			if err != nil || res.Versions[stream] != uint64(round)+1 {
				t.Fatalf("round %d: Exact(%d) on %s: %v, versions %v", round, round, stream, err, res.Versions)
			}
		}
	}
	for round := range rounds {
		check(s, round)
	}
	closeTest(t, s)
	s = openTest(t, dir, Options{StreamCacheEntries: 2})
	defer closeTest(t, s)
	check(s, rounds)
}

// TestGroupCommitRefusesAlone: appends that conflict fail on their own while the appends
// committed in the same groups succeed.
func TestGroupCommitRefusesAlone(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir(), Options{})
	defer closeTest(t, s)
	const writers = 64
	var wg sync.WaitGroup
	results := make([]error, writers)
	start := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			<-start
			// Even writers all try to create one stream; odd writers each own a stream.
			a := single(fmt.Sprint("own-", w), eventstore.NoStream(), fmt.Sprint("w", w))
			if w%2 == 0 {
				a.Stream = "contended"
			}
			_, results[w] = s.Append(ctx, a)
		})
	}
	close(start)
	wg.Wait()
	created := 0
	for w, err := range results {
		switch {
		case w%2 == 1 && err != nil:
			t.Errorf("writer %d on its own stream failed: %v", w, err)
		case w%2 == 0 && err == nil:
			created++
		case w%2 == 0 && !errors.Is(err, eventstore.ErrConflict):
			t.Errorf("writer %d on the contended stream: %v, want success or ErrConflict", w, err)
		}
	}
	if created != 1 {
		t.Fatalf("%d writers created the contended stream, want exactly 1", created)
	}
	if h, _ := s.Head(ctx); h != writers/2+1 {
		t.Fatalf("Head = %d, want %d", h, writers/2+1)
	}
}

// TestCorruptRecordIsReported: a damaged record is an error naming its position, on read
// and, when it is the head, on Open.
func TestCorruptRecordIsReported(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openTest(t, dir, Options{})
	for i := range 3 {
		if _, err := s.Append(ctx, single("c", eventstore.Any(), fmt.Sprint("c-", i))); err != nil {
			t.Fatal(err)
		}
	}
	for _, pos := range []uint64{2, 3} {
		if err := s.db.Set(logKey(nil, pos), []byte{recordFormatV1 + 1, 0, 0}, pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.ReadAll(ctx, 0, 10); !errors.Is(err, errCorrupt) || !strings.Contains(err.Error(), "position 2") {
		t.Fatalf("ReadAll over a damaged record: %v, want errCorrupt at position 2", err)
	}
	if _, err := s.ReadStream(ctx, "c", 0, 10); !errors.Is(err, errCorrupt) {
		t.Fatalf("ReadStream over a damaged record: %v, want errCorrupt", err)
	}
	closeTest(t, s)
	if s, err := Open(dir, Options{Logger: quietLogger{}}); !errors.Is(err, errCorrupt) || !strings.Contains(err.Error(), "position 3") {
		if err == nil {
			s.Close()
		}
		t.Fatalf("Open with a damaged head record: %v, want errCorrupt at position 3", err)
	}
}

func TestSnapshotRefusals(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openTest(t, dir, Options{})
	cases := []struct {
		name string
		snap eventstore.Snapshot
	}{
		{"no stream", eventstore.Snapshot{Version: 1, Schema: "s.v1"}},
		{"stream too long", eventstore.Snapshot{Stream: strings.Repeat("x", eventstore.MaxStreamNameBytes+1), Version: 1, Schema: "s.v1"}},
		{"version 0", eventstore.Snapshot{Stream: "a", Schema: "s.v1"}},
		{"no schema", eventstore.Snapshot{Stream: "a", Version: 1}},
		{"state too large", eventstore.Snapshot{Stream: "a", Version: 1, Schema: "s.v1", State: make([]byte, maxSnapshotStateBytes+1)}},
	}
	for _, tc := range cases {
		if err := s.SaveSnapshot(ctx, tc.snap); !errors.Is(err, ErrInvalidSnapshot) {
			t.Errorf("%s: SaveSnapshot = %v, want ErrInvalidSnapshot", tc.name, err)
		}
	}
	// Snapshots outlive a reopen (they are a cache, but a persistent one).
	if err := s.SaveSnapshot(ctx, eventstore.Snapshot{Stream: "a", Version: 4, Schema: "s.v1", State: []byte("state")}); err != nil {
		t.Fatal(err)
	}
	closeTest(t, s)
	s = openTest(t, dir, Options{})
	defer closeTest(t, s)
	got, found, err := s.LoadSnapshot(ctx, "a")
	if err != nil || !found || got.Version != 4 || string(got.State) != "state" {
		t.Fatalf("LoadSnapshot after reopen = %+v, %v, %v; want version 4 \"state\"", got, found, err)
	}
}

func TestCloseTwice(t *testing.T) {
	s := openTest(t, t.TempDir(), Options{})
	closeTest(t, s)
	if err := s.Close(); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("second Close = %v, want ErrClosed", err)
	}
}

// TestSecondOpenRefused: pebble's lock keeps a second store (in this process or another)
// off a directory in use.
func TestSecondOpenRefused(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, Options{})
	defer closeTest(t, s)
	if s2, err := Open(dir, Options{Logger: quietLogger{}}); err == nil {
		s2.Close()
		t.Fatal("a second Open of a directory in use succeeded")
	}
}

// The ledger's directory is private to its owner, whether Open creates it or finds it.
func TestDirectoryIsPrivate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		prepare func(dir string) error
	}{
		{"created by Open", func(string) error { return nil }},
		{"existing and world-readable", func(dir string) error { return os.Mkdir(dir, 0o755) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ledger")
			if err := tc.prepare(dir); err != nil {
				t.Fatal(err)
			}
			s, err := Open(dir, Options{})
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer s.Close()
			fi, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if mode := fi.Mode().Perm(); mode != 0o700 {
				t.Fatalf("ledger directory mode: want 0700, got %#o", mode)
			}
		})
	}
}
