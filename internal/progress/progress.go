// Package progress draws how far a long run (a rebuild, an export, a verification, an as-of
// recomputation) has come. It is its own package so that what reports progress links only
// this and x/term: the auditor's recomputation must not link the views' database drivers
// to draw a bar.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"
)

// Reporter shows progress on a terminal as a bar redrawn in place with events/s and time
// left, and elsewhere as a plain line every few seconds, so logs of a CI run or `| tee`
// stay readable.
type Reporter struct {
	w        io.Writer
	label    string
	tty      bool
	width    int
	interval time.Duration
	now      func() time.Time

	start      time.Time
	last       time.Time
	startDone  uint64
	lastDone   uint64
	lastTotal  uint64
	drawnWidth int
}

// Options tune a Reporter; the zero value detects the terminal itself.
type Options struct {
	// ForcePlain prints plain lines even on a terminal.
	ForcePlain bool
	// Interval between plain lines; default 2s (a terminal bar redraws every 100ms).
	Interval time.Duration
	// Clock for tests; default time.Now.
	Clock func() time.Time
}

// New reports to w (nil: report nothing). w is a terminal when it is an *os.File whose
// descriptor is one.
func New(w io.Writer, label string, opts Options) *Reporter {
	p := &Reporter{w: w, label: label, interval: opts.Interval, now: opts.Clock, width: 80}
	if p.now == nil {
		p.now = time.Now
	}
	if f, ok := w.(*os.File); ok && !opts.ForcePlain && term.IsTerminal(int(f.Fd())) {
		p.tty = true
		if cols, _, err := term.GetSize(int(f.Fd())); err == nil && cols > 40 {
			p.width = cols
		}
	}
	if p.interval <= 0 {
		p.interval = 2 * time.Second
		if p.tty {
			p.interval = 100 * time.Millisecond
		}
	}
	p.start = p.now()
	return p
}

// Begin records where the run starts (a resumed run starts past 0, and its rate counts
// only this run's events).
func (p *Reporter) Begin(done uint64) {
	if p == nil {
		return
	}
	p.startDone, p.lastDone = done, done
	p.start = p.now()
}

// Update reports done of total events; it draws at most once per interval.
func (p *Reporter) Update(done, total uint64) {
	if p == nil || p.w == nil {
		return
	}
	p.lastDone, p.lastTotal = done, total
	now := p.now()
	if now.Sub(p.last) < p.interval {
		return
	}
	p.last = now
	p.draw(now, false)
}

// Finish draws the final state and ends the line.
func (p *Reporter) Finish(done, total uint64) {
	if p == nil || p.w == nil {
		return
	}
	p.lastDone, p.lastTotal = done, total
	p.draw(p.now(), true)
}

func (p *Reporter) draw(now time.Time, final bool) {
	elapsed := now.Sub(p.start).Seconds()
	rate := 0.0
	if elapsed > 0 {
		rate = float64(p.lastDone-p.startDone) / elapsed
	}
	eta := "?"
	if p.lastDone >= p.lastTotal {
		eta = "0s"
	} else if rate > 0 {
		eta = time.Duration(float64(p.lastTotal-p.lastDone) / rate * float64(time.Second)).Round(time.Second).String()
	}
	pct := 100.0
	if p.lastTotal > 0 {
		pct = 100 * float64(p.lastDone) / float64(p.lastTotal)
	}
	stats := fmt.Sprintf("%d/%d events %5.1f%% %.0f events/s ETA %s", p.lastDone, p.lastTotal, pct, rate, eta)
	if final {
		stats = fmt.Sprintf("%d/%d events in %s (%.0f events/s)", p.lastDone, p.lastTotal, now.Sub(p.start).Round(time.Millisecond), rate)
	}
	if !p.tty {
		fmt.Fprintf(p.w, "%s: %s\n", p.label, stats)
		return
	}
	barWidth := p.width - len(p.label) - len(stats) - 6
	line := p.label + " " + stats
	if barWidth >= 10 {
		filled := int(float64(barWidth) * pct / 100)
		filled = max(0, min(filled, barWidth))
		line = fmt.Sprintf("%s [%s%s] %s", p.label, strings.Repeat("=", filled), strings.Repeat(" ", barWidth-filled), stats)
	}
	pad := ""
	if n := p.drawnWidth - len(line); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	p.drawnWidth = len(line)
	end := ""
	if final {
		end = "\n"
	}
	fmt.Fprintf(p.w, "\r%s%s%s", line, pad, end)
}
