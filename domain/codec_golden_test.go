package domain_test

import (
	"bufio"
	"bytes"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/securepay/securepay/domain"
)

const eventsGolden = "testdata/events.golden"

// eventsGoldenHeader opens the golden file; it says why the file must not simply be
// regenerated.
const eventsGoldenHeader = `# Golden encodings of SecurePay events: one event of each type, exactly as
# domain.EncodeEvent writes it and the event store keeps and hashes it.
# One event per line: its versioned name, one space, then the payload bytes as stored.
#
# Auditors decode and hash these bytes with their own code (docs/EVENTS.md). A changed
# line is a changed persisted format and a BREAKING CHANGE FOR AUDITORS: a new payload
# shape gets a new versioned name, while the old name keeps its bytes and its decoder.
# Regenerate (go test ./domain -run TestEventEncodingGolden -update) only for a new name.
`

// goldenEvents are the inputs of the golden file: their own, so that no other fixture's
// change moves the pinned bytes. Between them they use every event type once, both
// encoders (the hand-written one of the transfer events and encoding/json), optional
// fields present and absent, negative balances, and strings that JSON must escape:
// quotes, <, > and & (escaped for HTML safety), U+2028, and multi-byte UTF-8.
func goldenEvents() []domain.Event {
	usd := domain.Asset{Code: "USD", Scale: 2}
	eur := domain.Asset{Code: "EUR", Scale: 2}
	jpy := domain.Asset{Code: "JPY", Scale: 0}
	fp := "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	tricky := "Café \"Zum Löwen\" <Nr. 7> & Co — 東京 ☕"
	return []domain.Event{
		domain.AccountOpened{AccountID: "acc-merchant-1", Asset: eur, Kind: domain.KindMerchant, CreditLimit: 250000,
			Metadata: domain.Metadata{"tier": "gold", "city": "Zürich"}, Fingerprint: fp},
		domain.AccountFrozen{AccountID: "acc-merchant-1", Reason: "chargeback review <KYC> & AML"},
		domain.AccountUnfrozen{AccountID: "acc-merchant-1"},
		domain.AccountClosed{AccountID: "acc-old-9"},
		domain.AccountDebited{AccountID: "acc-alice", PaymentID: "pay-1", Amount: domain.Money{Asset: usd, Minor: 1999}, PostedAfter: 8001},
		domain.AccountCredited{AccountID: "acc-overdraft", PaymentID: "pay-1", Amount: domain.Money{Asset: usd, Minor: 1999}, PostedAfter: -1999},
		domain.HoldPlaced{AccountID: "acc-alice", PaymentID: "auth-1", Amount: domain.Money{Asset: usd, Minor: 5000}, HeldAfter: 5000},
		domain.HoldCaptured{AccountID: "acc-alice", PaymentID: "auth-1", Amount: domain.Money{Asset: usd, Minor: 5000}, PostedAfter: 3001, HeldAfter: 0, Closes: true},
		domain.HoldReleased{AccountID: "acc-alice", PaymentID: "auth-2", Amount: domain.Money{Asset: usd, Minor: 700}, HeldAfter: 0, Reason: domain.ReleaseExpired},
		domain.PaymentTransferred{PaymentID: "pay-1", Source: "acc-alice", Destination: "acc-overdraft", Amount: domain.Money{Asset: usd, Minor: 1999},
			Reference: tricky, Metadata: domain.Metadata{"order": "ord-1", "dept": "R&D", "note": "line\u2028separator"}, Fingerprint: fp},
		domain.PaymentBatchTransferred{PaymentID: "batch-1", Legs: []domain.Leg{
			{Source: "acc-alice", Destination: "acc-merchant-1", Amount: domain.Money{Asset: eur, Minor: 100}},
			{Source: "acc-bank-jp", Destination: "acc-yen", Amount: domain.Money{Asset: jpy, Minor: 9000000}}},
			Reference: "payroll 2026-03", Fingerprint: fp},
		domain.PaymentAuthorised{PaymentID: "auth-1", Source: "acc-alice", Destination: "acc-merchant-1", Amount: domain.Money{Asset: usd, Minor: 5000},
			ExpiresAt: time.Date(2026, 3, 14, 15, 9, 26, 535897000, time.UTC), Reference: tricky,
			Metadata: domain.Metadata{"channel": "web"}, Fingerprint: fp},
		domain.PaymentCaptured{PaymentID: "auth-1", CaptureID: "cap-1", Amount: domain.Money{Asset: usd, Minor: 5000}, CapturedTotal: 5000, Fingerprint: fp},
		domain.PaymentVoided{PaymentID: "auth-3", Released: domain.Money{Asset: usd, Minor: 1}},
		domain.PaymentExpired{PaymentID: "auth-2", Released: domain.Money{Asset: usd, Minor: 700}},
		domain.PaymentRefunded{PaymentID: "pay-1", RefundID: "ref-1", Amount: domain.Money{Asset: usd, Minor: 999}, RefundedTotal: 999, Fingerprint: fp},
	}
}

// TestEventEncodingGolden pins the stored bytes of every event type: the encoder must
// write exactly the golden line, and the golden line must decode to the same event (bytes
// stored long ago still load). Comparing two computations of ours could not catch a change
// that moves both; this file can.
func TestEventEncodingGolden(t *testing.T) {
	var out bytes.Buffer
	out.WriteString(eventsGoldenHeader)
	covered := map[string]bool{}
	for _, e := range goldenEvents() {
		name, data, err := domain.EncodeEvent(e)
		if err != nil {
			t.Fatalf("EncodeEvent(%T): %v", e, err)
		}
		if bytes.ContainsAny(data, "\n\r") {
			t.Fatalf("%s encodes to more than one line: %q", name, data)
		}
		covered[name] = true
		out.WriteString(name + " ")
		out.Write(data)
		out.WriteByte('\n')
	}
	for _, n := range domain.KnownEventNames() {
		if n != domain.NameAccountOpenedV1 && !covered[n] {
			t.Errorf("no golden event of type %s: add one to goldenEvents and run with -update", n)
		}
	}
	// The package has one -update flag (docs_test.go); choose what it rewrites with -run.
	if *updateDocs {
		if err := os.WriteFile(eventsGolden, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewrote %s: a changed line breaks every auditor's decoder", eventsGolden)
		return
	}

	raw, err := os.ReadFile(eventsGolden)
	if err != nil {
		t.Fatalf("%v (create it with -update)", err)
	}
	want := goldenEvents()
	sc := bufio.NewScanner(bytes.NewReader(raw))
	i := 0
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, payload, ok := strings.Cut(line, " ")
		if !ok || i >= len(want) {
			t.Fatalf("%s: unexpected line %q", eventsGolden, line)
		}
		e := want[i]
		i++
		if got, data, _ := domain.EncodeEvent(e); got != name || string(data) != payload {
			t.Errorf("%T no longer encodes to its golden bytes: the persisted format changed and auditors' decoders break\n golden %s %s\n now    %s %s", e, name, payload, got, data)
		}
		back, err := domain.DecodeEvent(name, []byte(payload))
		if err != nil {
			t.Errorf("golden %s no longer decodes: %v", name, err)
			continue
		}
		if !reflect.DeepEqual(back, e) {
			t.Errorf("golden %s decodes to\n %#v\nwant\n %#v", name, back, e)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if i != len(want) {
		t.Errorf("%s holds %d events, goldenEvents %d: run with -update after adding an event type", eventsGolden, i, len(want))
	}
	if !bytes.Equal(raw, out.Bytes()) && !t.Failed() {
		t.Errorf("%s differs from what the encoder writes outside the event lines (header or layout); run with -update", eventsGolden)
	}
}
