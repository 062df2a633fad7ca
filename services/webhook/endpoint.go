// Package webhook is the registry of webhook endpoints: the HTTPS receivers an account's
// notification events are delivered to, each with its own signing secret. It holds the
// WebhookService handler (served by the payments component), the stores (PostgreSQL for
// `securepay serve`, memory for `securepay dev`), and the Registry the dispatcher reads
// an account's endpoints from.
//
// Secrets are generated here (32 random bytes), shown to the caller once, and kept sealed
// with AES-GCM under a key from a file (Key), never in clear text in a database.
package webhook

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/securepay/securepay/services/dispatch"
)

// Limits of one registration. The schema (api/proto/.../webhooks.proto) enforces the same
// lengths; these are the server's own checks, which hold whoever calls.
const (
	MaxURLBytes        = 2048
	MaxEventTypes      = 16
	DefaultMaxPerAcct  = 10
	SecretPrefix       = "whsec_"
	secretBytes        = 32
	endpointIDPrefix   = "we_"
	maxAccountIDLength = 64
)

// ErrNotFound: no endpoint has this id. ErrDuplicate: the account already has an endpoint
// with this URL. ErrLimit: the account has as many endpoints as the registry allows.
var (
	ErrNotFound  = errors.New("webhook endpoint not found")
	ErrDuplicate = errors.New("webhook endpoint already registered")
	ErrLimit     = errors.New("webhook endpoint limit reached")
)

// Record is an endpoint as a Store keeps it: the secret only sealed.
type Record struct {
	ID         string
	AccountID  string
	URL        string
	EventTypes []string // empty: every notification event type
	Owner      string   // the registering principal
	Sealed     []byte   // Key.seal of the secret
	KeyID      string   // the Key that sealed it
	CreatedAt  time.Time
	RotatedAt  time.Time // when the secret was last set (CreatedAt at first)
}

// newEndpointID is "we_" and 32 hex digits of randomness: unguessable, so an id alone
// tells nothing about how many endpoints exist.
func newEndpointID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return endpointIDPrefix + hex.EncodeToString(b[:])
}

// validEndpointID reports whether s has the form newEndpointID makes.
func validEndpointID(s string) bool {
	hexPart, ok := strings.CutPrefix(s, endpointIDPrefix)
	if !ok || len(hexPart) != 32 {
		return false
	}
	for i := 0; i < len(hexPart); i++ {
		c := hexPart[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// newSecret returns a signing secret: its raw bytes (the HMAC key) and the text the caller
// is shown once ("whsec_" and the bytes in unpadded base64url).
func newSecret() (raw []byte, text string) {
	raw = make([]byte, secretBytes)
	_, _ = rand.Read(raw) // crypto/rand.Read never fails (Go 1.24+)
	return raw, SecretText(raw)
}

// SecretText is how a secret is shown: "whsec_" and its bytes in unpadded base64url.
func SecretText(raw []byte) string {
	return SecretPrefix + base64.RawURLEncoding.EncodeToString(raw)
}

// ParseSecret returns the HMAC key a secret's text stands for, as a receiver decodes it.
func ParseSecret(text string) ([]byte, error) {
	b64, ok := strings.CutPrefix(text, SecretPrefix)
	if !ok {
		return nil, fmt.Errorf("a webhook secret starts with %q", SecretPrefix)
	}
	raw, err := base64.RawURLEncoding.DecodeString(b64)
	if err != nil || len(raw) != secretBytes {
		return nil, fmt.Errorf("a webhook secret is %q and %d bytes in unpadded base64url", SecretPrefix, secretBytes)
	}
	return raw, nil
}

// EventTypes are the notification event types an endpoint may subscribe to: those the
// dispatcher delivers (the account events of securepay.notifications.v1, every version
// the log may hold), so a subscription can never name a type nobody sends.
func EventTypes() []string { return dispatch.NotificationTypes() }

// inputError is a refusal of the caller's input, naming the field.
type inputError struct {
	field, msg string
}

func (e *inputError) Error() string { return e.msg }

// checkURL refuses what a receiver URL must not be: anything but an absolute https URL
// (http only to a loopback host, for development and tests), a URL carrying a user name
// or password (it would be stored and shown in listings), a fragment (never sent), or
// one longer than MaxURLBytes.
func checkURL(raw string) error {
	bad := func(msg string) error { return &inputError{field: "url", msg: msg} }
	if raw == "" {
		return bad("url is required: the https URL that receives the webhooks, e.g. https://example.com/hooks/securepay")
	}
	if len(raw) > MaxURLBytes {
		return bad(fmt.Sprintf("url must be at most %d characters long", MaxURLBytes))
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] <= ' ' || raw[i] == 0x7f {
			return bad("url must not contain spaces or control characters (percent-encode them)")
		}
	}
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || u.Opaque != "" {
		return bad("url must be an absolute URL such as https://example.com/hooks/securepay")
	}
	if u.User != nil {
		return bad("url must not carry a user name or password: authenticate deliveries by their signature instead")
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return bad("url must not have a #fragment: it is never sent to the receiver")
	}
	host := u.Hostname()
	if host == "" {
		return bad("url must name a host, e.g. https://example.com/hooks/securepay")
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !loopbackHost(host) {
			return bad("url must use https; http is accepted only for a loopback host (127.0.0.1, ::1, localhost), for development")
		}
	default:
		return bad(fmt.Sprintf("url must use https, not %s", u.Scheme))
	}
	if p := u.Port(); p != "" {
		if n, err := net.LookupPort("tcp", p); err != nil || n == 0 {
			return bad("url has an invalid port")
		}
	}
	return nil
}

func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkEventTypes refuses unknown, repeated or too many event types, and returns them in a
// canonical order (sorted), so a listing does not depend on how they were sent.
func checkEventTypes(types []string) ([]string, error) {
	if len(types) > MaxEventTypes {
		return nil, &inputError{field: "event_types", msg: fmt.Sprintf("event_types may have at most %d entries (or none, for every type)", MaxEventTypes)}
	}
	known := EventTypes()
	out := slices.Clone(types)
	slices.Sort(out)
	for i, t := range out {
		if !slices.Contains(known, t) {
			shown := t
			if len(shown) > 64 {
				shown = shown[:64] + "…"
			}
			return nil, &inputError{field: "event_types", msg: fmt.Sprintf("event_types: %q is not a notification event type; known ones are %s (or send none for all)", shown, strings.Join(known, ", "))}
		}
		if i > 0 && out[i-1] == t {
			return nil, &inputError{field: "event_types", msg: fmt.Sprintf("event_types names %s twice", t)}
		}
	}
	return out, nil
}

// checkAccountID applies the API's account id rule (1..64 of A-Za-z0-9._:-).
func checkAccountID(id string) error {
	if id == "" || len(id) > maxAccountIDLength {
		return &inputError{field: "account_id", msg: "account_id is required and at most 64 characters long"}
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return &inputError{field: "account_id", msg: "account_id may contain only letters, digits and . _ : - (e.g. acct-42)"}
		}
	}
	return nil
}
