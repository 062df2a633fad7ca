// Package kafkatest gives tests the throw-away Kafka broker named by Env (started by
// infra/local/test.sh), brokers of their own when a test must stop and restart one, and an
// independent consumer that reads topics back with nothing of the relay's code.
//
// It is imported only by tests.
package kafkatest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// Env names the bootstrap address of the test broker (infra/local/test.sh sets it).
const Env = "SECUREPAY_TEST_KAFKA_ADDR"

// Addr returns the test broker's address. Without one the test fails rather than skips: a
// relay that was not tested against a real broker must not look green.
func Addr(t testing.TB) string {
	t.Helper()
	addr := os.Getenv(Env)
	if addr == "" {
		t.Fatalf("%s is not set: run infra/local/test.sh (or infra/local/kafka.sh start DIR and export the address it prints)", Env)
	}
	return addr
}

// Name returns base with a random suffix: topics of tests that share a broker never meet.
func Name(t testing.TB, base string) string {
	t.Helper()
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("random name: %v", err)
	}
	return base + "." + hex.EncodeToString(b[:])
}

// Broker is a broker of the test's own, in a temporary directory, started and stopped by
// infra/local/kafka.sh; it keeps its address and data across Stop and Start.
type Broker struct {
	Addr   string
	dir    string
	script string
}

// StartBroker starts a broker of the test's own; it is stopped at cleanup. It needs the
// environment of the shared one (java, the cached jars): it fails when Env is not set.
func StartBroker(t testing.TB) *Broker {
	t.Helper()
	Addr(t)
	b := &Broker{dir: t.TempDir(), script: script(t)}
	b.Start(t)
	t.Cleanup(func() { b.Stop(t) })
	return b
}

// Start (re)starts the broker and waits until it accepts connections.
func (b *Broker) Start(t testing.TB) {
	t.Helper()
	out, err := exec.Command("bash", b.script, "start", b.dir).Output()
	if err != nil {
		t.Fatalf("kafka.sh start %s: %v\n%s", b.dir, err, stderr(err))
	}
	addr := strings.TrimSpace(string(out))
	if b.Addr != "" && addr != b.Addr {
		t.Fatalf("broker came back on %s, was %s", addr, b.Addr)
	}
	b.Addr = addr
}

// Stop stops the broker (safe to call twice).
func (b *Broker) Stop(t testing.TB) {
	t.Helper()
	if out, err := exec.Command("bash", b.script, "stop", b.dir).CombinedOutput(); err != nil {
		t.Errorf("kafka.sh stop %s: %v\n%s", b.dir, err, out)
	}
}

func stderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// script finds infra/local/kafka.sh above the test's working directory.
func script(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		p := filepath.Join(dir, "infra", "local", "kafka.sh")
		if _, err := os.Stat(p); err == nil {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("infra/local/kafka.sh not found above the working directory")
		}
		dir = parent
	}
}

// Consume reads every partition of topics from the oldest offset with a plain sarama
// consumer (no group, nothing of the code under test) until done says it has enough or
// timeout passes; it returns what it read, in the order each partition holds it.
func Consume(t testing.TB, addr string, topics []string, timeout time.Duration, done func([]*sarama.ConsumerMessage) bool) []*sarama.ConsumerMessage {
	t.Helper()
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_6_0_0
	cfg.ClientID = "securepay-test-consumer"
	cfg.Consumer.Return.Errors = true
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client, err := sarama.NewClient([]string{addr}, cfg)
	if err != nil {
		t.Fatalf("Kafka client of %s: %v", addr, err)
	}
	defer client.Close()
	// A topic the code under test has just created may not have a leader yet: wait for
	// every partition's leader, within the timeout.
	for _, topic := range topics {
		for {
			err := leaders(client, topic)
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("topic %s has no leader for every partition within %s: %v", topic, timeout, err)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		t.Fatalf("consumer of %s: %v", addr, err)
	}
	defer consumer.Close()
	var (
		mu   sync.Mutex
		msgs []*sarama.ConsumerMessage
		wake = make(chan struct{}, 1)
		wg   sync.WaitGroup
	)
	for _, topic := range topics {
		parts, err := consumer.Partitions(topic)
		if err != nil {
			t.Fatalf("partitions of %s: %v", topic, err)
		}
		for _, p := range parts {
			pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
			// Just after a topic's creation a broker may still answer "not the leader"
			// although the metadata named it: retry, within the timeout.
			for err != nil && ctx.Err() == nil {
				if !errors.Is(err, sarama.ErrNotLeaderForPartition) && !errors.Is(err, sarama.ErrLeaderNotAvailable) &&
					!errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
					break
				}
				time.Sleep(200 * time.Millisecond)
				_ = client.RefreshMetadata(topic)
				pc, err = consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
			}
			if err != nil {
				t.Fatalf("consume %s/%d: %v", topic, p, err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer pc.AsyncClose()
				for {
					select {
					case <-ctx.Done():
						return
					case m := <-pc.Messages():
						mu.Lock()
						msgs = append(msgs, m)
						mu.Unlock()
						select {
						case wake <- struct{}{}:
						default:
						}
					case <-pc.Errors():
						// Transient (a leader moving): the partition consumer retries by
						// itself, and done decides whether enough arrived.
					}
				}
			}()
		}
	}
	for {
		mu.Lock()
		enough := done(msgs)
		mu.Unlock()
		if enough {
			break
		}
		select {
		case <-ctx.Done():
			cancel()
			wg.Wait()
			t.Fatalf("consumed %d messages of %v in %s, not what the test waits for", len(msgs), topics, timeout)
		case <-wake:
		case <-time.After(200 * time.Millisecond):
		}
	}
	cancel()
	wg.Wait()
	return msgs
}

// Header returns the value of a message's header, "" when absent.
func Header(m *sarama.ConsumerMessage, key string) string {
	for _, h := range m.Headers {
		if string(h.Key) == key {
			return string(h.Value)
		}
	}
	return ""
}

func leaders(client sarama.Client, topic string) error {
	if err := client.RefreshMetadata(topic); err != nil {
		return err
	}
	parts, err := client.Partitions(topic)
	if err != nil {
		return err
	}
	if len(parts) == 0 {
		return fmt.Errorf("topic %s has no partitions", topic)
	}
	for _, p := range parts {
		if _, err := client.Leader(topic, p); err != nil {
			return fmt.Errorf("partition %d: %w", p, err)
		}
	}
	return nil
}
