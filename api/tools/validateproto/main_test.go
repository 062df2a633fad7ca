package main

import (
	"bytes"
	"os"
	"testing"
)

// TestPrintIsStableAndMatchesCommitted: the printer's output is byte-stable (the staleness
// check diffs it) and equals the committed api/proto/buf/validate/validate.proto. That the
// file compiles back to the embedded descriptor is checked by api/check-generated.sh, which
// has buf.
func TestPrintIsStableAndMatchesCommitted(t *testing.T) {
	var first, second bytes.Buffer
	if err := run(&first); err != nil {
		t.Fatalf("print: %v", err)
	}
	if err := run(&second); err != nil {
		t.Fatalf("print again: %v", err)
	}
	if !bytes.Equal(first.Bytes(), second.Bytes()) {
		t.Fatal("two prints of the same descriptor differ: the output must be deterministic")
	}
	committed, err := os.ReadFile("../../proto/buf/validate/validate.proto")
	if err != nil {
		t.Fatalf("read the committed validate.proto: %v", err)
	}
	if !bytes.Equal(committed, first.Bytes()) {
		t.Fatal("api/proto/buf/validate/validate.proto differs from what the protovalidate module in go.mod describes: run api/generate.sh")
	}
}

func TestRangeText(t *testing.T) {
	for _, tc := range []struct {
		start, end int32
		want       string
	}{
		{5, 6, "5"},
		{5, 10, "5 to 9"},
		{1000, 536870912, "1000 to max"},
	} {
		if got := rangeText(tc.start, tc.end); got != tc.want {
			t.Errorf("rangeText(%d, %d): want %q, got %q", tc.start, tc.end, tc.want, got)
		}
	}
}
