package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/securepay/securepay/services/ledger"
)

// The snapshot key authenticates the ledger's snapshots (services/ledger/snapshot.go): a
// snapshot is used only if a process holding this key wrote it. It must therefore live
// outside the database, in a file only the server's user reads, and be the same for every
// instance of one ledger (or each ignores the others' snapshots).

// devSnapshotKeyFile is the key `securepay dev` keeps beside its ledger.
const devSnapshotKeyFile = "snapshot.key"

// loadSnapshotKey reads a snapshot key file: private (readSecretFile), and at least
// ledger.MinSnapshotKeyBytes long once trimmed. Its bytes are the key as written (base64
// text is fine: what matters is the entropy behind it).
func loadSnapshotKey(name string) ([]byte, error) {
	v, err := readSecretFile(name)
	if err != nil {
		return nil, fmt.Errorf("the snapshot key (--snapshot-key-file): %w", err)
	}
	if len(v) < ledger.MinSnapshotKeyBytes {
		return nil, fmt.Errorf("the snapshot key (--snapshot-key-file): %s holds %d bytes, want at least %d random ones: "+
			"head -c 32 /dev/urandom | base64 > %s && chmod 600 %s", name, len(v), ledger.MinSnapshotKeyBytes, name, name)
	}
	return []byte(v), nil
}

// devSnapshotKey returns the key kept in dir, generating it on first use, and its path.
func devSnapshotKey(dir string) ([]byte, string, error) {
	name := filepath.Join(dir, devSnapshotKeyFile)
	key, err := loadSnapshotKey(name)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, name, err
	}
	raw := make([]byte, 32)
	_, _ = rand.Read(raw) // crypto/rand.Read never fails
	// O_EXCL: never overwrite a key another process just wrote (its snapshots need it).
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, name, fmt.Errorf("create the snapshot key %s: %w", name, err)
	}
	if _, err := f.WriteString(base64.StdEncoding.EncodeToString(raw) + "\n"); err != nil {
		f.Close()
		return nil, name, fmt.Errorf("write the snapshot key %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return nil, name, fmt.Errorf("write the snapshot key %s: %w", name, err)
	}
	key, err = loadSnapshotKey(name)
	return key, name, err
}
