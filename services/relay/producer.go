package relay

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/IBM/sarama"
)

// MinKafkaVersion is the oldest protocol version the relay speaks: Kafka 4 brokers refuse
// the requests of clients older than 2.1, and sarama's idempotent producer needs 0.11.
var MinKafkaVersion = sarama.V2_1_0_0

// DefaultKafkaVersion is the protocol version the relay asks for unless told otherwise;
// seen working with Kafka 4.1.1.
var DefaultKafkaVersion = sarama.V3_6_0_0

// ProducerConfig returns the producer settings the relay runs with: idempotent, every
// in-sync replica acknowledges (acks=all), one request in flight per broker so a retry
// never reorders a partition, bounded retries with exponential backoff and jitter, and
// every outcome reported back (the checkpoint moves on successes only).
func ProducerConfig(clientID string, version sarama.KafkaVersion) *sarama.Config {
	c := sarama.NewConfig()
	c.ClientID = clientID
	c.Version = version
	c.Producer.Idempotent = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Net.MaxOpenRequests = 1
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	// Retries inside the producer ride out a leader election or a broker restart of a few
	// seconds; after them the relay itself restarts the producer from its checkpoint.
	c.Producer.Retry.Max = 10
	c.Producer.Retry.BackoffFunc = func(retries, _ int) time.Duration {
		d := min(100*time.Millisecond<<min(retries, 5), 2*time.Second)
		return d/2 + rand.N(d/2+1) // jitter: producers restarted together spread out
	}
	// Batching: with one request in flight per broker, what arrives meanwhile forms the
	// next request; a short linger fills batches without adding visible latency.
	c.Producer.Flush.Frequency = 2 * time.Millisecond
	c.Producer.Flush.Bytes = 1 << 20
	c.ChannelBufferSize = 4096 // between the relay and sarama's per-partition batching
	c.Producer.Flush.MaxMessages = 0
	c.Producer.Compression = sarama.CompressionNone
	c.Producer.Partitioner = sarama.NewHashPartitioner // key → partition: per-key order
	c.Metadata.AllowAutoTopicCreation = false          // topics are created on purpose (EnsureTopics)
	c.Net.DialTimeout = 5 * time.Second
	c.Net.ReadTimeout = 10 * time.Second
	c.Net.WriteTimeout = 10 * time.Second
	c.Producer.Timeout = 10 * time.Second
	c.Metadata.Retry.Max = 3
	c.Metadata.Retry.Backoff = 250 * time.Millisecond
	return c
}

// ErrUnsafeProducer is wrapped by CheckProducer's refusals.
var ErrUnsafeProducer = errors.New("relay: unsafe Kafka producer configuration")

// CheckProducer refuses producer settings under which the relay could lose, reorder or
// duplicate-without-trace an event: each of them would make "the checkpoint moves only
// after the broker acknowledged" a lie. It names every problem at once.
func CheckProducer(c *sarama.Config) error {
	if c == nil {
		return fmt.Errorf("%w: no configuration", ErrUnsafeProducer)
	}
	var errs []string
	if !c.Producer.Idempotent {
		errs = append(errs, "Producer.Idempotent must be true (a retried batch would be written twice, or out of order)")
	}
	if c.Producer.RequiredAcks != sarama.WaitForAll {
		errs = append(errs, fmt.Sprintf("Producer.RequiredAcks must be WaitForAll (acks=all), got %d: with fewer, an acknowledged event can be lost with its leader", c.Producer.RequiredAcks))
	}
	if c.Net.MaxOpenRequests != 1 {
		errs = append(errs, fmt.Sprintf("Net.MaxOpenRequests must be 1, got %d: with more, a retry can reorder a partition", c.Net.MaxOpenRequests))
	}
	if c.Producer.Retry.Max < 1 {
		errs = append(errs, fmt.Sprintf("Producer.Retry.Max must be at least 1, got %d", c.Producer.Retry.Max))
	}
	if !c.Producer.Return.Successes || !c.Producer.Return.Errors {
		errs = append(errs, "Producer.Return.Successes and Producer.Return.Errors must be true: the checkpoint moves on acknowledgements")
	}
	if !c.Version.IsAtLeast(MinKafkaVersion) {
		errs = append(errs, fmt.Sprintf("protocol version %s is older than %s, the oldest Kafka 4 brokers accept", c.Version, MinKafkaVersion))
	}
	if c.Producer.Transaction.ID != "" {
		errs = append(errs, "Producer.Transaction.ID must be empty: the relay does not use transactions, the checkpoint and the event id make redelivery safe")
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s", ErrUnsafeProducer, strings.Join(errs, "; "))
	}
	if err := c.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrUnsafeProducer, err)
	}
	return nil
}
