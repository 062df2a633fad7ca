package bank

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"

	"github.com/securepay/securepay/internal/kafkatest"
	"github.com/securepay/securepay/services/relay"
)

// The kill-relay fault: `securepay serve relay` runs beside the server for the whole bank
// run, publishing the log to the real broker (SECUREPAY_TEST_KAFKA_ADDR, started by
// infra/local/test.sh), and is SIGKILLed and restarted. At the end, once its checkpoint
// reached the log's head, an independent consumer reads both topics back and checks the
// relay's invariant (docs/KAFKA.md, "Guarantees"):
//
//   - nothing lost: every event of the log up to the head is in Kafka at least once;
//   - nothing invented: every message's event id is in the log, with the position,
//     stream, topic, key and hash the log has for it;
//   - per-key order: deduped by event id (the first delivery kept), the events of each
//     key come in log order.
//
// Duplicates are allowed (a kill re-publishes what was not yet checkpointed) and counted.

// relayName is the relay's checkpoint name in the bank test.
const relayName = "bank"

// relayWindow bounds what one kill re-publishes; small, so a kill does re-publish.
const relayWindow = 2000

// publishingLine is in the relay's log once per session that reached the broker.
const publishingLine = `"msg":"relay publishing"`

// relayUnderTest is the `securepay serve relay` process of a bank run.
type relayUnderTest struct {
	t        *testing.T
	c        *cluster
	broker   string
	ownerDSN string
	dsnFile  string // the relay's own login role (migrate --relay-role)
	topics   relay.TopicNames
	logPath  string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	kills  int
}

// startRelay grants the relay a login role of its own, as the operator set-up does, and
// starts it on topics of this run.
func startRelay(t *testing.T, c *cluster) *relayUnderTest {
	t.Helper()
	began := time.Now()
	broker := kafkatest.Addr(t)
	owner, err := os.ReadFile(filepath.Join(c.dir, "owner-dsn"))
	if err != nil {
		t.Fatalf("the bank cluster's owner DSN: %v", err)
	}
	r := &relayUnderTest{t: t, c: c, broker: broker, ownerDSN: strings.TrimSpace(string(owner)), logPath: filepath.Join(c.dir, "relay.log"),
		topics: relay.TopicNames{Payments: kafkatest.Name(t, "bank.payments"), Notifications: kafkatest.Name(t, "bank.notifications")}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, r.ownerDSN)
	if err != nil {
		t.Fatalf("connect to the bank cluster: %v", err)
	}
	_, err = conn.Exec(ctx, "CREATE ROLE bank_relay LOGIN")
	conn.Close(ctx)
	if err != nil {
		t.Fatalf("create the relay's role: %v", err)
	}
	if out, err := exec.CommandContext(ctx, c.bin, "migrate", "--postgres-dsn-file", filepath.Join(c.dir, "owner-dsn"), "--relay-role", "bank_relay").CombinedOutput(); err != nil {
		t.Fatalf("securepay migrate --relay-role bank_relay: %v\n%s", err, out)
	}
	r.dsnFile = c.private("relay-dsn", strings.Replace(r.ownerDSN, "postgres://postgres@", "postgres://bank_relay@", 1))
	t.Cleanup(r.stop)
	if err := r.start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("relay: serve relay publishing to %s and %s, %s after its set-up began", r.topics.Payments, r.topics.Notifications, time.Since(began).Round(time.Millisecond))
	return r
}

// start launches the relay and waits until it publishes (it logged "relay publishing"
// once more), or fails if it exits first.
func (r *relayUnderTest) start() error {
	// Sessions of the killed process (a PostgreSQL crash restarts one) logged their own
	// lines: only one more than now says this process publishes.
	before, _ := os.ReadFile(r.logPath)
	want := strings.Count(string(before), publishingLine) + 1
	logFile, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(r.c.bin, "serve", "relay", "--postgres-dsn-file", r.dsnFile, "--kafka-brokers", r.broker,
		"--payments-topic", r.topics.Payments, "--notifications-topic", r.topics.Notifications,
		"--topic-partitions", "4", "--name", relayName, "--window", strconv.Itoa(relayWindow))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start serve relay: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logFile.Close(); close(exited) }()
	r.mu.Lock()
	r.cmd, r.exited = cmd, exited
	r.mu.Unlock()
	deadline := time.Now().Add(time.Minute)
	for {
		b, _ := os.ReadFile(r.logPath)
		if strings.Count(string(b), publishingLine) >= want {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("serve relay exited before it published; its log:\n%s", r.logTail())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("serve relay did not start publishing within a minute; its log:\n%s", r.logTail())
		}
	}
}

// kill SIGKILLs the relay and waits for it to be gone.
func (r *relayUnderTest) kill() error {
	r.mu.Lock()
	cmd, exited := r.cmd, r.exited
	r.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-exited:
		return fmt.Errorf("serve relay had exited on its own before the kill; its log:\n%s", r.logTail())
	default:
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill serve relay: %w", err)
	}
	<-exited
	r.mu.Lock()
	r.kills++
	r.mu.Unlock()
	return nil
}

// fault is kill-relay: SIGKILL, then a restart from the saved checkpoint.
func (r *relayUnderTest) fault() Fault {
	return Fault{Name: "kill-relay", Inject: func(context.Context) error {
		if err := r.kill(); err != nil {
			return err
		}
		return r.start()
	}}
}

func (r *relayUnderTest) stop() {
	_ = r.kill()
	if r.t.Failed() {
		r.t.Logf("serve relay's log (tail):\n%s", r.logTail())
	}
}

func (r *relayUnderTest) logTail() string {
	b, _ := os.ReadFile(r.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// logEvent is what the check needs of one event of the log.
type logEvent struct {
	position uint64
	id       string
	stream   string
	hash     string // hex
}

// verify waits until the relay's checkpoint covers the log's head, reads both topics back
// with an independent consumer and returns every violation of the relay's invariant.
func (r *relayUnderTest) verify(settle time.Duration) []string {
	t := r.t
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), settle)
	defer cancel()
	conn, err := pgx.Connect(ctx, r.ownerDSN)
	if err != nil {
		return []string{fmt.Sprintf("relay check: connect to the log: %v", err)}
	}
	defer conn.Close(context.Background())
	var head uint64
	if err := conn.QueryRow(ctx, "SELECT COALESCE(max(position), 0) FROM securepay.events").Scan(&head); err != nil {
		return []string{fmt.Sprintf("relay check: read the head: %v", err)}
	}
	for {
		var cp uint64
		err := conn.QueryRow(ctx, "SELECT position FROM securepay_relay.checkpoints WHERE name = $1", relayName).Scan(&cp)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return []string{fmt.Sprintf("relay check: read the checkpoint: %v", err)}
		}
		if cp >= head {
			break
		}
		r.mu.Lock()
		exited := r.exited
		r.mu.Unlock()
		select {
		case <-exited:
			return []string{fmt.Sprintf("serve relay exited with its checkpoint at %d of %d; its log:\n%s", cp, head, r.logTail())}
		case <-ctx.Done():
			return []string{fmt.Sprintf("the relay's checkpoint is %d, not the log's head %d, %s after the run", cp, head, settle)}
		case <-time.After(100 * time.Millisecond):
		}
	}
	rows, err := conn.Query(ctx, "SELECT position, event_id, stream, encode(hash, 'hex') FROM securepay.events WHERE position <= $1 ORDER BY position", int64(head))
	if err != nil {
		return []string{fmt.Sprintf("relay check: read the log: %v", err)}
	}
	log, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (logEvent, error) {
		var e logEvent
		var pos int64
		err := row.Scan(&pos, &e.id, &e.stream, &e.hash)
		e.position = uint64(pos)
		return e, err
	})
	if err != nil {
		return []string{fmt.Sprintf("relay check: read the log: %v", err)}
	}

	// Read until every event id of the log was seen: the checkpoint says the broker
	// acknowledged them all with acks=all, so they are there to read.
	byID := make(map[string]*logEvent, len(log))
	for i := range log {
		byID[log[i].id] = &log[i]
	}
	seen := make(map[string]bool, len(log))
	read := 0
	msgs := kafkatest.Consume(t, r.broker, []string{r.topics.Payments, r.topics.Notifications}, settle, func(ms []*sarama.ConsumerMessage) bool {
		for _, m := range ms[read:] {
			if id := kafkatest.Header(m, relay.HeaderEventID); byID[id] != nil {
				seen[id] = true
			}
		}
		read = len(ms)
		return len(seen) == len(log)
	})
	violations := checkRelayMessages(log, msgs, r.topics)
	r.mu.Lock()
	kills := r.kills
	r.mu.Unlock()
	t.Logf("relay: %d events in the log, %d messages read back (%d delivered more than once), %d kills of serve relay, %d violations; the check took %s",
		len(log), len(msgs), len(msgs)-len(seen), kills, len(violations), time.Since(start).Round(time.Millisecond))
	return violations
}

// checkRelayMessages checks the messages read back against the log (the events up to the
// head the relay's checkpoint covers): none missing, none invented, per-key order.
func checkRelayMessages(log []logEvent, msgs []*sarama.ConsumerMessage, topics relay.TopicNames) []string {
	var v []string
	violate := func(format string, args ...any) {
		if len(v) < 100 {
			v = append(v, fmt.Sprintf(format, args...))
		}
	}
	byID := make(map[string]*logEvent, len(log))
	for i := range log {
		byID[log[i].id] = &log[i]
	}
	// Offset order within each partition: what a consumer sees, and what per-key order is
	// about (one key, one partition).
	msgs = slices.Clone(msgs)
	slices.SortFunc(msgs, func(a, b *sarama.ConsumerMessage) int {
		return cmp.Or(cmp.Compare(a.Topic, b.Topic), cmp.Compare(a.Partition, b.Partition), cmp.Compare(a.Offset, b.Offset))
	})
	first := map[string]bool{}
	lastOfKey := map[string]uint64{} // topic/key → position of its last first delivery
	for _, m := range msgs {
		where := fmt.Sprintf("%s/%d@%d", m.Topic, m.Partition, m.Offset)
		id := kafkatest.Header(m, relay.HeaderEventID)
		e := byID[id]
		if e == nil {
			violate("message %s carries event id %q, which is not in the log up to its head: invented", where, id)
			continue
		}
		wantTopic, wantKey := topics.Notifications, strings.TrimPrefix(e.stream, "account-")
		if strings.HasPrefix(e.stream, "payment-") {
			wantTopic, wantKey = topics.Payments, strings.TrimPrefix(e.stream, "payment-")
		}
		var value struct {
			Position uint64 `json:"position"`
			Stream   string `json:"stream"`
			Hash     string `json:"hash"`
		}
		if err := json.Unmarshal(m.Value, &value); err != nil {
			violate("message %s (event %s): the value is not JSON: %v", where, id, err)
			continue
		}
		if pos := kafkatest.Header(m, relay.HeaderPosition); pos != strconv.FormatUint(e.position, 10) || value.Position != e.position ||
			value.Stream != e.stream || value.Hash != e.hash || m.Topic != wantTopic || string(m.Key) != wantKey {
			violate("message %s (event %s): position %s/%d, stream %q, hash %s, topic %s, key %q; the log has position %d, stream %q, hash %s (topic %s, key %q)",
				where, id, pos, value.Position, value.Stream, value.Hash, m.Topic, m.Key, e.position, e.stream, e.hash, wantTopic, wantKey)
			continue
		}
		if first[id] {
			continue // a redelivery: consumers dedupe by event id
		}
		first[id] = true
		k := m.Topic + "/" + string(m.Key)
		if last, ok := lastOfKey[k]; ok && last >= e.position {
			violate("key %s: event at position %d first delivered after position %d (%s): per-key order broken", k, e.position, last, where)
		}
		lastOfKey[k] = e.position
	}
	missing := 0
	for _, e := range log {
		if !first[e.id] {
			if missing < 10 {
				violate("event %s at position %d (stream %s) is in the log but not in Kafka: lost", e.id, e.position, e.stream)
			}
			missing++
		}
	}
	if missing > 10 {
		violate("... %d events lost in all", missing)
	}
	return v
}
