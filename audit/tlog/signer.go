package tlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// Files of a signer's directory.
const (
	// LatestFile is the newest published checkpoint.
	LatestFile = "checkpoint"
	// HistoryDir keeps every published checkpoint, named by its size (20 digits), so an
	// auditor can fetch the one they need for a consistency proof.
	HistoryDir = "history"
	// TreeDir holds the tree's node files (Tree).
	TreeDir = "tree"
)

// DefaultCheckpointInterval is how often a signer publishes when the log has grown.
const DefaultCheckpointInterval = 10 * time.Second

// SignerConfig configures a Signer.
type SignerConfig struct {
	Tree *Tree
	// PrivateKey is the note-format private key ("PRIVATE+KEY+origin+hash+key"); its name
	// is the log's origin.
	PrivateKey string
	// Dir receives the checkpoints: a directory the database (and its roles) cannot write.
	Dir string
	// Interval between publications when the tree has grown; default DefaultCheckpointInterval.
	Interval time.Duration
	Logger   *slog.Logger
}

// Signer signs checkpoints of a Tree and publishes them to a directory. It never signs a
// checkpoint that does not extend the last one it published: on start it reads that one
// back, and before each signature it checks that the tree's root at the old size is
// still the old root.
type Signer struct {
	cfg    SignerConfig
	signer note.Signer
	public string
	log    *slog.Logger
	mu     sync.Mutex // serialises Publish and guards latest
	latest Signed
}

// NewSigner checks the key and the directory and loads the last published checkpoint.
func NewSigner(cfg SignerConfig) (*Signer, error) {
	if cfg.Tree == nil || cfg.Dir == "" {
		return nil, errors.New("tlog signer: a Tree and a Dir are required")
	}
	signer, err := note.NewSigner(cfg.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("tlog signer: the private key does not parse (want PRIVATE+KEY+NAME+HASH+KEY): %w", err)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultCheckpointInterval
	}
	public, err := PublicKey(cfg.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("tlog signer: %w", err)
	}
	s := &Signer{cfg: cfg, signer: signer, public: public, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, HistoryDir), 0o755); err != nil {
		return nil, fmt.Errorf("tlog signer: create %s: %w", cfg.Dir, err)
	}
	prev, err := os.ReadFile(filepath.Join(cfg.Dir, LatestFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("tlog signer: read the last checkpoint: %w", err)
	default:
		v, err := note.NewVerifier(public)
		if err != nil {
			return nil, fmt.Errorf("tlog signer: %w", err)
		}
		cp, err := OpenCheckpoint(prev, v)
		if err != nil {
			return nil, fmt.Errorf("tlog signer: the last checkpoint in %s is not ours: %w", cfg.Dir, err)
		}
		s.latest = Signed{Checkpoint: cp, Note: prev}
	}
	return s, nil
}

// Origin is the log's name in every checkpoint (the key's name).
func (s *Signer) Origin() string { return s.signer.Name() }

// PublicKey is the verifier key auditors need ("origin+hash+key").
func (s *Signer) PublicKey() string { return s.public }

// Latest returns the newest published checkpoint; false before the first.
func (s *Signer) Latest() (Signed, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latest, s.latest.Note != nil
}

// Publish signs the tree as it is now and publishes it, unless it has not grown since
// the last checkpoint (then it returns that one). It refuses, and says so loudly, to sign
// a tree that does not extend the last checkpoint.
func (s *Signer) Publish() (Signed, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	size := s.cfg.Tree.Size()
	prev := s.latest
	if prev.Note != nil && size <= prev.Size {
		return prev, nil
	}
	if prev.Note != nil {
		old, err := s.cfg.Tree.Root(prev.Size)
		if err != nil {
			return Signed{}, fmt.Errorf("tlog signer: root at the last checkpoint: %w", err)
		}
		if !bytes.Equal(old, prev.Root) {
			s.log.Error("tlog signer: the tree does not extend the last checkpoint: not signing",
				"component", "tlog", "checkpoint_size", prev.Size)
			return Signed{}, fmt.Errorf("tlog signer: the tree's first %d events do not hash to the last checkpoint's root: not signing", prev.Size)
		}
	}
	root, err := s.cfg.Tree.Root(size)
	if err != nil {
		return Signed{}, fmt.Errorf("tlog signer: root: %w", err)
	}
	// The tree a checkpoint covers is on disk before the checkpoint exists.
	if err := s.cfg.Tree.Sync(); err != nil {
		return Signed{}, err
	}
	cp := Checkpoint{Origin: s.signer.Name(), Size: size, Root: root}
	msg, err := SignCheckpoint(cp, s.signer)
	if err != nil {
		return Signed{}, err
	}
	if err := writeFileAtomic(filepath.Join(s.cfg.Dir, HistoryDir, fmt.Sprintf("%020d", size)), msg); err != nil {
		return Signed{}, fmt.Errorf("tlog signer: publish: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(s.cfg.Dir, LatestFile), msg); err != nil {
		return Signed{}, fmt.Errorf("tlog signer: publish: %w", err)
	}
	s.latest = Signed{Checkpoint: cp, Note: msg}
	return s.latest, nil
}

// Run publishes at every interval (when the tree has grown) until ctx ends.
func (s *Signer) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		if _, err := s.Publish(); err != nil {
			s.log.Error("tlog signer: publish failed", "component", "tlog", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// ReadCheckpointFile reads a signed checkpoint from a file, bounded in size.
func ReadCheckpointFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxCheckpointBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxCheckpointBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes, not a checkpoint", name, MaxCheckpointBytes)
	}
	return b, nil
}

// writeFileAtomic replaces name with data: a reader sees the old file or the new one,
// never a torn one, and the new one is durable before the rename.
func writeFileAtomic(name string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), name)
}
