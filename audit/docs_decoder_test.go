package audit_test

// An auditor's decoder, written from docs/EVENTS.md alone: its own structs with the field
// names of the document's tables, its own SHA-256 chain, its own balance fold. It imports
// nothing but the standard library, so it shares no code with the exporter it checks: when
// the export and the document part ways, docs_export_test.go fails and says where.

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const eventsDocPath = "../docs/EVENTS.md"

// ---- The document, as data ----

// docField is one row of a field table: `amount`, `metadata.actor`, `legs[].source`.
type docField struct {
	name     string
	optional bool // the type column says "optional" or gives the value meant when absent
}

type eventsDoc struct {
	line     []docField            // section 2: the fields of one export line
	payloads map[string][]docField // section 5: the fields of each event type
	written  []string              // section 5: the types SecurePay writes today
	example  []byte                // section 2: the example line, compacted
}

var (
	fieldRow     = regexp.MustCompile("(?m)^\\| `([a-z0-9_.\\[\\]]+)` \\|([^|]*)\\|")
	typeRow      = regexp.MustCompile("(?m)^\\| `(ledger\\.[a-z0-9_.]+)` \\| (?:account|payment) \\| ([^|]*)\\|")
	exampleLine  = regexp.MustCompile("(?s)<!-- export-line example -->\n```json\n(.*?)```")
	sectionTitle = regexp.MustCompile(`(?m)^## \d+\. `)
)

// section returns the text of the numbered top-level section n ("## n. ...").
func section(t *testing.T, doc string, n int) string {
	t.Helper()
	starts := sectionTitle.FindAllStringIndex(doc, -1)
	for i, s := range starts {
		if strings.HasPrefix(doc[s[0]:], fmt.Sprintf("## %d. ", n)) {
			end := len(doc)
			if i+1 < len(starts) {
				end = starts[i+1][0]
			}
			return doc[s[0]:end]
		}
	}
	t.Fatalf("%s has no section %q", eventsDocPath, fmt.Sprintf("## %d.", n))
	return ""
}

func fieldsOf(table string) []docField {
	var out []docField
	for _, m := range fieldRow.FindAllStringSubmatch(table, -1) {
		out = append(out, docField{name: m[1], optional: strings.Contains(m[2], "optional") || strings.Contains(m[2], "absent")})
	}
	return out
}

func readEventsDoc(t *testing.T) eventsDoc {
	t.Helper()
	raw, err := os.ReadFile(eventsDocPath)
	if err != nil {
		t.Fatalf("read %s: %v", eventsDocPath, err)
	}
	doc := string(raw)
	d := eventsDoc{payloads: map[string][]docField{}}
	line := section(t, doc, 2)
	d.line = fieldsOf(line)
	if len(d.line) == 0 {
		t.Fatalf("%s section 2 has no field table (rows like | `position` | ... |)", eventsDocPath)
	}
	if m := exampleLine.FindStringSubmatch(line); m != nil {
		var compact bytes.Buffer
		if err := json.Compact(&compact, []byte(m[1])); err != nil {
			t.Fatalf("%s section 2: the example line is not JSON: %v", eventsDocPath, err)
		}
		d.example = compact.Bytes()
	}
	types := section(t, doc, 5)
	for _, m := range typeRow.FindAllStringSubmatch(types, -1) {
		name := m[1]
		heading := "### `" + name + "`"
		start := strings.Index(types, heading)
		if start < 0 {
			t.Fatalf("%s section 5 lists %s but has no section %q", eventsDocPath, name, heading)
		}
		body := types[start+len(heading):]
		if end := strings.Index(body, "\n### "); end >= 0 {
			body = body[:end]
		}
		d.payloads[name] = fieldsOf(body)
		if !strings.HasPrefix(strings.TrimSpace(m[2]), "(old schema") {
			d.written = append(d.written, name)
		}
	}
	if len(d.written) == 0 {
		t.Fatalf("%s section 5 has no table of event types", eventsDocPath)
	}
	return d
}

// ---- The decoder, written from the document ----

// exportLine is section 2. Fields whose JSON object the document describes field by field
// carry doc:"fields", so jsonNames spells their children as the document does.
type exportLine struct {
	Position         uint64          `json:"position"`
	Stream           string          `json:"stream"`
	StreamVersion    uint64          `json:"stream_version"`
	ID               string          `json:"id"`
	Type             string          `json:"type"`
	RecordedAt       string          `json:"recorded_at"`
	RecordedAtUnixUS int64           `json:"recorded_at_unix_us"`
	Metadata         lineMetadata    `json:"metadata" doc:"fields"`
	PrevHash         string          `json:"prev_hash"`
	Hash             string          `json:"hash"`
	DataBase64       string          `json:"data_base64"`
	Payload          json.RawMessage `json:"payload"`
	DecodeError      *string         `json:"decode_error"`
}

type lineMetadata struct {
	CorrelationID string `json:"correlation_id"`
	CausationID   string `json:"causation_id"`
	Actor         string `json:"actor"`
	TraceParent   string `json:"traceparent"`
}

// Section 4's value types.

// minor is an integer of minor units that must arrive as a JSON string of decimal digits.
type minor int64

func (m *minor) UnmarshalJSON(b []byte) error {
	var s string
	if len(b) == 0 || b[0] != '"' || json.Unmarshal(b, &s) != nil {
		return fmt.Errorf("amount %s: want a JSON string of decimal digits, found another JSON value", b)
	}
	digits := strings.TrimPrefix(s, "-")
	if digits == "" || strings.Trim(digits, "0123456789") != "" {
		return fmt.Errorf("amount %q: want decimal digits", s)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("amount %q: want a signed 64-bit integer: %v", s, err)
	}
	*m = minor(n)
	return nil
}

type asset struct {
	Code  string `json:"code"`
	Scale int    `json:"scale"`
}

type money struct {
	Minor minor `json:"minor"`
	Asset asset `json:"asset"`
}

// Section 5, one struct per schema (events with the same fields share one).

type accountOpenedV2 struct {
	AccountID   string            `json:"account_id"`
	Asset       asset             `json:"asset"`
	Kind        string            `json:"kind"`
	CreditLimit minor             `json:"credit_limit_minor"`
	Metadata    map[string]string `json:"metadata"`
	Fingerprint string            `json:"fingerprint"`
}

type accountOpenedV1 struct {
	AccountID   string            `json:"account_id"`
	Currency    string            `json:"currency"`
	Kind        string            `json:"kind"`
	CreditLimit minor             `json:"credit_limit_minor"`
	Metadata    map[string]string `json:"metadata"`
	Fingerprint string            `json:"fingerprint"`
}

type accountFrozen struct {
	AccountID string `json:"account_id"`
	Reason    string `json:"reason"`
}

type accountOnly struct {
	AccountID string `json:"account_id"`
}

type posting struct {
	AccountID   string `json:"account_id"`
	PaymentID   string `json:"payment_id"`
	Amount      money  `json:"amount"`
	PostedAfter minor  `json:"posted_after_minor"`
}

type holdPlaced struct {
	AccountID string `json:"account_id"`
	PaymentID string `json:"payment_id"`
	Amount    money  `json:"amount"`
	HeldAfter minor  `json:"held_after_minor"`
}

type holdCaptured struct {
	AccountID   string `json:"account_id"`
	PaymentID   string `json:"payment_id"`
	Amount      money  `json:"amount"`
	PostedAfter minor  `json:"posted_after_minor"`
	HeldAfter   minor  `json:"held_after_minor"`
	ClosesHold  bool   `json:"closes_hold"`
}

type holdReleased struct {
	AccountID string `json:"account_id"`
	PaymentID string `json:"payment_id"`
	Amount    money  `json:"amount"`
	HeldAfter minor  `json:"held_after_minor"`
	Reason    string `json:"reason"`
}

type paymentTransferred struct {
	PaymentID   string            `json:"payment_id"`
	Source      string            `json:"source"`
	Destination string            `json:"destination"`
	Amount      money             `json:"amount"`
	Reference   string            `json:"reference"`
	Metadata    map[string]string `json:"metadata"`
	Fingerprint string            `json:"fingerprint"`
}

type leg struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Amount      money  `json:"amount"`
}

type paymentBatchTransferred struct {
	PaymentID   string            `json:"payment_id"`
	Legs        []leg             `json:"legs" doc:"fields"`
	Reference   string            `json:"reference"`
	Metadata    map[string]string `json:"metadata"`
	Fingerprint string            `json:"fingerprint"`
}

type paymentAuthorised struct {
	PaymentID   string            `json:"payment_id"`
	Source      string            `json:"source"`
	Destination string            `json:"destination"`
	Amount      money             `json:"amount"`
	ExpiresAt   string            `json:"expires_at"`
	Reference   string            `json:"reference"`
	Metadata    map[string]string `json:"metadata"`
	Fingerprint string            `json:"fingerprint"`
}

type paymentCaptured struct {
	PaymentID     string `json:"payment_id"`
	CaptureID     string `json:"capture_id"`
	Amount        money  `json:"amount"`
	CapturedTotal minor  `json:"captured_total_minor"`
	Fingerprint   string `json:"fingerprint"`
}

type paymentReleased struct {
	PaymentID string `json:"payment_id"`
	Released  money  `json:"released"`
}

type paymentRefunded struct {
	PaymentID     string `json:"payment_id"`
	RefundID      string `json:"refund_id"`
	Amount        money  `json:"amount"`
	RefundedTotal minor  `json:"refunded_total_minor"`
	Fingerprint   string `json:"fingerprint"`
}

// payloadSchemas maps each documented type to a fresh value of its struct. The names are
// written out as the document spells them, not taken from our code.
var payloadSchemas = map[string]func() any{
	"ledger.account.opened.v2":            func() any { return new(accountOpenedV2) },
	"ledger.account.opened.v1":            func() any { return new(accountOpenedV1) },
	"ledger.account.frozen.v1":            func() any { return new(accountFrozen) },
	"ledger.account.unfrozen.v1":          func() any { return new(accountOnly) },
	"ledger.account.closed.v1":            func() any { return new(accountOnly) },
	"ledger.account.debited.v1":           func() any { return new(posting) },
	"ledger.account.credited.v1":          func() any { return new(posting) },
	"ledger.account.hold_placed.v1":       func() any { return new(holdPlaced) },
	"ledger.account.hold_captured.v1":     func() any { return new(holdCaptured) },
	"ledger.account.hold_released.v1":     func() any { return new(holdReleased) },
	"ledger.payment.transferred.v1":       func() any { return new(paymentTransferred) },
	"ledger.payment.batch_transferred.v1": func() any { return new(paymentBatchTransferred) },
	"ledger.payment.authorised.v1":        func() any { return new(paymentAuthorised) },
	"ledger.payment.captured.v1":          func() any { return new(paymentCaptured) },
	"ledger.payment.voided.v1":            func() any { return new(paymentReleased) },
	"ledger.payment.expired.v1":           func() any { return new(paymentReleased) },
	"ledger.payment.refunded.v1":          func() any { return new(paymentRefunded) },
}

// jsonNames lists the names a decoder struct accepts, in field order, spelling the children
// of doc:"fields" objects and arrays as the document does (metadata.actor, legs[].source).
func jsonNames(t reflect.Type, prefix string) []string {
	var out []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		out = append(out, prefix+name)
		if f.Tag.Get("doc") != "fields" {
			continue
		}
		switch f.Type.Kind() {
		case reflect.Struct:
			out = append(out, jsonNames(f.Type, prefix+name+".")...)
		case reflect.Slice:
			out = append(out, jsonNames(f.Type.Elem(), prefix+name+"[].")...)
		}
	}
	return out
}

func docNames(fields []docField) []string {
	out := make([]string, len(fields))
	for i, f := range fields {
		out[i] = f.name
	}
	return out
}

// decodeStrict decodes exactly one JSON value into v, refusing a field v does not name.
func decodeStrict(raw []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return errors.New("something follows the JSON object")
	}
	return nil
}

// missingFields names the documented required fields that raw (an object at prefix) lacks,
// descending into the objects and arrays whose fields the document lists.
func missingFields(raw json.RawMessage, fields []docField, prefix string) []string {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return []string{strings.TrimSuffix(prefix, ".") + " (not a JSON object)"}
	}
	hasChildren := func(p string) bool {
		return slices.ContainsFunc(fields, func(f docField) bool { return strings.HasPrefix(f.name, p) })
	}
	var missing []string
	for _, f := range fields {
		key, ok := strings.CutPrefix(f.name, prefix)
		if !ok || strings.ContainsAny(key, ".[") {
			continue
		}
		v, present := obj[key]
		switch {
		case !present:
			if !f.optional {
				missing = append(missing, f.name)
			}
		case hasChildren(f.name + "."):
			missing = append(missing, missingFields(v, fields, f.name+".")...)
		case hasChildren(f.name + "[]."):
			var elems []json.RawMessage
			if err := json.Unmarshal(v, &elems); err != nil {
				missing = append(missing, f.name+" (not a JSON array)")
				continue
			}
			for _, e := range elems {
				missing = append(missing, missingFields(e, fields, f.name+"[].")...)
			}
		}
	}
	return missing
}

// chainHash is section 3, computed from the line's fields as decoded.
func chainHash(prev []byte, l *exportLine, data []byte) []byte {
	h := sha256.New()
	h.Write(prev)
	h.Write(binary.BigEndian.AppendUint64(nil, l.Position))
	h.Write(binary.BigEndian.AppendUint64(nil, l.StreamVersion))
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(l.RecordedAtUnixUS)))
	m := l.Metadata
	for _, field := range [][]byte{[]byte(l.Stream), []byte(l.ID), []byte(l.Type), data,
		[]byte(m.CorrelationID), []byte(m.CausationID), []byte(m.Actor), []byte(m.TraceParent)} {
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(field))))
		h.Write(field)
	}
	return h.Sum(nil)
}

var lowerHex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// decodedEvent is one export line as the auditor's decoder reads it.
type decodedEvent struct {
	line    exportLine
	data    []byte
	payload any // a pointer to the struct of payloadSchemas[line.Type]
}

// decodeLine reads one export line with nothing but the document, and checks everything
// about it that needs no other line: fields, encodings, the recorded time, the payload's
// schema, and that its hash follows from its prev_hash.
func decodeLine(doc eventsDoc, raw []byte) (decodedEvent, error) {
	var ev decodedEvent
	l := &ev.line
	if err := decodeStrict(raw, l); err != nil {
		return ev, fmt.Errorf("does not decode with the fields of %s section 2: %v", eventsDocPath, err)
	}
	if missing := missingFields(raw, doc.line, ""); len(missing) > 0 {
		return ev, fmt.Errorf("lacks the required fields %v of %s section 2", missing, eventsDocPath)
	}
	at, err := time.Parse(time.RFC3339Nano, l.RecordedAt)
	switch {
	case err != nil:
		return ev, fmt.Errorf("recorded_at %q: want RFC 3339: %v", l.RecordedAt, err)
	case at.Location() != time.UTC || at.Format("2006-01-02T15:04:05.000000Z") != l.RecordedAt:
		return ev, fmt.Errorf("recorded_at %q: want UTC with exactly six fractional digits and Z, e.g. %s", l.RecordedAt, at.UTC().Format("2006-01-02T15:04:05.000000Z"))
	case at.UnixMicro() != l.RecordedAtUnixUS:
		return ev, fmt.Errorf("recorded_at %s is %d µs after the epoch, recorded_at_unix_us says %d", l.RecordedAt, at.UnixMicro(), l.RecordedAtUnixUS)
	}
	for name, h := range map[string]string{"prev_hash": l.PrevHash, "hash": l.Hash} {
		if !lowerHex64.MatchString(h) {
			return ev, fmt.Errorf("%s %q: want 64 lower-case hex digits", name, h)
		}
	}
	if ev.data, err = base64.StdEncoding.Strict().DecodeString(l.DataBase64); err != nil {
		return ev, fmt.Errorf("data_base64: want standard padded base64: %v", err)
	}
	prev, _ := hex.DecodeString(l.PrevHash)
	if got := hex.EncodeToString(chainHash(prev, l, ev.data)); got != l.Hash {
		return ev, fmt.Errorf("the hash computed per %s section 3 is %s, the line says %s", eventsDocPath, got, l.Hash)
	}
	if l.DecodeError != nil {
		return ev, fmt.Errorf("decode_error %q: want none in a sound log", *l.DecodeError)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, ev.data); err != nil {
		return ev, fmt.Errorf("data is not JSON: %v", err)
	}
	if !bytes.Equal(l.Payload, compact.Bytes()) {
		return ev, fmt.Errorf("payload %s differs from data_base64 without whitespace %s", l.Payload, compact.Bytes())
	}
	schema, ok := payloadSchemas[l.Type]
	if !ok || doc.payloads[l.Type] == nil {
		return ev, fmt.Errorf("type %q is not a type of %s section 5", l.Type, eventsDocPath)
	}
	ev.payload = schema()
	if err := decodeStrict(ev.data, ev.payload); err != nil {
		return ev, fmt.Errorf("%s payload %s does not decode with the fields of its section: %v", l.Type, ev.data, err)
	}
	if missing := missingFields(ev.data, doc.payloads[l.Type], ""); len(missing) > 0 {
		return ev, fmt.Errorf("%s payload %s lacks the required fields %v", l.Type, ev.data, missing)
	}
	return ev, checkPayloadValues(ev.payload)
}

// checkPayloadValues checks the value rules of section 4 that a struct does not: amounts
// above zero, fingerprints in hex, times in UTC.
func checkPayloadValues(p any) error {
	positive := func(what string, m money) error {
		if m.Minor <= 0 {
			return fmt.Errorf("%s %d: want > 0", what, m.Minor)
		}
		return nil
	}
	fingerprint := func(fp string) error {
		if fp != "" && !lowerHex64.MatchString(fp) {
			return fmt.Errorf("fingerprint %q: want 64 lower-case hex digits", fp)
		}
		return nil
	}
	switch p := p.(type) {
	case *posting:
		return positive("amount", p.Amount)
	case *holdPlaced:
		return positive("amount", p.Amount)
	case *holdCaptured:
		return positive("amount", p.Amount)
	case *holdReleased:
		if p.Reason != "voided" && p.Reason != "expired" {
			return fmt.Errorf("reason %q: want voided or expired", p.Reason)
		}
		return positive("amount", p.Amount)
	case *paymentTransferred:
		return errors.Join(positive("amount", p.Amount), fingerprint(p.Fingerprint))
	case *paymentBatchTransferred:
		if len(p.Legs) < 1 || len(p.Legs) > 64 {
			return fmt.Errorf("%d legs: want 1..64", len(p.Legs))
		}
		for _, l := range p.Legs {
			if err := positive("leg amount", l.Amount); err != nil {
				return err
			}
		}
		return fingerprint(p.Fingerprint)
	case *paymentAuthorised:
		at, err := time.Parse(time.RFC3339Nano, p.ExpiresAt)
		if err != nil || at.Location() != time.UTC {
			return fmt.Errorf("expires_at %q: want an RFC 3339 time in UTC (%v)", p.ExpiresAt, err)
		}
		return errors.Join(positive("amount", p.Amount), fingerprint(p.Fingerprint))
	case *paymentCaptured:
		return errors.Join(positive("amount", p.Amount), fingerprint(p.Fingerprint))
	case *paymentRefunded:
		return errors.Join(positive("amount", p.Amount), fingerprint(p.Fingerprint))
	case *accountOpenedV2:
		if p.Kind != "customer" && p.Kind != "merchant" && p.Kind != "external" {
			return fmt.Errorf("kind %q: want customer, merchant or external", p.Kind)
		}
		return fingerprint(p.Fingerprint)
	}
	return nil
}

// decodeExport splits an export into lines and decodes each; it fails the test at the first
// line that does not follow the document.
func decodeExport(t *testing.T, doc eventsDoc, out []byte) []decodedEvent {
	t.Helper()
	if len(out) == 0 || out[len(out)-1] != '\n' {
		t.Fatalf("export does not end with a newline; section 2 says every line does")
	}
	var events []decodedEvent
	for i, raw := range bytes.Split(out[:len(out)-1], []byte("\n")) {
		ev, err := decodeLine(doc, raw)
		if err != nil {
			t.Fatalf("export line %d: %v\nline: %s", i+1, err, raw)
		}
		events = append(events, ev)
	}
	return events
}

// ---- The doc and the decoder agree ----

// TestEventsDocFieldTablesMatchTheDecoder keeps this file honest: the decoder's structs
// accept exactly the fields the document's tables list, so decoding with them is decoding
// with the document.
func TestEventsDocFieldTablesMatchTheDecoder(t *testing.T) {
	doc := readEventsDoc(t)
	if want, got := docNames(doc.line), jsonNames(reflect.TypeFor[exportLine](), ""); !slices.Equal(want, got) {
		t.Errorf("%s section 2 lists the fields\n  %v\nthe decoder of this test has\n  %v", eventsDocPath, want, got)
	}
	for name, fields := range doc.payloads {
		schema, ok := payloadSchemas[name]
		if !ok {
			t.Errorf("%s documents %s; this test's decoder has no struct for it", eventsDocPath, name)
			continue
		}
		want, got := docNames(fields), jsonNames(reflect.TypeOf(schema()).Elem(), "")
		if !slices.Equal(want, got) {
			t.Errorf("%s: the table of %s lists\n  %v\nthe decoder's struct has\n  %v", eventsDocPath, name, want, got)
		}
	}
	for name := range payloadSchemas {
		if _, ok := doc.payloads[name]; !ok {
			t.Errorf("the decoder knows %s; %s section 5 does not list it", name, eventsDocPath)
		}
	}
}

// ---- Checks across lines ----

// checkChain is section 3's verification procedure.
func checkChain(t *testing.T, events []decodedEvent) {
	prev := make([]byte, sha256.Size)
	var lastAt int64
	for i, ev := range events {
		l := &ev.line
		switch want := uint64(i + 1); {
		case l.Position != want:
			t.Fatalf("line %d has position %d; want %d (positions run from 1 without gaps)", i+1, l.Position, want)
		case l.PrevHash != hex.EncodeToString(prev):
			t.Fatalf("position %d: prev_hash %s; want the hash of the event before it, %x", l.Position, l.PrevHash, prev)
		case l.RecordedAtUnixUS < lastAt:
			t.Fatalf("position %d: recorded_at_unix_us %d is before the previous event's %d; recorded times never decrease", l.Position, l.RecordedAtUnixUS, lastAt)
		}
		// decodeLine checked each hash against its own prev_hash; linking every prev_hash to
		// the line before is what makes the lines one chain.
		prev, _ = hex.DecodeString(l.Hash)
		lastAt = l.RecordedAtUnixUS
	}
}

// checkStreams checks section 1's stream names and section 2's stream versions.
func checkStreams(t *testing.T, events []decodedEvent) {
	versions := map[string]uint64{}
	for _, ev := range events {
		l := &ev.line
		versions[l.Stream]++
		if l.StreamVersion != versions[l.Stream] {
			t.Fatalf("position %d: %s version %d; want %d (versions run from 1 per stream)", l.Position, l.Stream, l.StreamVersion, versions[l.Stream])
		}
		owner := ""
		switch p := ev.payload.(type) {
		case interface{ account() string }:
			owner = "account-" + p.account()
		case interface{ payment() string }:
			owner = "payment-" + p.payment()
		}
		if owner != l.Stream {
			t.Fatalf("position %d: a %s naming %s is in stream %s", l.Position, l.Type, owner, l.Stream)
		}
	}
}

// Which stream a payload belongs to, by section 1.
func (p *accountOpenedV2) account() string         { return p.AccountID }
func (p *accountOpenedV1) account() string         { return p.AccountID }
func (p *accountFrozen) account() string           { return p.AccountID }
func (p *accountOnly) account() string             { return p.AccountID }
func (p *posting) account() string                 { return p.AccountID }
func (p *holdPlaced) account() string              { return p.AccountID }
func (p *holdCaptured) account() string            { return p.AccountID }
func (p *holdReleased) account() string            { return p.AccountID }
func (p *paymentTransferred) payment() string      { return p.PaymentID }
func (p *paymentBatchTransferred) payment() string { return p.PaymentID }
func (p *paymentAuthorised) payment() string       { return p.PaymentID }
func (p *paymentCaptured) payment() string         { return p.PaymentID }
func (p *paymentReleased) payment() string         { return p.PaymentID }
func (p *paymentRefunded) payment() string         { return p.PaymentID }

// paymentOf is the payment an event belongs to: its stream's for a payment event, the
// payment_id it names for a posting or hold, "" for the others.
func paymentOf(p any) string {
	switch p := p.(type) {
	case interface{ payment() string }:
		return p.payment()
	case *posting:
		return p.PaymentID
	case *holdPlaced:
		return p.PaymentID
	case *holdCaptured:
		return p.PaymentID
	case *holdReleased:
		return p.PaymentID
	}
	return ""
}

// checkBalances is section 4's fold: every posting and hold claims the balance after it,
// which the fold must reproduce, and each asset's posted balances sum to zero.
func checkBalances(t *testing.T, events []decodedEvent) {
	type account struct {
		asset        asset
		posted, held int64
	}
	accounts := map[string]*account{}
	apply := func(pos uint64, id string, amount money, dPosted, dHeld int64, postedAfter, heldAfter *minor) {
		a := accounts[id]
		if a == nil {
			t.Fatalf("position %d: an event on account %s before it was opened", pos, id)
		}
		if amount.Asset != a.asset {
			t.Fatalf("position %d: an amount in %+v on account %s, which holds %+v", pos, amount.Asset, id, a.asset)
		}
		a.posted += dPosted * int64(amount.Minor)
		a.held += dHeld * int64(amount.Minor)
		if postedAfter != nil && int64(*postedAfter) != a.posted {
			t.Fatalf("position %d: account %s claims posted %d after it; the fold of section 4 gives %d", pos, id, *postedAfter, a.posted)
		}
		if heldAfter != nil && int64(*heldAfter) != a.held {
			t.Fatalf("position %d: account %s claims held %d after it; the fold of section 4 gives %d", pos, id, *heldAfter, a.held)
		}
	}
	for _, ev := range events {
		pos := ev.line.Position
		switch p := ev.payload.(type) {
		case *accountOpenedV2:
			accounts[p.AccountID] = &account{asset: p.Asset}
		case *posting:
			sign := int64(1)
			if ev.line.Type == "ledger.account.debited.v1" {
				sign = -1
			}
			apply(pos, p.AccountID, p.Amount, sign, 0, &p.PostedAfter, nil)
		case *holdPlaced:
			apply(pos, p.AccountID, p.Amount, 0, 1, nil, &p.HeldAfter)
		case *holdCaptured:
			apply(pos, p.AccountID, p.Amount, -1, -1, &p.PostedAfter, &p.HeldAfter)
		case *holdReleased:
			apply(pos, p.AccountID, p.Amount, 0, -1, nil, &p.HeldAfter)
		}
	}
	totals := map[asset]int64{}
	for _, a := range accounts {
		totals[a.asset] += a.posted
	}
	for as, sum := range totals {
		if sum != 0 {
			t.Errorf("posted balances in %+v sum to %d; section 4 says every asset sums to zero", as, sum)
		}
	}
}
