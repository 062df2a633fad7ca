package relay

import (
	"bytes"
	"encoding/json"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/internal/projtest"
)

const schemaPath = "../../docs/kafka/event.v1.schema.json"

// compileSchema compiles the published JSON Schema of the message values with a validator
// that knows nothing of SecurePay, as a consumer would.
func compileSchema(t testing.TB) *jsonschema.Schema {
	t.Helper()
	raw, err := os.ReadFile(schemaPath)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("%s is not JSON: %v", schemaPath, err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("event.v1.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("event.v1.schema.json")
	if err != nil {
		t.Fatalf("compile %s: %v", schemaPath, err)
	}
	return s
}

// TestSchemaNamesEveryEventType: the schema's list of types is the codec's, no more, no less.
func TestSchemaNamesEveryEventType(t *testing.T) {
	raw, err := os.ReadFile(schemaPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Defs struct {
			EventType struct {
				Enum []string `json:"enum"`
			} `json:"eventType"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	got, want := slices.Sorted(slices.Values(doc.Defs.EventType.Enum)), slices.Sorted(slices.Values(domain.KnownEventNames()))
	if !slices.Equal(got, want) {
		t.Fatalf("schema event types %v\nthe codec knows %v", got, want)
	}
}

// TestSchemaAcceptsEveryEventKind encodes the messages of a generated ledger with every
// kind of command (transfers, batches, authorisations, captures, voids, refunds, freezes)
// and validates each value against the published schema; and the schema refuses values
// that break it.
func TestSchemaAcceptsEveryEventKind(t *testing.T) {
	schema := compileSchema(t)
	l := projtest.NewLedger(7, "")
	types := map[string]bool{}
	var prev eventstore.Hash
	pos := uint64(0)
	versions := map[string]uint64{}
	// The generator never closes an account: one is opened and closed at the end.
	batches := make([][]domain.Event, 0, 3002)
	for range 3000 {
		batches = append(batches, l.Next(8))
	}
	for _, c := range []domain.Command{
		domain.OpenAccount{AccountID: "to-close", Asset: l.USD, Kind: domain.KindCustomer},
		domain.CloseAccount{AccountID: "to-close"},
	} {
		evs, err := l.Do(c)
		if err != nil {
			t.Fatal(err)
		}
		batches = append(batches, evs)
	}
	for _, batch := range batches {
		for _, ev := range batch {
			name, data, err := domain.EncodeEvent(ev)
			if err != nil {
				t.Fatal(err)
			}
			pos++
			stream := ev.Stream()
			versions[stream]++
			rec := eventstore.RecordedEvent{Position: pos, Stream: stream, StreamVersion: versions[stream], ID: "01955d6c-1f8a-7c3e-9a41-" + time.Duration(pos).String(),
				Type: name, RecordedAt: l.Now.UTC().Truncate(time.Microsecond), Data: data, PrevHash: prev,
				Metadata: eventstore.Metadata{CorrelationID: "c", CausationID: "k", Actor: "anonymous"}}
			rec.Hash = eventstore.ChainHash(prev, &rec)
			prev = rec.Hash
			value, err := appendEnvelope(nil, &rec)
			if err != nil {
				t.Fatal(err)
			}
			v, err := jsonschema.UnmarshalJSON(bytes.NewReader(value))
			if err != nil {
				t.Fatal(err)
			}
			if err := schema.Validate(v); err != nil {
				t.Fatalf("the message of a %s event breaks the published schema: %v\n%s", name, err, value)
			}
			types[name] = true
		}
	}
	for _, name := range domain.KnownEventNames() {
		if !types[name] && name != "ledger.account.opened.v1" { // read only: never written
			t.Errorf("the generated ledger wrote no %s event: the schema is not checked against it", name)
		}
	}

	for _, bad := range []string{
		`{}`,
		`{"id":"x","type":"ledger.payment.unknown.v1","position":1,"stream":"payment-p","stream_version":1,"recorded_at":"2026-03-02T09:30:00.123456Z","correlation_id":"","causation_id":"","traceparent":"","hash":"` + zeros + `","payload":{}}`,
		`{"id":"x","type":"ledger.payment.transferred.v1","position":1,"stream":"payment-p","stream_version":1,"recorded_at":"2026-03-02T09:30:00.123456Z","correlation_id":"","causation_id":"","traceparent":"","hash":"` + zeros + `","payload":{"amount":{"minor":12.5,"asset":{"code":"USD","scale":2}}}}`,
		`{"id":"x","type":"ledger.payment.transferred.v1","position":1,"stream":"payment-p","stream_version":1,"recorded_at":"2026-03-02T09:30:00.123456Z","correlation_id":"","causation_id":"","traceparent":"","hash":"` + zeros + `","payload":{},"extra":1}`,
	} {
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader([]byte(bad)))
		if err != nil {
			t.Fatal(err)
		}
		if err := schema.Validate(v); err == nil {
			t.Errorf("the schema accepts %s", bad)
		}
	}
}

const zeros = "0000000000000000000000000000000000000000000000000000000000000000"
