package services

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
)

// Dependency is something the server calls that can be down. Check answers nil when it is
// usable; it is called with a short deadline (Config.HealthCheckTimeout) and must honour it.
type Dependency struct {
	Name  string
	Check func(ctx context.Context) error
	// NeededBy names the services (as health names them, e.g. ledgerv1connect.PaymentServiceName)
	// that cannot answer without this dependency: they report NOT_SERVING while it is
	// down, and so do the whole process and /readyz. Empty means the server only degrades
	// without it (a cache it falls back from): it is reported, never NOT_SERVING.
	NeededBy []string
}

// Default health bounds.
const (
	defaultHealthCheckTimeout = 500 * time.Millisecond
	defaultHealthCacheTTL     = time.Second
	defaultMaxViewLag         = 10_000
)

// storeDependency and viewsDependency are what every server needs: the log for writes,
// audit and watch streams, the views for reads.
func storeDependency(store eventstore.Store) Dependency {
	return Dependency{
		Name: "store",
		// Head is one indexed query on every backend; a store whose Head answers can append.
		Check: func(ctx context.Context) error { _, err := store.Head(ctx); return err },
		NeededBy: []string{
			ledgerv1connect.AccountServiceName,
			ledgerv1connect.PaymentServiceName,
			ledgerv1connect.BalanceServiceName, // watch streams follow the log
			ledgerv1connect.AuditServiceName,
		},
	}
}

func viewsDependency(store eventstore.Store, reader projections.Reader, maxLag uint64) Dependency {
	return Dependency{
		Name: "views",
		Check: func(ctx context.Context) error {
			pos, err := reader.Position(ctx)
			if err != nil {
				return err
			}
			head, err := store.Head(ctx)
			if err != nil {
				return err
			}
			if head > pos && head-pos > maxLag {
				return &lagError{behind: head - pos, bound: maxLag}
			}
			return nil
		},
		NeededBy: []string{ledgerv1connect.BalanceServiceName, ledgerv1connect.PaymentServiceName},
	}
}

// lagError is views that answer but are too far behind the log for their answers (and
// read-your-writes waits) to be useful.
type lagError struct{ behind, bound uint64 }

func (e *lagError) Error() string {
	return fmt.Sprintf("%d positions behind the log (bound %d)", e.behind, e.bound)
}

// depState is one dependency's last check.
type depState struct {
	err error
}

// healthChecker asks the dependencies, at most once per cache period however many probes
// arrive, so a load balancer probing every instance often cannot add load to the database.
// Probes that arrive while a check runs wait for it (bounded by the check timeout) rather
// than starting their own.
type healthChecker struct {
	deps     []Dependency
	services []string
	timeout  time.Duration
	ttl      time.Duration
	log      *slog.Logger
	now      func() time.Time

	mu       sync.Mutex // held across a refresh: one refresh at a time
	checked  time.Time
	states   []depState
	draining bool
}

func newHealthChecker(deps []Dependency, services []string, timeout, ttl time.Duration, log *slog.Logger) *healthChecker {
	return &healthChecker{
		deps: deps, services: services, timeout: timeout, ttl: ttl, log: log, now: time.Now,
		states: make([]depState, len(deps)),
	}
}

// drain makes every answer NOT_SERVING from now on: the server is shutting down.
func (h *healthChecker) drain() {
	h.mu.Lock()
	h.draining = true
	h.mu.Unlock()
}

// snapshot returns the dependencies' states, refreshed if older than the cache period.
func (h *healthChecker) snapshot(ctx context.Context) (states []depState, draining bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.draining {
		return slices.Clone(h.states), true
	}
	if now := h.now(); h.checked.IsZero() || now.Sub(h.checked) >= h.ttl {
		h.refresh(ctx)
		h.checked = h.now()
	}
	return slices.Clone(h.states), false
}

// refresh checks every dependency concurrently, each within the timeout, and logs a
// dependency going down or coming back once, not at every probe.
func (h *healthChecker) refresh(ctx context.Context) {
	// A probe's own cancellation must not be recorded as an outage for the next ones.
	ctx = context.WithoutCancel(ctx)
	errs := make([]error, len(h.deps))
	var wg sync.WaitGroup
	for i, d := range h.deps {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, h.timeout)
			defer cancel()
			errs[i] = d.Check(cctx)
		})
	}
	wg.Wait()
	for i, d := range h.deps {
		was, is := h.states[i].err, errs[i]
		switch {
		case was == nil && is != nil:
			h.log.Warn("dependency unhealthy", "dependency", d.Name, "needed", len(d.NeededBy) > 0, "error", is)
		case was != nil && is == nil:
			h.log.Info("dependency healthy again", "dependency", d.Name)
		}
		h.states[i].err = is
	}
}

// status of service ("" for the whole process) given the states.
func (h *healthChecker) status(service string, states []depState, draining bool) grpchealth.Status {
	if draining {
		return grpchealth.StatusNotServing
	}
	for i, d := range h.deps {
		if states[i].err == nil || len(d.NeededBy) == 0 {
			continue
		}
		if service == "" || slices.Contains(d.NeededBy, service) {
			return grpchealth.StatusNotServing
		}
	}
	return grpchealth.StatusServing
}

// Check implements grpchealth.Checker.
func (h *healthChecker) Check(ctx context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	if req.Service != "" && !slices.Contains(h.services, req.Service) {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("unknown service %s", req.Service))
	}
	states, draining := h.snapshot(ctx)
	return &grpchealth.CheckResponse{Status: h.status(req.Service, states, draining)}, nil
}

// readiness is /readyz's JSON body. Each dependency gets one word ("ok", "unreachable",
// "failing") or, for views, how far behind they are: enough for an operator to know
// where to look, nothing a client could use (the details are in the server's log).
type readiness struct {
	Ready        bool              `json:"ready"`
	Draining     bool              `json:"draining,omitempty"`
	NotReady     []string          `json:"not_ready,omitempty"`
	Degraded     []string          `json:"degraded,omitempty"`
	Dependencies map[string]string `json:"dependencies"`
}

func (h *healthChecker) readiness(ctx context.Context) readiness {
	states, draining := h.snapshot(ctx)
	r := readiness{Draining: draining, Dependencies: make(map[string]string, len(h.deps))}
	for i, d := range h.deps {
		word := "ok"
		var lag *lagError
		switch err := states[i].err; {
		case err == nil:
		case errors.As(err, &lag):
			word = lag.Error()
		case errors.Is(err, eventstore.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
			word = "unreachable"
		default:
			word = "failing"
		}
		r.Dependencies[d.Name] = word
		if word == "ok" {
			continue
		}
		if len(d.NeededBy) > 0 {
			r.NotReady = append(r.NotReady, d.Name)
		} else {
			r.Degraded = append(r.Degraded, d.Name)
		}
	}
	r.Ready = !draining && len(r.NotReady) == 0
	return r
}

// healthHTTP serves /healthz (alive: the process answers HTTP; a restart would not help a
// database outage, so it never looks at dependencies) and /readyz (ready: 200 when every
// needed dependency is usable, else 503, both with the readiness body).
func (h *healthChecker) healthHTTP(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		body := h.readiness(r.Context())
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if !body.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(body)
	})
}

// probeMux serves h alone: /healthz, /readyz and grpc.health.v1.
func (h *healthChecker) probeMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle(grpchealth.NewHandler(h))
	h.healthHTTP(mux)
	return mux
}

// Probe is the health of a process that is not a Server (the gateway) on a port of its
// own, answered as a Server's HealthHandler answers: /healthz, /readyz and grpc.health.v1,
// from deps, each checked with the Server's default timeout and cache period.
type Probe struct {
	h *healthChecker
}

// NewProbe reports services (as grpc.health.v1 names them) from deps.
func NewProbe(deps []Dependency, services []string, log *slog.Logger) *Probe {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Probe{h: newHealthChecker(deps, services, defaultHealthCheckTimeout, defaultHealthCacheTTL, log)}
}

// Handler serves the probe.
func (p *Probe) Handler() http.Handler { return p.h.probeMux() }

// Drain makes every answer NOT_SERVING from now on: the process is shutting down.
func (p *Probe) Drain() { p.h.drain() }
