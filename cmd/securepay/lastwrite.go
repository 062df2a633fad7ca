package main

// Read-your-writes across commands. The views that answer payment, balance and history
// are eventually consistent: a read right after a write may not see it yet. Every write
// answers the log position it committed at; the CLI remembers the last one per server in
// a small file, and the next read of that server passes it as min_position, so that the
// server waits (bounded) until its views have applied it.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"connectrpc.com/connect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/services"
)

// readYourWritesHelp is the paragraph the help of every read that waits for a position
// ends with.
const readYourWritesHelp = `Reads see your own writes: every write made from this machine remembers the log position
it committed at, per server, in $SECUREPAY_CACHE/client (default: the user cache
directory's securepay/client), and payment, balance and history pass the last one as
--min-position, so the server answers once its views have applied it. --min-position N
overrides it (--min-position 0: answer from the views as they are). If the views cannot
reach it in time, the error says NOT_CAUGHT_UP, never that the payment or account is
unknown. A remembered position the server's log does not hold (a dev server restarted
with a fresh ledger) is forgotten.`

// lastWrite is the file holding the position of the last write to one server. A zero
// lastWrite (no cache directory) remembers nothing, and reads then wait for nothing.
type lastWrite struct {
	server string
	path   string
}

// lastWriteFile is where the last write to server is remembered: $SECUREPAY_CACHE (the
// variable the tool scripts use too), else the user cache directory's securepay. One
// file per server, so that commands talking to different servers never overwrite each
// other's position.
func lastWriteFile(e env, server string) lastWrite {
	dir := e.getenv("SECUREPAY_CACHE")
	if dir == "" {
		if dir = userCacheDir(e.getenv); dir == "" {
			return lastWrite{}
		}
		dir = filepath.Join(dir, "securepay")
	}
	sum := sha256.Sum256([]byte(server))
	return lastWrite{server: server, path: filepath.Join(dir, "client", "last-write-"+hex.EncodeToString(sum[:8])+".json")}
}

// userCacheDir is os.UserCacheDir read from the command's environment rather than the
// process's, or "" when that environment does not say.
func userCacheDir(getenv func(string) string) string {
	var dir string
	switch runtime.GOOS {
	case "windows":
		dir = getenv("LocalAppData")
	case "darwin", "ios":
		if home := getenv("HOME"); home != "" {
			dir = filepath.Join(home, "Library", "Caches")
		}
	default:
		if dir = getenv("XDG_CACHE_HOME"); dir == "" {
			if home := getenv("HOME"); home != "" {
				dir = filepath.Join(home, ".cache")
			}
		}
	}
	if !filepath.IsAbs(dir) {
		return ""
	}
	return dir
}

type lastWriteRecord struct {
	Server   string `json:"server"`
	Position uint64 `json:"position"`
}

// load returns the remembered position, or false when there is none that can be read.
func (l lastWrite) load() (uint64, bool) {
	if l.path == "" {
		return 0, false
	}
	b, err := os.ReadFile(l.path)
	if err != nil {
		return 0, false
	}
	var r lastWriteRecord
	// Another server's record (a hash collision) or a damaged file is no position at all:
	// the read then answers from the views as they are, as it did before the file existed.
	if json.Unmarshal(b, &r) != nil || r.Server != l.server || r.Position == 0 {
		return 0, false
	}
	return r.Position, true
}

// save replaces the file whole (write, then rename), so a reader never sees half of it.
func (l lastWrite) save(pos uint64) error {
	if l.path == "" {
		return nil
	}
	b, err := json.Marshal(lastWriteRecord{Server: l.server, Position: pos})
	if err != nil {
		return err
	}
	dir := filepath.Dir(l.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".last-write-*")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), l.path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

func (l lastWrite) forget() {
	if l.path != "" {
		os.Remove(l.path)
	}
}

// rememberWrite records that a write committed at pos (for a replay, where the original
// did). A larger position already remembered is kept when the server's log holds it: it
// is a later write (of another command running at the same time), which a read must wait
// for too. When the log does not hold it, it was written to a ledger this server no
// longer has, and pos replaces it.
func (c *apiClient) rememberWrite(ctx context.Context, pos uint64) {
	if pos == 0 {
		return
	}
	if old, ok := c.last.load(); ok && old >= pos {
		if has, err := c.logHas(ctx, old); err != nil || has {
			return
		}
	}
	if err := c.last.save(pos); err != nil && !c.f.json {
		// The write succeeded; only a later read's wait for it is lost. Say so once, here.
		fmt.Fprintf(c.errOut, "securepay: warning: cannot remember position %d for later reads (pass --min-position %d to them): %v\n", pos, pos, err)
	}
}

// logHas says whether the server's log holds position pos.
func (c *apiClient) logHas(ctx context.Context, pos uint64) (bool, error) {
	stream, err := c.audit.StreamLog(ctx, connect.NewRequest(&ledgerv1.StreamLogRequest{AfterPosition: pos - 1, ToPosition: pos, BatchSize: 1}))
	if err != nil {
		return false, err
	}
	defer stream.Close()
	has := false
	for stream.Receive() {
		for _, e := range stream.Msg().GetEvents() {
			has = has || e.GetPosition() == pos
		}
	}
	return has, stream.Err()
}

// minPosition is the --min-position flag: unlike a plain number, it knows whether it was
// given, so that --min-position 0 can turn the remembered position off.
type minPosition struct {
	value uint64
	set   bool
}

func (m *minPosition) String() string { return fmt.Sprint(m.value) }

func (m *minPosition) Set(s string) error {
	var v uint64
	if _, err := fmt.Sscan(s, &v); err != nil || fmt.Sprint(v) != s {
		return fmt.Errorf("want a log position (0 or more), got %q", s)
	}
	m.value, m.set = v, true
	return nil
}

// registerMinPosition adds --min-position to a read and says in its help how reads see
// the user's own writes.
func registerMinPosition(cmd *Command, m *minPosition) {
	cmd.Flag.Var(m, "min-position", "answer once the views have applied this log `position` (default: that of your last write to this server)")
	cmd.Long = cmd.Long + "\n\n" + readYourWritesHelp
}

// readAfter calls read with the position it must wait for: the one given, else the last
// write's. If the views cannot reach a remembered position in time, the error says so and
// where the position came from; a remembered position the server's log does not hold is
// forgotten, and the read asked again without it.
func (c *apiClient) readAfter(ctx context.Context, m minPosition, read func(minPos uint64) error) error {
	if m.set {
		return read(m.value)
	}
	pos, ok := c.last.load()
	if !ok {
		return read(0)
	}
	err := read(pos)
	if services.ReasonOf(err) != services.ReasonNotCaughtUp {
		return err
	}
	has, herr := c.logHas(ctx, pos)
	if herr == nil && !has {
		c.last.forget()
		return read(0)
	}
	return &notCaughtUp{err: err, position: pos, inLog: herr == nil}
}

// notCaughtUp is a read that waited in vain for the position of the user's last write.
type notCaughtUp struct {
	err      error
	position uint64
	inLog    bool // the server's log holds the position (false: it could not be asked)
}

func (n *notCaughtUp) Error() string {
	known := "it is in the log, so try again in a moment"
	if !n.inLog {
		known = "try again in a moment"
	}
	return fmt.Sprintf("the server's views have not yet applied log position %d, where your last write to this server committed; "+
		"%s, or pass --min-position 0 to read the views as they are: %v", n.position, known, n.err)
}

func (n *notCaughtUp) Unwrap() error { return n.err }
