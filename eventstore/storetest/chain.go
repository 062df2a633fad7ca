package storetest

import (
	"errors"
	"fmt"
	"testing"

	"github.com/securepay/securepay/eventstore"
)

// testHashChain: the log of a store verifies, page by page, whatever the page size.
func testHashChain(t *testing.T, h Harness) {
	ctx := testContext(t)
	s := fresh(t, h)
	if n, err := eventstore.VerifyChain(ctx, s, 10, nil); err != nil || n != 0 {
		t.Fatalf("VerifyChain of an empty store = %d, %v; want 0, nil", n, err)
	}
	for i := range 20 {
		mustAppend(t, ctx, s,
			one(fmt.Sprintf("chain-%d", i%3), eventstore.Any(), ev(fmt.Sprintf("chain-%d-a", i))),
			one(fmt.Sprintf("chain-x%d", i%2), eventstore.Any(), ev(fmt.Sprintf("chain-%d-b", i)), ev(fmt.Sprintf("chain-%d-c", i))))
	}
	for _, pageSize := range []int{1, 7, 60, 1000} {
		var calls int
		n, err := eventstore.VerifyChain(ctx, s, pageSize, func(uint64) { calls++ })
		if err != nil || n != 60 {
			t.Fatalf("VerifyChain(page %d) = %d, %v; want 60, nil", pageSize, n, err)
		}
		if calls == 0 {
			t.Fatalf("VerifyChain(page %d) never reported progress", pageSize)
		}
	}
}

// testTamper: an event edited behind the store's back is detected at exactly its
// position, and the events before it still verify.
func testTamper(t *testing.T, h Harness) {
	for _, pos := range []uint64{1, 6, 12} {
		t.Run(fmt.Sprintf("position %d", pos), func(t *testing.T) {
			ctx := testContext(t)
			s := fresh(t, h)
			for i := range 4 {
				mustAppend(t, ctx, s, one("tamper-a", eventstore.Any(), ev(fmt.Sprintf("t-%d-1", i)), ev(fmt.Sprintf("t-%d-2", i))),
					one("tamper-b", eventstore.Any(), ev(fmt.Sprintf("t-%d-3", i))))
			}
			before := readAll(t, ctx, s, 100)
			h.Tamper(t, s, pos)
			after := readAll(t, ctx, s, 100)
			if len(after) != len(before) || string(after[pos-1].Data) == string(before[pos-1].Data) {
				t.Fatalf("Tamper did not change the data at position %d (before %q, after %q)", pos, before[pos-1].Data, after[pos-1].Data)
			}
			n, err := eventstore.VerifyChain(ctx, s, 5, nil)
			var br *eventstore.ChainBreak
			if !errors.As(err, &br) {
				t.Fatalf("VerifyChain after tampering with position %d = %d, %v; want a *ChainBreak", pos, n, err)
			}
			if br.Position != pos || n != pos-1 {
				t.Fatalf("VerifyChain after tampering with position %d broke at %d having verified %d (%v); want the break at %d after %d", pos, br.Position, n, err, pos, pos-1)
			}
		})
	}
}
