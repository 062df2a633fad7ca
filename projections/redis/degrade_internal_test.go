package redis

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/projections"
)

// viewReader is the view behind the cache: it always answers.
type viewReader struct{}

func (viewReader) Balance(_ context.Context, id domain.AccountID, _ projections.AsOf, _ uint64) (projections.Balance, error) {
	return projections.Balance{Account: domain.Account{ID: id, Posted: 100}}, nil
}

func (viewReader) History(context.Context, domain.AccountID, uint64, int, uint64) ([]projections.Entry, error) {
	return nil, nil
}

func (viewReader) Payment(context.Context, domain.PaymentID, uint64) (projections.Payment, error) {
	return projections.Payment{}, projections.ErrNotFound
}

func (viewReader) Position(context.Context) (uint64, error) { return 0, nil }

// syncBuffer is a log sink for the reads' goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) messages() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for line := range strings.SplitSeq(strings.TrimSpace(s.b.String()), "\n") {
		var rec struct {
			Msg string `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil {
			out = append(out, rec.Msg)
		}
	}
	return out
}

// A Redis that does not answer (here a listener that accepts and never replies, the worst
// case: a refused connection fails faster) costs a read at most ReadTimeout, and the
// outage is logged once.
func TestReadsWithoutRedisFallBackWithinTheTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never answered
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	rdb := goredis.NewClient(&goredis.Options{Addr: ln.Addr().String(), Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { rdb.Close() })
	logs := &syncBuffer{}
	v, err := New(Config{Client: rdb, Logger: slog.New(slog.NewJSONHandler(logs, nil)), ReadTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r := v.CachedReader(viewReader{})
	const reads = 50
	took := make([]time.Duration, 0, reads)
	for range reads {
		start := time.Now()
		b, err := r.Balance(context.Background(), "alice", projections.AsOf{}, 0)
		took = append(took, time.Since(start))
		if err != nil || b.Posted != 100 {
			t.Fatalf("balance without Redis: want the view's answer, got %+v %v", b, err)
		}
	}
	slices.Sort(took)
	t.Logf("%d reads with Redis hanging: p50 %s, p99 %s", reads, took[reads/2], took[reads*99/100])
	if p99 := took[reads*99/100]; p99 > 500*time.Millisecond {
		t.Errorf("reads with Redis hanging: want p99 < 500ms, got %s", p99)
	}
	var down int
	for _, m := range logs.messages() {
		if strings.HasPrefix(m, "redis unreachable") {
			down++
		}
	}
	if down != 1 {
		t.Errorf("want one degradation line for %d failed reads, got %d: %q", reads, down, logs.messages())
	}
}

// The outage is logged once when it starts and once when it ends, whatever the number of
// reads; while it lasts, one read per interval tries Redis.
func TestDegradationLogsOnceEachWay(t *testing.T) {
	logs := &syncBuffer{}
	now := time.Unix(0, 0)
	d := &degradation{log: slog.New(slog.NewJSONHandler(logs, nil)), clock: func() time.Time { return now }}
	ctx := context.Background()
	if d.skip() {
		t.Fatal("healthy: reads must try Redis")
	}
	d.failed(ctx, context.DeadlineExceeded)
	skipped := 0
	for range 100 {
		if d.skip() {
			skipped++
		}
		d.failed(ctx, context.DeadlineExceeded)
	}
	if skipped != 100 {
		t.Errorf("within the retry interval: want every read to skip Redis, %d of 100 did", skipped)
	}
	now = now.Add(readRetryInterval)
	if d.skip() {
		t.Error("after the retry interval: one read must try Redis")
	}
	if !d.skip() {
		t.Error("after the retry interval: only one read tries Redis")
	}
	d.ok()
	d.ok()
	if d.skip() {
		t.Error("recovered: reads must try Redis")
	}
	msgs := logs.messages()
	if len(msgs) != 2 || !strings.HasPrefix(msgs[0], "redis unreachable") || !strings.HasPrefix(msgs[1], "redis reachable again") {
		t.Errorf("want one line down and one line up, got %q", msgs)
	}
	// A read whose caller gave up says nothing about Redis.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	d.failed(cctx, context.Canceled)
	if d.isDown() {
		t.Error("a canceled caller must not start an outage")
	}
}
