package kurrentdb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	kdb "github.com/kurrent-io/KurrentDB-Client-Go/kurrentdb"
)

// Defaults and bounds for Config.
const (
	// DefaultMaxAppendAttempts bounds how often one Append re-reads the log's tip after
	// another process took the next slot of the log stream first.
	DefaultMaxAppendAttempts = 32
	MaxMaxAppendAttempts     = 1000

	// DefaultMaxResends bounds how often one attempt is sent again, unchanged, after an
	// error that leaves its outcome unknown (timeout, lost connection).
	DefaultMaxResends = 3
	MaxMaxResends     = 20

	// DefaultReadConcurrency bounds the parallel stream reads that resolve one ReadAll page.
	DefaultReadConcurrency = 8
	MaxReadConcurrency     = 64

	// DefaultPollInterval bounds how long a subscriber waits before re-reading the log when
	// no wake-up arrives (commits by other processes when the log-stream watch is off or
	// broken).
	DefaultPollInterval = 250 * time.Millisecond
	MinPollInterval     = 10 * time.Millisecond
	MaxPollInterval     = time.Minute

	// MaxNamespaceBytes keeps namespaced names well inside KurrentDB's limits.
	MaxNamespaceBytes = 64
)

// Config says which KurrentDB to use and how the store behaves there.
type Config struct {
	// URL is a KurrentDB connection string, e.g.
	// "kurrentdb://admin:changeit@localhost:2113?tls=false" (esdb:// also works).
	URL string

	// Namespace is prepended to every KurrentDB stream name this store uses, so several
	// independent stores (tests, tenants) can share one server. "" in production. It must
	// not contain '$' and no namespace in use on a server may be a prefix of another.
	Namespace string

	// Clock stamps RecordedAt; nil means time.Now. Injected so tests control time.
	Clock func() time.Time

	// MaxAppendAttempts: see DefaultMaxAppendAttempts; 0 means the default.
	MaxAppendAttempts int
	// MaxResends: see DefaultMaxResends; 0 means the default. Negative is refused.
	MaxResends int
	// ReadConcurrency: see DefaultReadConcurrency; 0 means the default.
	ReadConcurrency int
	// PollInterval: see DefaultPollInterval; 0 means the default.
	PollInterval time.Duration

	// Logger receives the KurrentDB client's own log lines (connection discovery,
	// reconnects, unexpected server errors); nil discards them.
	Logger *slog.Logger

	// DisableLogWatch turns off the KurrentDB catch-up subscription to the log stream that
	// wakes subscribers when another process commits; they then rely on PollInterval.
	DisableLogWatch bool
}

// Validate reports the first problem with c, without contacting the server.
func (c Config) Validate() error {
	if c.URL == "" {
		return errors.New("kurrentdb config: URL is required")
	}
	conf, err := kdb.ParseConnectionString(c.URL)
	if err != nil {
		// The client's message may echo the URL, credentials included, so it is not wrapped.
		return errors.New("kurrentdb config: URL is not a valid KurrentDB connection string")
	}
	if conf.NodePreference != kdb.NodePreferenceLeader {
		// Reads must see every acknowledged append (read-your-writes, and ReadAll's "no
		// event before its predecessors" rule across processes). The client's per-call
		// requires-leader flag does not reach the server in v1.3.0 (it is set on the
		// incoming, not the outgoing, gRPC metadata), so the connection itself must go to
		// the leader.
		return fmt.Errorf("kurrentdb config: nodePreference must be leader (the default), got %v", conf.NodePreference)
	}
	if err := validateNamespace(c.Namespace); err != nil {
		return fmt.Errorf("kurrentdb config: %w", err)
	}
	switch {
	case c.MaxAppendAttempts < 0 || c.MaxAppendAttempts > MaxMaxAppendAttempts:
		return fmt.Errorf("kurrentdb config: MaxAppendAttempts must be 0 (default) or 1..%d, got %d", MaxMaxAppendAttempts, c.MaxAppendAttempts)
	case c.MaxResends < 0 || c.MaxResends > MaxMaxResends:
		return fmt.Errorf("kurrentdb config: MaxResends must be 0 (default) or 1..%d, got %d", MaxMaxResends, c.MaxResends)
	case c.ReadConcurrency < 0 || c.ReadConcurrency > MaxReadConcurrency:
		return fmt.Errorf("kurrentdb config: ReadConcurrency must be 0 (default) or 1..%d, got %d", MaxReadConcurrency, c.ReadConcurrency)
	case c.PollInterval != 0 && (c.PollInterval < MinPollInterval || c.PollInterval > MaxPollInterval):
		return fmt.Errorf("kurrentdb config: PollInterval must be 0 (default) or %v..%v, got %v", MinPollInterval, MaxPollInterval, c.PollInterval)
	}
	return nil
}

func validateNamespace(ns string) error {
	switch {
	case len(ns) > MaxNamespaceBytes:
		return fmt.Errorf("namespace is %d bytes, limit %d", len(ns), MaxNamespaceBytes)
	case strings.ContainsRune(ns, '$'):
		// '$' marks the streams the store keeps for itself; see streamNames.
		return fmt.Errorf("namespace %q contains '$'", ns)
	case !utf8.ValidString(ns):
		return errors.New("namespace is not valid UTF-8")
	}
	return nil
}

// withDefaults fills the zero values; c must have passed Validate.
func (c Config) withDefaults() Config {
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.MaxAppendAttempts == 0 {
		c.MaxAppendAttempts = DefaultMaxAppendAttempts
	}
	if c.MaxResends == 0 {
		c.MaxResends = DefaultMaxResends
	}
	if c.ReadConcurrency == 0 {
		c.ReadConcurrency = DefaultReadConcurrency
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	return c
}

// clientLogger adapts the client's printf-style logging to slog.
func clientLogger(l *slog.Logger) kdb.LoggingFunc {
	if l == nil {
		return kdb.NoopLogging()
	}
	return func(level kdb.LogLevel, format string, args ...any) {
		// One client path passes its arguments as a single slice instead of spreading them.
		if len(args) == 1 {
			if inner, ok := args[0].([]any); ok {
				args = inner
			}
		}
		lvl := slog.LevelInfo
		switch level {
		case kdb.LogDebug:
			lvl = slog.LevelDebug
		case kdb.LogWarn:
			lvl = slog.LevelWarn
		case kdb.LogError:
			lvl = slog.LevelError
		}
		l.Log(context.Background(), lvl, "kurrentdb client: "+fmt.Sprintf(format, args...))
	}
}
