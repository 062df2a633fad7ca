package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/loadtest/internal/devserver"
)

func baseConfig(server string) Config {
	return Config{
		Target:   Target{Server: server, Conns: 2},
		Scenario: ScenarioUniform, Accounts: 20, HotShare: 0.5, Seed: 7,
		Concurrency: 4, MaxInFlight: 64, Warmup: 200 * time.Millisecond, Duration: time.Second,
		Processes: []ProcessSpec{{PID: os.Getpid()}},
	}
}

// Every scenario, closed and open loop, over HTTP/2 and HTTP/1.1, runs against a real
// server without a single error, and what it reports adds up.
func TestRunEveryScenario(t *testing.T) {
	server := devserver.Start(t)
	type tc struct {
		name     string
		scenario string
		rate     float64
		http1    bool
		kinds    []string
	}
	cases := []tc{
		{"uniform closed h2c", ScenarioUniform, 0, false, []string{opTransfer}},
		{"uniform closed http1", ScenarioUniform, 0, true, []string{opTransfer}},
		{"hot open", ScenarioHot, 200, false, []string{opTransfer}},
		{"card closed", ScenarioCard, 0, false, []string{opAuthorise, opCapture, opRefund}},
		{"read closed", ScenarioRead, 0, false, []string{opBalance, opHistory}},
		{"mix open", ScenarioMix, 300, false, []string{opTransfer, opBalance}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := baseConfig(server)
			cfg.Scenario, cfg.Rate, cfg.HTTP1 = c.scenario, c.rate, c.http1
			res, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if len(res.Errors) != 0 {
				t.Fatalf("errors by code %v (samples %v), want none", res.Errors, res.ErrorSamples)
			}
			for _, k := range c.kinds {
				if res.ByKind[k].Count == 0 {
					t.Errorf("no %s request was measured; by kind: %v", k, res.ByKind)
				}
			}
			var sum int64
			for _, l := range res.ByKind {
				sum += l.Count
			}
			if sum != res.Requests || res.Latency.Count != res.Requests {
				t.Errorf("requests %d, overall histogram %d, sum of kinds %d: want all equal", res.Requests, res.Latency.Count, sum)
			}
			l := res.Latency
			if !(0 < l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) {
				t.Errorf("percentiles out of order: %+v", l)
			}
			if len(res.Processes) != 1 || res.Processes[0].CPUSeconds <= 0 || res.Processes[0].PeakPSSBytes <= 0 {
				t.Errorf("process usage of the test process: %+v, want CPU and memory", res.Processes)
			}
			// Whole seconds only; a window that ended a hair short of its first second
			// (0.9996 s on a loaded machine) keeps that one partial second rather than none.
			if want := max(int(res.Seconds), 1); len(res.Timeline) != want {
				t.Errorf("timeline of %d seconds for a %.4fs window: want %d (only whole seconds, at least one)", len(res.Timeline), res.Seconds, want)
			}
			if c.rate > 0 && res.Mode != "open" {
				t.Errorf("mode %q, want open", res.Mode)
			}
			// The text, the JSON and the plot all render.
			var text, js, svg bytes.Buffer
			if err := res.WriteText(&text); err != nil || !strings.Contains(text.String(), "p99.9 ms") {
				t.Errorf("text output (err %v):\n%s", err, text.String())
			}
			if err := json.NewEncoder(&js).Encode(res); err != nil {
				t.Fatalf("encode JSON: %v", err)
			}
			var back Result
			if err := json.Unmarshal(js.Bytes(), &back); err != nil || back.Writes != res.Writes {
				t.Errorf("JSON round trip: err %v, writes %d, want %d", err, back.Writes, res.Writes)
			}
			if err := res.WriteSVG(&svg); err != nil {
				t.Fatalf("WriteSVG: %v", err)
			}
			if err := xml.Unmarshal(svg.Bytes(), new(struct{})); err != nil {
				t.Errorf("the SVG is not well-formed XML: %v", err)
			}
		})
	}
}

// A bearer token from --token-file reaches the server on every request.
func TestTokenFileSendsBearer(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte("abc.def.ghi\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newHeaderServer(ln, got)
	defer srv.Close()
	c, err := Target{Server: "http://" + ln.Addr().String(), Conns: 1, TokenFile: file, HTTP1: true}.Dial()
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	_, err = c.Accounts.OpenAccount(context.Background(), connect.NewRequest(openReq()))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("OpenAccount against the recording server: %v, want unauthenticated", err)
	}
	if h := <-got; h != "Bearer abc.def.ghi" {
		t.Fatalf("Authorization header %q, want %q", h, "Bearer abc.def.ghi")
	}
}

func TestTokenFileRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for name, file := range map[string]string{
		"missing":    filepath.Join(dir, "absent"),
		"empty":      write("empty", "\n"),
		"two tokens": write("two", "a b\n"),
		"two lines":  write("lines", "a\nb\n"),
	} {
		if _, err := (Target{Server: "http://127.0.0.1:1", Conns: 1, TokenFile: file}).Dial(); err == nil {
			t.Errorf("%s token file: Dial succeeded, want an error", name)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ok := baseConfig("https://127.0.0.1:8443")
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	cases := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"remote server", func(c *Config) { c.Server = "https://10.0.0.1:8443" }, "not on loopback"},
		{"named remote host", func(c *Config) { c.Server = "https://example.com" }, "not on loopback"},
		{"no scheme", func(c *Config) { c.Server = "127.0.0.1:8080" }, "http:// or https://"},
		{"unknown scenario", func(c *Config) { c.Scenario = "everything" }, "--scenario"},
		{"one account", func(c *Config) { c.Accounts = 1 }, "--accounts"},
		{"hot share above 1", func(c *Config) { c.HotShare = 1.5 }, "--hot-share"},
		{"no callers", func(c *Config) { c.Concurrency = 0 }, "--concurrency"},
		{"negative rate", func(c *Config) { c.Rate = -1 }, "--rate"},
		{"no duration", func(c *Config) { c.Duration = 0 }, "--duration"},
		{"zero conns", func(c *Config) { c.Conns = 0 }, "--conns"},
		{"run id with slash", func(c *Config) { c.RunID = "a/b" }, "--run-id"},
		{"run id too long", func(c *Config) { c.RunID = strings.Repeat("a", 25) }, "--run-id"},
	}
	for _, c := range cases {
		cfg := ok
		c.change(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate() = %v, want an error mentioning %q", c.name, err, c.want)
		}
	}
}

// The open loop sends what its schedule says, and a server that stalls shows in the
// latency of the requests scheduled during the stall (no coordinated omission).
func TestOpenLoopChargesStallsToScheduledRequests(t *testing.T) {
	rec := newRecorder()
	start := time.Now()
	rec.begin(start)
	stalled := make(chan struct{})
	var first = true
	steps := []func(context.Context, time.Time){func(_ context.Context, at time.Time) {
		// The one caller stalls 300 ms on its first request, then answers at once.
		if first {
			first = false
			time.Sleep(300 * time.Millisecond)
			close(stalled)
		}
		rec.record(opTransfer, at, time.Now(), nil)
	}}
	missed := openLoop(context.Background(), steps, start, start.Add(600*time.Millisecond), 100)
	<-stalled
	s := rec.snapshot()
	if missed != 0 || s.all.Count != 60 {
		t.Fatalf("sent %d, missed %d, want 60 sent of 60 scheduled", s.all.Count, missed)
	}
	// Requests scheduled at 10, 20, ... 290 ms waited behind the stall: about 30 of 60
	// should be late by tens of milliseconds; a closed-loop timer would have seen one slow
	// request and 59 fast ones.
	if s.all.P50 < 1 {
		t.Errorf("p50 %.3f ms: the requests queued behind a 300 ms stall were not charged for it", s.all.P50)
	}
	if s.all.Max < 250 {
		t.Errorf("max %.1f ms, want about 300", s.all.Max)
	}
}

func TestRecorderCountsErrorsByCode(t *testing.T) {
	rec := newRecorder()
	now := time.Now()
	rec.begin(now)
	rec.record(opTransfer, now.Add(-time.Second), now, nil) // warm-up: not recorded
	rec.record(opTransfer, now, now.Add(2*time.Millisecond), nil)
	rec.record(opTransfer, now, now.Add(time.Millisecond), connect.NewError(connect.CodeUnavailable, errors.New("down")))
	rec.record(opBalance, now, now.Add(time.Millisecond), context.DeadlineExceeded)
	s := rec.snapshot()
	if s.all.Count != 1 || s.writes != 1 {
		t.Errorf("count %d writes %d, want 1 and 1", s.all.Count, s.writes)
	}
	want := map[string]int64{"unavailable": 1, "deadline_exceeded": 1}
	if len(s.errs) != len(want) || s.errs["unavailable"] != 1 || s.errs["deadline_exceeded"] != 1 {
		t.Errorf("errors %v, want %v", s.errs, want)
	}
}

func TestParseStat(t *testing.T) {
	line := "4124 (my (odd) name) S 1 4124 4124 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 12 0 100 1000000 5000 18446744073709551615"
	s, err := parseStat([]byte(line))
	if err != nil {
		t.Fatalf("parseStat: %v", err)
	}
	if s.comm != "my (odd) name" || s.ppid != 1 || s.cpuTicks != 325 {
		t.Errorf("got %+v, want comm %q, ppid 1, ticks 325", s, "my (odd) name")
	}
	for _, bad := range []string{"", "12 no parens", "12 (x) S 1 2"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) succeeded, want an error", bad)
		}
	}
}

func TestMembersFollowDescendants(t *testing.T) {
	procs := map[int]procSample{
		1:  {ppid: 0, comm: "init"},
		10: {ppid: 1, comm: "postgres"},
		11: {ppid: 10, comm: "postgres"},
		12: {ppid: 10, comm: "postgres"},
		13: {ppid: 11, comm: "worker"},
		20: {ppid: 1, comm: "postgres"}, // someone else's cluster
	}
	if got := members(ProcessSpec{PID: 10}, procs); !equalInts(got, []int{10, 11, 12, 13}) {
		t.Errorf("by pid 10: %v, want 10 11 12 13", got)
	}
	if got := members(ProcessSpec{Name: "postgres"}, procs); !equalInts(got, []int{10, 11, 12, 20}) {
		t.Errorf("by name: %v, want 10 11 12 20", got)
	}
	if got := members(ProcessSpec{PID: 99}, procs); len(got) != 0 {
		t.Errorf("absent pid: %v, want none", got)
	}
}

func TestParseProcessSpec(t *testing.T) {
	for in, want := range map[string]ProcessSpec{"123": {PID: 123}, "postgres": {Name: "postgres"}, " redis-server ": {Name: "redis-server"}} {
		got, err := ParseProcessSpec(in)
		if err != nil || got != want {
			t.Errorf("ParseProcessSpec(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "-5", "/usr/bin/postgres", "two words"} {
		if _, err := ParseProcessSpec(bad); err == nil {
			t.Errorf("ParseProcessSpec(%q) succeeded, want an error", bad)
		}
	}
}

func TestCents(t *testing.T) {
	for minor, want := range map[int64]string{1: "0.01", 100: "1.00", 1234: "12.34", fundingMinor: "100000000.00"} {
		if got := cents(minor); got != want {
			t.Errorf("cents(%d) = %q, want %q", minor, got, want)
		}
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// newHeaderServer answers every request 401 after handing its Authorization header to got.
func newHeaderServer(ln net.Listener, got chan<- string) *http.Server {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- r.Header.Get("Authorization"):
		default:
		}
		w.WriteHeader(http.StatusUnauthorized)
	})}
	go func() { _ = srv.Serve(ln) }()
	return srv
}

func openReq() *ledgerv1.OpenAccountRequest {
	return &ledgerv1.OpenAccountRequest{AccountId: "a", Asset: asset, Kind: ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER}
}
