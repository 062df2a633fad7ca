package relay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/postgres"
	"github.com/securepay/securepay/internal/kafkatest"
	"github.com/securepay/securepay/internal/pgtest"
	"github.com/securepay/securepay/internal/projtest"
	"github.com/securepay/securepay/services/ledger"
	"github.com/securepay/securepay/services/relay"
)

// helperEnv makes the test binary a relay process (TestMain): the SIGKILL test runs the
// relay in a child it can kill without killing itself.
const helperEnv = "SECUREPAY_RELAY_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	os.Exit(m.Run())
}

// helperMain runs a relay on the store, checkpoint and topics named by the environment
// until it is killed or gets SIGTERM.
func helperMain() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	store, err := postgres.Open(ctx, postgres.Config{DSN: os.Getenv("RELAY_DSN"), Schema: os.Getenv("RELAY_SCHEMA"), PollInterval: 20 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper: open store:", err)
		return 1
	}
	defer store.Close()
	cps, err := relay.OpenPGCheckpoints(ctx, store.Pool(), os.Getenv("RELAY_CP_SCHEMA"), "relay")
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	window, _ := strconv.Atoi(os.Getenv("RELAY_WINDOW"))
	r, err := relay.New(relay.Config{
		Store: store, Checkpoints: cps, Brokers: []string{os.Getenv("RELAY_BROKERS")}, Window: window,
		TopicNames: relay.TopicNames{Payments: os.Getenv("RELAY_PAYMENTS"), Notifications: os.Getenv("RELAY_NOTIFICATIONS")},
		Topics:     &relay.TopicSettings{Partitions: 4, ReplicationFactor: 1},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	if err := r.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "helper: relay:", err)
		return 1
	}
	return 0
}

// fixture is a ledger on PostgreSQL with a world account and customers, and topics of the
// test's own.
type fixture struct {
	dsn, schema string
	cpSchema    string // the relay's checkpoints
	store       *postgres.Store
	proc        *ledger.Processor
	topics      relay.TopicNames
	customers   []domain.AccountID
	usd         domain.Asset
	next        atomic.Int64 // transfers made
}

func newFixture(t testing.TB, customers int) *fixture {
	t.Helper()
	schema := pgtest.Schema(t, "sp_relay")
	store := projtest.PostgresStoreIn(t, schema)
	proc, err := ledger.New(store, ledger.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proc.Close() })
	usd, _ := domain.LookupAsset("USD")
	f := &fixture{dsn: pgtest.DSN(t), schema: schema, cpSchema: pgtest.Schema(t, "sp_relaycp"), store: store, proc: proc, usd: usd,
		topics: relay.TopicNames{Payments: kafkatest.Name(t, relay.TopicPayments), Notifications: kafkatest.Name(t, relay.TopicNotifications)}}
	ctx := context.Background()
	if _, err := proc.Execute(ctx, ledger.Request{Command: domain.OpenAccount{AccountID: "world", Asset: usd, Kind: domain.KindExternal}}); err != nil {
		t.Fatal(err)
	}
	for i := range customers {
		id := domain.AccountID(fmt.Sprintf("cust-%02d", i))
		if _, err := proc.Execute(ctx, ledger.Request{Command: domain.OpenAccount{AccountID: id, Asset: usd, Kind: domain.KindCustomer}}); err != nil {
			t.Fatal(err)
		}
		f.customers = append(f.customers, id)
	}
	return f
}

// transfer moves 1.00 from world to a customer, with a trace context to carry.
func (f *fixture) transfer(ctx context.Context) error {
	i := f.next.Add(1)
	id := domain.PaymentID(fmt.Sprintf("pay-%06d", i))
	amount, _ := domain.NewMoney(100, f.usd)
	_, err := f.proc.Execute(ctx, ledger.Request{
		Command: domain.Transfer{PaymentID: id, Source: "world", Destination: f.customers[int(i)%len(f.customers)], Amount: amount},
		Meta:    eventstore.Metadata{CorrelationID: string(id), TraceParent: fmt.Sprintf("00-%032x-%016x-01", i, i)},
	})
	return err
}

// transfers makes n transfers from a few goroutines, the way clients do.
func (f *fixture) transfers(t testing.TB, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				if err := f.transfer(context.Background()); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("transfer: %v", err)
	}
}

func (f *fixture) checkpoints(t testing.TB) *relay.PGCheckpoints {
	t.Helper()
	cps, err := relay.OpenPGCheckpoints(context.Background(), f.store.Pool(), f.cpSchema, "relay")
	if err != nil {
		t.Fatal(err)
	}
	return cps
}

func (f *fixture) head(t testing.TB) uint64 {
	t.Helper()
	h, err := f.store.Head(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// log reads the whole log.
func (f *fixture) log(t *testing.T) []eventstore.RecordedEvent {
	t.Helper()
	var all []eventstore.RecordedEvent
	for {
		page, err := f.store.ReadAll(context.Background(), uint64(len(all)), eventstore.MaxReadLimit)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			return all
		}
		all = append(all, page...)
	}
}

// waitCheckpoint waits until the relay's saved checkpoint reaches position.
func waitCheckpoint(t testing.TB, cps relay.Checkpoints, position uint64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		cp, err := cps.Load(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if cp >= position {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay checkpoint is %d after %s, want %d", cp, timeout, position)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startRelay runs a relay in this process until the returned stop is called; stop returns
// Run's error.
func (f *fixture) startRelay(t testing.TB, addr string, edit ...func(*relay.Config)) (*relay.Relay, func() error) {
	t.Helper()
	cfg := relay.Config{Store: f.store, Checkpoints: f.checkpoints(t), Brokers: []string{addr}, TopicNames: f.topics,
		Topics: &relay.TopicSettings{Partitions: 4, ReplicationFactor: 1}, RetryBackoff: 100 * time.Millisecond}
	for _, e := range edit {
		e(&cfg)
	}
	r, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			runErr = <-done
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return r, stop
}

// envelope is the message value as docs/KAFKA.md describes it, decoded with the standard
// library alone.
type envelope struct {
	ID            string          `json:"id"`
	Type          string          `json:"type"`
	Position      uint64          `json:"position"`
	Stream        string          `json:"stream"`
	StreamVersion uint64          `json:"stream_version"`
	RecordedAt    string          `json:"recorded_at"`
	CorrelationID string          `json:"correlation_id"`
	CausationID   string          `json:"causation_id"`
	TraceParent   string          `json:"traceparent"`
	Hash          string          `json:"hash"`
	Payload       json.RawMessage `json:"payload"`
}

// verify reads both topics back with an independent consumer until every event of the log
// was seen, and checks each message against its event: topic and key by stream, headers,
// value; per-key order of first deliveries; at most maxDuplicates messages delivered again.
// It returns the number of duplicates.
func (f *fixture) verify(t *testing.T, addr string, maxDuplicates int) int {
	t.Helper()
	log := f.log(t)
	byID := make(map[string]*eventstore.RecordedEvent, len(log))
	for i := range log {
		byID[log[i].ID] = &log[i]
	}
	msgs := kafkatest.Consume(t, addr, []string{f.topics.Payments, f.topics.Notifications}, 3*time.Minute, func(ms []*sarama.ConsumerMessage) bool {
		seen := make(map[string]bool, len(ms))
		for _, m := range ms {
			seen[kafkatest.Header(m, relay.HeaderEventID)] = true
		}
		return len(seen) >= len(log)
	})
	schema := relay.CompileSchema(t)
	seen := map[string]bool{}
	lastPos := map[string]uint64{}  // per key: position of its last first delivery
	partition := map[string]int32{} // per key: the one partition it uses
	dups := 0
	for _, m := range msgs {
		id := kafkatest.Header(m, relay.HeaderEventID)
		e, ok := byID[id]
		if !ok {
			t.Fatalf("message at %s/%d@%d has event id %q, which is not in the log: invented", m.Topic, m.Partition, m.Offset, id)
		}
		account, payment, _ := domain.ParseStream(e.Stream)
		wantTopic, wantKey := f.topics.Notifications, string(account)
		if payment != "" {
			wantTopic, wantKey = f.topics.Payments, string(payment)
		}
		if m.Topic != wantTopic || string(m.Key) != wantKey {
			t.Fatalf("event %s of stream %s went to %s with key %q, want %s with key %q", id, e.Stream, m.Topic, m.Key, wantTopic, wantKey)
		}
		for h, want := range map[string]string{
			relay.HeaderEventType: e.Type, relay.HeaderPosition: strconv.FormatUint(e.Position, 10),
			relay.HeaderStream: e.Stream, relay.HeaderTraceParent: e.Metadata.TraceParent, relay.HeaderContentType: "application/json",
		} {
			if got := kafkatest.Header(m, h); got != want {
				t.Fatalf("event %s: header %s = %q, want %q", id, h, got, want)
			}
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(m.Value))
		if err != nil {
			t.Fatalf("event %s: value is not JSON: %v", id, err)
		}
		if err := schema.Validate(doc); err != nil {
			t.Fatalf("event %s: value breaks docs/kafka/event.v1.schema.json: %v\n%s", id, err, m.Value)
		}
		var v envelope
		dec := json.NewDecoder(strings.NewReader(string(m.Value)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("event %s: value does not decode as the documented envelope: %v\n%s", id, err, m.Value)
		}
		want := envelope{ID: e.ID, Type: e.Type, Position: e.Position, Stream: e.Stream, StreamVersion: e.StreamVersion,
			RecordedAt: e.RecordedAt.UTC().Format("2006-01-02T15:04:05.000000Z07:00"), CorrelationID: e.Metadata.CorrelationID,
			CausationID: e.Metadata.CausationID, TraceParent: e.Metadata.TraceParent, Hash: e.Hash.String(), Payload: e.Data}
		if string(v.Payload) != string(e.Data) || fmt.Sprint(v) != fmt.Sprint(want) {
			t.Fatalf("event %s: value\n%+v\nwant\n%+v", id, v, want)
		}
		if p, ok := partition[wantKey]; ok && p != m.Partition {
			t.Fatalf("key %s is in partitions %d and %d: its order is lost", wantKey, p, m.Partition)
		}
		partition[wantKey] = m.Partition
		if seen[id] {
			dups++
			continue
		}
		seen[id] = true
		if e.Position <= lastPos[wantKey] {
			t.Fatalf("key %s: event at position %d first delivered after position %d: per-key order broken", wantKey, e.Position, lastPos[wantKey])
		}
		lastPos[wantKey] = e.Position
	}
	if len(seen) != len(log) {
		t.Fatalf("%d distinct events in Kafka, %d in the log", len(seen), len(log))
	}
	if dups > maxDuplicates {
		t.Fatalf("%d messages delivered again, at most %d allowed", dups, maxDuplicates)
	}
	return dups
}

// metrics records what the relay reports to relay.Metrics.
type metrics struct {
	mu       sync.Mutex
	acked    map[string]int
	failed   map[string]int
	progress []progress
}

type progress struct {
	checkpoint, head uint64
	age              time.Duration
	inFlight         int
}

func newMetrics() *metrics { return &metrics{acked: map[string]int{}, failed: map[string]int{}} }

func (m *metrics) Acked(topic string, _ time.Time) { m.mu.Lock(); m.acked[topic]++; m.mu.Unlock() }
func (m *metrics) PublishFailed(topic string)      { m.mu.Lock(); m.failed[topic]++; m.mu.Unlock() }
func (m *metrics) Progress(cp, head uint64, age time.Duration, inFlight int) {
	m.mu.Lock()
	m.progress = append(m.progress, progress{cp, head, age, inFlight})
	m.mu.Unlock()
}

func (m *metrics) last() (progress, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.progress) == 0 {
		return progress{}, false
	}
	return m.progress[len(m.progress)-1], true
}

func TestRelayPublishesEveryEventOnceInKeyOrder(t *testing.T) {
	addr := kafkatest.Addr(t)
	f := newFixture(t, 20)
	var observed atomic.Int64
	m := newMetrics()
	r, stop := f.startRelay(t, addr, func(c *relay.Config) {
		c.Observe = func(relay.Published) { observed.Add(1) }
		c.Metrics, c.ProgressInterval = m, 20*time.Millisecond
	})
	f.transfers(t, 400) // committed while the relay runs
	head := f.head(t)
	waitCheckpoint(t, f.checkpoints(t), head, 2*time.Minute)
	// The progress reports catch up too: nothing behind, nothing in flight.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		p, ok := m.last()
		if ok && p == (progress{checkpoint: head, head: head}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("last progress report %+v, want checkpoint and head %d, no lag, nothing in flight", p, head)
		}
	}
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run after a clean stop returned %v, want context.Canceled", err)
	}
	m.mu.Lock()
	acked := m.acked[f.topics.Payments] + m.acked[f.topics.Notifications]
	if m.acked[f.topics.Payments] != 400 || uint64(acked) != head || len(m.failed) != 0 {
		t.Fatalf("metrics: acknowledged %v, failed %v; want 400 payment events and %d in all, no failure", m.acked, m.failed, head)
	}
	m.mu.Unlock()
	if st := r.Status(); st.Checkpoint != head || st.State != relay.StateNotRunning {
		t.Fatalf("status after a clean stop: %+v, want checkpoint %d, not running", st, head)
	}
	if got := observed.Load(); got != int64(head) {
		t.Fatalf("Observe saw %d acknowledgements, want one per event: %d", got, head)
	}
	// A clean run delivers each event exactly once.
	f.verify(t, addr, 0)

	// A restart continues from the checkpoint: still nothing twice.
	_, stop = f.startRelay(t, addr)
	f.transfers(t, 50)
	waitCheckpoint(t, f.checkpoints(t), f.head(t), 2*time.Minute)
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("second run: %v", err)
	}
	f.verify(t, addr, 0)
}

// TestRelaySIGKILL kills relay processes while transfers are committed: every event reaches
// Kafka, none is invented, per-key order holds, and each crash re-publishes at most the
// window.
func TestRelaySIGKILL(t *testing.T) {
	addr := kafkatest.Addr(t)
	f := newFixture(t, 30)
	const window, kills = 300, 4
	cps := f.checkpoints(t)
	start := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=1", "RELAY_DSN="+f.dsn, "RELAY_SCHEMA="+f.schema, "RELAY_CP_SCHEMA="+f.cpSchema, "RELAY_BROKERS="+addr,
			"RELAY_WINDOW="+strconv.Itoa(window), "RELAY_PAYMENTS="+f.topics.Payments, "RELAY_NOTIFICATIONS="+f.topics.Notifications)
		cmd.Stderr = &prefixWriter{t: t}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}

	// Transfers run throughout: the ledger never waits for the relay.
	ctx, stopTransfers := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var transferErr atomic.Value
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := f.transfer(ctx); err != nil && ctx.Err() == nil {
					transferErr.Store(err)
					return
				}
			}
		})
	}
	for k := range kills {
		cmd := start()
		// Kill it once it has saved progress, so that every kill lands mid-stream.
		before, _ := cps.Load(context.Background())
		deadline := time.Now().Add(2 * time.Minute)
		for {
			cp, err := cps.Load(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if cp > before+uint64(window) {
				break
			}
			if time.Now().After(deadline) {
				_ = cmd.Process.Kill()
				t.Fatalf("kill %d: the relay's checkpoint stayed at %d for 2 minutes", k, cp)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		cp, _ := cps.Load(context.Background())
		t.Logf("kill %d: SIGKILL at checkpoint %d, log head %d", k+1, cp, f.head(t))
	}
	stopTransfers()
	wg.Wait()
	if err, _ := transferErr.Load().(error); err != nil {
		t.Fatalf("a transfer failed while relays were killed: %v", err)
	}
	// A last relay catches up and stops cleanly.
	cmd := start()
	waitCheckpoint(t, cps, f.head(t), 3*time.Minute)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("last relay after SIGTERM: %v", err)
	}
	dups := f.verify(t, addr, kills*window)
	t.Logf("%d transfers, %d events, %d re-published after %d SIGKILLs (at most %d allowed)", f.next.Load(), f.head(t), dups, kills, kills*window)
}

// TestRelayBrokerRestart stops the broker under a running relay and brings it back: the
// ledger keeps taking payments meanwhile, and no event is lost.
func TestRelayBrokerRestart(t *testing.T) {
	broker := kafkatest.StartBroker(t)
	f := newFixture(t, 20)
	const window = 200
	m := newMetrics()
	r, stop := f.startRelay(t, broker.Addr, func(c *relay.Config) {
		c.Window = window
		c.Metrics = m
		c.Producer = relay.ProducerConfig("relay-test", relay.DefaultKafkaVersion)
		c.Producer.Producer.Retry.Max = 3 // give up quickly, so sessions restart during the outage
	})
	f.transfers(t, 200)
	waitCheckpoint(t, f.checkpoints(t), f.head(t), 2*time.Minute)

	broker.Stop(t)
	downAt := f.head(t)
	f.transfers(t, 300) // the ledger commits while the broker is down
	if f.head(t) <= downAt {
		t.Fatalf("no transfer committed while the broker was down (head %d)", downAt)
	}
	// The relay holds at most its window while it waits.
	time.Sleep(2 * time.Second)
	if st := r.Status(); st.Acked > st.Checkpoint+window || st.Checkpoint > f.head(t) {
		t.Fatalf("status while the broker is down: %+v (window %d)", st, window)
	}
	t.Logf("broker down: relay status %+v, log head %d", r.Status(), f.head(t))

	broker.Start(t)
	f.transfers(t, 100)
	waitCheckpoint(t, f.checkpoints(t), f.head(t), 3*time.Minute)
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	m.mu.Lock()
	failed := m.failed[f.topics.Payments] + m.failed[f.topics.Notifications]
	m.mu.Unlock()
	if failed == 0 {
		t.Errorf("no failed publish reported to the metrics while the broker was down")
	}
	dups := f.verify(t, broker.Addr, 10*window)
	t.Logf("%d events through a broker restart, %d re-published", f.head(t), dups)
}

type prefixWriter struct{ t *testing.T }

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.t.Logf("relay process: %s", strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
