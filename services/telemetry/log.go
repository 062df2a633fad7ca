package telemetry

import (
	"context"
	"io"
	"log/slog"
	"regexp"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/securepay/securepay/domain"
)

// Log attribute keys added to every record that has them in its context.
const (
	LogTraceID       = "trace_id"
	LogSpanID        = "span_id"
	LogCorrelationID = "correlation_id"
)

// Redacted replaces a value that must not be logged.
const Redacted = "[REDACTED]"

type correlationKey struct{}

// WithCorrelationID returns ctx carrying the business flow's id (the payment id, or the
// request's), which every log record made with ctx then carries.
func WithCorrelationID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, correlationKey{}, id)
}

// AttrCorrelationID is the span attribute that carries a request's correlation id, so a
// trace can be found from the id a client quotes (X-Correlation-Id).
const AttrCorrelationID = "securepay.correlation_id"

// Correlate is WithCorrelationID that also records id on the span in ctx, if it records:
// what the edge and each component call once per request, where the id is first known.
func Correlate(ctx context.Context, id string) context.Context {
	if id == "" {
		return ctx
	}
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(attribute.String(AttrCorrelationID, id))
	}
	return WithCorrelationID(ctx, id)
}

// CorrelationID is the id WithCorrelationID put in ctx ("" when none).
func CorrelationID(ctx context.Context) string {
	id, _ := ctx.Value(correlationKey{}).(string)
	return id
}

// NewLogHandler is the process's log handler: JSON lines on w, each record with the
// trace and span id of the span in its context and the correlation id, and with secrets
// redacted (see Redact). opts may be nil; its ReplaceAttr, if any, runs after redaction.
func NewLogHandler(w io.Writer, opts *slog.HandlerOptions) slog.Handler {
	return contextHandler{slog.NewJSONHandler(w, redacting(opts))}
}

// NewTextLogHandler is NewLogHandler writing slog's text format, for a person at a
// terminal (`securepay dev`): the same ids, the same redaction.
func NewTextLogHandler(w io.Writer, opts *slog.HandlerOptions) slog.Handler {
	return contextHandler{slog.NewTextHandler(w, redacting(opts))}
}

// redacting is opts with Redact run before its own ReplaceAttr.
func redacting(opts *slog.HandlerOptions) *slog.HandlerOptions {
	o := slog.HandlerOptions{}
	if opts != nil {
		o = *opts
	}
	user := o.ReplaceAttr
	o.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		a = Redact(groups, a)
		if user != nil {
			a = user(groups, a)
		}
		return a
	}
	return &o
}

// contextHandler adds the context's trace and correlation ids to each record.
type contextHandler struct{ slog.Handler }

func (h contextHandler) Handle(ctx context.Context, r slog.Record) error {
	sc := trace.SpanContextFromContext(ctx)
	corr := CorrelationID(ctx)
	if sc.IsValid() || corr != "" {
		r = r.Clone() // another handler may hold the same record
		if sc.IsValid() {
			r.AddAttrs(slog.String(LogTraceID, sc.TraceID().String()), slog.String(LogSpanID, sc.SpanID().String()))
		}
		if corr != "" {
			r.AddAttrs(slog.String(LogCorrelationID, corr))
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h contextHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return contextHandler{h.Handler.WithAttrs(attrs)}
}

func (h contextHandler) WithGroup(name string) slog.Handler {
	return contextHandler{h.Handler.WithGroup(name)}
}

// secretKeyParts: an attribute whose key contains one of these (case-insensitive, "-" and
// "_" ignored) holds a secret or account data, whatever its value looks like.
var secretKeyParts = []string{
	"password", "passwd", "secret", "token", "authorization", "cookie", "apikey", "privatekey",
	"signingkey", "hmac", "signature", "credential", "dsn", "jwt", "bearer", "svid",
	"cardnumber", "pan", "iban", "accountnumber", "cvv",
}

// redactKey reports whether the value of key must never be logged.
func redactKey(key string) bool {
	k := strings.ToLower(strings.NewReplacer("-", "", "_", "", ".", "").Replace(key))
	for _, part := range secretKeyParts {
		if part == "pan" {
			if k == "pan" { // "pan" alone: "span", "company" are fine
				return true
			}
			continue
		}
		if strings.Contains(k, part) {
			return true
		}
	}
	return false
}

// Redact is the log redaction rule, applied to every attribute and to the message:
//
//   - a key that names a secret or account data (password, token, authorization, dsn,
//     signature, iban, ...) gets its value replaced by [REDACTED];
//   - in any string (message, value, error text): JWTs, "Bearer ..." credentials,
//     key=value pairs whose key names a secret, and the password of a URL's userinfo
//     (redis://:pw@host, postgres://user:pw@host), and webhook secrets (whsec_...) are
//     replaced by [REDACTED];
//   - a domain.Account is logged as its id only: balances, holds and metadata are
//     account data.
func Redact(_ []string, a slog.Attr) slog.Attr {
	if a.Key != slog.MessageKey && a.Key != slog.TimeKey && a.Key != slog.LevelKey && redactKey(a.Key) {
		return slog.String(a.Key, Redacted)
	}
	v := a.Value
	switch v.Kind() {
	case slog.KindString:
		if s := v.String(); s != "" {
			if r := RedactString(s); r != s {
				return slog.String(a.Key, r)
			}
		}
	case slog.KindAny:
		switch x := v.Any().(type) {
		case domain.Account:
			return slog.String(a.Key, string(x.ID))
		case *domain.Account:
			if x != nil {
				return slog.String(a.Key, string(x.ID))
			}
		case error:
			return slog.String(a.Key, RedactString(x.Error()))
		case []byte:
			return slog.String(a.Key, Redacted) // raw bytes may be anything (a key, a body)
		}
	}
	return a
}

var (
	jwtPattern    = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*`)
	bearerPattern = regexp.MustCompile(`(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+`)
	pairPattern   = regexp.MustCompile(`(?i)\b([a-z_.-]*(?:password|passwd|secret|token|apikey|api_key|signature|credential|authorization)[a-z_.-]*)\s*[=:]\s*("[^"]*"|'[^']*'|[^\s,;&]+)`)
	userinfo      = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://)([^/?#\s]*)@`) // greedy: up to the authority's last @
	// webhookSecret is a webhook endpoint's signing secret as it is shown (services/webhook).
	webhookSecret = regexp.MustCompile(`whsec_[A-Za-z0-9_-]+`)
)

// RedactString removes credentials from free text (see Redact).
func RedactString(s string) string {
	// Most strings hold none of the markers: skip the regular expressions for them.
	if !strings.ContainsAny(s, "=:@") && !strings.Contains(s, "eyJ") && !strings.Contains(strings.ToLower(s), "bearer") && !strings.Contains(strings.ToLower(s), "basic") && !strings.Contains(s, "whsec_") {
		return s
	}
	s = webhookSecret.ReplaceAllString(s, Redacted)
	s = jwtPattern.ReplaceAllString(s, Redacted)
	s = bearerPattern.ReplaceAllString(s, "$1 "+Redacted)
	s = pairPattern.ReplaceAllString(s, "$1="+Redacted)
	s = userinfo.ReplaceAllStringFunc(s, func(m string) string {
		sub := userinfo.FindStringSubmatch(m)
		user := sub[2]
		if i := strings.IndexByte(user, ':'); i >= 0 {
			user = user[:i] + ":" + Redacted
		} else if user != "" {
			user = Redacted // a lone userinfo is a password for Redis (redis://pw@host) and a token elsewhere
		}
		return sub[1] + user + "@"
	})
	return s
}
