package domain_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/securepay/securepay/domain"
)

// exampleEvents holds one event of every current type, with every field set. The codec
// round trip and docs/EVENTS.md both use it.
func exampleEvents() []domain.Event {
	fp := strings.Repeat("ab", 32)
	meta := domain.Metadata{"order": "ord-1001", "channel": "web"}
	return []domain.Event{
		domain.AccountOpened{AccountID: "acc-merchant-7", Asset: usd, Kind: domain.KindMerchant, CreditLimit: 50000,
			Metadata: domain.Metadata{"tier": "gold"}, Fingerprint: fp},
		domain.AccountFrozen{AccountID: "acc-merchant-7", Reason: "fraud review"},
		domain.AccountUnfrozen{AccountID: "acc-merchant-7"},
		domain.AccountClosed{AccountID: "acc-merchant-7"},
		domain.AccountDebited{AccountID: "acc-alice", PaymentID: "pay-42", Amount: usdMoney(1234), PostedAfter: 8766},
		domain.AccountCredited{AccountID: "acc-merchant-7", PaymentID: "pay-42", Amount: usdMoney(1234), PostedAfter: -1234},
		domain.HoldPlaced{AccountID: "acc-alice", PaymentID: "auth-9", Amount: usdMoney(5000), HeldAfter: 5000},
		domain.HoldCaptured{AccountID: "acc-alice", PaymentID: "auth-9", Amount: usdMoney(3000), PostedAfter: 5766, HeldAfter: 2000},
		domain.HoldReleased{AccountID: "acc-alice", PaymentID: "auth-9", Amount: usdMoney(2000), HeldAfter: 0, Reason: domain.ReleaseVoided},
		domain.PaymentTransferred{PaymentID: "pay-42", Source: "acc-alice", Destination: "acc-merchant-7", Amount: usdMoney(1234),
			Reference: "invoice 2026-001", Metadata: meta, Fingerprint: fp},
		domain.PaymentBatchTransferred{PaymentID: "batch-3", Legs: []domain.Leg{
			leg("acc-alice", "acc-merchant-7", usdMoney(1000)), leg("acc-bank-jp", "acc-yen", jpyMoney(500))},
			Reference: "payroll", Metadata: meta, Fingerprint: fp},
		domain.PaymentAuthorised{PaymentID: "auth-9", Source: "acc-alice", Destination: "acc-merchant-7", Amount: usdMoney(5000),
			ExpiresAt: time.Date(2026, 12, 24, 18, 30, 0, 123000, time.UTC), Reference: "hotel", Metadata: meta, Fingerprint: fp},
		domain.PaymentCaptured{PaymentID: "auth-9", CaptureID: "cap-1", Amount: usdMoney(3000), CapturedTotal: 3000, Fingerprint: fp},
		domain.PaymentVoided{PaymentID: "auth-9", Released: usdMoney(2000)},
		domain.PaymentExpired{PaymentID: "auth-10", Released: domain.Money{Asset: btc, Minor: 150000000}},
		domain.PaymentRefunded{PaymentID: "pay-42", RefundID: "ref-1", Amount: usdMoney(234), RefundedTotal: 234, Fingerprint: fp},
	}
}

// Events written with zero-valued optional fields, which encode by leaving the field out.
func sparseEvents() []domain.Event {
	return []domain.Event{
		domain.AccountOpened{AccountID: "a", Asset: jpy, Kind: domain.KindExternal},
		domain.AccountFrozen{AccountID: "a"},
		domain.AccountDebited{AccountID: "a", PaymentID: "p", Amount: jpyMoney(1), PostedAfter: 0},
		domain.HoldCaptured{AccountID: "a", PaymentID: "p", Amount: jpyMoney(1), PostedAfter: -1, HeldAfter: 0, Closes: true},
		domain.HoldReleased{AccountID: "a", PaymentID: "p", Amount: jpyMoney(1), HeldAfter: 7, Reason: domain.ReleaseExpired},
		domain.PaymentTransferred{PaymentID: "p", Source: "a", Destination: "b", Amount: jpyMoney(1)},
	}
}

func TestCodecRoundTripEveryEvent(t *testing.T) {
	seen := map[string]bool{}
	for _, e := range append(exampleEvents(), sparseEvents()...) {
		name, data, err := domain.EncodeEvent(e)
		if err != nil {
			t.Fatalf("EncodeEvent(%T): %v", e, err)
		}
		if name != e.Name() {
			t.Fatalf("EncodeEvent(%T) named it %q, the event says %q", e, name, e.Name())
		}
		seen[name] = true
		got, err := domain.DecodeEvent(name, data)
		if err != nil {
			t.Fatalf("DecodeEvent(%s, %s): %v", name, data, err)
		}
		if !reflect.DeepEqual(got, e) {
			t.Fatalf("round trip of %s changed the event:\n in  %#v\n out %#v\n json %s", name, e, got, data)
		}
		// Amounts travel as strings so that no JSON parser rounds them.
		if strings.Contains(string(data), `"minor":`) && !strings.Contains(string(data), `"minor":"`) {
			t.Fatalf("%s: minor units must be JSON strings: %s", name, data)
		}
	}
	for _, n := range domain.KnownEventNames() {
		if n != domain.NameAccountOpenedV1 && !seen[n] {
			t.Errorf("no round-trip case for %s", n)
		}
	}
}

// The first schema of ledger.account.opened named the asset by currency code alone. Events
// stored under it must still load, with the scale the code implies.
func TestDecodeAccountOpenedV1Upcast(t *testing.T) {
	cases := []struct {
		stored string
		want   domain.AccountOpened
	}{
		{`{"account_id":"acc-1","currency":"JPY","kind":"merchant","credit_limit_minor":"0"}`,
			domain.AccountOpened{AccountID: "acc-1", Asset: jpy, Kind: domain.KindMerchant}},
		{`{"account_id":"acc-2","currency":"USD","kind":"customer","credit_limit_minor":"2500","metadata":{"tier":"gold"},"fingerprint":"f00d"}`,
			domain.AccountOpened{AccountID: "acc-2", Asset: usd, Kind: domain.KindCustomer, CreditLimit: 2500,
				Metadata: domain.Metadata{"tier": "gold"}, Fingerprint: "f00d"}},
		{`{"account_id":"acc-3","currency":"BTC","kind":"external"}`,
			domain.AccountOpened{AccountID: "acc-3", Asset: btc, Kind: domain.KindExternal}},
	}
	for _, c := range cases {
		got, err := domain.DecodeEvent(domain.NameAccountOpenedV1, []byte(c.stored))
		if err != nil {
			t.Fatalf("decode v1 %s: %v", c.stored, err)
		}
		if !reflect.DeepEqual(got, domain.Event(c.want)) {
			t.Fatalf("decode v1 %s:\n got  %#v\n want %#v", c.stored, got, c.want)
		}
		// The upcast event is a current event: it encodes under the current name, and the
		// account it opens behaves like any other.
		name, data, err := domain.EncodeEvent(got)
		if err != nil || name != domain.NameAccountOpened {
			t.Fatalf("re-encoding the upcast event: %s, %v; want %s", name, err, domain.NameAccountOpened)
		}
		again, err := domain.DecodeEvent(name, data)
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Fatalf("v2 round trip of the upcast event: %#v, %v", again, err)
		}
		acc := domain.EvolveAccount(domain.Account{}, got)
		if acc.Asset != c.want.Asset || acc.Status != domain.AccountStatusOpen || acc.Version != 1 {
			t.Fatalf("folding the upcast event gave %+v", acc)
		}
	}
}

func TestDecodeEventRefuses(t *testing.T) {
	cases := []struct {
		name, data string
	}{
		{"ledger.account.opened.v3", `{"account_id":"a","asset":{"code":"USD","scale":2},"kind":"customer"}`},
		{"", `{}`},
		{"LEDGER.ACCOUNT.FROZEN.V1", `{"account_id":"a"}`},
		{domain.NameAccountOpenedV1, `{"account_id":"a","currency":"POINTS","kind":"customer"}`}, // scale not implied
		{domain.NameAccountOpenedV1, `{"account_id":"a","currency":"USD","kind":"customer","asset":{"code":"USD","scale":2}}`},
		{domain.NameAccountOpenedV1, `{"currency":"USD","kind":"customer"}`},
		{domain.NameAccountOpenedV1, `{"account_id":"a","currency":"USD","kind":"shop"}`},
		{domain.NameAccountOpenedV1, `not json`},
		{domain.NameAccountOpened, `{"account_id":"a","asset":{"code":"USD","scale":3},"kind":"customer"}`},
		{domain.NameAccountOpened, `{"account_id":"a","kind":"customer"}`},
		{domain.NameAccountOpened, `{"account_id":"a","asset":{"code":"USD","scale":2},"kind":""}`},
		{domain.NameAccountOpened, `{"account_id":"a","currency":"USD","kind":"customer"}`}, // v1 shape under v2 name
		{domain.NameAccountOpened, `{"account_id":"a","asset":{"code":"USD","scale":2},"kind":"customer","credit_limit_minor":12}`},
		{domain.NameAccountFrozen, `{}`},
		{domain.NameAccountFrozen, `{"account_id":"a","surprise":1}`},
		{domain.NameAccountFrozen, `[]`},
		{domain.NameAccountFrozen, ``},
		{domain.NameAccountFrozen, `{"account_id":"a"`},
		{domain.NameAccountFrozen, `{"account_id":"a"} {"account_id":"b"}`},
		{domain.NameAccountFrozen, `{"account_id":"a"}garbage`},
		{domain.NameAccountUnfrozen, `{"account_id":""}`},
		// One reading only: encoding/json alone would take the last of two keys, and match
		// keys in any case, where jq and other readers see something else.
		{domain.NameAccountFrozen, `{"account_id":"a","account_id":"b"}`},
		{domain.NameAccountFrozen, `{"Account_ID":"a"}`},
		{domain.NameAccountFrozen, `{"\u0061ccount_id":"a"}`}, // an escape must not disguise a key
		{domain.NameAccountFrozen, `{"account_id":"a","ACCOUNT_ID":"b"}`},
		{domain.NamePaymentTransfer, `{"payment_id":"p","source":"a","destination":"b","amount":{"minor":"5","minor":"6","asset":{"code":"USD","scale":2}}}`},
		{domain.NamePaymentTransfer, `{"payment_id":"p","source":"a","destination":"b","amount":{"minor":"5","asset":{"code":"USD","scale":2}},"metadata":{"k":"1","k":"2"}}`},
		{domain.NameAccountOpenedV1, `{"account_id":"a","currency":"USD","Currency":"EUR","kind":"customer"}`},
		{domain.NameAccountClosed, `{"account_id":7}`},
		{domain.NameAccountDebited, `{"account_id":"a","payment_id":"p","amount":{"minor":"5","asset":{"code":"USD","scale":2}}}`}, // no posted_after
		{domain.NameAccountDebited, `{"account_id":"a","payment_id":"p","amount":{"minor":5,"asset":{"code":"USD","scale":2}},"posted_after_minor":"0"}`},
		{domain.NameAccountDebited, `{"account_id":"a","payment_id":"p","amount":{"minor":"0","asset":{"code":"USD","scale":2}},"posted_after_minor":"0"}`},
		{domain.NameAccountDebited, `{"account_id":"a","payment_id":"p","amount":{"minor":"-5","asset":{"code":"USD","scale":2}},"posted_after_minor":"0"}`},
		{domain.NameAccountDebited, `{"account_id":"a","payment_id":"p","amount":{"minor":"1.5","asset":{"code":"USD","scale":2}},"posted_after_minor":"0"}`},
		{domain.NameAccountDebited, `{"account_id":"a","payment_id":"p","amount":{"minor":"99999999999999999999","asset":{"code":"USD","scale":2}},"posted_after_minor":"0"}`},
		{domain.NameAccountCredited, `{"account_id":"a","amount":{"minor":"5","asset":{"code":"USD","scale":2}},"posted_after_minor":"5"}`},
		{domain.NameHoldPlaced, `{"account_id":"a","payment_id":"p","amount":{"minor":"5","asset":{"code":"USD","scale":2}}}`},
		{domain.NameHoldCaptured, `{"account_id":"a","payment_id":"p","amount":{"minor":"5","asset":{"code":"USD","scale":2}},"held_after_minor":"0"}`},
		{domain.NameHoldReleased, `{"account_id":"a","payment_id":"p","amount":{"minor":"5","asset":{"code":"USD","scale":2}},"held_after_minor":"0","reason":"lost"}`},
		{domain.NamePaymentTransfer, `{"payment_id":"p","source":"a","amount":{"minor":"5","asset":{"code":"USD","scale":2}}}`},
		{domain.NamePaymentBatch, `{"payment_id":"p","legs":[]}`},
		{domain.NamePaymentBatch, `{"payment_id":"p","legs":[{"source":"a","destination":"b","amount":{"minor":"0","asset":{"code":"USD","scale":2}}}]}`},
		{domain.NamePaymentBatch, `{"payment_id":"p","legs":[{"source":"a","amount":{"minor":"1","asset":{"code":"USD","scale":2}}}]}`},
		{domain.NamePaymentAuthorise, `{"payment_id":"p","source":"a","destination":"b","amount":{"minor":"5","asset":{"code":"USD","scale":2}}}`},
		{domain.NamePaymentAuthorise, `{"payment_id":"p","source":"a","destination":"b","amount":{"minor":"5","asset":{"code":"USD","scale":2}},"expires_at":"tomorrow"}`},
		{domain.NamePaymentCaptured, `{"payment_id":"p","amount":{"minor":"5","asset":{"code":"USD","scale":2}}}`},
		{domain.NamePaymentVoided, `{"payment_id":"p"}`},
		{domain.NamePaymentExpired, `{"released":{"minor":"5","asset":{"code":"USD","scale":2}}}`},
		{domain.NamePaymentRefunded, `{"payment_id":"p","amount":{"minor":"5","asset":{"code":"USD","scale":2}}}`},
	}
	for _, c := range cases {
		if e, err := domain.DecodeEvent(c.name, []byte(c.data)); err == nil {
			t.Errorf("DecodeEvent(%q, %s) = %#v; want an error", c.name, c.data, e)
		}
	}
}

// An empty metadata object reads as no metadata, which is how Decide records it, so that
// decode(encode(e)) == e for every event Decide writes.
func TestDecodeEmptyMetadataIsNil(t *testing.T) {
	e, err := domain.DecodeEvent(domain.NamePaymentTransfer,
		[]byte(`{"payment_id":"p","source":"a","destination":"b","amount":{"minor":"5","asset":{"code":"USD","scale":2}},"metadata":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	if m := e.(domain.PaymentTransferred).Metadata; m != nil {
		t.Fatalf("empty metadata decoded as %#v, want nil", m)
	}
}

// The duplicate-key check switches from a list to a map for objects with many keys; both
// ways must find duplicates, and keys repeated in different objects are fine.
func TestDecodeDuplicateKeysInLargeObjects(t *testing.T) {
	var entries []string
	for i := range 40 {
		entries = append(entries, fmt.Sprintf(`"k%02d":"v"`, i))
	}
	payload := func(meta []string) []byte {
		return []byte(`{"payment_id":"p","source":"a","destination":"b","amount":{"minor":"5","asset":{"code":"USD","scale":2}},"metadata":{` +
			strings.Join(meta, ",") + `},"reference":"r"}`)
	}
	e, err := domain.DecodeEvent(domain.NamePaymentTransfer, payload(entries))
	if err != nil {
		t.Fatalf("40 distinct metadata keys: %v", err)
	}
	if got := len(e.(domain.PaymentTransferred).Metadata); got != 40 {
		t.Fatalf("decoded %d metadata entries, want 40", got)
	}
	for _, dupAt := range []int{1, 31, 32, 39} {
		meta := append(append([]string(nil), entries...), fmt.Sprintf(`"k%02d":"again"`, dupAt))
		if _, err := domain.DecodeEvent(domain.NamePaymentTransfer, payload(meta)); err == nil {
			t.Errorf("metadata with key k%02d twice among 41 entries was accepted", dupAt)
		}
	}
	// "reference" after the metadata object belongs to the outer object again.
	dupOuter := []byte(`{"payment_id":"p","source":"a","destination":"b","amount":{"minor":"5","asset":{"code":"USD","scale":2}},"metadata":{"reference":"x"},"reference":"r","reference":"s"}`)
	if _, err := domain.DecodeEvent(domain.NamePaymentTransfer, dupOuter); err == nil {
		t.Errorf("outer key written twice after a nested object was accepted")
	}
	sameInner := []byte(`{"payment_id":"p","source":"a","destination":"b","amount":{"minor":"5","asset":{"code":"USD","scale":2}},"metadata":{"reference":"x","payment_id":"y"},"reference":"r"}`)
	if _, err := domain.DecodeEvent(domain.NamePaymentTransfer, sameInner); err != nil {
		t.Errorf("a metadata key equal to an outer field name was refused: %v", err)
	}
}

func TestKnownEventNames(t *testing.T) {
	names := domain.KnownEventNames()
	slices.Sort(names)
	want := []string{domain.NameAccountOpened, domain.NameAccountOpenedV1, domain.NameAccountFrozen, domain.NameAccountUnfrozen,
		domain.NameAccountClosed, domain.NameAccountDebited, domain.NameAccountCredited, domain.NameHoldPlaced, domain.NameHoldCaptured,
		domain.NameHoldReleased, domain.NamePaymentTransfer, domain.NamePaymentBatch, domain.NamePaymentAuthorise,
		domain.NamePaymentCaptured, domain.NamePaymentVoided, domain.NamePaymentExpired, domain.NamePaymentRefunded}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("KnownEventNames() = %v\nwant %v", names, want)
	}
	for _, n := range names {
		if !strings.HasPrefix(n, "ledger.") || !strings.Contains(n, ".v") {
			t.Errorf("event name %q does not follow ledger.<aggregate>.<fact>.v<N>", n)
		}
	}
}

func FuzzDecodeEvent(f *testing.F) {
	for _, e := range append(exampleEvents(), sparseEvents()...) {
		name, data, err := domain.EncodeEvent(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(name, data)
	}
	f.Add(domain.NameAccountOpenedV1, []byte(`{"account_id":"acc-1","currency":"JPY","kind":"merchant","credit_limit_minor":"0"}`))
	f.Add(domain.NameAccountFrozen, []byte(`{"account_id":"a"}garbage`))
	f.Add(domain.NamePaymentAuthorise, []byte(`{"payment_id":"p","source":"a","destination":"b","amount":{"minor":"5","asset":{"code":"USD","scale":2}},"expires_at":"0000-01-01T00:00:00+01:00"}`))
	f.Fuzz(func(t *testing.T, name string, data []byte) {
		e, err := domain.DecodeEvent(name, data)
		if err != nil {
			return
		}
		if e == nil {
			t.Fatalf("DecodeEvent(%q, %q) returned no event and no error", name, data)
		}
		name2, data2, err := domain.EncodeEvent(e)
		if err != nil {
			t.Fatalf("DecodeEvent(%q, %q) accepted %#v, which does not encode: %v", name, data, e, err)
		}
		if !json.Valid(data2) {
			t.Fatalf("EncodeEvent wrote invalid JSON %q", data2)
		}
		e2, err := domain.DecodeEvent(name2, data2)
		if err != nil {
			t.Fatalf("re-encoded %q %s does not decode: %v", name2, data2, err)
		}
		if !reflect.DeepEqual(e, e2) {
			t.Fatalf("decode(encode(decode(x))) != decode(x):\n first  %#v\n second %#v\n input %q", e, e2, data)
		}
	})
}

// Decoding is on the replay path of every aggregate load and projector, so its cost matters.
func BenchmarkDecodeEvent(b *testing.B) {
	name, data, err := domain.EncodeEvent(domain.AccountCredited{AccountID: "acc-merchant-7", PaymentID: "pay-42", Amount: usdMoney(1234), PostedAfter: 99999})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := domain.DecodeEvent(name, data); err != nil {
			b.Fatal(err)
		}
	}
}
