package telemetry

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
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
//
// Each line is what encoding/json makes of ToJSONSpan (the same fields, so a reader
// decodes it into a JSONSpan), but written by hand into one reused buffer: the exporter
// runs off the write path, in the batch span processor, yet on the same cores, and
// reflection, a map per span and a string per id made it the costliest part of a traced
// command (docs/PERFORMANCE.md).
type JSONSpanExporter struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

// NewJSONSpanExporter writes to w, one span per line. Writes are serialised.
func NewJSONSpanExporter(w io.Writer) *JSONSpanExporter {
	return &JSONSpanExporter{w: w}
}

// jsonFlushBytes bounds the buffer between writes: a batch is written in pieces of about
// this size rather than held whole.
const jsonFlushBytes = 64 << 10

// ExportSpans implements sdktrace.SpanExporter.
func (e *JSONSpanExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	b := e.buf[:0]
	for _, s := range spans {
		b = appendJSONSpan(b, s)
		if len(b) >= jsonFlushBytes {
			if _, err := e.w.Write(b); err != nil {
				return fmt.Errorf("telemetry: write spans: %w", err)
			}
			b = b[:0]
		}
	}
	if len(b) > 0 {
		if _, err := e.w.Write(b); err != nil {
			return fmt.Errorf("telemetry: write spans: %w", err)
		}
	}
	if cap(b) <= 4*jsonFlushBytes { // one span with huge attributes does not stay resident
		e.buf = b[:0]
	} else {
		e.buf = nil
	}
	return nil
}

// Shutdown implements sdktrace.SpanExporter; the writer belongs to the caller.
func (e *JSONSpanExporter) Shutdown(context.Context) error { return nil }

// appendJSONSpan appends s as one JSON line, the encoding of ToJSONSpan(s).
func appendJSONSpan(b []byte, s sdktrace.ReadOnlySpan) []byte {
	sc := s.SpanContext()
	b = append(b, `{"name":`...)
	b = appendJSONString(b, s.Name())
	if svc := serviceName(s); svc != "" {
		b = append(b, `,"service":`...)
		b = appendJSONString(b, svc)
	}
	b = appendTraceID(b, `,"trace_id":"`, sc.TraceID())
	b = appendSpanID(b, `,"span_id":"`, sc.SpanID())
	if p := s.Parent(); p.IsValid() {
		b = appendSpanID(b, `,"parent_id":"`, p.SpanID())
	}
	b = append(b, `,"kind":`...)
	b = appendJSONString(b, s.SpanKind().String())
	b = append(b, `,"start":"`...)
	b = s.StartTime().UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","duration_ms":`...)
	b = strconv.AppendFloat(b, durationMS(s), 'f', -1, 64)
	if st := s.Status(); st.Code == codes.Error {
		b = append(b, `,"status":`...)
		b = appendJSONString(b, "error: "+st.Description)
	}
	if attrs := s.Attributes(); len(attrs) > 0 {
		b = append(b, `,"attributes":{`...)
		for i, kv := range attrs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, string(kv.Key))
			b = append(b, ':')
			b = appendAttrValue(b, kv.Value)
		}
		b = append(b, '}')
	}
	if links := s.Links(); len(links) > 0 {
		b = append(b, `,"links":[`...)
		for i, l := range links {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendTraceID(b, `{"trace_id":"`, l.SpanContext.TraceID())
			b = appendSpanID(b, `,"span_id":"`, l.SpanContext.SpanID())
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if evs := s.Events(); len(evs) > 0 {
		b = append(b, `,"events":[`...)
		for i, ev := range evs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, ev.Name)
		}
		b = append(b, ']')
	}
	return append(b, "}\n"...)
}

func appendTraceID(b []byte, prefix string, id trace.TraceID) []byte {
	b = append(b, prefix...)
	b = hex.AppendEncode(b, id[:])
	return append(b, '"')
}

func appendSpanID(b []byte, prefix string, id trace.SpanID) []byte {
	b = append(b, prefix...)
	b = hex.AppendEncode(b, id[:])
	return append(b, '"')
}

// appendAttrValue appends v as a JSON string, as attribute.Value's String has it, without
// building that string for the common kinds.
func appendAttrValue(b []byte, v attribute.Value) []byte {
	switch v.Type() {
	case attribute.INT64:
		b = append(b, '"')
		b = strconv.AppendInt(b, v.AsInt64(), 10)
		return append(b, '"')
	case attribute.BOOL:
		b = append(b, '"')
		b = strconv.AppendBool(b, v.AsBool())
		return append(b, '"')
	case attribute.STRING:
		return appendJSONString(b, v.AsString())
	default:
		return appendJSONString(b, v.String())
	}
}

// appendJSONString appends s as a JSON string: quotes, backslashes and control characters
// escaped, invalid UTF-8 replaced by U+FFFD (as encoding/json does).
func appendJSONString(b []byte, s string) []byte {
	const hexdigits = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexdigits[c>>4], hexdigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// serviceName is the service.name of the span's resource, "" without one.
func serviceName(s sdktrace.ReadOnlySpan) string {
	if r := s.Resource(); r != nil {
		if v, ok := r.Set().Value("service.name"); ok {
			return v.String()
		}
	}
	return ""
}

// durationMS is the span's duration in milliseconds, to the microsecond.
func durationMS(s sdktrace.ReadOnlySpan) float64 {
	return float64(s.EndTime().Sub(s.StartTime()).Microseconds()) / 1000
}

// ToJSONSpan converts a finished span: the value each line of the JSON sink decodes to.
func ToJSONSpan(s sdktrace.ReadOnlySpan) JSONSpan {
	sc := s.SpanContext()
	out := JSONSpan{
		Name:       s.Name(),
		TraceID:    sc.TraceID().String(),
		SpanID:     sc.SpanID().String(),
		Kind:       s.SpanKind().String(),
		Start:      s.StartTime().UTC(),
		DurationMS: durationMS(s),
		Service:    serviceName(s),
	}
	if p := s.Parent(); p.IsValid() {
		out.ParentID = p.SpanID().String()
	}
	if st := s.Status(); st.Code == codes.Error {
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
