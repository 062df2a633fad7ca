package embedded

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/securepay/securepay/eventstore"
)

// TestLogSurvivesFlushesAndCompactions writes enough transfers, in multi-stream appends
// like the command processor's, to go through several memtable flushes and a full
// compaction with value separation on, then reopens the store and checks that every
// record is where the index says, the log reads back in order, and the hash chain holds.
// It also checks that the records really live in blob files, so a pebble upgrade that
// silently turned value separation off would be noticed.
func TestLogSurvivesFlushesAndCompactions(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	// A 1 MiB memtable makes this few hundred kilobytes of records flush many times.
	opts := Options{MemTableBytes: 1 << 20, CacheBytes: 32 << 20}
	s := openTest(t, dir, opts)
	const appends, transfersPerAppend, accounts = 60, 50, 7
	data := []byte(strings.Repeat(`{"account_id":"acc","payment_id":"pay","amount":{"minor":"1"}}`, 4))
	event := func(id string) eventstore.EventData {
		return eventstore.EventData{ID: id, Type: "test.v1", Data: data, Metadata: eventstore.Metadata{Actor: "layout-test"}}
	}
	accountVersions := make(map[string]uint64)
	for n := range appends {
		var batch []eventstore.StreamAppend
		debits := make([]eventstore.StreamAppend, accounts)
		for a := range accounts {
			account := fmt.Sprintf("acc-%d", a)
			debits[a] = eventstore.StreamAppend{Stream: account, Expected: eventstore.Exact(accountVersions[account])}
		}
		for k := range transfersPerAppend {
			id := fmt.Sprintf("p-%d-%d", n, k)
			batch = append(batch, eventstore.StreamAppend{Stream: "payment-" + id, Expected: eventstore.NoStream(), Events: []eventstore.EventData{event(id)}})
			d := &debits[k%accounts]
			d.Events = append(d.Events, event(id+"-d"))
			accountVersions[d.Stream]++
		}
		batch = append(debits, batch...)
		if _, err := s.Append(ctx, batch...); err != nil {
			t.Fatalf("append %d: %v", n, err)
		}
	}
	if err := s.db.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if err := s.db.Compact(ctx, []byte{0}, []byte{0xff}, true); err != nil {
		t.Fatalf("compact: %v", err)
	}
	if m := s.db.Metrics(); m.BlobFiles.LiveCount == 0 {
		t.Errorf("after a flush and a compaction there are no blob files: value separation is off\n%s", m)
	}
	closeTest(t, s)

	s = openTest(t, dir, opts)
	defer closeTest(t, s)
	const total = appends * transfersPerAppend * 2
	head, err := s.Head(ctx)
	if err != nil || head != total {
		t.Fatalf("Head after reopen = %d, %v; want %d", head, err, total)
	}
	verified, err := eventstore.VerifyChain(ctx, s, 1000, nil)
	if err != nil || verified != total {
		t.Fatalf("VerifyChain after reopen verified %d, %v; want %d events and no error", verified, err, total)
	}
	for account, version := range accountVersions {
		events, err := s.ReadStream(ctx, account, 0, int(version)+1)
		if err != nil || uint64(len(events)) != version {
			t.Fatalf("ReadStream(%s) = %d events, %v; want %d", account, len(events), err, version)
		}
		for i, e := range events {
			if e.StreamVersion != uint64(i)+1 || e.Stream != account || string(e.Data) != string(data) {
				t.Fatalf("ReadStream(%s)[%d] = %s version %d with %d bytes of data; want version %d and the data written", account, i, e.Stream, e.StreamVersion, len(e.Data), i+1)
			}
		}
	}
	// A payment stream written long ago still answers NoStream with a conflict, through
	// the bloom-filtered lookup that prefetch makes for every new stream.
	_, err = s.Append(ctx, eventstore.StreamAppend{Stream: "payment-p-0-0", Expected: eventstore.NoStream(), Events: []eventstore.EventData{event("again")}})
	if !errors.Is(err, eventstore.ErrConflict) {
		t.Fatalf("NoStream append to an existing payment stream: err = %v, want ErrConflict", err)
	}
}
