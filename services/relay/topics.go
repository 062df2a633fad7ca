package relay

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/IBM/sarama"
)

// TopicSettings says how the relay creates its topics when they are missing. Topics that
// exist are left as they are: partitions and replication are an operator's decision.
type TopicSettings struct {
	// Partitions of each topic; keys spread over them, each key's events stay in one.
	Partitions int32
	// ReplicationFactor of each topic; -1 takes the broker's default.replication.factor.
	ReplicationFactor int16
	// MinInsyncReplicas, when > 0, sets min.insync.replicas: with acks=all, how many
	// replicas hold an event before it is acknowledged (2 of 3 in production).
	MinInsyncReplicas int
}

func (t TopicSettings) validate() error {
	switch {
	case t.Partitions < 1 || t.Partitions > 10_000:
		return fmt.Errorf("topic partitions %d out of 1..10000", t.Partitions)
	case t.ReplicationFactor == 0 || t.ReplicationFactor < -1:
		return fmt.Errorf("topic replication factor %d must be -1 (the broker's default) or positive", t.ReplicationFactor)
	case t.MinInsyncReplicas < 0:
		return fmt.Errorf("min.insync.replicas %d must not be negative", t.MinInsyncReplicas)
	case t.ReplicationFactor > 0 && t.MinInsyncReplicas > int(t.ReplicationFactor):
		return fmt.Errorf("min.insync.replicas %d is more than the replication factor %d: no write could ever be acknowledged", t.MinInsyncReplicas, t.ReplicationFactor)
	}
	return nil
}

// EnsureTopics creates those of topics that are missing, with settings t: the
// notification dispatcher's dead-letter topic is made the way the relay makes its own.
func EnsureTopics(client sarama.Client, topics []string, t TopicSettings) error {
	if err := t.validate(); err != nil {
		return err
	}
	return ensureTopics(client, topics, t)
}

// ensureTopics creates the relay's missing topics.
func ensureTopics(client sarama.Client, topics []string, t TopicSettings) error {
	existing, err := client.Topics()
	if err != nil {
		return fmt.Errorf("list Kafka topics: %w", err)
	}
	have := make(map[string]bool, len(existing))
	for _, name := range existing {
		have[name] = true
	}
	var missing []string
	for _, name := range topics {
		if !have[name] {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	// The admin shares the producer's client; closing it would close the client, so it is
	// left to the client's Close.
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		return fmt.Errorf("start the Kafka admin: %w", err)
	}
	detail := &sarama.TopicDetail{NumPartitions: t.Partitions, ReplicationFactor: t.ReplicationFactor}
	if t.MinInsyncReplicas > 0 {
		v := strconv.Itoa(t.MinInsyncReplicas)
		detail.ConfigEntries = map[string]*string{"min.insync.replicas": &v}
	}
	for _, name := range missing {
		err := admin.CreateTopic(name, detail, false)
		if err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
			return fmt.Errorf("create Kafka topic %s: %w", name, err)
		}
	}
	// The producer needs the new topics' leaders in its metadata.
	if err := client.RefreshMetadata(missing...); err != nil {
		return fmt.Errorf("read the metadata of the new topics %v: %w", missing, err)
	}
	return nil
}
