package domain

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// The event codec. Events are stored as JSON objects, one schema per versioned name.
//
// Why JSON and not protobuf: the people who must decode the log are auditors who do not
// trust us. A JSON object with snake_case fields, amounts as decimal strings of minor units
// (exact in every JSON parser, unlike numbers above 2^53) and the asset beside every amount
// can be read with jq or any language's standard library, without our .proto files, our
// code, or a schema registry. docs/EVENTS.md documents every field of every event.
//
// The table below is the one place that maps names to decoders. A schema change gets a new
// name (…v2); the old name keeps a decoder that upcasts to the current type, so events
// written years ago still load.

type wireAsset struct {
	Code  string `json:"code"`
	Scale uint8  `json:"scale"`
}

type wireMoney struct {
	Minor int64     `json:"minor,string"`
	Asset wireAsset `json:"asset"`
}

type wireLeg struct {
	Source      string    `json:"source"`
	Destination string    `json:"destination"`
	Amount      wireMoney `json:"amount"`
}

// wireEvent is the union of all current event fields; each event uses the subset that
// docs/EVENTS.md lists for it, and decoders check their required fields.
type wireEvent struct {
	AccountID     string            `json:"account_id,omitempty"`
	PaymentID     string            `json:"payment_id,omitempty"`
	CaptureID     string            `json:"capture_id,omitempty"`
	RefundID      string            `json:"refund_id,omitempty"`
	Asset         *wireAsset        `json:"asset,omitempty"`
	Kind          string            `json:"kind,omitempty"`
	CreditLimit   int64             `json:"credit_limit_minor,string,omitempty"`
	Source        string            `json:"source,omitempty"`
	Destination   string            `json:"destination,omitempty"`
	Amount        *wireMoney        `json:"amount,omitempty"`
	Legs          []wireLeg         `json:"legs,omitempty"`
	ExpiresAt     *time.Time        `json:"expires_at,omitempty"`
	PostedAfter   *int64            `json:"posted_after_minor,string,omitempty"`
	HeldAfter     *int64            `json:"held_after_minor,string,omitempty"`
	Closes        bool              `json:"closes_hold,omitempty"`
	CapturedTotal int64             `json:"captured_total_minor,string,omitempty"`
	RefundedTotal int64             `json:"refunded_total_minor,string,omitempty"`
	Released      *wireMoney        `json:"released,omitempty"`
	Reason        string            `json:"reason,omitempty"`
	Reference     string            `json:"reference,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	Fingerprint   string            `json:"fingerprint,omitempty"`
}

func toWireMoney(m Money) *wireMoney {
	return &wireMoney{Minor: m.Minor, Asset: wireAsset{Code: m.Asset.Code, Scale: m.Asset.Scale}}
}

func ptr[T any](v T) *T { return &v }

// EncodeEvent returns an event's versioned name and its JSON payload.
//
// The three events of every transfer (the payment, its debit and its credit) are written by
// hand-made appenders (codec_fast.go), because encoding/json's reflection was a third of
// the CPU the command processor spent deciding and encoding a transfer. Their output is byte for byte what
// json.Marshal makes of the wire struct below, which stays the schema's one definition:
// TestFastEncodingMatchesJSON and FuzzFastEncodingMatchesJSON hold the two together.
func EncodeEvent(e Event) (string, []byte, error) {
	var data []byte
	var err error
	switch e := e.(type) {
	case AccountDebited:
		data, err = appendPosting(nil, e.AccountID, e.PaymentID, e.Amount, e.PostedAfter)
	case AccountCredited:
		data, err = appendPosting(nil, e.AccountID, e.PaymentID, e.Amount, e.PostedAfter)
	case PaymentTransferred:
		data, err = appendPaymentTransferred(nil, &e)
	default:
		return encodeEventReflect(e)
	}
	if err != nil {
		return "", nil, fmt.Errorf("domain: encode %s: %w", e.Name(), err)
	}
	return e.Name(), data, nil
}

// encodeEventReflect encodes any event through the wire struct and encoding/json.
func encodeEventReflect(e Event) (string, []byte, error) {
	var w wireEvent
	switch e := e.(type) {
	case AccountOpened:
		w = wireEvent{AccountID: string(e.AccountID), Asset: &wireAsset{Code: e.Asset.Code, Scale: e.Asset.Scale},
			Kind: e.Kind.String(), CreditLimit: e.CreditLimit, Metadata: e.Metadata, Fingerprint: e.Fingerprint}
	case AccountFrozen:
		w = wireEvent{AccountID: string(e.AccountID), Reason: e.Reason}
	case AccountUnfrozen:
		w = wireEvent{AccountID: string(e.AccountID)}
	case AccountClosed:
		w = wireEvent{AccountID: string(e.AccountID)}
	case AccountDebited:
		w = wireEvent{AccountID: string(e.AccountID), PaymentID: string(e.PaymentID), Amount: toWireMoney(e.Amount), PostedAfter: ptr(e.PostedAfter)}
	case AccountCredited:
		w = wireEvent{AccountID: string(e.AccountID), PaymentID: string(e.PaymentID), Amount: toWireMoney(e.Amount), PostedAfter: ptr(e.PostedAfter)}
	case HoldPlaced:
		w = wireEvent{AccountID: string(e.AccountID), PaymentID: string(e.PaymentID), Amount: toWireMoney(e.Amount), HeldAfter: ptr(e.HeldAfter)}
	case HoldCaptured:
		w = wireEvent{AccountID: string(e.AccountID), PaymentID: string(e.PaymentID), Amount: toWireMoney(e.Amount),
			PostedAfter: ptr(e.PostedAfter), HeldAfter: ptr(e.HeldAfter), Closes: e.Closes}
	case HoldReleased:
		w = wireEvent{AccountID: string(e.AccountID), PaymentID: string(e.PaymentID), Amount: toWireMoney(e.Amount),
			HeldAfter: ptr(e.HeldAfter), Reason: e.Reason}
	case PaymentTransferred:
		w = wireEvent{PaymentID: string(e.PaymentID), Source: string(e.Source), Destination: string(e.Destination),
			Amount: toWireMoney(e.Amount), Reference: e.Reference, Metadata: e.Metadata, Fingerprint: e.Fingerprint}
	case PaymentBatchTransferred:
		w = wireEvent{PaymentID: string(e.PaymentID), Reference: e.Reference, Metadata: e.Metadata, Fingerprint: e.Fingerprint}
		for _, l := range e.Legs {
			w.Legs = append(w.Legs, wireLeg{Source: string(l.Source), Destination: string(l.Destination), Amount: *toWireMoney(l.Amount)})
		}
	case PaymentAuthorised:
		w = wireEvent{PaymentID: string(e.PaymentID), Source: string(e.Source), Destination: string(e.Destination),
			Amount: toWireMoney(e.Amount), ExpiresAt: ptr(e.ExpiresAt.UTC()), Reference: e.Reference, Metadata: e.Metadata,
			Fingerprint: e.Fingerprint}
	case PaymentCaptured:
		w = wireEvent{PaymentID: string(e.PaymentID), CaptureID: string(e.CaptureID), Amount: toWireMoney(e.Amount),
			CapturedTotal: e.CapturedTotal, Fingerprint: e.Fingerprint}
	case PaymentVoided:
		w = wireEvent{PaymentID: string(e.PaymentID), Released: toWireMoney(e.Released)}
	case PaymentExpired:
		w = wireEvent{PaymentID: string(e.PaymentID), Released: toWireMoney(e.Released)}
	case PaymentRefunded:
		w = wireEvent{PaymentID: string(e.PaymentID), RefundID: string(e.RefundID), Amount: toWireMoney(e.Amount),
			RefundedTotal: e.RefundedTotal, Fingerprint: e.Fingerprint}
	default:
		return "", nil, fmt.Errorf("domain: encode: unknown event %T", e)
	}
	data, err := json.Marshal(w)
	if err != nil {
		return "", nil, fmt.Errorf("domain: encode %s: %w", e.Name(), err)
	}
	return e.Name(), data, nil
}

// decoders is the one table of event names. Each entry decodes one schema version into the
// current Go type (upcasting older versions).
var decoders = map[string]func(w *wireEvent, raw []byte) (Event, error){
	NameAccountOpened:   decodeAccountOpened,
	NameAccountOpenedV1: decodeAccountOpenedV1,
	NameAccountFrozen: func(w *wireEvent, _ []byte) (Event, error) {
		return AccountFrozen{AccountID: AccountID(w.AccountID), Reason: w.Reason}, need(w.AccountID != "", "account_id")
	},
	NameAccountUnfrozen: func(w *wireEvent, _ []byte) (Event, error) {
		return AccountUnfrozen{AccountID: AccountID(w.AccountID)}, need(w.AccountID != "", "account_id")
	},
	NameAccountClosed: func(w *wireEvent, _ []byte) (Event, error) {
		return AccountClosed{AccountID: AccountID(w.AccountID)}, need(w.AccountID != "", "account_id")
	},
	NameAccountDebited: func(w *wireEvent, _ []byte) (Event, error) {
		amount, err := posting(w, true, false)
		return AccountDebited{AccountID: AccountID(w.AccountID), PaymentID: PaymentID(w.PaymentID), Amount: amount, PostedAfter: deref(w.PostedAfter)}, err
	},
	NameAccountCredited: func(w *wireEvent, _ []byte) (Event, error) {
		amount, err := posting(w, true, false)
		return AccountCredited{AccountID: AccountID(w.AccountID), PaymentID: PaymentID(w.PaymentID), Amount: amount, PostedAfter: deref(w.PostedAfter)}, err
	},
	NameHoldPlaced: func(w *wireEvent, _ []byte) (Event, error) {
		amount, err := posting(w, false, true)
		return HoldPlaced{AccountID: AccountID(w.AccountID), PaymentID: PaymentID(w.PaymentID), Amount: amount, HeldAfter: deref(w.HeldAfter)}, err
	},
	NameHoldCaptured: func(w *wireEvent, _ []byte) (Event, error) {
		amount, err := posting(w, true, true)
		return HoldCaptured{AccountID: AccountID(w.AccountID), PaymentID: PaymentID(w.PaymentID), Amount: amount,
			PostedAfter: deref(w.PostedAfter), HeldAfter: deref(w.HeldAfter), Closes: w.Closes}, err
	},
	NameHoldReleased: func(w *wireEvent, _ []byte) (Event, error) {
		amount, err := posting(w, false, true)
		if err == nil {
			err = need(w.Reason == ReleaseVoided || w.Reason == ReleaseExpired, "reason (voided or expired)")
		}
		return HoldReleased{AccountID: AccountID(w.AccountID), PaymentID: PaymentID(w.PaymentID), Amount: amount,
			HeldAfter: deref(w.HeldAfter), Reason: w.Reason}, err
	},
	NamePaymentTransfer: func(w *wireEvent, _ []byte) (Event, error) {
		amount, err := paymentMoney(w, w.Amount, "amount", w.Source != "" && w.Destination != "")
		return PaymentTransferred{PaymentID: PaymentID(w.PaymentID), Source: AccountID(w.Source), Destination: AccountID(w.Destination),
			Amount: amount, Reference: w.Reference, Metadata: metadataOrNil(w.Metadata), Fingerprint: w.Fingerprint}, err
	},
	NamePaymentBatch: func(w *wireEvent, _ []byte) (Event, error) {
		e := PaymentBatchTransferred{PaymentID: PaymentID(w.PaymentID), Reference: w.Reference, Metadata: metadataOrNil(w.Metadata), Fingerprint: w.Fingerprint}
		if err := need(w.PaymentID != "" && len(w.Legs) > 0, "payment_id and legs"); err != nil {
			return e, err
		}
		for i, l := range w.Legs {
			m, err := fromWireMoney(&l.Amount)
			if err != nil {
				return e, fmt.Errorf("leg %d: %w", i, err)
			}
			if err := need(l.Source != "" && l.Destination != "", "legs[].source and destination"); err != nil {
				return e, err
			}
			e.Legs = append(e.Legs, Leg{Source: AccountID(l.Source), Destination: AccountID(l.Destination), Amount: m})
		}
		return e, nil
	},
	NamePaymentAuthorise: func(w *wireEvent, _ []byte) (Event, error) {
		amount, err := paymentMoney(w, w.Amount, "amount", w.Source != "" && w.Destination != "" && encodableTime(w.ExpiresAt))
		return PaymentAuthorised{PaymentID: PaymentID(w.PaymentID), Source: AccountID(w.Source), Destination: AccountID(w.Destination),
			Amount: amount, ExpiresAt: derefTime(w.ExpiresAt), Reference: w.Reference, Metadata: metadataOrNil(w.Metadata), Fingerprint: w.Fingerprint}, err
	},
	NamePaymentCaptured: func(w *wireEvent, _ []byte) (Event, error) {
		amount, err := paymentMoney(w, w.Amount, "amount", w.CaptureID != "")
		return PaymentCaptured{PaymentID: PaymentID(w.PaymentID), CaptureID: OperationID(w.CaptureID), Amount: amount,
			CapturedTotal: w.CapturedTotal, Fingerprint: w.Fingerprint}, err
	},
	NamePaymentVoided: func(w *wireEvent, _ []byte) (Event, error) {
		released, err := paymentMoney(w, w.Released, "released", true)
		return PaymentVoided{PaymentID: PaymentID(w.PaymentID), Released: released}, err
	},
	NamePaymentExpired: func(w *wireEvent, _ []byte) (Event, error) {
		released, err := paymentMoney(w, w.Released, "released", true)
		return PaymentExpired{PaymentID: PaymentID(w.PaymentID), Released: released}, err
	},
	NamePaymentRefunded: func(w *wireEvent, _ []byte) (Event, error) {
		amount, err := paymentMoney(w, w.Amount, "amount", w.RefundID != "")
		return PaymentRefunded{PaymentID: PaymentID(w.PaymentID), RefundID: OperationID(w.RefundID), Amount: amount,
			RefundedTotal: w.RefundedTotal, Fingerprint: w.Fingerprint}, err
	},
}

// KnownEventNames lists every decodable name, current and old.
func KnownEventNames() []string {
	out := make([]string, 0, len(decoders))
	for n := range decoders {
		out = append(out, n)
	}
	return out
}

// DecodeEvent decodes a stored event by its name, upcasting older schema versions.
func DecodeEvent(name string, data []byte) (Event, error) {
	dec, ok := decoders[name]
	if !ok {
		return nil, fmt.Errorf("domain: decode: unknown event type %q", name)
	}
	var w wireEvent
	if name != NameAccountOpenedV1 { // v1 has a different shape; its decoder parses raw
		if err := decodeStrict(data, &w); err != nil {
			return nil, fmt.Errorf("domain: decode %s: %w", name, err)
		}
	}
	e, err := dec(&w, data)
	if err != nil {
		return nil, fmt.Errorf("domain: decode %s: %w", name, err)
	}
	return e, nil
}

// decodeStrict decodes exactly one JSON object with no unknown fields and nothing after it.
// A stored payload must have one reading, the same for us and for an auditor's jq: so
// "{...}garbage" is refused rather than half-read, and so are duplicate keys and keys in
// another case ("Payment_ID"), which encoding/json would otherwise accept (matching keys
// case-insensitively, last one winning) while other JSON readers see something else.
func decodeStrict(data []byte, v any) error {
	if err := checkKeys(data); err != nil {
		return err
	}
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if _, err := d.Token(); err != io.EOF {
		return fmt.Errorf("unexpected data after the JSON object")
	}
	return nil
}

// checkKeys scans data and refuses an object key that is not written in the schema's
// alphabet (lower-case letters, digits, "_", "." and "-": the field names, and the metadata
// keys Decide accepts) or that appears twice in one object. Because a key may not contain
// a backslash, no escape can disguise one key as another, and keys compare as raw bytes.
// The scan is one pass over data without allocating per key (it runs on every event load);
// it does not validate the JSON syntax, which the decoder that runs after it does.
func checkKeys(data []byte) error {
	type frame struct {
		object, wantKey bool
		start           int                 // this object's keys are keys[start:]
		set             map[string]struct{} // all its keys, once there are many
	}
	const linearKeys = 32 // beyond this many keys in one object, find duplicates by map
	// Event payloads nest three levels and have about twenty keys: these arrays keep the
	// scan off the heap for all of them.
	var stackBuf [8]frame
	var keysBuf [48][]byte
	stack, keys := stackBuf[:0], keysBuf[:0]
	for i := 0; i < len(data); i++ {
		switch data[i] {
		case '{':
			stack = append(stack, frame{object: true, wantKey: true, start: len(keys)})
		case '[':
			stack = append(stack, frame{start: len(keys)})
		case '}', ']':
			if len(stack) == 0 {
				return fmt.Errorf("unbalanced %q at byte %d", data[i], i)
			}
			keys = keys[:stack[len(stack)-1].start]
			stack = stack[:len(stack)-1]
		case ',':
			if n := len(stack); n > 0 && stack[n-1].object {
				stack[n-1].wantKey = true
			}
		case '"':
			j := i + 1
			for j < len(data) && data[j] != '"' {
				if data[j] == '\\' {
					j++
				}
				j++
			}
			if j >= len(data) {
				return fmt.Errorf("unterminated string at byte %d", i)
			}
			if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].wantKey {
				key := data[i+1 : j]
				if err := checkKey(key); err != nil {
					return err
				}
				top := &stack[n-1]
				top.wantKey = false
				if top.set == nil {
					for _, k := range keys[top.start:] {
						if bytes.Equal(k, key) {
							return fmt.Errorf("key %q appears twice in one object", key)
						}
					}
					keys = append(keys, key)
					if len(keys)-top.start > linearKeys {
						top.set = make(map[string]struct{}, 2*linearKeys)
						for _, k := range keys[top.start:] {
							top.set[string(k)] = struct{}{}
						}
						keys = keys[:top.start]
					}
				} else {
					if _, dup := top.set[string(key)]; dup {
						return fmt.Errorf("key %q appears twice in one object", key)
					}
					top.set[string(key)] = struct{}{}
				}
			}
			i = j
		}
	}
	return nil
}

func checkKey(key []byte) error {
	for _, r := range key {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-') {
			return fmt.Errorf("key %q: keys are lower-case letters, digits and _ . -", key)
		}
	}
	return nil
}

// metadataOrNil reads an empty metadata object as no metadata, as Decide writes it, so that a
// decoded event equals the event that was encoded.
func metadataOrNil(m map[string]string) Metadata {
	if len(m) == 0 {
		return nil
	}
	return m
}

func need(ok bool, what string) error {
	if !ok {
		return fmt.Errorf("missing or invalid %s", what)
	}
	return nil
}

func deref(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

// encodableTime accepts a deadline whose UTC form has a four-digit year: an offset can move
// "0000-01-01T00:00:00+01:00" into year -1, which JSON (RFC 3339) cannot write back.
func encodableTime(p *time.Time) bool {
	if p == nil {
		return false
	}
	y := p.UTC().Year()
	return y >= 0 && y <= 9999
}

func derefTime(p *time.Time) time.Time {
	if p == nil {
		return time.Time{}
	}
	return p.UTC()
}

func fromWireMoney(m *wireMoney) (Money, error) {
	if m == nil {
		return Money{}, fmt.Errorf("missing amount")
	}
	asset, err := NewAsset(m.Asset.Code, int(m.Asset.Scale))
	if err != nil {
		return Money{}, err
	}
	return NewMoney(m.Minor, asset)
}

// posting decodes the common fields of an account posting event.
func posting(w *wireEvent, posted, held bool) (Money, error) {
	if err := need(w.AccountID != "" && w.PaymentID != "", "account_id and payment_id"); err != nil {
		return Money{}, err
	}
	if posted {
		if err := need(w.PostedAfter != nil, "posted_after_minor"); err != nil {
			return Money{}, err
		}
	}
	if held {
		if err := need(w.HeldAfter != nil, "held_after_minor"); err != nil {
			return Money{}, err
		}
	}
	return fromWireMoney(w.Amount)
}

func paymentMoney(w *wireEvent, m *wireMoney, what string, rest bool) (Money, error) {
	if err := need(w.PaymentID != "" && rest, "payment_id or another required field"); err != nil {
		return Money{}, err
	}
	money, err := fromWireMoney(m)
	if err != nil {
		return Money{}, fmt.Errorf("%s: %w", what, err)
	}
	return money, nil
}

func decodeAccountOpened(w *wireEvent, _ []byte) (Event, error) {
	if err := need(w.AccountID != "" && w.Asset != nil, "account_id and asset"); err != nil {
		return nil, err
	}
	asset, err := NewAsset(w.Asset.Code, int(w.Asset.Scale))
	if err != nil {
		return nil, err
	}
	kind, err := ParseAccountKind(w.Kind)
	if err != nil {
		return nil, err
	}
	return AccountOpened{AccountID: AccountID(w.AccountID), Asset: asset, Kind: kind, CreditLimit: w.CreditLimit,
		Metadata: metadataOrNil(w.Metadata), Fingerprint: w.Fingerprint}, nil
}

// accountOpenedV1 is the first schema of ledger.account.opened: the asset was a bare
// currency code whose scale was implied by ISO 4217. v2 carries the scale explicitly so that
// assets outside ISO 4217 (points, tokens) can be opened.
type accountOpenedV1 struct {
	AccountID   string            `json:"account_id"`
	Currency    string            `json:"currency"`
	Kind        string            `json:"kind"`
	CreditLimit int64             `json:"credit_limit_minor,string"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	Fingerprint string            `json:"fingerprint,omitempty"`
}

// decodeAccountOpenedV1 upcasts v1 to the current AccountOpened: the scale comes from the
// table of known assets, which is exactly what v1 readers assumed.
func decodeAccountOpenedV1(_ *wireEvent, raw []byte) (Event, error) {
	var v1 accountOpenedV1
	if err := decodeStrict(raw, &v1); err != nil {
		return nil, err
	}
	if err := need(v1.AccountID != "", "account_id"); err != nil {
		return nil, err
	}
	asset, err := LookupAsset(v1.Currency)
	if err != nil {
		return nil, fmt.Errorf("upcast v1 currency: %w", err)
	}
	kind, err := ParseAccountKind(v1.Kind)
	if err != nil {
		return nil, err
	}
	return AccountOpened{AccountID: AccountID(v1.AccountID), Asset: asset, Kind: kind, CreditLimit: v1.CreditLimit,
		Metadata: metadataOrNil(v1.Metadata), Fingerprint: v1.Fingerprint}, nil
}
