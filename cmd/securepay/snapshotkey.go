package main

import (
	"fmt"
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
	return devKeyFile(filepath.Join(dir, devSnapshotKeyFile), "snapshot key", loadSnapshotKey)
}
