package progress

import (
	"strings"
	"testing"
	"time"
)

// On a terminal the progress is one line redrawn in place: a bar, the rate and the time left.
// (term.IsTerminal decides tty in New; here it is set directly.)
func TestProgressBarOnATerminal(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var out strings.Builder
	p := New(&out, "rebuild accounts.v1", Options{Clock: func() time.Time { return now }})
	p.tty, p.width, p.interval = true, 100, 100*time.Millisecond
	p.Begin(0)
	now = now.Add(2 * time.Second)
	p.Update(50_000, 200_000)
	now = now.Add(50 * time.Millisecond)
	p.Update(51_000, 200_000) // within the interval: not drawn
	now = now.Add(2 * time.Second)
	p.Finish(200_000, 200_000)
	frames := strings.Split(out.String(), "\r")[1:]
	if len(frames) != 2 {
		t.Fatalf("drew %d frames %q; want 2 (one update, one finish)", len(frames), out.String())
	}
	first := frames[0]
	for _, want := range []string{"rebuild accounts.v1 [", "=", "25.0%", "25000 events/s", "ETA 6s"} {
		if !strings.Contains(first, want) {
			t.Errorf("frame %q lacks %q", first, want)
		}
	}
	if !strings.HasSuffix(frames[1], "\n") || !strings.Contains(frames[1], "200000/200000 events in 4.05s") {
		t.Errorf("final frame %q; want the total, the time and a newline", frames[1])
	}
}

func TestProgressPlainLines(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var out strings.Builder
	p := New(&out, "verify", Options{Clock: func() time.Time { return now }})
	p.Begin(0)
	for i := 1; i <= 10; i++ {
		now = now.Add(time.Second)
		p.Update(uint64(i)*1000, 10_000)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 5 || strings.Contains(out.String(), "\r") {
		t.Fatalf("plain output %q: want 5 lines (one per 2s), no carriage returns", out.String())
	}
	if !strings.HasPrefix(lines[0], "verify: 1000/10000 events  10.0% 1000 events/s ETA 9s") {
		t.Fatalf("first line %q", lines[0])
	}
}

func TestProgressETABelowASecond(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var out strings.Builder
	p := New(&out, "export", Options{Clock: func() time.Time { return now }})
	p.Begin(0)
	now = now.Add(time.Second)
	p.Update(4000, 7000) // 3000 left at 4000/s: 0.75s, shown rounded to 1s
	if !strings.Contains(out.String(), "ETA 1s") {
		t.Fatalf("progress %q; want ETA 1s", out.String())
	}
}
