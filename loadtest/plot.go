package loadtest

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// WriteSVG draws the run's timeline: requests answered a second (OK and failed) above,
// latency percentiles of each second below on a logarithmic scale (a stall of a second
// and a p50 of a millisecond both stay visible). Plain SVG, no library: a browser shows it.
func (r *Result) WriteSVG(w io.Writer) error {
	const (
		width, height = 960, 600
		left, right   = 70, 20
		plotW         = width - left - right
		topY, topH    = 50, 180
		botY, botH    = 290, 260
	)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	title := fmt.Sprintf("securepay loadtest: %s, %s, HTTP/%s, %.0f writes/s, p99 %.2f ms", r.Scenario, r.modeText(), r.HTTP, r.WritesPerSec, r.Latency.P99)
	fmt.Fprintf(&b, `<text x="%d" y="24" font-size="15">%s</text>`+"\n", left, html.EscapeString(title))

	n := len(r.Timeline)
	xs := func(i int) float64 {
		if n <= 1 {
			return left
		}
		return left + float64(i)*plotW/float64(n-1)
	}
	// Top: requests a second.
	var peak int64 = 1
	for _, s := range r.Timeline {
		peak = max(peak, s.OK+s.Failed)
	}
	top := niceCeil(float64(peak))
	ty := func(v float64) float64 { return topY + topH - v/top*topH }
	axes(&b, left, topY, plotW, topH)
	for _, v := range []float64{0, top / 2, top} {
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, ty(v)+4, shortNumber(v))
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, left+plotW, ty(v), ty(v))
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d">requests answered per second</text>`+"\n", left, topY-8)
	series := func(color string, value func(Second) float64, y func(float64) float64) {
		if n == 0 {
			return
		}
		pts := make([]string, 0, n)
		for i, s := range r.Timeline {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", xs(i), y(value(s))))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", color, strings.Join(pts, " "))
	}
	series("#1f77b4", func(s Second) float64 { return float64(s.OK) }, ty)
	series("#d62728", func(s Second) float64 { return float64(s.Failed) }, ty)
	legend(&b, left+plotW-220, topY-8, []string{"#1f77b4", "#d62728"}, []string{"OK", "failed"})

	// Bottom: latency, log scale from the smallest to the largest decade seen.
	lo, hi := math.Inf(1), 0.0
	for _, s := range r.Timeline {
		if s.OK == 0 {
			continue
		}
		lo, hi = math.Min(lo, s.P50), math.Max(hi, s.Max)
	}
	if hi == 0 {
		lo, hi = 0.1, 1
	}
	dlo := math.Floor(math.Log10(math.Max(lo, 0.001)))
	dhi := math.Max(math.Ceil(math.Log10(hi)), dlo+1)
	by := func(v float64) float64 {
		l := math.Log10(math.Max(v, math.Pow(10, dlo)))
		return botY + botH - (l-dlo)/(dhi-dlo)*botH
	}
	axes(&b, left, botY, plotW, botH)
	for d := dlo; d <= dhi; d++ {
		v := math.Pow(10, d)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s ms</text>`+"\n", left-6, by(v)+4, shortNumber(v))
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, left+plotW, by(v), by(v))
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d">latency of the requests answered OK in each second (from their intended start)</text>`+"\n", left, botY-8)
	ok := func(f func(Second) float64) func(Second) float64 {
		return func(s Second) float64 {
			if s.OK == 0 {
				return math.Pow(10, dlo)
			}
			return f(s)
		}
	}
	series("#2ca02c", ok(func(s Second) float64 { return s.P50 }), by)
	series("#ff7f0e", ok(func(s Second) float64 { return s.P99 }), by)
	series("#9467bd", ok(func(s Second) float64 { return s.Max }), by)
	legend(&b, left+plotW-220, botY-8, []string{"#2ca02c", "#ff7f0e", "#9467bd"}, []string{"p50", "p99", "max"})

	// The time axis.
	for _, frac := range []float64{0, 0.25, 0.5, 0.75, 1} {
		i := int(frac * float64(max(n-1, 0)))
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%ds</text>`+"\n", xs(i), botY+botH+18, i)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">seconds into the measured window</text>`+"\n", left+plotW/2, botY+botH+38)
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *Result) modeText() string {
	if r.Mode == "open" {
		return fmt.Sprintf("open loop at %.0f/s", r.Rate)
	}
	return fmt.Sprintf("%d callers", r.Concurrency)
}

func axes(b *strings.Builder, x, y, w, h int) {
	fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#888"/>`+"\n", x, y, w, h)
}

func legend(b *strings.Builder, x, y int, colors, names []string) {
	for i := range colors {
		fmt.Fprintf(b, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="3"/>`, x+i*75, x+i*75+18, y-4, y-4, colors[i])
		fmt.Fprintf(b, `<text x="%d" y="%d">%s</text>`+"\n", x+i*75+22, y, names[i])
	}
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func shortNumber(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%gk", v/1000)
	default:
		return fmt.Sprintf("%g", v)
	}
}
