package audit_test

// A real ledger, exported by SecurePay's own exporter, read with the decoder of
// docs_decoder_test.go: the export must be exactly what docs/EVENTS.md says.

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/securepay/securepay/audit"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/internal/projtest"
	"github.com/securepay/securepay/services/ledger"
)

var updateExampleLine = flag.Bool("update", false, "rewrite the example export line in docs/EVENTS.md from the exporter")

const testActor = "spiffe://securepay.dev/ns/audit/sa/docs-test"

// commandWant is what the document says one command leaves in the log.
type commandWant struct {
	what        string
	correlation string
	traceparent string
	payment     string   // the payment stream's id, "" for an account command
	types       []string // sorted
	position    uint64   // what the processor reported for the command
}

// scenario drives a real processor on a real store and remembers, per command (keyed by
// the causation id it was given), what the document says the log must show for it.
type scenario struct {
	t     *testing.T
	p     *ledger.Processor
	clock *testClock

	mu      sync.Mutex
	n       int
	want    map[string]commandWant
	nothing map[string]string // causation id -> why the command must write nothing
}

type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *testClock) Advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

func newScenario(t *testing.T, store eventstore.Store) *scenario {
	clock := &testClock{now: time.Now().UTC()}
	p, err := ledger.New(store, ledger.Config{Clock: clock.Now})
	if err != nil {
		t.Fatalf("new processor: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return &scenario{t: t, p: p, clock: clock, want: map[string]commandWant{}, nothing: map[string]string{}}
}

// expectedTypes is section 1's table of what each command writes.
func expectedTypes(cmd domain.Command) (types []string, payment string) {
	switch c := cmd.(type) {
	case domain.OpenAccount:
		return []string{"ledger.account.opened.v2"}, ""
	case domain.FreezeAccount:
		return []string{"ledger.account.frozen.v1"}, ""
	case domain.UnfreezeAccount:
		return []string{"ledger.account.unfrozen.v1"}, ""
	case domain.CloseAccount:
		return []string{"ledger.account.closed.v1"}, ""
	case domain.Transfer:
		return []string{"ledger.account.debited.v1", "ledger.account.credited.v1", "ledger.payment.transferred.v1"}, string(c.PaymentID)
	case domain.BatchTransfer:
		types = []string{"ledger.payment.batch_transferred.v1"}
		for range c.Legs {
			types = append(types, "ledger.account.debited.v1", "ledger.account.credited.v1")
		}
		return types, string(c.PaymentID)
	case domain.Authorise:
		return []string{"ledger.account.hold_placed.v1", "ledger.payment.authorised.v1"}, string(c.PaymentID)
	case domain.Capture:
		return []string{"ledger.account.hold_captured.v1", "ledger.account.credited.v1", "ledger.payment.captured.v1"}, string(c.PaymentID)
	case domain.Void:
		return []string{"ledger.account.hold_released.v1", "ledger.payment.voided.v1"}, string(c.PaymentID)
	case domain.Expire:
		return []string{"ledger.account.hold_released.v1", "ledger.payment.expired.v1"}, string(c.PaymentID)
	case domain.Refund:
		return []string{"ledger.account.debited.v1", "ledger.account.credited.v1", "ledger.payment.refunded.v1"}, string(c.PaymentID)
	}
	panic(fmt.Sprintf("expectedTypes: unknown command %T", cmd))
}

// exec runs one command with metadata as the API would give it. For every other payment
// command the correlation id is left empty, so the processor's default (the payment id) is
// what the log shows.
func (s *scenario) exec(cmd domain.Command) (ledger.Result, error) {
	s.mu.Lock()
	s.n++
	n := s.n
	s.mu.Unlock()
	types, payment := expectedTypes(cmd)
	slices.Sort(types)
	w := commandWant{what: fmt.Sprintf("%T %+v", cmd, cmd), types: types, payment: payment, correlation: payment}
	if payment == "" {
		w.correlation = string(cmd.Accounts()[0])
	}
	meta := eventstore.Metadata{Actor: testActor, CausationID: fmt.Sprintf("cmd-%05d", n)}
	if payment == "" || n%2 == 0 {
		meta.CorrelationID = w.correlation
	}
	if n%3 != 0 {
		meta.TraceParent = fmt.Sprintf("00-%032x-%016x-01", n, n)
	}
	w.traceparent = meta.TraceParent
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := s.p.Execute(ctx, ledger.Request{Command: cmd, Meta: meta})
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err != nil:
		s.nothing[meta.CausationID] = "refused: " + err.Error()
	case res.Replayed:
		s.nothing[meta.CausationID] = "replayed"
	default:
		w.position = res.Position
		s.want[meta.CausationID] = w
	}
	return res, err
}

// must runs a command that has to succeed and append.
func (s *scenario) must(cmd domain.Command) {
	s.t.Helper()
	if res, err := s.exec(cmd); err != nil || res.Replayed {
		s.t.Fatalf("%T %+v: err %v, replayed %v; want it applied", cmd, cmd, err, res.Replayed)
	}
}

var (
	usdAsset = domain.Asset{Code: "USD", Scale: 2}
	jpyAsset = domain.Asset{Code: "JPY", Scale: 0}
)

func usdMinor(n int64) domain.Money { return domain.Money{Minor: n, Asset: usdAsset} }

// writeEveryKindOfCommand runs, one at a time, every command the processor knows, in
// every outcome that appends: transfers, a multi-asset batch, captures (partial, full),
// refunds of a transfer and of an authorisation, a void and an expiry; then a retry and a
// refusal, which must append nothing.
func (s *scenario) writeEveryKindOfCommand() {
	open := func(id string, a domain.Asset, kind domain.AccountKind, limit int64) {
		s.must(domain.OpenAccount{AccountID: domain.AccountID(id), Asset: a, Kind: kind, CreditLimit: limit,
			Metadata: domain.Metadata{"tier": "test"}})
	}
	open("world", usdAsset, domain.KindExternal, 0)
	open("bank-jp", jpyAsset, domain.KindExternal, 0)
	open("merchant", usdAsset, domain.KindMerchant, 0)
	open("alice", usdAsset, domain.KindCustomer, 10_000)
	open("bob", usdAsset, domain.KindCustomer, 0)
	open("yen", jpyAsset, domain.KindCustomer, 0)
	open("short-lived", usdAsset, domain.KindCustomer, 0)
	s.must(domain.FreezeAccount{AccountID: "bob", Reason: "review"})
	s.must(domain.UnfreezeAccount{AccountID: "bob"})
	s.must(domain.CloseAccount{AccountID: "short-lived"})

	fund := domain.Transfer{PaymentID: "fund-alice", Source: "world", Destination: "alice", Amount: usdMinor(100_000)}
	s.must(fund)
	s.must(domain.Transfer{PaymentID: "fund-bob", Source: "world", Destination: "bob", Amount: usdMinor(50_000)})
	s.must(domain.Transfer{PaymentID: "buy-1", Source: "alice", Destination: "merchant", Amount: usdMinor(1234),
		Reference: "invoice 2026-001", Metadata: domain.Metadata{"order": "ord-1001"}})
	s.must(domain.BatchTransfer{PaymentID: "batch-1", Reference: "payroll", Legs: []domain.Leg{
		{Source: "alice", Destination: "bob", Amount: usdMinor(100)},
		{Source: "bank-jp", Destination: "yen", Amount: domain.Money{Minor: 500, Asset: jpyAsset}},
		{Source: "bob", Destination: "merchant", Amount: usdMinor(50)},
	}})
	expires := func() time.Time { return s.clock.Now().Add(time.Hour) }
	s.must(domain.Authorise{PaymentID: "auth-1", Source: "alice", Destination: "merchant", Amount: usdMinor(5000), ExpiresAt: expires()})
	s.must(domain.Capture{PaymentID: "auth-1", CaptureID: "cap-1", Amount: usdMinor(3000)})
	s.must(domain.Capture{PaymentID: "auth-1", CaptureID: "cap-2", Full: true})
	s.must(domain.Refund{PaymentID: "auth-1", RefundID: "ref-1", Amount: usdMinor(500)})
	s.must(domain.Authorise{PaymentID: "auth-2", Source: "alice", Destination: "merchant", Amount: usdMinor(1000), ExpiresAt: expires()})
	s.must(domain.Capture{PaymentID: "auth-2", CaptureID: "cap-1", Amount: usdMinor(400)})
	s.must(domain.Void{PaymentID: "auth-2"})
	s.must(domain.Authorise{PaymentID: "auth-3", Source: "bob", Destination: "merchant", Amount: usdMinor(700), ExpiresAt: expires()})
	s.clock.Advance(2 * time.Hour)
	s.must(domain.Expire{PaymentID: "auth-3"})
	s.must(domain.Refund{PaymentID: "buy-1", RefundID: "ref-1", Amount: usdMinor(234)})

	if res, err := s.exec(fund); err != nil || !res.Replayed {
		s.t.Fatalf("retry of %s with the same input: err %v, replayed %v; want a replay", fund.PaymentID, err, res.Replayed)
	}
	if _, err := s.exec(domain.Transfer{PaymentID: "too-much", Source: "bob", Destination: "merchant", Amount: usdMinor(1 << 40)}); err == nil {
		s.t.Fatal("a transfer far above bob's balance was accepted; want a refusal")
	}
}

// writeConcurrently runs payers in parallel against one processor, so that its batches
// hold several commands and their events interleave in the log.
func (s *scenario) writeConcurrently(payers, rounds int) {
	for i := range payers {
		id := domain.AccountID(fmt.Sprintf("payer-%02d", i))
		s.must(domain.OpenAccount{AccountID: id, Asset: usdAsset, Kind: domain.KindCustomer})
		s.must(domain.Transfer{PaymentID: domain.PaymentID("fund-" + id), Source: "world", Destination: id, Amount: usdMinor(1_000_000)})
	}
	var wg sync.WaitGroup
	errs := make(chan error, payers)
	for i := range payers {
		wg.Go(func() {
			payer := domain.AccountID(fmt.Sprintf("payer-%02d", i))
			pay := func(kind string, r int) domain.PaymentID {
				return domain.PaymentID(fmt.Sprintf("%s-%s-%03d", kind, payer, r))
			}
			for r := range rounds {
				var cmds []domain.Command
				switch r % 4 {
				case 0:
					cmds = []domain.Command{domain.Transfer{PaymentID: pay("buy", r), Source: payer, Destination: "merchant", Amount: usdMinor(int64(100 + r))}}
				case 1:
					cmds = []domain.Command{domain.BatchTransfer{PaymentID: pay("split", r), Legs: []domain.Leg{
						{Source: payer, Destination: "merchant", Amount: usdMinor(300)},
						{Source: payer, Destination: "alice", Amount: usdMinor(20)},
					}}}
				case 2:
					id := pay("hold", r)
					cmds = []domain.Command{
						domain.Authorise{PaymentID: id, Source: payer, Destination: "merchant", Amount: usdMinor(900), ExpiresAt: s.clock.Now().Add(time.Hour)},
						domain.Capture{PaymentID: id, CaptureID: "cap-1", Amount: usdMinor(600)},
						domain.Void{PaymentID: id},
					}
				case 3:
					id := pay("buy", r-3)
					cmds = []domain.Command{domain.Refund{PaymentID: id, RefundID: domain.OperationID(fmt.Sprintf("ref-%d", r)), Amount: usdMinor(10)}}
				}
				for _, c := range cmds {
					if res, err := s.exec(c); err != nil || res.Replayed {
						errs <- fmt.Errorf("%s: %T %+v: err %v, replayed %v; want it applied", payer, c, c, err, res.Replayed)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		s.t.Error(err)
	}
	if s.t.Failed() {
		s.t.FailNow()
	}
}

// TestExportMatchesEventsDoc exports a real ledger with SecurePay's exporter and checks
// every claim of docs/EVENTS.md that the log can be checked against, with the decoder of
// docs_decoder_test.go.
func TestExportMatchesEventsDoc(t *testing.T) {
	doc := readEventsDoc(t)
	store := projtest.EmbeddedStore(t)
	s := newScenario(t, store)
	s.writeEveryKindOfCommand()
	s.writeConcurrently(24, 12)

	var out bytes.Buffer
	// A small page size makes the exporter cross many page boundaries.
	n, err := audit.Export(testContext(t), store, &out, audit.ExportOptions{PageSize: 61})
	if err != nil {
		t.Fatalf("export: %v", err)
	}
	events := decodeExport(t, doc, out.Bytes())
	if uint64(len(events)) != n {
		t.Fatalf("the exporter reports %d events, its output has %d lines", n, len(events))
	}

	t.Run("chain", func(t *testing.T) { checkChain(t, events) })
	t.Run("every written type appears", func(t *testing.T) {
		seen := map[string]bool{}
		for _, ev := range events {
			seen[ev.line.Type] = true
		}
		for _, name := range doc.written {
			if !seen[name] {
				t.Errorf("%s section 5 says SecurePay writes %s; the export of a ledger that ran every command has none", eventsDocPath, name)
			}
		}
	})
	t.Run("streams", func(t *testing.T) { checkStreams(t, events) })
	t.Run("commands", func(t *testing.T) { checkCommands(t, s, events) })
	t.Run("balances", func(t *testing.T) { checkBalances(t, events) })
}

// checkCommands checks section 1's "what one command writes" against the commands the
// scenario ran, found in the log by the causation id each was given.
func checkCommands(t *testing.T, s *scenario, events []decodedEvent) {
	byCause := map[string][]decodedEvent{}
	for _, ev := range events {
		c := ev.line.Metadata.CausationID
		byCause[c] = append(byCause[c], ev)
	}
	for cause, why := range s.nothing {
		if got := byCause[cause]; len(got) > 0 {
			t.Errorf("command %s (%s) must write nothing; the log has %d events for it, the first at position %d", cause, why, len(got), got[0].line.Position)
		}
	}
	interleaved := 0
	for cause, w := range s.want {
		evs := byCause[cause]
		types := make([]string, len(evs))
		for i, ev := range evs {
			types[i] = ev.line.Type
		}
		slices.Sort(types)
		if !slices.Equal(types, w.types) {
			t.Errorf("command %s (%s): the log has the events %v; section 1 says %v", cause, w.what, types, w.types)
			continue
		}
		first, last := evs[0].line, evs[len(evs)-1].line
		for _, ev := range evs {
			l := ev.line
			m := l.Metadata
			if m.CorrelationID != w.correlation || m.Actor != testActor || m.TraceParent != w.traceparent {
				t.Errorf("command %s (%s), position %d: metadata %+v; want correlation_id %q, actor %q, traceparent %q on all its events",
					cause, w.what, l.Position, m, w.correlation, testActor, w.traceparent)
			}
			if l.RecordedAtUnixUS != first.RecordedAtUnixUS {
				t.Errorf("command %s (%s): recorded at %d (position %d) and %d (position %d); one append has one record time",
					cause, w.what, first.RecordedAtUnixUS, first.Position, l.RecordedAtUnixUS, l.Position)
			}
			if p := paymentOf(ev.payload); w.payment != "" && p != w.payment {
				t.Errorf("command %s (%s), position %d: %s names payment %q; want %q", cause, w.what, l.Position, l.Type, p, w.payment)
			}
		}
		// Between its first and last event lies only its own append: one record time.
		for pos := first.Position; pos <= last.Position; pos++ {
			if at := events[pos-1].line.RecordedAtUnixUS; at != first.RecordedAtUnixUS {
				t.Errorf("command %s (%s) spans positions %d..%d, but position %d was recorded at %d, not %d: not one append",
					cause, w.what, first.Position, last.Position, pos, at, first.RecordedAtUnixUS)
				break
			}
		}
		if w.payment != "" {
			paymentEvents := 0
			for _, ev := range evs {
				if strings.HasPrefix(ev.line.Stream, "payment-") {
					paymentEvents++
				}
			}
			if paymentEvents != 1 || last.Stream != "payment-"+w.payment {
				t.Errorf("command %s (%s): %d payment events, last event %s at position %d in %s; section 1 says exactly one, and last",
					cause, w.what, paymentEvents, last.Type, last.Position, last.Stream)
			}
		}
		if last.Position != w.position {
			t.Errorf("command %s (%s): the processor reported position %d, its last event is at %d; section 1 says they are the same",
				cause, w.what, w.position, last.Position)
		}
		if last.Position-first.Position+1 != uint64(len(evs)) {
			interleaved++
		}
	}
	// The document warns that a command's events need not be consecutive; unless some
	// were not, this test did not see the batching it is there to describe.
	if interleaved == 0 {
		t.Errorf("no command's events were interleaved with another's among %d commands; the concurrent phase did not batch, so section 1's claim went untested", len(s.want))
	}
	t.Logf("%d commands, %d of them with events interleaved with other commands'", len(s.want), interleaved)
}

// TestEventsDocExampleLine pins the example line of section 2 to what the exporter writes
// for a fixed ledger, and checks it with the auditor's decoder: an auditor can test a
// verifier on it. Run with -update to rewrite it after a deliberate format change.
func TestEventsDocExampleLine(t *testing.T) {
	at := time.Date(2026, 3, 2, 9, 30, 0, 123456000, time.UTC)
	store, err := embedded.Open(t.TempDir(), embedded.Options{Clock: func() time.Time { return at }})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { _ = store.Close() })
	var ids int
	p, err := ledger.New(store, ledger.Config{
		Clock:      func() time.Time { return at },
		NewEventID: func() string { ids++; return fmt.Sprintf("01955d6c-1f8a-7c3e-9a41-%012x", ids) },
	})
	if err != nil {
		t.Fatalf("new processor: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	ctx := testContext(t)
	for _, req := range []ledger.Request{
		{Command: domain.OpenAccount{AccountID: "world", Asset: usdAsset, Kind: domain.KindExternal}, Meta: eventstore.Metadata{CorrelationID: "world", Actor: "anonymous"}},
		{Command: domain.OpenAccount{AccountID: "acc-alice", Asset: usdAsset, Kind: domain.KindCustomer}, Meta: eventstore.Metadata{CorrelationID: "acc-alice", Actor: "anonymous"}},
		{Command: domain.Transfer{PaymentID: "pay-42", Source: "world", Destination: "acc-alice", Amount: usdMinor(2000), Reference: "top-up"},
			Meta: eventstore.Metadata{CorrelationID: "pay-42", CausationID: "key-7f3a9c", Actor: "anonymous",
				TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}},
	} {
		if _, err := p.Execute(ctx, req); err != nil {
			t.Fatalf("%T: %v", req.Command, err)
		}
	}
	var out bytes.Buffer
	if _, err := audit.Export(ctx, store, &out, audit.ExportOptions{From: 5, To: 5}); err != nil {
		t.Fatalf("export: %v", err)
	}
	line := bytes.TrimSuffix(out.Bytes(), []byte("\n"))
	if *updateExampleLine {
		var pretty bytes.Buffer
		if err := json.Indent(&pretty, line, "", "  "); err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(eventsDocPath)
		if err != nil {
			t.Fatal(err)
		}
		if !exampleLine.Match(raw) {
			t.Fatalf("%s has no example line block (<!-- export-line example --> and a json fence) to update", eventsDocPath)
		}
		block := "<!-- export-line example -->\n```json\n" + pretty.String() + "\n```"
		raw = exampleLine.ReplaceAllLiteral(raw, []byte(block))
		if err := os.WriteFile(eventsDocPath, raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	doc := readEventsDoc(t)
	if !bytes.Equal(doc.example, line) {
		t.Fatalf("%s section 2: the example line differs from what the exporter writes:\n doc      %s\n exporter %s\n(run go test ./audit/ -run TestEventsDocExampleLine -update)", eventsDocPath, doc.example, line)
	}
	ev, err := decodeLine(doc, doc.example)
	if err != nil {
		t.Fatalf("%s section 2: the example line does not follow the document: %v", eventsDocPath, err)
	}
	if ev.line.Type != "ledger.payment.transferred.v1" || ev.line.Position != 5 {
		t.Fatalf("the example line is a %s at position %d; the document introduces it as the transfer's last event, position 5", ev.line.Type, ev.line.Position)
	}
}
