package loadtest

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds, from 1 µs to 10 minutes, with 3 significant
// digits (a value is known to within 0.1 %). Per-second histograms of the timeline keep 2
// digits: they only draw the plot, and 600 of them must stay small.
const (
	lowestMicros  = 1
	highestMicros = int64(10 * time.Minute / time.Microsecond)
)

// recorder collects every request's outcome. Callers record from many goroutines; a
// mutex is enough at the rates two cores reach (tens of thousands a second), and keeps
// the histograms exact instead of merging per-caller copies.
type recorder struct {
	mu       sync.Mutex
	measured time.Time // requests intended before this are warm-up and not recorded
	kinds    map[string]*hdrhistogram.Histogram
	all      *hdrhistogram.Histogram
	ok       map[string]int64
	errs     map[string]int64 // by Connect code
	seconds  []*second
	// sampleErr keeps one error message per code, so a failing run says why.
	sampleErr map[string]string
}

// second is one second of the measured window, for the plot and the progress line.
type second struct {
	ok, failed, writes int64
	hist               *hdrhistogram.Histogram
}

func newRecorder() *recorder {
	return &recorder{
		kinds: map[string]*hdrhistogram.Histogram{}, all: newHist(3),
		ok: map[string]int64{}, errs: map[string]int64{}, sampleErr: map[string]string{},
	}
}

func newHist(digits int) *hdrhistogram.Histogram {
	return hdrhistogram.New(lowestMicros, highestMicros, digits)
}

// begin starts the measured window at t.
func (r *recorder) begin(t time.Time) {
	r.mu.Lock()
	r.measured = t
	r.mu.Unlock()
}

// isWrite says whether a kind of request moves money (counted as a transfer in the
// throughput of money-moving writes).
func isWrite(kind string) bool {
	switch kind {
	case opTransfer, opAuthorise, opCapture, opRefund:
		return true
	}
	return false
}

// record notes one request of kind, intended to start at intended and answered at end.
// Latency runs from the intended start, so a stalled server shows in the latency of
// every request that waited behind it (no coordinated omission).
func (r *recorder) record(kind string, intended, end time.Time, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.measured.IsZero() || intended.Before(r.measured) {
		return
	}
	sec := int(end.Sub(r.measured) / time.Second)
	for len(r.seconds) <= sec {
		r.seconds = append(r.seconds, &second{hist: newHist(2)})
	}
	s := r.seconds[sec]
	if err != nil {
		code := codeName(err)
		r.errs[code]++
		if _, ok := r.sampleErr[code]; !ok {
			r.sampleErr[code] = err.Error()
		}
		s.failed++
		return
	}
	us := min(max(end.Sub(intended).Microseconds(), lowestMicros), highestMicros)
	h := r.kinds[kind]
	if h == nil {
		h = newHist(3)
		r.kinds[kind] = h
	}
	// Values are clamped into the trackable range above, so recording cannot fail.
	_ = h.RecordValue(us)
	_ = r.all.RecordValue(us)
	_ = s.hist.RecordValue(us)
	r.ok[kind]++
	s.ok++
	if isWrite(kind) {
		s.writes++
	}
}

// codeName is the Connect code of err ("unavailable"), or "canceled"/"deadline_exceeded"
// for a context's own error.
func codeName(err error) string {
	switch {
	case errors.Is(err, context.Canceled):
		return connect.CodeCanceled.String()
	case errors.Is(err, context.DeadlineExceeded):
		return connect.CodeDeadlineExceeded.String()
	}
	return connect.CodeOf(err).String()
}

// Latency is a summary of one histogram, in milliseconds.
type Latency struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p99_9_ms"`
	Max   float64 `json:"max_ms"`
	Mean  float64 `json:"mean_ms"`
}

func summarise(h *hdrhistogram.Histogram) Latency {
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return Latency{
		Count: h.TotalCount(),
		P50:   ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)), P99: ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max()), Mean: h.Mean() / 1000,
	}
}

// Second is one second of the timeline.
type Second struct {
	At     int     `json:"at_s"`
	OK     int64   `json:"ok"`
	Failed int64   `json:"failed"`
	Writes int64   `json:"writes"`
	P50    float64 `json:"p50_ms"`
	P99    float64 `json:"p99_ms"`
	Max    float64 `json:"max_ms"`
}

// snapshot is what the recorder holds, summarised.
type snapshot struct {
	all      Latency
	kinds    map[string]Latency
	errs     map[string]int64
	samples  map[string]string
	timeline []Second
	writes   int64
}

func (r *recorder) snapshot() snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := snapshot{all: summarise(r.all), kinds: map[string]Latency{}, errs: map[string]int64{}, samples: map[string]string{}}
	for k, h := range r.kinds {
		s.kinds[k] = summarise(h)
		if isWrite(k) {
			s.writes += h.TotalCount()
		}
	}
	for k, n := range r.errs {
		s.errs[k] = n
		s.samples[k] = r.sampleErr[k]
	}
	for i, sec := range r.seconds {
		l := summarise(sec.hist)
		s.timeline = append(s.timeline, Second{At: i, OK: sec.ok, Failed: sec.failed, Writes: sec.writes, P50: l.P50, P99: l.P99, Max: l.Max})
	}
	return s
}

// progress is the live view: totals so far and the last complete second.
func (r *recorder) progress(now time.Time) (ok, failed int64, last Second) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.ok {
		ok += n
	}
	for _, n := range r.errs {
		failed += n
	}
	if r.measured.IsZero() {
		return ok, failed, last
	}
	i := int(now.Sub(r.measured)/time.Second) - 1
	if i >= 0 && i < len(r.seconds) {
		sec := r.seconds[i]
		l := summarise(sec.hist)
		last = Second{At: i, OK: sec.ok, Failed: sec.failed, Writes: sec.writes, P50: l.P50, P99: l.P99, Max: l.Max}
	}
	return ok, failed, last
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
