package relay_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/IBM/sarama"

	"github.com/securepay/securepay/services/relay"
	"github.com/securepay/securepay/services/telemetry"
)

func TestCheckProducerRefusesUnsafeSettings(t *testing.T) {
	if err := relay.CheckProducer(relay.ProducerConfig("t", relay.DefaultKafkaVersion)); err != nil {
		t.Fatalf("the relay's own settings are refused: %v", err)
	}
	for _, tc := range []struct {
		name  string
		edit  func(*sarama.Config)
		names string // what the refusal must mention
	}{
		{"not idempotent", func(c *sarama.Config) { c.Producer.Idempotent = false }, "Idempotent"},
		{"acks=1", func(c *sarama.Config) { c.Producer.RequiredAcks = sarama.WaitForLocal }, "RequiredAcks"},
		{"acks=0", func(c *sarama.Config) { c.Producer.RequiredAcks = sarama.NoResponse }, "RequiredAcks"},
		{"five requests in flight", func(c *sarama.Config) { c.Net.MaxOpenRequests = 5 }, "MaxOpenRequests"},
		{"no retries", func(c *sarama.Config) { c.Producer.Retry.Max = 0 }, "Retry.Max"},
		{"successes not returned", func(c *sarama.Config) { c.Producer.Return.Successes = false }, "Return.Successes"},
		{"protocol 2.0 (Kafka 4 refuses it)", func(c *sarama.Config) { c.Version = sarama.V2_0_0_0 }, "protocol version"},
		{"transactional", func(c *sarama.Config) { c.Producer.Transaction.ID = "x" }, "Transaction.ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := relay.ProducerConfig("t", relay.DefaultKafkaVersion)
			tc.edit(c)
			err := relay.CheckProducer(c)
			if !errors.Is(err, relay.ErrUnsafeProducer) || !strings.Contains(err.Error(), tc.names) {
				t.Fatalf("CheckProducer = %v, want ErrUnsafeProducer naming %s", err, tc.names)
			}
			// And a relay with it refuses to start, before it touches anything.
			_, err = relay.New(relay.Config{Store: nil, Brokers: []string{"127.0.0.1:1"}, Producer: c})
			if !errors.Is(err, relay.ErrUnsafeProducer) {
				t.Fatalf("relay.New with %s: %v, want ErrUnsafeProducer", tc.name, err)
			}
		})
	}
}

func TestConfigValidateNamesEveryProblem(t *testing.T) {
	_, err := relay.New(relay.Config{Window: -1, MaxBatch: 1 << 30, Topics: &relay.TopicSettings{Partitions: 0}})
	if err == nil {
		t.Fatal("an empty configuration was accepted")
	}
	for _, want := range []string{"a Store is required", "a Checkpoints store is required", "no Kafka broker", "window -1", "max batch", "partitions 0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	_, err = relay.New(relay.Config{TopicNames: relay.TopicNames{Payments: "same", Notifications: "same"}})
	if err == nil || !strings.Contains(err.Error(), `topics are both "same"`) {
		t.Fatalf("one topic for both: %v", err)
	}
	_, err = relay.New(relay.Config{TopicNames: relay.TopicNames{Payments: "bad topic"}})
	if err == nil || !strings.Contains(err.Error(), `topic name "bad topic"`) {
		t.Fatalf("a topic name with a space: %v", err)
	}
	_, err = relay.New(relay.Config{Topics: &relay.TopicSettings{Partitions: 3, ReplicationFactor: 1, MinInsyncReplicas: 2}})
	if err == nil || !strings.Contains(err.Error(), "min.insync.replicas 2 is more than the replication factor 1") {
		t.Fatalf("min ISR above the replication factor: %v", err)
	}
}

// The metrics the dashboards and alerts read (services/telemetry) plug into the relay as
// they are.
var _ relay.Metrics = (*telemetry.RelayMetrics)(nil)
