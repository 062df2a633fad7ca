package domain

import (
	"encoding/json"
	"slices"
	"strconv"
)

// Hand-made JSON appenders for the events every transfer writes. Each must produce exactly
// the bytes json.Marshal produces for the same event's wireEvent: field order as declared
// there, omitempty where it says so, minor units as quoted integers, map keys sorted, and
// encoding/json's string escaping (which the slow path below delegates to encoding/json
// itself, so only plain ASCII is written here directly).

// appendPosting appends the payload of ledger.account.debited or .credited.
func appendPosting(dst []byte, account AccountID, payment PaymentID, amount Money, postedAfter int64) ([]byte, error) {
	if dst == nil {
		// The fixed text and two 20-digit integers are under 160 bytes: one allocation
		// holds the payload unless a string needs escaping.
		dst = make([]byte, 0, 160+len(account)+len(payment)+len(amount.Asset.Code))
	}
	var err error
	sep := byte('{')
	if account != "" {
		dst = append(dst, sep)
		dst = append(dst, `"account_id":`...)
		if dst, err = appendString(dst, string(account)); err != nil {
			return nil, err
		}
		sep = ','
	}
	if payment != "" {
		dst = append(dst, sep)
		dst = append(dst, `"payment_id":`...)
		if dst, err = appendString(dst, string(payment)); err != nil {
			return nil, err
		}
		sep = ','
	}
	dst = append(dst, sep)
	dst = append(dst, `"amount":`...)
	if dst, err = appendMoney(dst, amount); err != nil {
		return nil, err
	}
	dst = append(dst, `,"posted_after_minor":"`...)
	dst = strconv.AppendInt(dst, postedAfter, 10)
	return append(dst, `"}`...), nil
}

// appendPaymentTransferred appends the payload of ledger.payment.transferred.
func appendPaymentTransferred(dst []byte, e *PaymentTransferred) ([]byte, error) {
	if dst == nil {
		// The fixed text and the amount's integers are under 176 bytes.
		size := 176 + len(e.PaymentID) + len(e.Source) + len(e.Destination) + len(e.Amount.Asset.Code) +
			len(e.Reference) + len(e.Fingerprint)
		for k, v := range e.Metadata {
			size += len(k) + len(v) + 6 // quotes, colon, comma
		}
		dst = make([]byte, 0, size)
	}
	var err error
	sep := byte('{')
	field := func(name, value string) {
		if value == "" || err != nil {
			return
		}
		dst = append(dst, sep)
		dst = append(dst, '"')
		dst = append(dst, name...)
		dst = append(dst, '"', ':')
		dst, err = appendString(dst, value)
		sep = ','
	}
	field("payment_id", string(e.PaymentID))
	field("source", string(e.Source))
	field("destination", string(e.Destination))
	if err != nil {
		return nil, err
	}
	dst = append(dst, sep)
	dst = append(dst, `"amount":`...)
	if dst, err = appendMoney(dst, e.Amount); err != nil {
		return nil, err
	}
	sep = ','
	field("reference", e.Reference)
	if err != nil {
		return nil, err
	}
	if len(e.Metadata) > 0 {
		dst = append(dst, `,"metadata":`...)
		if dst, err = appendStringMap(dst, e.Metadata); err != nil {
			return nil, err
		}
	}
	field("fingerprint", e.Fingerprint)
	if err != nil {
		return nil, err
	}
	return append(dst, '}'), nil
}

// appendMoney appends a wireMoney object.
func appendMoney(dst []byte, m Money) ([]byte, error) {
	dst = append(dst, `{"minor":"`...)
	dst = strconv.AppendInt(dst, m.Minor, 10)
	dst = append(dst, `","asset":{"code":`...)
	dst, err := appendString(dst, m.Asset.Code)
	if err != nil {
		return nil, err
	}
	dst = append(dst, `,"scale":`...)
	dst = strconv.AppendUint(dst, uint64(m.Asset.Scale), 10)
	return append(dst, '}', '}'), nil
}

// appendStringMap appends a JSON object with the map's keys in ascending byte order, as
// encoding/json sorts them.
func appendStringMap(dst []byte, m map[string]string) ([]byte, error) {
	// Metadata is bounded by Decide (a few dozen keys), so sorting a copy of the keys is
	// cheap; this runs only for payments that carry metadata.
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var err error
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		if dst, err = appendString(dst, k); err != nil {
			return nil, err
		}
		dst = append(dst, ':')
		if dst, err = appendString(dst, m[k]); err != nil {
			return nil, err
		}
	}
	return append(dst, '}'), nil
}

// appendString appends s as a JSON string. Printable ASCII other than the characters
// encoding/json escapes (the quote, the backslash, and <, > and & for HTML safety) is
// written as is; anything else goes through encoding/json, so that control characters,
// invalid UTF-8 and U+2028/U+2029 come out exactly as json.Marshal writes them.
func appendString(dst []byte, s string) ([]byte, error) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, err := json.Marshal(s)
			if err != nil {
				return nil, err
			}
			return append(dst, b...), nil
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"'), nil
}
