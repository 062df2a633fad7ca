package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Process statistics from Linux's /proc: CPU time and memory of the processes a load
// runs against, so a run reports what each transfer costs the server, PostgreSQL and
// Redis, not only what the caller saw.

// ProcessSpec names processes to watch: by PID (the process and all its descendants,
// e.g. a PostgreSQL postmaster and its backends) or by command name (every process of
// that name on the machine: only meaningful on a machine of your own).
type ProcessSpec struct {
	PID  int
	Name string
}

func (s ProcessSpec) String() string {
	if s.PID > 0 {
		return "pid " + strconv.Itoa(s.PID)
	}
	return s.Name
}

// ParseProcessSpec reads "1234" as a PID and anything else as a command name.
func ParseProcessSpec(s string) (ProcessSpec, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return ProcessSpec{}, fmt.Errorf("empty process: give a PID or a command name")
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 {
			return ProcessSpec{}, fmt.Errorf("process id %d: must be positive", n)
		}
		return ProcessSpec{PID: n}, nil
	}
	if strings.ContainsAny(s, "/ \t") || len(s) > 64 {
		return ProcessSpec{}, fmt.Errorf("process %q: give a PID or a command name as /proc/PID/comm spells it (e.g. postgres)", s)
	}
	return ProcessSpec{Name: s}, nil
}

// ProcessUsage is what one watched group of processes used during the measured window.
type ProcessUsage struct {
	Process string `json:"process"`
	// Processes is how many processes the group had at the end (a postmaster and its
	// backends are several).
	Processes int `json:"processes"`
	// CPUSeconds is user + system time used during the window by the processes alive at
	// its end (a process that exited during the window is not counted).
	CPUSeconds float64 `json:"cpu_seconds"`
	// PeakPSSBytes is the highest sum, over samples every 250 ms, of the group's
	// proportional set size: shared memory (PostgreSQL's shared buffers) is divided among
	// the processes that map it rather than counted once per process.
	PeakPSSBytes int64 `json:"peak_pss_bytes"`
	// PeakRSSBytes is the largest resident-set high-water mark (VmHWM) of any one process
	// of the group, as the kernel keeps it since that process started.
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
}

// procSample is one reading of one process.
type procSample struct {
	ppid     int
	comm     string
	cpuTicks int64
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat: 100 on every
// Linux the Go runtime supports.
const clockTicks = 100

// readProcs reads every process of the machine (pid → sample). Processes that exit while
// it reads are skipped.
func readProcs(root string) (map[int]procSample, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", root, err)
	}
	out := make(map[int]procSample, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, e.Name(), "stat"))
		if err != nil {
			continue
		}
		s, err := parseStat(b)
		if err != nil {
			return nil, fmt.Errorf("%s/%d/stat: %w", root, pid, err)
		}
		out[pid] = s
	}
	return out, nil
}

// parseStat reads the command name, parent and CPU time of a /proc/PID/stat line.
func parseStat(b []byte) (procSample, error) {
	// The command name (field 2) is in parentheses and may hold spaces and parentheses;
	// the fields after the last ')' are plain.
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return procSample{}, fmt.Errorf("unexpected format %q", b)
	}
	fields := strings.Fields(string(b[end+1:]))
	// fields[0] is the state (field 3): ppid is field 4, utime and stime fields 14 and 15.
	if len(fields) < 13 {
		return procSample{}, fmt.Errorf("%d fields after the name, want at least 13", len(fields))
	}
	ppid, err1 := strconv.Atoi(fields[1])
	ut, err2 := strconv.ParseInt(fields[11], 10, 64)
	st, err3 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return procSample{}, fmt.Errorf("unexpected numbers in %q", b)
	}
	return procSample{ppid: ppid, comm: string(b[open+1 : end]), cpuTicks: ut + st}, nil
}

// members are the PIDs of spec's group among procs. A name never matches this process
// (`securepay loadtest` is named securepay too).
func members(spec ProcessSpec, procs map[int]procSample) []int {
	var out []int
	if spec.Name != "" {
		self := os.Getpid()
		for pid, s := range procs {
			if s.comm == spec.Name && pid != self {
				out = append(out, pid)
			}
		}
		slices.Sort(out)
		return out
	}
	if _, ok := procs[spec.PID]; !ok {
		return nil
	}
	children := map[int][]int{}
	for pid, s := range procs {
		children[s.ppid] = append(children[s.ppid], pid)
	}
	// Breadth first from the root; the process tree has no cycles, and the visited set
	// bounds the walk anyway.
	seen := map[int]bool{spec.PID: true}
	queue := []int{spec.PID}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		out = append(out, pid)
		for _, c := range children[pid] {
			if !seen[c] {
				seen[c] = true
				queue = append(queue, c)
			}
		}
	}
	slices.Sort(out)
	return out
}

// procMemory reads a process's proportional set size and resident high-water mark, in bytes.
func procMemory(root string, pid int) (pss, hwm int64) {
	dir := filepath.Join(root, strconv.Itoa(pid))
	if b, err := os.ReadFile(filepath.Join(dir, "smaps_rollup")); err == nil {
		pss = kbField(b, "Pss:")
	}
	if b, err := os.ReadFile(filepath.Join(dir, "status")); err == nil {
		hwm = kbField(b, "VmHWM:")
		if pss == 0 {
			pss = kbField(b, "VmRSS:") // no smaps_rollup (old kernel, or not ours to read)
		}
	}
	return pss, hwm
}

// kbField finds "Name:   123 kB" in a /proc file and returns it in bytes.
func kbField(b []byte, name string) int64 {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return n << 10
		}
	}
	return 0
}

// memorySampleInterval spaces the peak-memory samples. A sample reads smaps_rollup of
// every watched process, and the kernel walks each one's page tables to answer: with a
// PostgreSQL postmaster, its backends and two Go servers watched, every 250 ms cost this
// generator a tenth of a core (2.5 s of CPU in a 25 s run on two cores), taken from the
// servers under test and charged to the client's CPU per transfer. Peak memory moves
// slowly under a steady load; a sample every two seconds, plus the one at the end, sees it.
const memorySampleInterval = 2 * time.Second

// ProcWatcher samples groups of processes while a load runs.
type ProcWatcher struct {
	root  string
	specs []ProcessSpec

	mu      sync.Mutex
	start   map[int]int64 // pid → CPU ticks when the window began
	peakPSS []int64       // per spec
}

// NewProcWatcher watches specs, reading root (normally "/proc").
func NewProcWatcher(root string, specs []ProcessSpec) *ProcWatcher {
	return &ProcWatcher{root: root, specs: specs, peakPSS: make([]int64, len(specs))}
}

// Begin starts the measured window: CPU is counted from here.
func (w *ProcWatcher) Begin() error {
	if len(w.specs) == 0 {
		return nil
	}
	procs, err := readProcs(w.root)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.start = map[int]int64{}
	for i, spec := range w.specs {
		m := members(spec, procs)
		if len(m) == 0 {
			return fmt.Errorf("no process matches %s", spec)
		}
		for _, pid := range m {
			w.start[pid] = procs[pid].cpuTicks
		}
		w.peakPSS[i] = 0
	}
	return nil
}

// Run samples memory every interval until ctx ends.
func (w *ProcWatcher) Run(ctx context.Context, interval time.Duration) {
	if len(w.specs) == 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		w.sample()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (w *ProcWatcher) sample() {
	procs, err := readProcs(w.root)
	if err != nil {
		return // a missed sample; the next one reads again
	}
	for i, spec := range w.specs {
		var sum int64
		for _, pid := range members(spec, procs) {
			pss, _ := procMemory(w.root, pid)
			sum += pss
		}
		w.mu.Lock()
		w.peakPSS[i] = max(w.peakPSS[i], sum)
		w.mu.Unlock()
	}
}

// End closes the window and reports each group's use.
func (w *ProcWatcher) End() ([]ProcessUsage, error) {
	if len(w.specs) == 0 {
		return nil, nil
	}
	w.sample()
	procs, err := readProcs(w.root)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]ProcessUsage, 0, len(w.specs))
	for i, spec := range w.specs {
		u := ProcessUsage{Process: spec.String(), PeakPSSBytes: w.peakPSS[i]}
		var ticks int64
		for _, pid := range members(spec, procs) {
			u.Processes++
			// A process born during the window started from zero.
			ticks += procs[pid].cpuTicks - w.start[pid]
			_, hwm := procMemory(w.root, pid)
			u.PeakRSSBytes = max(u.PeakRSSBytes, hwm)
		}
		u.CPUSeconds = float64(ticks) / clockTicks
		out = append(out, u)
	}
	return out, nil
}
