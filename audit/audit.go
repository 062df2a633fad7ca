// Package audit holds the auditor's tools behind `securepay audit`: export the log as
// JSON lines that need none of our code to read, verify the hash chain, recompute every
// balance as of a past point and compare it with what the service's views say, and replay
// one stream with the state after each event.
//
// Every tool streams the log page by page: memory is O(1) in the log's length (the balance
// recomputation holds one entry per account). Long runs report progress like a projection
// rebuild: a bar on a terminal, plain lines otherwise.
package audit

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/internal/progress"
)

// DefaultPageSize is how many events a tool reads per request.
const DefaultPageSize = 5000

func pageSize(n int) int {
	if n <= 0 {
		return DefaultPageSize
	}
	return eventstore.ClampLimit(n)
}

// ExportOptions select what Export writes.
type ExportOptions struct {
	// From and To bound the global positions written, both inclusive; 0 means unbounded.
	From, To uint64
	// Stream, if set, exports only that stream (still bounded by From/To positions).
	Stream string
	// Progress receives progress output; nil for none.
	Progress io.Writer
	PageSize int
}

// ExportedEvent is one line of the export. Every stored field is there: with data_base64
// (the exact stored bytes) and the documented ChainHash encoding, an auditor recomputes
// hash from prev_hash without our code. payload is the same data as a JSON value, for jq.
type ExportedEvent struct {
	Position      uint64          `json:"position"`
	Stream        string          `json:"stream"`
	StreamVersion uint64          `json:"stream_version"`
	ID            string          `json:"id"`
	Type          string          `json:"type"`
	RecordedAt    string          `json:"recorded_at"`         // RFC 3339, UTC, microseconds
	RecordedAtUS  int64           `json:"recorded_at_unix_us"` // the value the hash covers
	Metadata      ExportMetadata  `json:"metadata"`
	PrevHash      string          `json:"prev_hash"`
	Hash          string          `json:"hash"`
	DataBase64    string          `json:"data_base64"`
	Payload       json.RawMessage `json:"payload,omitempty"`      // absent if the data is not JSON
	DecodeError   string          `json:"decode_error,omitempty"` // our decoder's complaint, if any
}

// ExportMetadata is the envelope metadata.
type ExportMetadata struct {
	CorrelationID string `json:"correlation_id"`
	CausationID   string `json:"causation_id"`
	Actor         string `json:"actor"`
	TraceParent   string `json:"traceparent"`
}

func exported(e *eventstore.RecordedEvent) ExportedEvent {
	out := ExportedEvent{
		Position: e.Position, Stream: e.Stream, StreamVersion: e.StreamVersion, ID: e.ID, Type: e.Type,
		RecordedAt:   e.RecordedAt.UTC().Format("2006-01-02T15:04:05.000000Z07:00"),
		RecordedAtUS: e.RecordedAt.UnixMicro(),
		Metadata: ExportMetadata{CorrelationID: e.Metadata.CorrelationID, CausationID: e.Metadata.CausationID,
			Actor: e.Metadata.Actor, TraceParent: e.Metadata.TraceParent},
		PrevHash: e.PrevHash.String(), Hash: e.Hash.String(),
		DataBase64: base64.StdEncoding.EncodeToString(e.Data),
	}
	if json.Valid(e.Data) {
		out.Payload = json.RawMessage(e.Data)
	}
	if _, err := domain.DecodeEvent(e.Type, e.Data); err != nil {
		out.DecodeError = err.Error()
	}
	return out
}

// Export writes the selected events to w, one JSON object per line, in log order (stream
// order for one stream). It returns the number of events written.
func Export(ctx context.Context, s eventstore.Store, w io.Writer, opts ExportOptions) (uint64, error) {
	if opts.To != 0 && opts.From > opts.To {
		return 0, fmt.Errorf("audit export: from %d is after to %d", opts.From, opts.To)
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	head, err := s.Head(ctx)
	if err != nil {
		return 0, fmt.Errorf("audit export: head: %w", err)
	}
	total := head
	if opts.To != 0 {
		total = min(total, opts.To)
	}
	prog := progress.New(opts.Progress, "export", progress.Options{})
	var n uint64
	write := func(e *eventstore.RecordedEvent) error {
		if err := enc.Encode(exported(e)); err != nil {
			return fmt.Errorf("audit export: write position %d: %w", e.Position, err)
		}
		n++
		return nil
	}
	limit := pageSize(opts.PageSize)
	if opts.Stream != "" {
		var after uint64
		for {
			page, err := s.ReadStream(ctx, opts.Stream, after, limit)
			if err != nil {
				return n, fmt.Errorf("audit export: read %s after version %d: %w", opts.Stream, after, err)
			}
			for i := range page {
				e := &page[i]
				if e.Position < opts.From || (opts.To != 0 && e.Position > opts.To) {
					continue
				}
				if err := write(e); err != nil {
					return n, err
				}
			}
			if len(page) < limit {
				break
			}
			after = page[len(page)-1].StreamVersion
			prog.Update(page[len(page)-1].Position, total)
		}
	} else {
		after := opts.From
		if after > 0 {
			after--
		}
		prog.Begin(after)
	pages:
		for {
			page, err := s.ReadAll(ctx, after, limit)
			if err != nil {
				return n, fmt.Errorf("audit export: read after %d: %w", after, err)
			}
			for i := range page {
				if opts.To != 0 && page[i].Position > opts.To {
					break pages
				}
				if err := write(&page[i]); err != nil {
					return n, err
				}
			}
			if len(page) < limit {
				break
			}
			after = page[len(page)-1].Position
			prog.Update(after, total)
		}
	}
	if err := bw.Flush(); err != nil {
		return n, fmt.Errorf("audit export: flush: %w", err)
	}
	prog.Finish(total, total)
	return n, nil
}

// VerifyOptions tune Verify.
type VerifyOptions struct {
	Progress io.Writer
	PageSize int
}

// Verify recomputes the hash chain over the whole log (eventstore.VerifyChain) and writes a
// one-line verdict to w. A broken chain returns a *eventstore.ChainBreak naming the first
// bad position.
func Verify(ctx context.Context, s eventstore.Store, w io.Writer, opts VerifyOptions) (uint64, error) {
	head, err := s.Head(ctx)
	if err != nil {
		return 0, fmt.Errorf("audit verify: head: %w", err)
	}
	prog := progress.New(opts.Progress, "verify", progress.Options{})
	n, err := eventstore.VerifyChain(ctx, s, pageSize(opts.PageSize), func(done uint64) { prog.Update(done, max(head, done)) })
	var brk *eventstore.ChainBreak
	switch {
	case errors.As(err, &brk):
		fmt.Fprintf(w, "FAILED: %v (%d events before it verified)\n", brk, n)
		return n, err
	case err != nil:
		return n, fmt.Errorf("audit verify: %w", err)
	}
	prog.Finish(n, n)
	if n == 0 {
		fmt.Fprintln(w, "OK: the log is empty")
		return 0, nil
	}
	// The head's hash pins the verified log: a later verify that ends in the same hash at
	// the same position proves nothing before it changed.
	last, err := s.ReadAll(ctx, n-1, 1)
	if err != nil {
		return n, fmt.Errorf("audit verify: read head %d: %w", n, err)
	}
	if len(last) != 1 {
		return n, fmt.Errorf("audit verify: head %d verified but not readable", n)
	}
	fmt.Fprintf(w, "OK: %d events, hash chain intact from position 1 to %d, head hash %s\n", n, n, last[0].Hash)
	return n, nil
}
