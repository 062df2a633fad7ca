package dispatch_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/securepay/securepay/services/dispatch"
)

// A breaker is driven by a script of steps at given times; after each step its state and
// (for allow steps) the answer are checked.
func TestBreaker(t *testing.T) {
	type step struct {
		at    time.Duration // since the start
		op    string        // allow, success, failure, abandon
		allow bool          // for allow: the expected answer
		state dispatch.BreakerState
	}
	const cooldown = 10 * time.Second
	cases := []struct {
		name  string
		steps []step
	}{
		{"stays closed below the threshold", []step{
			{0, "failure", false, dispatch.Closed},
			{0, "failure", false, dispatch.Closed},
			{0, "allow", true, dispatch.Closed},
		}},
		{"a success resets the count", []step{
			{0, "failure", false, dispatch.Closed},
			{0, "failure", false, dispatch.Closed},
			{0, "success", false, dispatch.Closed},
			{0, "failure", false, dispatch.Closed},
			{0, "failure", false, dispatch.Closed},
			{0, "allow", true, dispatch.Closed},
		}},
		{"opens at the threshold and refuses during the cooldown", []step{
			{0, "failure", false, dispatch.Closed},
			{0, "failure", false, dispatch.Closed},
			{time.Second, "failure", false, dispatch.Open},
			{2 * time.Second, "allow", false, dispatch.Open},
			{cooldown, "allow", false, dispatch.Open},
		}},
		{"half-open lets one probe through; its success closes", []step{
			{0, "failure", false, dispatch.Closed},
			{0, "failure", false, dispatch.Closed},
			{0, "failure", false, dispatch.Open},
			{cooldown, "allow", true, dispatch.HalfOpen},
			{cooldown, "allow", false, dispatch.HalfOpen}, // the probe is out
			{cooldown + time.Second, "success", false, dispatch.Closed},
			{cooldown + time.Second, "allow", true, dispatch.Closed},
		}},
		{"a failed probe opens for another cooldown", []step{
			{0, "failure", false, dispatch.Closed},
			{0, "failure", false, dispatch.Closed},
			{0, "failure", false, dispatch.Open},
			{cooldown, "allow", true, dispatch.HalfOpen},
			{cooldown + time.Second, "failure", false, dispatch.Open},
			{2 * cooldown, "allow", false, dispatch.Open},
			{2*cooldown + time.Second, "allow", true, dispatch.HalfOpen},
		}},
		{"an abandoned probe frees the next one", []step{
			{0, "failure", false, dispatch.Closed},
			{0, "failure", false, dispatch.Closed},
			{0, "failure", false, dispatch.Open},
			{cooldown, "allow", true, dispatch.HalfOpen},
			{cooldown, "abandon", false, dispatch.HalfOpen},
			{cooldown, "allow", true, dispatch.HalfOpen},
		}},
		{"a late failure of an attempt made before opening changes nothing", []step{
			{0, "failure", false, dispatch.Closed},
			{0, "failure", false, dispatch.Closed},
			{0, "failure", false, dispatch.Open},
			{5 * time.Second, "failure", false, dispatch.Open},
			{cooldown, "allow", true, dispatch.HalfOpen}, // the cooldown still counts from the opening
		}},
	}
	start := time.Unix(1_700_000_000, 0)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var transitions []string
			b := dispatch.NewBreaker(3, cooldown, func(from, to dispatch.BreakerState) {
				transitions = append(transitions, fmt.Sprintf("%s→%s", from, to))
			})
			for i, s := range tc.steps {
				now := start.Add(s.at)
				switch s.op {
				case "allow":
					if got := b.Allow(now); got != s.allow {
						t.Fatalf("step %d (allow at +%s): got %v, want %v (transitions %v)", i, s.at, got, s.allow, transitions)
					}
				case "success":
					b.Success()
				case "failure":
					b.Failure(now, fmt.Errorf("failure at step %d", i))
				case "abandon":
					b.Abandon()
				}
				if got := b.State(now); got != s.state {
					t.Fatalf("step %d (%s at +%s): state %s, want %s (transitions %v)", i, s.op, s.at, got, s.state, transitions)
				}
			}
		})
	}
}

// Down says how long an endpoint has been down: from the opening, not from the last
// failed probe, with the last failure's error; a success ends it.
func TestBreakerDown(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	b := dispatch.NewBreaker(2, 10*time.Second, nil)
	check := func(step string, wantDown bool, wantSince time.Time, wantErr string) {
		t.Helper()
		since, err, down := b.Down()
		gotErr := ""
		if err != nil {
			gotErr = err.Error()
		}
		if down != wantDown || !since.Equal(wantSince) || gotErr != wantErr {
			t.Errorf("%s: Down() = (%s, %q, %v), want (%s, %q, %v)", step, since, gotErr, down, wantSince, wantErr, wantDown)
		}
	}
	check("new", false, time.Time{}, "")
	b.Failure(start, fmt.Errorf("HTTP 502"))
	check("one failure below the threshold", false, time.Time{}, "")
	opened := start.Add(time.Second)
	b.Failure(opened, fmt.Errorf("HTTP 503"))
	check("opened", true, opened, "HTTP 503")
	probe := opened.Add(10 * time.Second)
	if !b.Allow(probe) {
		t.Fatalf("no probe allowed after the cooldown")
	}
	check("half-open", true, opened, "HTTP 503")
	b.Failure(probe, fmt.Errorf("connection refused"))
	check("a failed probe reopens it", true, opened, "connection refused")
	if !b.Allow(probe.Add(10 * time.Second)) {
		t.Fatalf("no second probe allowed after the cooldown")
	}
	b.Success()
	check("closed by a probe's success", false, time.Time{}, "")
	b.Failure(probe.Add(20*time.Second), fmt.Errorf("timeout"))
	b.Failure(probe.Add(21*time.Second), fmt.Errorf("timeout"))
	check("opened again", true, probe.Add(21*time.Second), "timeout")
}
