package storetest

import (
	"fmt"
	"testing"

	"github.com/securepay/securepay/eventstore"
)

// testPaging: ReadAll and ReadStream take an exclusive lower bound and a limit, and a
// limit of 0 or less (or above MaxReadLimit) means MaxReadLimit.
func testPaging(t *testing.T, h Harness) {
	ctx := testContext(t)
	s := fresh(t, h)
	// 25 events: page-a gets 1 of every 3 positions, page-b the rest.
	for i := range 25 {
		stream := "page-b"
		if i%3 == 0 {
			stream = "page-a"
		}
		mustAppend(t, ctx, s, one(stream, eventstore.Any(), ev(fmt.Sprintf("page-%d", i+1))))
	}

	all := []struct {
		after      uint64
		limit      int
		wantFirst  uint64 // 0 when the page is empty
		wantLength int
	}{
		{0, 10, 1, 10},
		{10, 10, 11, 10},
		{20, 10, 21, 5},
		{25, 10, 0, 0},
		{100, 10, 0, 0},
		{3, 1, 4, 1},
		{0, 0, 1, 25},
		{0, -1, 1, 25},
		{0, eventstore.MaxReadLimit + 1, 1, 25},
		{24, 1000, 25, 1},
	}
	for _, tc := range all {
		page, err := s.ReadAll(ctx, tc.after, tc.limit)
		if err != nil {
			t.Fatalf("ReadAll(after %d, limit %d): %v", tc.after, tc.limit, err)
		}
		if len(page) != tc.wantLength {
			t.Fatalf("ReadAll(after %d, limit %d) returned %d events, want %d", tc.after, tc.limit, len(page), tc.wantLength)
		}
		for i, e := range page {
			if want := tc.wantFirst + uint64(i); e.Position != want || e.ID != fmt.Sprintf("page-%d", want) {
				t.Fatalf("ReadAll(after %d, limit %d)[%d] = %s at %d, want page-%d at %d", tc.after, tc.limit, i, e.ID, e.Position, want, want)
			}
		}
		// The narrow read (the backend's LinkReader, or the fallback over ReadAll) pages
		// exactly like ReadAll and reports the same stored hashes.
		links, err := eventstore.ReadLinks(ctx, s, tc.after, tc.limit)
		if err != nil {
			t.Fatalf("ReadLinks(after %d, limit %d): %v", tc.after, tc.limit, err)
		}
		if len(links) != len(page) {
			t.Fatalf("ReadLinks(after %d, limit %d) returned %d links, ReadAll %d events", tc.after, tc.limit, len(links), len(page))
		}
		for i, l := range links {
			if want := (eventstore.ChainLink{Position: page[i].Position, PrevHash: page[i].PrevHash, Hash: page[i].Hash}); l != want {
				t.Fatalf("ReadLinks(after %d, limit %d)[%d] = %+v, ReadAll's event there has %+v", tc.after, tc.limit, i, l, want)
			}
		}
	}

	// page-a holds positions 1, 4, 7, ..., 25 as versions 1..9.
	stream := []struct {
		stream     string
		after      uint64
		limit      int
		wantFirst  uint64
		wantLength int
	}{
		{"page-a", 0, 4, 1, 4},
		{"page-a", 4, 4, 5, 4},
		{"page-a", 8, 4, 9, 1},
		{"page-a", 9, 4, 0, 0},
		{"page-a", 0, 0, 1, 9},
		{"page-a", 2, 1, 3, 1},
		{"page-b", 10, 100, 11, 6},
		{"page-c", 0, 10, 0, 0},
	}
	for _, tc := range stream {
		page, err := s.ReadStream(ctx, tc.stream, tc.after, tc.limit)
		if err != nil {
			t.Fatalf("ReadStream(%s, after %d, limit %d): %v", tc.stream, tc.after, tc.limit, err)
		}
		if len(page) != tc.wantLength {
			t.Fatalf("ReadStream(%s, after %d, limit %d) returned %d events, want %d", tc.stream, tc.after, tc.limit, len(page), tc.wantLength)
		}
		for i, e := range page {
			want := tc.wantFirst + uint64(i)
			if e.Stream != tc.stream || e.StreamVersion != want {
				t.Fatalf("ReadStream(%s, after %d, limit %d)[%d] = %s version %d, want version %d", tc.stream, tc.after, tc.limit, i, e.Stream, e.StreamVersion, want)
			}
			if tc.stream == "page-a" {
				if pos := 3*want - 2; e.Position != pos {
					t.Fatalf("ReadStream(page-a)[%d]: version %d at position %d, want %d", i, want, e.Position, pos)
				}
			}
		}
	}
}
