package dispatch_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/securepay/securepay/services/dispatch"
	"github.com/securepay/securepay/services/relay"
)

// BenchmarkDispatch measures the dispatcher against the real broker: SECUREPAY_DISPATCH_BENCH_N
// notifications (default 20,000) on 12 partitions over 500 accounts, each delivered to
// SECUREPAY_DISPATCH_BENCH_ENDPOINTS endpoints (default 2) that answer 204 at once, from a
// new consumer group to the last delivery. It reports deliveries/s and the process's CPU
// time (user+system, getrusage) per delivery; the receivers run in the same process, so
// their share is in it too.
//
// Run: go test -run '^$' -bench BenchmarkDispatch -benchtime 1x ./services/dispatch/
func BenchmarkDispatch(b *testing.B) {
	n := envInt(b, "SECUREPAY_DISPATCH_BENCH_N", 20_000)
	endpoints := envInt(b, "SECUREPAY_DISPATCH_BENCH_ENDPOINTS", 2)
	tp := newTopics(b, 12)
	events := credits("bench", n, accounts(500)...)
	msgs := make([]*sarama.ProducerMessage, 0, len(events))
	for _, e := range events {
		msgs = append(msgs, &sarama.ProducerMessage{Topic: tp.notifications, Key: sarama.StringEncoder(e.account), Value: sarama.ByteEncoder(e.value()),
			Headers: []sarama.RecordHeader{{Key: []byte(relay.HeaderEventID), Value: []byte(e.id)}}})
	}
	for i := 0; i < len(msgs); i += 1000 {
		if err := tp.producer.SendMessages(msgs[i:min(i+1000, len(msgs))]); err != nil {
			b.Fatalf("publish: %v", err)
		}
	}
	var delivered atomic.Int64
	done := make(chan struct{})
	var eps []dispatch.Endpoint
	for i := range endpoints {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if delivered.Add(1) == int64(n*endpoints) {
				close(done)
			}
			w.WriteHeader(http.StatusNoContent)
		}))
		b.Cleanup(srv.Close)
		eps = append(eps, dispatch.Endpoint{ID: "ep-" + strconv.Itoa(i), URL: srv.URL, Secret: []byte("bench-secret-0123456789")})
	}
	for b.Loop() {
		d, err := dispatch.New(dispatch.Config{Brokers: []string{tp.addr}, Topic: tp.notifications, DeadLetterTopic: tp.dlq, Group: tp.group,
			Directory: dispatch.StaticDirectory{"*": eps}})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cpu0 := cpuTime(b)
		start := time.Now()
		stopped := make(chan error, 1)
		go func() { stopped <- d.Run(ctx) }()
		select {
		case <-done:
		case <-time.After(10 * time.Minute):
			b.Fatalf("delivered %d of %d in 10 minutes", delivered.Load(), n*endpoints)
		}
		took := time.Since(start)
		cpu := cpuTime(b) - cpu0
		cancel()
		<-stopped
		total := float64(n * endpoints)
		b.ReportMetric(total/took.Seconds(), "deliveries/s")
		b.ReportMetric(float64(cpu.Microseconds())/total, "cpu-µs/delivery")
	}
}

func accounts(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "acct-" + strconv.Itoa(i)
	}
	return out
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
