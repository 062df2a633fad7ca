package domain_test

import (
	"bytes"
	"math"
	"strings"
	"testing"

	"github.com/securepay/securepay/domain"
)

// awkwardEvents are the hot events with values that exercise every branch of the
// hand-made encoder: empty optional fields, extreme integers, and strings that
// encoding/json escapes (HTML characters, quotes, control characters, invalid UTF-8,
// U+2028) or passes through (other non-ASCII).
func awkwardEvents() []domain.Event {
	odd := []string{"", "a<b>&c", `q"uote\back`, "tab\tnl\nnul\x00", "bad\xffutf8", "line\u2028sep", "café ü 日本", "\x7f"}
	big := domain.Money{Asset: domain.Asset{Code: "X<Y", Scale: 255}, Minor: math.MaxInt64}
	var out []domain.Event
	for _, s := range odd {
		out = append(out,
			domain.AccountDebited{AccountID: domain.AccountID(s), PaymentID: "p", Amount: big, PostedAfter: math.MinInt64},
			domain.AccountCredited{AccountID: "a", PaymentID: domain.PaymentID(s), Amount: domain.Money{Asset: domain.Asset{Code: s}}, PostedAfter: -1},
			domain.PaymentTransferred{PaymentID: domain.PaymentID(s), Source: domain.AccountID(s), Destination: "d", Amount: big,
				Reference: s, Metadata: domain.Metadata{s: s, "z": "1", "a" + s: ""}, Fingerprint: s},
		)
	}
	out = append(out,
		domain.AccountDebited{},
		domain.AccountCredited{},
		domain.PaymentTransferred{},
		domain.PaymentTransferred{PaymentID: "p", Metadata: domain.Metadata{}},
	)
	return out
}

// TestFastEncodingMatchesJSON proves, for every event type, that EncodeEvent writes the
// same name and bytes as json.Marshal of the wire struct: the hand-made encoders of the
// hot events may not change a stored byte (docs/EVENTS.md and auditors rely on them).
func TestFastEncodingMatchesJSON(t *testing.T) {
	events := append(append(exampleEvents(), sparseEvents()...), awkwardEvents()...)
	seen := map[string]bool{}
	for i, e := range events {
		name, got, err := domain.EncodeEvent(e)
		if err != nil {
			t.Fatalf("case %d: EncodeEvent(%#v): %v", i, e, err)
		}
		wantName, want, err := domain.EncodeEventReflect(e)
		if err != nil {
			t.Fatalf("case %d: encoding/json path for %#v: %v", i, e, err)
		}
		if name != wantName || !bytes.Equal(got, want) {
			t.Fatalf("case %d (%T): EncodeEvent wrote\n %s %s\nencoding/json writes\n %s %s", i, e, name, got, wantName, want)
		}
		seen[name] = true
	}
	for _, n := range domain.KnownEventNames() {
		if n != domain.NameAccountOpenedV1 && !seen[n] {
			t.Errorf("no case for %s", n)
		}
	}
}

// The hot events cost one allocation each: the payload itself.
func TestFastEncodingAllocations(t *testing.T) {
	for _, e := range []domain.Event{
		domain.AccountDebited{AccountID: "payer-1", PaymentID: "pay-1", Amount: usdMoney(1234), PostedAfter: 10},
		domain.AccountCredited{AccountID: "payer-2", PaymentID: "pay-1", Amount: usdMoney(1234), PostedAfter: 10},
		domain.PaymentTransferred{PaymentID: "pay-1", Source: "payer-1", Destination: "payer-2", Amount: usdMoney(1234),
			Reference: "r", Fingerprint: strings.Repeat("ab", 32)},
	} {
		allocs := testing.AllocsPerRun(100, func() {
			if _, _, err := domain.EncodeEvent(e); err != nil {
				t.Fatal(err)
			}
		})
		if allocs > 1 {
			t.Errorf("EncodeEvent(%T) made %.1f allocations, want at most 1", e, allocs)
		}
	}
}

// FuzzFastEncodingMatchesJSON compares the hand-made encoders with encoding/json on
// arbitrary field values.
func FuzzFastEncodingMatchesJSON(f *testing.F) {
	f.Add(uint8(0), "acc-alice", "pay-42", "USD", uint8(2), int64(1234), int64(8766), "invoice 1", strings.Repeat("ab", 32), "order", "ord-1")
	f.Add(uint8(1), "", "", "", uint8(0), int64(0), int64(math.MinInt64), "", "", "", "")
	f.Add(uint8(2), "a<b", "p\"q", "日本", uint8(255), int64(math.MaxInt64), int64(-1), "x\u2028y", "\xff", "k\n", "v\\")
	f.Fuzz(func(t *testing.T, kind uint8, a, b, code string, scale uint8, minor, after int64, ref, fp, mk, mv string) {
		amount := domain.Money{Asset: domain.Asset{Code: code, Scale: scale}, Minor: minor}
		var e domain.Event
		switch kind % 3 {
		case 0:
			e = domain.AccountDebited{AccountID: domain.AccountID(a), PaymentID: domain.PaymentID(b), Amount: amount, PostedAfter: after}
		case 1:
			e = domain.AccountCredited{AccountID: domain.AccountID(a), PaymentID: domain.PaymentID(b), Amount: amount, PostedAfter: after}
		default:
			var meta domain.Metadata
			if mk != "" || mv != "" {
				meta = domain.Metadata{mk: mv, ref: fp, a: b}
			}
			e = domain.PaymentTransferred{PaymentID: domain.PaymentID(b), Source: domain.AccountID(a), Destination: domain.AccountID(ref),
				Amount: amount, Reference: ref, Metadata: meta, Fingerprint: fp}
		}
		name, got, err := domain.EncodeEvent(e)
		if err != nil {
			t.Fatalf("EncodeEvent(%#v): %v", e, err)
		}
		wantName, want, err := domain.EncodeEventReflect(e)
		if err != nil {
			t.Fatalf("encoding/json path for %#v: %v", e, err)
		}
		if name != wantName || !bytes.Equal(got, want) {
			t.Fatalf("EncodeEvent(%#v) wrote\n %s %q\nencoding/json writes\n %s %q", e, name, got, wantName, want)
		}
	})
}

func BenchmarkEncodeTransferEvents(b *testing.B) {
	events := []domain.Event{
		domain.PaymentTransferred{PaymentID: "b-123456", Source: "payer-17", Destination: "merchant-hot", Amount: usdMoney(499),
			Fingerprint: strings.Repeat("ab", 32)},
		domain.AccountDebited{AccountID: "payer-17", PaymentID: "b-123456", Amount: usdMoney(499), PostedAfter: 1 << 50},
		domain.AccountCredited{AccountID: "merchant-hot", PaymentID: "b-123456", Amount: usdMoney(499), PostedAfter: 1 << 40},
	}
	for _, path := range []struct {
		name   string
		encode func(domain.Event) (string, []byte, error)
	}{{"fast", domain.EncodeEvent}, {"encoding-json", domain.EncodeEventReflect}} {
		b.Run(path.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				for _, e := range events {
					if _, _, err := path.encode(e); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
