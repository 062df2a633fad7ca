package telemetry

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// JSONSpan is one line of the local span sink: small enough to read with grep and jq
// (`jq 'select(.trace_id=="...")' spans.jsonl` shows one payment end to end).
type JSONSpan struct {
	Name       string            `json:"name"`
	Service    string            `json:"service,omitempty"`
	TraceID    string            `json:"trace_id"`
	SpanID     string            `json:"span_id"`
	ParentID   string            `json:"parent_id,omitempty"`
	Kind       string            `json:"kind"`
	Start      time.Time         `json:"start"`
	DurationMS float64           `json:"duration_ms"`
	Status     string            `json:"status,omitempty"` // "error: ..." when the span failed
	Attributes map[string]string `json:"attributes,omitempty"`
	Links      []JSONLink        `json:"links,omitempty"`
	Events     []string          `json:"events,omitempty"`
}

// JSONLink is a span link: the span it points to, in another trace or the same.
type JSONLink struct {
	TraceID string `json:"trace_id"`
	SpanID  string `json:"span_id"`
}

// JSONSpanExporter writes spans as JSON lines. It is the readable sink of `securepay dev`.
type JSONSpanExporter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

// NewJSONSpanExporter writes to w, one span per line. Writes are serialised.
func NewJSONSpanExporter(w io.Writer) *JSONSpanExporter {
	return &JSONSpanExporter{enc: json.NewEncoder(w)}
}

// ExportSpans implements sdktrace.SpanExporter.
func (e *JSONSpanExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range spans {
		if err := e.enc.Encode(ToJSONSpan(s)); err != nil {
			return fmt.Errorf("telemetry: write span: %w", err)
		}
	}
	return nil
}

// Shutdown implements sdktrace.SpanExporter; the writer belongs to the caller.
func (e *JSONSpanExporter) Shutdown(context.Context) error { return nil }

// ToJSONSpan converts a finished span.
func ToJSONSpan(s sdktrace.ReadOnlySpan) JSONSpan {
	sc := s.SpanContext()
	out := JSONSpan{
		Name:       s.Name(),
		TraceID:    sc.TraceID().String(),
		SpanID:     sc.SpanID().String(),
		Kind:       s.SpanKind().String(),
		Start:      s.StartTime().UTC(),
		DurationMS: float64(s.EndTime().Sub(s.StartTime()).Microseconds()) / 1000,
	}
	if p := s.Parent(); p.IsValid() {
		out.ParentID = p.SpanID().String()
	}
	if r := s.Resource(); r != nil {
		for _, kv := range r.Attributes() {
			if kv.Key == "service.name" {
				out.Service = kv.Value.String()
			}
		}
	}
	if st := s.Status(); st.Code.String() == "Error" {
		out.Status = "error: " + st.Description
	}
	if attrs := s.Attributes(); len(attrs) > 0 {
		out.Attributes = make(map[string]string, len(attrs))
		for _, kv := range attrs {
			out.Attributes[string(kv.Key)] = kv.Value.String()
		}
	}
	for _, l := range s.Links() {
		out.Links = append(out.Links, JSONLink{TraceID: l.SpanContext.TraceID().String(), SpanID: l.SpanContext.SpanID().String()})
	}
	for _, ev := range s.Events() {
		out.Events = append(out.Events, ev.Name)
	}
	return out
}
