package telemetry

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func testSpanContext(t *testing.T, tp string) trace.SpanContext {
	t.Helper()
	sc, ok := ParseTraceParent(tp)
	if !ok {
		t.Fatalf("test traceparent %q does not parse", tp)
	}
	return sc
}

// The hand-written lines decode to exactly what encoding/json makes of ToJSONSpan, for
// spans with every field the sink writes and text that needs escaping.
func TestJSONSpanExporterMatchesEncodingJSON(t *testing.T) {
	start := time.Date(2026, 11, 28, 7, 30, 0, 123456789, time.FixedZone("CET", 3600))
	sc := testSpanContext(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	parent := testSpanContext(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01")
	other := testSpanContext(t, "00-0af7651916cd43dd8448eb211c80319c-b9c7c989f97918e1-01")
	res := resource.NewSchemaless(attribute.String("service.name", "securepay-\"payments\""), attribute.String("host.name", "h"))
	cases := []struct {
		name string
		stub tracetest.SpanStub
	}{
		{"minimal", tracetest.SpanStub{Name: "x", SpanContext: sc, StartTime: start, EndTime: start}},
		{"everything", tracetest.SpanStub{
			Name: "ledger.Transfer", SpanContext: sc, Parent: parent, SpanKind: trace.SpanKindServer,
			StartTime: start, EndTime: start.Add(1234567 * time.Nanosecond), Resource: res,
			Status: sdktrace.Status{Code: codes.Error, Description: "append: \"store\" unavailable\n\tretry"},
			Attributes: []attribute.KeyValue{
				attribute.String("securepay.command", "Transfer"), attribute.Int64("securepay.log_position", -42),
				attribute.Bool("ok", true), attribute.Float64("ratio", 0.125), attribute.StringSlice("list", []string{"a", "b\""}),
				attribute.String("ctl", "a\x00b\x1fc\x7f<>&\u2028"), attribute.String("bad utf8", "a\xffb\xc3"),
				attribute.String("unicode", "zürich €"),
			},
			Links:  []sdktrace.Link{{SpanContext: parent}, {SpanContext: other}},
			Events: []sdktrace.Event{{Name: "retry"}, {Name: "conflict \\ again"}},
		}},
		{"unset status is not written", tracetest.SpanStub{Name: "ok", SpanContext: sc, StartTime: start, EndTime: start.Add(time.Second),
			Status: sdktrace.Status{Code: codes.Ok, Description: "fine"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			span := c.stub.Snapshot()
			var out bytes.Buffer
			if err := NewJSONSpanExporter(&out).ExportSpans(context.Background(), []sdktrace.ReadOnlySpan{span, span}); err != nil {
				t.Fatalf("ExportSpans: %v", err)
			}
			want, err := json.Marshal(ToJSONSpan(span))
			if err != nil {
				t.Fatal(err)
			}
			var wantSpan JSONSpan
			if err := json.Unmarshal(want, &wantSpan); err != nil {
				t.Fatal(err)
			}
			lines := bufio.NewScanner(&out)
			n := 0
			for lines.Scan() {
				n++
				var got JSONSpan
				if err := json.Unmarshal(lines.Bytes(), &got); err != nil {
					t.Fatalf("line %d is not JSON: %v\n%s", n, err, lines.Bytes())
				}
				if !reflect.DeepEqual(got, wantSpan) {
					t.Errorf("line %d decodes to\n%+v\nwant (encoding/json of ToJSONSpan)\n%+v\nline: %s", n, got, wantSpan, lines.Bytes())
				}
				// Same fields present (omitempty kept): compare the key sets too.
				var gotKeys, wantKeys map[string]json.RawMessage
				_ = json.Unmarshal(lines.Bytes(), &gotKeys)
				_ = json.Unmarshal(want, &wantKeys)
				for k := range wantKeys {
					if _, ok := gotKeys[k]; !ok {
						t.Errorf("line %d lacks field %q", n, k)
					}
				}
				for k := range gotKeys {
					if _, ok := wantKeys[k]; !ok {
						t.Errorf("line %d has field %q that encoding/json omits", n, k)
					}
				}
			}
			if n != 2 {
				t.Errorf("%d lines for 2 spans", n)
			}
		})
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestJSONSpanExporterReportsWriteErrors(t *testing.T) {
	span := tracetest.SpanStub{Name: "x", SpanContext: testSpanContext(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")}.Snapshot()
	err := NewJSONSpanExporter(failingWriter{}).ExportSpans(context.Background(), []sdktrace.ReadOnlySpan{span})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("disk full")) {
		t.Fatalf("ExportSpans to a failing writer: %v, want the writer's error", err)
	}
}

// Any string is written as a JSON string that decodes to what encoding/json would decode
// its own encoding to (invalid UTF-8 becomes U+FFFD).
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "\"quoted\" \\ back", "\x00\x01\n\r\t\x1f\x7f", "\xff\xfe", "é€😀", "a\xc3", "\u2028<>&"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := appendJSONString(nil, s)
		var dec string
		if err := json.Unmarshal(got, &dec); err != nil {
			t.Fatalf("appendJSONString(%q) = %s: not a JSON string: %v", s, got, err)
		}
		ref, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		var want string
		if err := json.Unmarshal(ref, &want); err != nil {
			t.Fatal(err)
		}
		if dec != want {
			t.Fatalf("appendJSONString(%q) decodes to %q, encoding/json's to %q", s, dec, want)
		}
	})
}

// What one span costs the sink: a traced transfer's command span and a batch span with
// 256 links (go test ./services/telemetry -run '^$' -bench JSONSpan -benchmem).
func BenchmarkJSONSpanExporter(b *testing.B) {
	sc, _ := ParseTraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	parent, _ := ParseTraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01")
	res := resource.NewSchemaless(attribute.String("service.name", "securepay-payments"))
	now := time.Now()
	command := tracetest.SpanStub{Name: "ledger.Transfer", SpanContext: sc, Parent: parent, StartTime: now, EndTime: now.Add(time.Millisecond), Resource: res,
		Attributes: []attribute.KeyValue{attribute.String("securepay.command", "Transfer"), attribute.String("securepay.outcome", "ok"), attribute.Int64("securepay.log_position", 123456)},
		Links:      []sdktrace.Link{{SpanContext: parent}}}.Snapshot()
	links := make([]sdktrace.Link, 256)
	for i := range links {
		links[i] = sdktrace.Link{SpanContext: parent}
	}
	batch := tracetest.SpanStub{Name: SpanBatchAppend, SpanContext: sc, StartTime: now, EndTime: now.Add(time.Millisecond), Resource: res,
		Attributes: []attribute.KeyValue{attribute.Int("securepay.batch.commands", 256), attribute.Int("securepay.batch.events", 768)},
		Links:      links}.Snapshot()
	for _, c := range []struct {
		name string
		span sdktrace.ReadOnlySpan
	}{{"command", command}, {"batch256", batch}} {
		spans := []sdktrace.ReadOnlySpan{c.span}
		b.Run(c.name+"/encoding-json", func(b *testing.B) {
			b.ReportAllocs()
			enc := json.NewEncoder(discard{})
			for b.Loop() {
				if err := enc.Encode(ToJSONSpan(c.span)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/exporter", func(b *testing.B) {
			b.ReportAllocs()
			e := NewJSONSpanExporter(discard{})
			for b.Loop() {
				if err := e.ExportSpans(context.Background(), spans); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
