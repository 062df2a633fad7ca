package telemetry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/services/telemetry"
)

// Secrets never reach the log, whatever attribute or text carries them.
func TestLogRedactsSecrets(t *testing.T) {
	const (
		password = "hunter2-s3cr3t"
		jwt      = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
		token    = "tok_live_5f2b9c"
	)
	account := domain.Account{ID: "alice", Posted: 987654321, Held: 1234, Metadata: domain.Metadata{"ssn": "123-45-6789"}}
	cases := []struct {
		name   string
		log    func(*slog.Logger)
		secret string // must not appear
		keep   string // must still appear (redaction is not deletion)
	}{
		{"password attribute", func(l *slog.Logger) { l.Info("login", "password", password) }, password, `"password":"[REDACTED]"`},
		{"token attribute in a group", func(l *slog.Logger) { l.Info("call", slog.Group("auth", "access_token", token)) }, token, `"access_token":"[REDACTED]"`},
		{"Authorization header", func(l *slog.Logger) { l.Info("req", "Authorization", "Bearer "+jwt) }, jwt, `"Authorization":"[REDACTED]"`},
		{"webhook signing key", func(l *slog.Logger) { l.Info("endpoint", "signing-key", "k3y") }, "k3y", `"signing-key":"[REDACTED]"`},
		{"JWT inside a message", func(l *slog.Logger) { l.Info("refused token " + jwt + " for alice") }, jwt, "for alice"},
		{"bearer inside a value", func(l *slog.Logger) { l.Info("req", "header", "authorization: Bearer "+token) }, token, "authorization=[REDACTED]"},
		{"DSN password in an error", func(l *slog.Logger) {
			l.Error("connect", "err", fmt.Errorf("dial postgres://ledger:%s@127.0.0.1:5432/db: refused", password))
		}, password, "postgres://ledger:[REDACTED]@127.0.0.1:5432/db"},
		{"Redis password with @ in it", func(l *slog.Logger) { l.Info("redis", "addr", "redis://:p@ss"+password+"@127.0.0.1:6379/0") }, password, "@127.0.0.1:6379/0"},
		{"key=value in a message", func(l *slog.Logger) { l.Warn("config secret=" + password + " ignored") }, password, "secret=[REDACTED] ignored"},
		{"api_key: quoted", func(l *slog.Logger) { l.Info(`config api_key: "` + token + `"`) }, token, "api_key=[REDACTED]"},
		{"account as value", func(l *slog.Logger) { l.Info("opened", "account", account) }, "987654321", `"account":"alice"`},
		{"account pointer", func(l *slog.Logger) { l.Info("opened", "account", &account) }, "123-45-6789", `"account":"alice"`},
		{"raw bytes", func(l *slog.Logger) { l.Info("body", "payload", []byte(password)) }, password, `"payload":"[REDACTED]"`},
		{"IBAN attribute", func(l *slog.Logger) { l.Info("payout", "iban", "DE89370400440532013000") }, "DE89370400440532013000", `"iban":"[REDACTED]"`},
		{"With attrs", func(l *slog.Logger) { l.With("client_secret", password).Info("x") }, password, `"client_secret":"[REDACTED]"`},
		{"webhook secret in a message", func(l *slog.Logger) { l.Info("registered we_1 with whsec_" + token + " for alice") }, token, "for alice"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			c.log(slog.New(telemetry.NewLogHandler(&buf, nil)))
			out := buf.String()
			if strings.Contains(out, c.secret) {
				t.Errorf("log line contains the secret %q:\n%s", c.secret, out)
			}
			if !strings.Contains(out, c.keep) {
				t.Errorf("log line lacks %q:\n%s", c.keep, out)
			}
		})
	}
}

// Ordinary values pass through untouched: redaction must not eat ids, spans and amounts.
func TestLogKeepsOrdinaryValues(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(telemetry.NewLogHandler(&buf, nil))
	l.Info("transfer committed", "payment_id", "pay-1", "span", "x", "company", "acme", "amount_minor", 100,
		"addr", "127.0.0.1:5432", "url", "https://example.test/a?b=c", "idempotency_key", "k-1")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("log line is not JSON: %v\n%s", err, buf.String())
	}
	want := map[string]any{"payment_id": "pay-1", "span": "x", "company": "acme", "amount_minor": 100.0,
		"addr": "127.0.0.1:5432", "url": "https://example.test/a?b=c", "idempotency_key": "k-1", "msg": "transfer committed"}
	for k, v := range want {
		if rec[k] != v {
			t.Errorf("%s = %v, want %v", k, rec[k], v)
		}
	}
}

// Every record made in a traced, correlated context carries the trace, span and
// correlation ids, so a log line leads to its trace and its payment.
func TestLogCarriesTraceAndCorrelationID(t *testing.T) {
	tel := newTelemetry(t, "securepay-payments", telemetry.Config{Exporter: tracetest.NewInMemoryExporter()})
	ctx, span := tel.Tracer("test").Start(context.Background(), "work")
	defer span.End()
	ctx = telemetry.WithCorrelationID(ctx, "pay-42")

	var buf bytes.Buffer
	l := slog.New(telemetry.NewLogHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})).With("component", "payments")
	l.DebugContext(ctx, "decided", "err", errors.New("insufficient funds"))
	l.Info("no context")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d log lines, want 2:\n%s", len(lines), buf.String())
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatalf("not JSON: %v: %s", err, lines[0])
	}
	sc := span.SpanContext()
	for k, want := range map[string]string{
		telemetry.LogTraceID: sc.TraceID().String(), telemetry.LogSpanID: sc.SpanID().String(),
		telemetry.LogCorrelationID: "pay-42", "component": "payments", "err": "insufficient funds",
	} {
		if rec[k] != want {
			t.Errorf("%s = %v, want %q (line %s)", k, rec[k], want, lines[0])
		}
	}
	if strings.Contains(lines[1], telemetry.LogTraceID) || strings.Contains(lines[1], telemetry.LogCorrelationID) {
		t.Errorf("a record without a context got ids: %s", lines[1])
	}
}

// dev's text log carries the same ids and redacts the same secrets as the JSON one, and
// Correlate records the correlation id on the span as well as in the context.
func TestTextLogAndCorrelate(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tel := newTelemetry(t, "securepay-dev", telemetry.Config{Exporter: spans})
	ctx, span := tel.Tracer("test").Start(context.Background(), "work")
	ctx = telemetry.Correlate(ctx, "c-77")
	if got := telemetry.Correlate(context.Background(), ""); telemetry.CorrelationID(got) != "" {
		t.Errorf("Correlate with no id put %q in the context", telemetry.CorrelationID(got))
	}
	var buf bytes.Buffer
	slog.New(telemetry.NewTextLogHandler(&buf, nil)).InfoContext(ctx, "refused", "authorization", "Bearer abc.def.ghi")
	span.End()
	line := buf.String()
	for _, want := range []string{"correlation_id=c-77", "trace_id=" + span.SpanContext().TraceID().String(), "authorization=[REDACTED]"} {
		if !strings.Contains(line, want) {
			t.Errorf("text log line lacks %q: %s", want, line)
		}
	}
	if strings.Contains(line, "abc.def.ghi") {
		t.Errorf("text log line keeps the token: %s", line)
	}
	got := spans.GetSpans()
	if len(got) != 1 || len(got[0].Attributes) != 1 || string(got[0].Attributes[0].Key) != telemetry.AttrCorrelationID || got[0].Attributes[0].Value.AsString() != "c-77" {
		t.Errorf("span attributes %v, want %s=c-77", got[0].Attributes, telemetry.AttrCorrelationID)
	}
}

func FuzzRedactString(f *testing.F) {
	for _, s := range []string{"redis://:pw@host:6379", "postgres://u:p@h/db", "Bearer abc", "password=x", "plain text", "a@b", "x://@@@"} {
		f.Add(s, "s3cr3tValue")
	}
	f.Fuzz(func(t *testing.T, prefix, secret string) {
		if len(secret) < 6 || strings.ContainsAny(secret, " \t\n\r/?#@\"',;&:=") {
			return
		}
		// A secret given as a URL password, whatever precedes it, never survives.
		in := prefix + " redis://user:" + secret + "@127.0.0.1:6379"
		if out := telemetry.RedactString(in); strings.Contains(out, secret+"@127.0.0.1:6379") {
			t.Errorf("RedactString(%q) = %q keeps the password", in, out)
		}
	})
}
