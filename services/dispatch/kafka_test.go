package dispatch_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/securepay/securepay/internal/kafkatest"
	"github.com/securepay/securepay/services/dispatch"
	"github.com/securepay/securepay/services/relay"
	"github.com/securepay/securepay/services/telemetry"
)

// These tests run against the real broker of infra/local/test.sh (SECUREPAY_TEST_KAFKA_ADDR);
// without one they fail. Each has topics and a consumer group of its own.

// topics are a test's notification and dead-letter topics, created with partitions.
type topics struct {
	addr, notifications, dlq, group string
	producer                        sarama.SyncProducer
}

func newTopics(t testing.TB, partitions int32) *topics {
	t.Helper()
	addr := kafkatest.Addr(t)
	tp := &topics{addr: addr, notifications: kafkatest.Name(t, relay.TopicNotifications), dlq: kafkatest.Name(t, dispatch.TopicDeadLetters), group: kafkatest.Name(t, "dispatch-test")}
	client, err := sarama.NewClient([]string{addr}, relay.ProducerConfig("dispatch-test", relay.DefaultKafkaVersion))
	if err != nil {
		t.Fatalf("Kafka client of %s: %v", addr, err)
	}
	defer client.Close()
	if err := relay.EnsureTopics(client, []string{tp.notifications, tp.dlq}, relay.TopicSettings{Partitions: partitions, ReplicationFactor: 1}); err != nil {
		t.Fatal(err)
	}
	tp.producer, err = sarama.NewSyncProducer([]string{addr}, relay.ProducerConfig("dispatch-test", relay.DefaultKafkaVersion))
	if err != nil {
		t.Fatalf("producer: %v", err)
	}
	t.Cleanup(func() { _ = tp.producer.Close() })
	return tp
}

// event is a notification as the relay publishes it (docs/KAFKA.md).
type event struct {
	id, typ, account, traceparent string
	position                      int
}

func (e event) value() []byte {
	v, _ := json.Marshal(map[string]any{
		"id": e.id, "type": e.typ, "position": e.position, "stream": "account-" + e.account, "stream_version": e.position,
		"recorded_at": "2026-03-02T09:30:00.123456Z", "correlation_id": "c", "causation_id": "k", "traceparent": e.traceparent,
		"hash":    strings.Repeat("ab", 32),
		"payload": map[string]any{"account_id": e.account, "amount": map[string]any{"minor": "100", "asset": map[string]any{"code": "USD", "scale": 2}}},
	})
	return v
}

// publish sends events in order, as the relay would.
func (tp *topics) publish(t *testing.T, events ...event) {
	t.Helper()
	for _, e := range events {
		headers := []sarama.RecordHeader{
			{Key: []byte(relay.HeaderEventID), Value: []byte(e.id)},
			{Key: []byte(relay.HeaderEventType), Value: []byte(e.typ)},
			{Key: []byte(relay.HeaderPosition), Value: []byte(strconv.Itoa(e.position))},
			{Key: []byte(relay.HeaderStream), Value: []byte("account-" + e.account)},
		}
		if e.traceparent != "" {
			headers = append(headers, sarama.RecordHeader{Key: []byte(relay.HeaderTraceParent), Value: []byte(e.traceparent)})
		}
		tp.publishRaw(t, e.account, e.value(), headers...)
	}
}

func (tp *topics) publishRaw(t *testing.T, key string, value []byte, headers ...sarama.RecordHeader) {
	t.Helper()
	if _, _, err := tp.producer.SendMessage(&sarama.ProducerMessage{Topic: tp.notifications, Key: sarama.StringEncoder(key), Value: sarama.ByteEncoder(value), Headers: headers}); err != nil {
		t.Fatalf("publish to %s: %v", tp.notifications, err)
	}
}

// credits are n credit events on accounts, round-robin, positions from first.
func credits(prefix string, n int, accounts ...string) []event {
	out := make([]event, n)
	for i := range out {
		out[i] = event{id: fmt.Sprintf("%s-%03d", prefix, i), typ: "ledger.account.credited.v1", account: accounts[i%len(accounts)], position: i + 1}
	}
	return out
}

// receiver is a webhook endpoint on loopback that verifies every request with Verify and
// records the verified ones; respond chooses the status of the nth request (from 1).
type receiver struct {
	t       *testing.T
	secret  []byte
	srv     *httptest.Server
	respond func(n int) int

	mu        sync.Mutex
	requests  int
	delivered []delivery // verified and answered 2xx, in arrival order
	changed   chan struct{}
}

type delivery struct {
	id, traceparent string
	position        int
	account         string
}

func newReceiver(t *testing.T, secret string, respond func(n int) int) *receiver {
	r := &receiver{t: t, secret: []byte(secret), respond: respond, changed: make(chan struct{}, 1)}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err := dispatch.Verify(r.secret, req.Header.Get(dispatch.HeaderSignature), body, time.Now(), 5*time.Minute); err != nil {
		r.t.Errorf("receiver: a request does not verify: %v", err)
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var env struct {
		ID       string `json:"id"`
		Position int    `json:"position"`
		Stream   string `json:"stream"`
	}
	if err := json.Unmarshal(body, &env); err != nil || env.ID != req.Header.Get(dispatch.HeaderEventID) {
		r.t.Errorf("receiver: body %s does not carry the event id header %q", body, req.Header.Get(dispatch.HeaderEventID))
	}
	r.mu.Lock()
	r.requests++
	status := r.respond(r.requests)
	if status/100 == 2 {
		r.delivered = append(r.delivered, delivery{id: env.ID, position: env.Position, account: strings.TrimPrefix(env.Stream, "account-"), traceparent: req.Header.Get(dispatch.HeaderTraceParent)})
	}
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
	w.WriteHeader(status)
}

func (r *receiver) snapshot() (requests int, delivered []delivery) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests, slices.Clone(r.delivered)
}

// distinct are the distinct event ids delivered.
func (r *receiver) distinct() map[string]bool {
	_, ds := r.snapshot()
	out := map[string]bool{}
	for _, d := range ds {
		out[d.id] = true
	}
	return out
}

// waitFor waits until cond holds on the deliveries, failing after timeout.
func (r *receiver) waitFor(t *testing.T, timeout time.Duration, what string, cond func(requests int, ds []delivery) bool) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		n, ds := r.snapshot()
		if cond(n, ds) {
			return
		}
		select {
		case <-deadline:
			t.Fatalf("waited %s for %s: %d requests, %d delivered", timeout, what, n, len(ds))
		case <-r.changed:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// metrics records what the dispatcher reports.
type metrics struct {
	mu           sync.Mutex
	attempts     map[string]int
	deadLetters  int
	deadReasons  map[string]int
	circuitsOpen int
	maxOpen      int
}

func (m *metrics) Attempt(outcome string, _ time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.attempts == nil {
		m.attempts = map[string]int{}
	}
	m.attempts[outcome]++
}

func (m *metrics) DeadLettered(reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.deadLetters++
	if m.deadReasons == nil {
		m.deadReasons = map[string]int{}
	}
	m.deadReasons[reason]++
}

func (m *metrics) deadLettersByReason() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps(m.deadReasons)
}
func (m *metrics) CircuitsOpen(n int) {
	m.mu.Lock()
	m.circuitsOpen = n
	m.maxOpen = max(m.maxOpen, n)
	m.mu.Unlock()
}

func (m *metrics) get() (attempts map[string]int, deadLetters, open, maxOpen int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps(m.attempts), m.deadLetters, m.circuitsOpen, m.maxOpen
}

// waitFor waits until cond holds on the attempts counted, failing after a minute.
func (m *metrics) waitFor(t *testing.T, what string, cond func(attempts map[string]int) bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		attempts, _, _, _ := m.get()
		if cond(attempts) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited a minute for %s: attempts %v", what, attempts)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func maps(in map[string]int) map[string]int {
	out := make(map[string]int, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

// start runs a dispatcher on tp with cfg's delivery settings until the returned stop
// (also called at cleanup).
func start(t *testing.T, tp *topics, cfg dispatch.Config) (stop func()) {
	t.Helper()
	cfg.Brokers = []string{tp.addr}
	cfg.Topic, cfg.DeadLetterTopic, cfg.Group = tp.notifications, tp.dlq, tp.group
	d, err := dispatch.New(cfg)
	if err != nil {
		t.Fatalf("dispatch.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run = %v, want nil after cancel", err)
				}
			case <-time.After(time.Minute):
				t.Errorf("Run did not return within a minute of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// fast are delivery settings for tests: short waits, so retries happen within seconds.
func fast(dir dispatch.Directory, m dispatch.Metrics) dispatch.Config {
	return dispatch.Config{Directory: dir, Metrics: m, Backoff: dispatch.Backoff{Base: 10 * time.Millisecond, Max: 100 * time.Millisecond},
		MaxAttempts: 40, BreakerThreshold: 2, BreakerCooldown: 200 * time.Millisecond, Timeout: 5 * time.Second}
}

// deadLetters reads n dead letters back with an independent consumer.
func deadLetters(t *testing.T, tp *topics, n int) []*sarama.ConsumerMessage {
	t.Helper()
	return kafkatest.Consume(t, tp.addr, []string{tp.dlq}, 2*time.Minute, func(ms []*sarama.ConsumerMessage) bool { return len(ms) >= n })
}

// A receiver that fails (503), then recovers, gets every notification once it is back,
// each signed so that Verify accepts it, in order per account; nothing is dead-lettered.
func TestDeliveredAfterTheReceiverRecovers(t *testing.T) {
	tp := newTopics(t, 3)
	rcv := newReceiver(t, "whsec-recover", func(n int) int {
		if n <= 6 { // enough to open the breaker (threshold 2) more than once
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	events := credits("recover", 12, "alice", "bob", "carol")
	tp.publish(t, events...)
	m := &metrics{}
	dir := dispatch.StaticDirectory{"*": {{ID: "ep-1", URL: rcv.srv.URL, Secret: rcv.secret}}}
	start(t, tp, fast(dir, m))
	rcv.waitFor(t, 2*time.Minute, "all 12 delivered", func(_ int, ds []delivery) bool { return len(distinctIDs(ds)) == 12 })

	_, ds := rcv.snapshot()
	checkOrderPerAccount(t, ds)
	// The dispatcher counts an attempt once the response is in: wait for the last one.
	m.waitFor(t, "12 delivered attempts counted", func(attempts map[string]int) bool { return attempts[telemetry.WebhookDelivered] >= 12 })
	attempts, dl, _, maxOpen := m.get()
	if dl != 0 {
		t.Errorf("%d dead letters, want none: the receiver came back", dl)
	}
	if attempts[telemetry.WebhookFailed] < 6 || attempts[telemetry.WebhookDelivered] < 12 {
		t.Errorf("attempts by outcome %v: want at least 6 failed and 12 delivered", attempts)
	}
	if maxOpen < 1 {
		t.Errorf("the breaker never opened (max circuits open %d) although the receiver failed 6 times in a row with a threshold of 2", maxOpen)
	}
}

func distinctIDs(ds []delivery) map[string]bool {
	out := map[string]bool{}
	for _, d := range ds {
		out[d.id] = true
	}
	return out
}

// checkOrderPerAccount: the first delivery of each event comes in position order, per account.
func checkOrderPerAccount(t *testing.T, ds []delivery) {
	t.Helper()
	seen := map[string]bool{}
	last := map[string]int{}
	for _, d := range ds {
		if seen[d.id] {
			continue
		}
		seen[d.id] = true
		if d.position < last[d.account] {
			t.Errorf("account %s: event at position %d delivered after position %d", d.account, d.position, last[d.account])
		}
		last[d.account] = d.position
	}
}

// After MaxAttempts failures a notification goes to the dead-letter topic with its
// endpoint, attempts and last error; a 4xx refusal goes there at once. The others get on.
func TestDeadLetterAfterTheLimit(t *testing.T) {
	tp := newTopics(t, 2)
	failing := newReceiver(t, "whsec-fail", func(int) int { return http.StatusInternalServerError })
	refusing := newReceiver(t, "whsec-refuse", func(int) int { return http.StatusUnprocessableEntity })
	tp.publish(t, event{id: "dl-1", typ: "ledger.account.debited.v1", account: "dave", position: 1})
	m := &metrics{}
	cfg := fast(dispatch.StaticDirectory{"dave": {
		{ID: "ep-failing", URL: failing.srv.URL, Secret: failing.secret},
		{ID: "ep-refusing", URL: refusing.srv.URL, Secret: refusing.secret},
	}}, m)
	cfg.MaxAttempts, cfg.BreakerThreshold = 3, 10 // every attempt reaches the receiver
	start(t, tp, cfg)

	msgs := deadLetters(t, tp, 2)
	byEndpoint := map[string]*sarama.ConsumerMessage{}
	for _, msg := range msgs {
		byEndpoint[kafkatest.Header(msg, dispatch.HeaderDLQEndpoint)] = msg
	}
	cases := []struct {
		endpoint, reason, attempts, errorHas string
	}{
		{"ep-failing", dispatch.ReasonExhausted, "3", "HTTP 500"},
		{"ep-refusing", dispatch.ReasonRejected, "1", "HTTP 422"},
	}
	for _, tc := range cases {
		msg := byEndpoint[tc.endpoint]
		if msg == nil {
			t.Errorf("no dead letter for %s among %d", tc.endpoint, len(msgs))
			continue
		}
		got := map[string]string{}
		for _, h := range []string{dispatch.HeaderDLQReason, dispatch.HeaderDLQAttempts, dispatch.HeaderDLQError, dispatch.HeaderDLQSource, relay.HeaderEventID} {
			got[h] = kafkatest.Header(msg, h)
		}
		if got[dispatch.HeaderDLQReason] != tc.reason || got[dispatch.HeaderDLQAttempts] != tc.attempts || !strings.Contains(got[dispatch.HeaderDLQError], tc.errorHas) ||
			got[relay.HeaderEventID] != "dl-1" || !strings.HasPrefix(got[dispatch.HeaderDLQSource], tp.notifications+"/") {
			t.Errorf("dead letter for %s has headers %v; want reason %s, attempts %s, an error with %q, the event id dl-1 and the source", tc.endpoint, got, tc.reason, tc.attempts, tc.errorHas)
		}
		if string(msg.Key) != "dave" || !strings.Contains(string(msg.Value), `"id":"dl-1"`) {
			t.Errorf("dead letter for %s: key %q, value %s; want the original message", tc.endpoint, msg.Key, msg.Value)
		}
	}
	if n, _ := failing.snapshot(); n != 3 {
		t.Errorf("the failing receiver got %d requests, want exactly MaxAttempts = 3", n)
	}
	if n, _ := refusing.snapshot(); n != 1 {
		t.Errorf("the refusing receiver got %d requests, want 1: a 4xx is not retried", n)
	}
	// Counted once the broker acknowledged, which may be after the consumer above read it.
	deadline := time.Now().Add(time.Minute)
	for _, dl, _, _ := m.get(); dl != 2; _, dl, _, _ = m.get() {
		if dl > 2 || time.Now().After(deadline) {
			t.Fatalf("dead letters counted %d, want 2", dl)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got, want := m.deadLettersByReason(), map[string]int{dispatch.ReasonExhausted: 1, dispatch.ReasonRejected: 1}; fmt.Sprint(got) != fmt.Sprint(want) { // fmt prints maps sorted by key
		t.Errorf("dead letters counted by reason %v, want %v", got, want)
	}
}

// One dead endpoint (its breaker open, retries pending for minutes) does not hold up
// another endpoint subscribed to the same accounts: the live one gets everything while the
// dead one has not finished with its first notification.
func TestDeadEndpointDoesNotDelayAnother(t *testing.T) {
	tp := newTopics(t, 1) // one partition: both endpoints' work shares it
	dead, live, m, cfg := deadBesideLive(t)
	tp.publish(t, credits("iso", 30, "erin", "frank")...)
	start(t, tp, cfg)
	live.waitFor(t, 2*time.Minute, "the live endpoint to get all 30", func(_ int, ds []delivery) bool { return len(distinctIDs(ds)) == 30 })
	// The dead endpoint's second failure (a backoff after the first) opens its breaker.
	dead.waitFor(t, time.Minute, "the dead endpoint's second request", func(n int, _ []delivery) bool { return n >= 2 })
	m.waitFor(t, "the dead endpoint's 2 failures counted", func(a map[string]int) bool { return a[telemetry.WebhookFailed] >= 2 })

	n, ds := dead.snapshot()
	if n != 2 || len(ds) != 0 {
		t.Errorf("the dead endpoint got %d requests (%d answered 2xx): want exactly the breaker's threshold, 2, then none while it is open", n, len(ds))
	}
	_, dl, open, _ := m.get()
	if open != 1 {
		t.Errorf("circuits open %d, want 1 (the dead endpoint's)", open)
	}
	if dl != 0 {
		t.Errorf("%d dead letters already: the dead endpoint's retries should still be pending", dl)
	}
	_, lds := live.snapshot()
	checkOrderPerAccount(t, lds)
}

// deadBesideLive are two endpoints subscribed to every account, one answering 502 and one
// 204, and a dispatcher configuration for them: the dead one's first notification needs
// 100 attempts about a second apart (its breaker opens after 2, for 10 minutes), and the
// grace before it is shed is as long, so only a full window can shed it.
func deadBesideLive(t *testing.T) (dead, live *receiver, m *metrics, cfg dispatch.Config) {
	dead = newReceiver(t, "whsec-dead", func(int) int { return http.StatusBadGateway })
	live = newReceiver(t, "whsec-live", func(int) int { return http.StatusNoContent })
	m = &metrics{}
	cfg = dispatch.Config{
		Directory: dispatch.StaticDirectory{"*": {
			{ID: "ep-dead", URL: dead.srv.URL, Secret: dead.secret},
			{ID: "ep-live", URL: live.srv.URL, Secret: live.secret},
		}},
		Metrics:     m,
		MaxAttempts: 100, Backoff: dispatch.Backoff{Base: time.Second, Max: 2 * time.Second},
		BreakerThreshold: 2, BreakerCooldown: 10 * time.Minute, CircuitOpenGrace: 10 * time.Minute,
	}
	return dead, live, m, cfg
}

// The dispatcher is stopped mid-run and another started in the same group: every
// notification is delivered at least once, none lost (offsets are committed only for
// handled messages).
func TestRestartLosesNothing(t *testing.T) {
	tp := newTopics(t, 3)
	rcv := newReceiver(t, "whsec-restart", func(int) int {
		time.Sleep(20 * time.Millisecond) // so the stop lands mid-run
		return http.StatusOK
	})
	const total = 90
	events := credits("restart", total, "gina", "hank", "ivan", "jane", "kim")
	tp.publish(t, events...)
	dir := dispatch.StaticDirectory{"*": {{ID: "ep-1", URL: rcv.srv.URL, Secret: rcv.secret}}}

	stop := start(t, tp, fast(dir, nil))
	rcv.waitFor(t, 2*time.Minute, "a first part delivered", func(_ int, ds []delivery) bool { return len(ds) >= 20 })
	stop()
	before := len(rcv.distinct())
	if before >= total {
		t.Logf("the first dispatcher delivered all %d before it stopped; the restart proves less", total)
	}
	// More notifications while it is down, then a second dispatcher.
	more := credits("restart-late", 10, "gina", "lou")
	tp.publish(t, more...)
	start(t, tp, fast(dir, nil))
	rcv.waitFor(t, 2*time.Minute, "every notification delivered", func(_ int, ds []delivery) bool { return len(distinctIDs(ds)) == total+len(more) })

	got := rcv.distinct()
	for _, e := range append(events, more...) {
		if !got[e.id] {
			t.Errorf("event %s never delivered", e.id)
		}
	}
	_, ds := rcv.snapshot()
	t.Logf("%d delivered before the stop, %d deliveries in all for %d events (%d redelivered)", before, len(ds), total+len(more), len(ds)-total-len(more))
}

// Messages that are not notifications go to the dead-letter topic with a reason, and the
// notification after them is delivered: nothing crashes or stalls.
func TestBadMessagesAreDeadLettered(t *testing.T) {
	tp := newTopics(t, 1)
	rcv := newReceiver(t, "whsec-bad", func(int) int { return http.StatusOK })
	tp.publishRaw(t, "mia", []byte("this is not JSON"))
	tp.publishRaw(t, "mia", event{id: "bad-2", typ: "ledger.payment.transferred.v1", account: "mia", position: 2}.value())
	tp.publishRaw(t, "someone-else", event{id: "bad-3", typ: "ledger.account.credited.v1", account: "mia", position: 3}.value())
	tp.publishRaw(t, "mia", []byte(`{"id":"bad-4","type":"ledger.account.credited.v1","stream":"account-mia"}`))
	tp.publish(t, event{id: "good-5", typ: "ledger.account.credited.v1", account: "mia", position: 5})
	start(t, tp, fast(dispatch.StaticDirectory{"*": {{ID: "ep-1", URL: rcv.srv.URL, Secret: rcv.secret}}}, nil))

	rcv.waitFor(t, 2*time.Minute, "the good notification", func(_ int, ds []delivery) bool { return distinctIDs(ds)["good-5"] })
	msgs := deadLetters(t, tp, 4)
	var reasons []string
	for _, msg := range msgs {
		reasons = append(reasons, kafkatest.Header(msg, dispatch.HeaderDLQReason))
		if kafkatest.Header(msg, dispatch.HeaderDLQError) == "" || kafkatest.Header(msg, dispatch.HeaderDLQEndpoint) != "" {
			t.Errorf("dead letter %q: error %q, endpoint %q; want an error saying why and no endpoint", msg.Value, kafkatest.Header(msg, dispatch.HeaderDLQError), kafkatest.Header(msg, dispatch.HeaderDLQEndpoint))
		}
	}
	want := []string{dispatch.ReasonMalformed, dispatch.ReasonUnknownType, dispatch.ReasonMalformed, dispatch.ReasonMalformed}
	if !slices.Equal(reasons, want) {
		t.Errorf("dead-letter reasons %v, want %v (in the order published)", reasons, want)
	}
	if _, ds := rcv.snapshot(); len(ds) != 1 {
		t.Errorf("the receiver got %d notifications, want only good-5", len(ds))
	}
}

// An endpoint subscribed to some event types gets only those.
func TestEndpointEventTypes(t *testing.T) {
	tp := newTopics(t, 1)
	rcv := newReceiver(t, "whsec-types", func(int) int { return http.StatusOK })
	tp.publish(t,
		event{id: "ty-1", typ: "ledger.account.debited.v1", account: "ned", position: 1},
		event{id: "ty-2", typ: "ledger.account.credited.v1", account: "ned", position: 2},
		event{id: "ty-3", typ: "ledger.account.frozen.v1", account: "ned", position: 3},
		event{id: "ty-4", typ: "ledger.account.credited.v1", account: "ned", position: 4},
	)
	dir := dispatch.StaticDirectory{"ned": {{ID: "ep-credits", URL: rcv.srv.URL, Secret: rcv.secret, EventTypes: []string{"ledger.account.credited.v1"}}}}
	start(t, tp, fast(dir, nil))
	rcv.waitFor(t, 2*time.Minute, "ty-4", func(_ int, ds []delivery) bool { return distinctIDs(ds)["ty-4"] })
	got := rcv.distinct()
	if len(got) != 2 || !got["ty-2"] || !got["ty-4"] {
		t.Errorf("delivered %v, want ty-2 and ty-4 only (the credits)", got)
	}
}

// flakyDirectory fails its first calls, then answers from dir.
type flakyDirectory struct {
	fails atomic.Int32
	dir   dispatch.Directory
}

func (f *flakyDirectory) Endpoints(ctx context.Context, account string) ([]dispatch.Endpoint, error) {
	if f.fails.Add(-1) >= 0 {
		return nil, fmt.Errorf("registry unavailable")
	}
	return f.dir.Endpoints(ctx, account)
}

// A directory that fails is asked again; one that fails DirectoryAttempts times sends
// the notification to the dead-letter topic rather than holding the partition forever.
func TestDirectoryFailures(t *testing.T) {
	tp := newTopics(t, 1)
	rcv := newReceiver(t, "whsec-dir", func(int) int { return http.StatusOK })
	tp.publish(t, event{id: "dir-1", typ: "ledger.account.credited.v1", account: "olga", position: 1})
	tp.publish(t, event{id: "dir-2", typ: "ledger.account.credited.v1", account: "olga", position: 2})
	dir := &flakyDirectory{dir: dispatch.StaticDirectory{"*": {{ID: "ep-1", URL: rcv.srv.URL, Secret: rcv.secret}}}}
	dir.fails.Store(5) // dir-1: 3 failures, dead-lettered; dir-2: 2 failures, then delivered
	cfg := fast(dir, nil)
	cfg.DirectoryAttempts = 3
	start(t, tp, cfg)
	rcv.waitFor(t, 2*time.Minute, "dir-2", func(_ int, ds []delivery) bool { return distinctIDs(ds)["dir-2"] })
	msgs := deadLetters(t, tp, 1)
	if r := kafkatest.Header(msgs[0], dispatch.HeaderDLQReason); r != dispatch.ReasonDirectory || kafkatest.Header(msgs[0], relay.HeaderEventID) != "dir-1" {
		t.Errorf("dead letter of %s with reason %q; want dir-1 with %q", kafkatest.Header(msgs[0], relay.HeaderEventID), r, dispatch.ReasonDirectory)
	}
	if got := rcv.distinct(); got["dir-1"] {
		t.Errorf("dir-1 was delivered although its lookups all failed")
	}
}

// More than a window's worth of notifications on one partition, for a dead endpoint and a
// live one: the dead one's circuit opens, the window fills with its backlog, and its
// notifications are then dead-lettered at once (circuit-open) instead of each waiting out
// 100 attempts; the live one gets every notification, and the partition's offset is
// committed past all of them.
func TestDeadEndpointBacklogIsShedWhenTheWindowFills(t *testing.T) {
	tp := newTopics(t, 1) // one partition: both endpoints' work shares its window
	dead, live, _, cfg := deadBesideLive(t)
	const total = 40
	// Without shedding, each of the dead endpoint's notifications would take 100 attempts
	// about a second apart, and the full window would hold the live one for hours.
	cfg.Window = 8
	events := credits("shed", total, "pia", "quinn")
	tp.publish(t, events...)
	start(t, tp, cfg)
	live.waitFor(t, 2*time.Minute, fmt.Sprintf("the live endpoint to get all %d", total), func(_ int, ds []delivery) bool { return len(distinctIDs(ds)) == total })
	_, lds := live.snapshot()
	checkOrderPerAccount(t, lds)

	msgs := deadLetters(t, tp, total)
	if len(msgs) != total {
		t.Fatalf("%d dead letters, want %d: one per notification for the dead endpoint", len(msgs), total)
	}
	want := map[string]event{}
	for _, e := range events {
		want[e.id] = e
	}
	last := map[string]int{} // per account: the dead letters keep the log's order
	for i, msg := range msgs {
		id := kafkatest.Header(msg, relay.HeaderEventID)
		e, ok := want[id]
		if !ok {
			t.Errorf("dead letter %d: event %q is not one published, or is there twice", i, id)
			continue
		}
		delete(want, id)
		got := map[string]string{}
		for _, h := range []string{dispatch.HeaderDLQReason, dispatch.HeaderDLQEndpoint, dispatch.HeaderDLQAttempts, dispatch.HeaderDLQError, dispatch.HeaderDLQSource} {
			got[h] = kafkatest.Header(msg, h)
		}
		// The first notification opened the circuit with its 2 attempts; the others were
		// given up on without one.
		wantAttempts := "0"
		if i == 0 {
			wantAttempts = "2"
		}
		if got[dispatch.HeaderDLQReason] != dispatch.ReasonCircuitOpen || got[dispatch.HeaderDLQEndpoint] != "ep-dead" || got[dispatch.HeaderDLQAttempts] != wantAttempts ||
			!strings.Contains(got[dispatch.HeaderDLQError], "circuit open since") || !strings.Contains(got[dispatch.HeaderDLQError], "HTTP 502") ||
			!strings.HasPrefix(got[dispatch.HeaderDLQSource], tp.notifications+"/0/") {
			t.Errorf("dead letter %d (%s) has headers %v; want reason %s, endpoint ep-dead, attempts %s, the breaker's last error (HTTP 502) and the source",
				i, id, got, dispatch.ReasonCircuitOpen, wantAttempts)
		}
		if string(msg.Key) != e.account || string(msg.Value) != string(e.value()) {
			t.Errorf("dead letter %d: key %q, value %s; want the original message of %s", i, msg.Key, msg.Value, id)
		}
		if e.position < last[e.account] {
			t.Errorf("dead letters of account %s out of order: position %d after %d", e.account, e.position, last[e.account])
		}
		last[e.account] = e.position
	}
	for id := range want {
		t.Errorf("no dead letter for %s", id)
	}
	if n, ds := dead.snapshot(); n != 2 || len(ds) != 0 {
		t.Errorf("the dead endpoint got %d requests (%d answered 2xx): want exactly the breaker's threshold, 2", n, len(ds))
	}
	waitCommitted(t, tp, 0, total)
}

// waitCommitted waits until the group's committed offset of partition is want, failing
// after a minute (the dispatcher commits every second).
func waitCommitted(t *testing.T, tp *topics, partition int32, want int64) {
	t.Helper()
	admin, err := sarama.NewClusterAdmin([]string{tp.addr}, relay.ProducerConfig("dispatch-test-admin", relay.DefaultKafkaVersion))
	if err != nil {
		t.Fatalf("cluster admin of %s: %v", tp.addr, err)
	}
	defer admin.Close()
	deadline := time.Now().Add(time.Minute)
	got := int64(-1)
	for time.Now().Before(deadline) {
		res, err := admin.ListConsumerGroupOffsets(tp.group, map[string][]int32{tp.notifications: {partition}})
		if err != nil {
			t.Fatalf("committed offsets of group %s: %v", tp.group, err)
		}
		if b := res.GetBlock(tp.notifications, partition); b != nil {
			got = b.Offset
		}
		if got == want {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("group %s's committed offset of %s/%d is %d after a minute, want %d: every notification delivered or dead-lettered", tp.group, tp.notifications, partition, got, want)
}

// An endpoint whose circuit stays open past the grace is shed although the window is far
// from full; once it answers again it gets the notifications that follow, and nothing
// more is dead-lettered.
func TestShedAfterTheGraceUntilTheEndpointAnswers(t *testing.T) {
	tp := newTopics(t, 1)
	var up atomic.Bool
	rcv := newReceiver(t, "whsec-grace", func(int) int {
		if up.Load() {
			return http.StatusOK
		}
		return http.StatusServiceUnavailable
	})
	m := &metrics{}
	cfg := dispatch.Config{
		Directory: dispatch.StaticDirectory{"*": {{ID: "ep-grace", URL: rcv.srv.URL, Secret: rcv.secret}}},
		Metrics:   m,
		// 100 attempts about a second apart would take minutes per notification: only
		// the grace can make the dead letters come quickly.
		MaxAttempts: 100, Backoff: dispatch.Backoff{Base: time.Second, Max: 2 * time.Second},
		BreakerThreshold: 2, BreakerCooldown: time.Second, CircuitOpenGrace: 500 * time.Millisecond,
	}
	logs := &syncBuffer{}
	cfg.Logger = slog.New(telemetry.NewLogHandler(logs, nil))
	down := credits("grace-down", 10, "rita", "sam")
	tp.publish(t, down...)
	start(t, tp, cfg)

	msgs := deadLetters(t, tp, len(down))
	for i, msg := range msgs {
		id, reason := kafkatest.Header(msg, relay.HeaderEventID), kafkatest.Header(msg, dispatch.HeaderDLQReason)
		if id != down[i].id || reason != dispatch.ReasonCircuitOpen || !strings.Contains(kafkatest.Header(msg, dispatch.HeaderDLQError), "HTTP 503") {
			t.Errorf("dead letter %d: event %s, reason %q, error %q; want %s, %s and the last failure (HTTP 503)",
				i, id, reason, kafkatest.Header(msg, dispatch.HeaderDLQError), down[i].id, dispatch.ReasonCircuitOpen)
		}
	}

	checkDeadLetterLogged(t, logs, down[0].id, "c") // event.value's correlation_id

	up.Store(true)
	// Past the cooldown of the last failed probe, the next notification is the probe.
	time.Sleep(2 * cfg.BreakerCooldown)
	back := []event{
		{id: "grace-up-1", typ: "ledger.account.credited.v1", account: "rita", position: 100},
		{id: "grace-up-2", typ: "ledger.account.credited.v1", account: "sam", position: 101},
		{id: "grace-up-3", typ: "ledger.account.credited.v1", account: "rita", position: 102},
	}
	tp.publish(t, back...)
	rcv.waitFor(t, 2*time.Minute, "the notifications after the recovery", func(_ int, ds []delivery) bool { return len(distinctIDs(ds)) == len(back) })
	got := rcv.distinct()
	for _, e := range down {
		if got[e.id] {
			t.Errorf("%s was delivered although the endpoint was down when it was handled", e.id)
		}
	}
	waitCommitted(t, tp, 0, int64(len(down)+len(back)))
	if _, dl, open, _ := m.get(); dl != len(down) || open != 0 {
		t.Errorf("%d dead letters and %d circuits open after the recovery; want %d (only the outage's) and 0", dl, open, len(down))
	}
}

// syncBuffer is a log sink the dispatcher's goroutines write while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// checkDeadLetterLogged: the dispatcher's log line for eventID's dead letter carries the
// message's correlation id (telemetry.Correlate). The line is written once the broker
// acknowledged, which may be after a consumer read the dead letter: wait a little.
func checkDeadLetterLogged(t *testing.T, logs *syncBuffer, eventID, correlationID string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for line := range strings.Lines(logs.String()) {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != "notification dead-lettered" || rec["event_id"] != eventID {
				continue
			}
			if rec[telemetry.LogCorrelationID] != correlationID {
				t.Errorf("the dead-letter log line of %s has %s %v, want %q: %s", eventID, telemetry.LogCorrelationID, rec[telemetry.LogCorrelationID], correlationID, line)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line \"notification dead-lettered\" for %s in 30s; the log:\n%s", eventID, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
