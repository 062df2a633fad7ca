package loadtest

import (
	"context"
	"fmt"
	"io"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// selfCPU is the user and system CPU time this process has used so far.
func selfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// showProgress rewrites one terminal line a second until ctx ends.
func showProgress(ctx context.Context, w io.Writer, rec *recorder, window time.Duration) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	began := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			ok, failed, last := rec.progress(now)
			fmt.Fprintf(w, "\r\033[K%3.0f/%.0fs  %d ok  %d failed  last second: %d writes/s, %d requests/s, p50 %.2f ms, p99 %.2f ms",
				now.Sub(began).Seconds(), window.Seconds(), ok, failed, last.Writes, last.OK, last.P50, last.P99)
		}
	}
}

// WriteText prints a result for people.
func (r *Result) WriteText(w io.Writer) error {
	var b strings.Builder
	mode := fmt.Sprintf("closed loop, %d callers", r.Concurrency)
	if r.Mode == "open" {
		mode = fmt.Sprintf("open loop at %.0f iterations/s", r.Rate)
	}
	fmt.Fprintf(&b, "scenario %s against %s (HTTP/%s, %s), %s, %d accounts, seed %d, run %s\n",
		r.Scenario, r.Server, r.HTTP, r.RPC, mode, r.Accounts, r.Seed, r.RunID)
	fmt.Fprintf(&b, "measured %.1fs: %d writes (%.0f/s), %d requests OK (%.0f/s)",
		r.Seconds, r.Writes, r.WritesPerSec, r.Requests, r.RequestsPerSec)
	if r.Missed > 0 {
		fmt.Fprintf(&b, ", %d scheduled but never sent (the server could not keep up)", r.Missed)
	}
	b.WriteString("\n\n")
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "request\tcount\tp50 ms\tp90 ms\tp99 ms\tp99.9 ms\tmax ms\t\n")
	row := func(name string, l Latency) {
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", name, l.Count, l.P50, l.P90, l.P99, l.P999, l.Max)
	}
	for _, k := range sortedKeys(r.ByKind) {
		row(k, r.ByKind[k])
	}
	if len(r.ByKind) > 1 {
		row("all", r.Latency)
	}
	tw.Flush()
	if len(r.Errors) > 0 {
		b.WriteString("\nerrors:\n")
		for _, code := range sortedKeys(r.Errors) {
			fmt.Fprintf(&b, "  %-20s %d  (e.g. %s)\n", code, r.Errors[code], r.ErrorSamples[code])
		}
	} else {
		b.WriteString("\nerrors: none\n")
	}
	fmt.Fprintf(&b, "\nCPU per write: load generator %.0f µs", r.CPUPerWrite(r.ClientCPUSeconds))
	if len(r.Processes) > 0 {
		b.WriteString("\n\n")
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "process\tprocs\tCPU s\tcores\tCPU µs/write\tpeak PSS MB\tpeak RSS MB\t\n")
		var total float64
		for _, p := range r.Processes {
			total += p.CPUSeconds
			fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%.0f\t%.0f\t%.0f\t\n", p.Process, p.Processes, p.CPUSeconds, p.CPUSeconds/r.Seconds,
				r.CPUPerWrite(p.CPUSeconds), float64(p.PeakPSSBytes)/(1<<20), float64(p.PeakRSSBytes)/(1<<20))
		}
		fmt.Fprintf(tw, "all watched\t\t%.2f\t%.2f\t%.0f\t\t\t\n", total, total/r.Seconds, r.CPUPerWrite(total))
		tw.Flush()
	} else {
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
