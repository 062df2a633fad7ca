package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSnapshotKeyFile: serve refuses a snapshot key file others can read or one too short
// to be a key, saying how to make a good one; dev generates its key once, privately, and
// reuses it.
func TestSnapshotKeyFile(t *testing.T) {
	dir := t.TempDir()
	good := writeSecret(t, dir, "good", strings.Repeat("k", 44)+"\n", 0o600)
	short := writeSecret(t, dir, "short", "secret\n", 0o600)
	open := writeSecret(t, dir, "open", strings.Repeat("k", 44), 0o644)
	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"too short", short, []string{"holds 6 bytes, want at least 32", "head -c 32 /dev/urandom | base64 > " + short}},
		{"readable by others", open, []string{"can be read by other users", "chmod 600 " + open}},
		{"missing", filepath.Join(dir, "nope"), []string{"--snapshot-key-file", "no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadSnapshotKey(tc.file)
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Fatalf("snapshot key %s: want an error saying %q, got %v", tc.file, w, err)
				}
			}
			// serve lists it with the other configuration problems, before connecting.
			certFile, keyFile := testCert(t)
			err = run(context.Background(), []string{"serve", "--postgres-dsn", "postgres://u@127.0.0.1:1/db", "--redis-addr", "127.0.0.1:1",
				"--tls-cert", certFile, "--tls-key", keyFile, "--snapshot-key-file", tc.file}, io.Discard, io.Discard, noEnv)
			if err == nil || !strings.Contains(err.Error(), tc.want[0]) {
				t.Fatalf("serve --snapshot-key-file %s: want it refused with %q, got %v", tc.file, tc.want[0], err)
			}
		})
	}
	if k, err := loadSnapshotKey(good); err != nil || string(k) != strings.Repeat("k", 44) {
		t.Fatalf("a private 44-byte key file: want its trimmed content, got %q, %v", k, err)
	}

	devDir := t.TempDir()
	k1, name, err := devSnapshotKey(devDir)
	if err != nil {
		t.Fatalf("dev: generate the snapshot key: %v", err)
	}
	fi, err := os.Stat(name)
	if err != nil || fi.Mode().Perm() != 0o600 || name != filepath.Join(devDir, devSnapshotKeyFile) {
		t.Fatalf("dev key file %s: want mode 0600 in the dev directory, got %v (err %v)", name, fi.Mode(), err)
	}
	k2, _, err := devSnapshotKey(devDir)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("dev: a second start must reuse the key (its snapshots were made with it): equal %v, err %v", bytes.Equal(k1, k2), err)
	}
	k3, _, err := devSnapshotKey(t.TempDir())
	if err != nil || bytes.Equal(k1, k3) {
		t.Fatalf("dev: another directory must get its own key: equal %v, err %v", bytes.Equal(k1, k3), err)
	}
}
