package services

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/grpchealth"

	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/eventstore"
)

// fakeDep is a dependency whose health the test sets, counting how often it is asked.
type fakeDep struct {
	down  atomic.Bool
	calls atomic.Int64
}

func (f *fakeDep) check(context.Context) error {
	f.calls.Add(1)
	if f.down.Load() {
		return fmt.Errorf("dial: %w", eventstore.ErrUnavailable)
	}
	return nil
}

func TestHealthFollowsTheDependenciesEachServiceNeeds(t *testing.T) {
	store, cache := &fakeDep{}, &fakeDep{}
	now := time.Unix(0, 0)
	h := newHealthChecker([]Dependency{
		{Name: "store", Check: store.check, NeededBy: []string{ledgerv1connect.PaymentServiceName}},
		{Name: "redis", Check: cache.check},
	}, serviceNames, time.Second, time.Second, slog.New(slog.DiscardHandler))
	h.now = func() time.Time { return now }
	mux := http.NewServeMux()
	h.healthHTTP(mux)

	check := func(service string) grpchealth.Status {
		t.Helper()
		res, err := h.Check(context.Background(), &grpchealth.CheckRequest{Service: service})
		if err != nil {
			t.Fatalf("check %q: %v", service, err)
		}
		return res.Status
	}
	readyz := func() (int, readiness) {
		t.Helper()
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		var body readiness
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("/readyz body %q: %v", rec.Body.String(), err)
		}
		return rec.Code, body
	}
	later := func() { now = now.Add(time.Second) } // past the cache period

	if s := check(""); s != grpchealth.StatusServing {
		t.Fatalf("all up: want SERVING, got %v", s)
	}

	// Only a cache is down: degraded, still serving and ready.
	cache.down.Store(true)
	later()
	if s := check(ledgerv1connect.BalanceServiceName); s != grpchealth.StatusServing {
		t.Errorf("without the cache: want SERVING, got %v", s)
	}
	if code, body := readyz(); code != http.StatusOK || len(body.Degraded) != 1 || body.Degraded[0] != "redis" {
		t.Errorf("without the cache: want 200 naming redis as degraded, got %d %+v", code, body)
	}

	// The store is down: the service that needs it and the whole process are not serving.
	store.down.Store(true)
	later()
	if s := check(ledgerv1connect.PaymentServiceName); s != grpchealth.StatusNotServing {
		t.Errorf("without the store: PaymentService want NOT_SERVING, got %v", s)
	}
	if s := check(""); s != grpchealth.StatusNotServing {
		t.Errorf("without the store: overall want NOT_SERVING, got %v", s)
	}
	if s := check(ledgerv1connect.AuditServiceName); s != grpchealth.StatusServing {
		t.Errorf("without the store: a service that does not need it (here) stays SERVING, got %v", s)
	}
	if code, body := readyz(); code != http.StatusServiceUnavailable || body.Ready || body.Dependencies["store"] != "unreachable" {
		t.Errorf("without the store: want 503 with the store unreachable, got %d %+v", code, body)
	}

	// Within the cache period, probes do not reach the dependencies.
	before := store.calls.Load()
	for range 100 {
		check("")
		readyz()
	}
	if got := store.calls.Load() - before; got != 0 {
		t.Errorf("100 probes within the cache period: want no new checks, got %d", got)
	}

	store.down.Store(false)
	cache.down.Store(false)
	later()
	if s := check(""); s != grpchealth.StatusServing {
		t.Errorf("after recovery: want SERVING, got %v", s)
	}

	// Draining: every answer is NOT_SERVING, /healthz still says alive.
	h.drain()
	if s := check(ledgerv1connect.PaymentServiceName); s != grpchealth.StatusNotServing {
		t.Errorf("draining: want NOT_SERVING, got %v", s)
	}
	if code, body := readyz(); code != http.StatusServiceUnavailable || !body.Draining {
		t.Errorf("draining: want 503 draining, got %d %+v", code, body)
	}
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("/healthz while draining: want 200, got %d", rec.Code)
	}

	if _, err := h.Check(context.Background(), &grpchealth.CheckRequest{Service: "no.such.Service"}); err == nil {
		t.Error("an unknown service: want NotFound")
	}
}

// A dependency that hangs costs a probe the check timeout, not the hang.
func TestHealthCheckIsBoundedByItsTimeout(t *testing.T) {
	hang := func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
	h := newHealthChecker([]Dependency{{Name: "store", Check: hang, NeededBy: serviceNames}},
		serviceNames, 50*time.Millisecond, time.Second, slog.New(slog.DiscardHandler))
	start := time.Now()
	res, err := h.Check(context.Background(), &grpchealth.CheckRequest{})
	if took := time.Since(start); err != nil || res.Status != grpchealth.StatusNotServing || took > 2*time.Second {
		t.Fatalf("a hanging store: want NOT_SERVING within the timeout, got %v %v after %s", res, err, took)
	}
	if body := h.readiness(context.Background()); body.Dependencies["store"] != "unreachable" {
		t.Errorf("a hanging store: want it reported unreachable, got %+v", body)
	}
}
