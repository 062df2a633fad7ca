package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// maxSecretFileBytes bounds what a secret file may hold: a DSN or a URL is a line, and a
// path pointed at a large file by mistake must not be read whole into memory.
const maxSecretFileBytes = 64 << 10

// secretSetting is one secret of the configuration (a DSN, a URL with a password) that can
// be given as a value (flag or environment variable) or as the name of a file holding it.
// The file is the way that keeps the secret out of `ps` (which shows every flag) and out
// of /proc/PID/environ (which the process's user and root can read); the value is kept
// for development and for platforms that inject the environment themselves.
type secretSetting struct {
	what              string // "the PostgreSQL DSN", for messages
	flag, variable    string // the value's flag and variable
	value, file       string // as given; at most one of them may be set
	fileFlag, fileVar string
}

// resolve returns the secret: the value, or the trimmed content of the file. It refuses
// both at once (which one was meant is a guess a payments server must not make) and a file
// other users can read (the secret would be theirs too). Messages name the file, never
// its content.
func (s secretSetting) resolve() (string, error) {
	if s.value != "" && s.file != "" {
		return "", fmt.Errorf("%s is given twice, as a value (--%s or $%s) and as a file (--%s or $%s): keep one, the file",
			s.what, s.flag, s.variable, s.fileFlag, s.fileVar)
	}
	if s.file == "" {
		return s.value, nil
	}
	v, err := readSecretFile(s.file)
	if err != nil {
		return "", fmt.Errorf("%s (--%s): %w", s.what, s.fileFlag, err)
	}
	return v, nil
}

// readSecretFile reads a secret file whose permissions let only its owner read it.
func readSecretFile(name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	// The mode of the file opened, not of the name looked up before: a rename in between
	// cannot slip a readable file past the check. Stat follows symbolic links, so a
	// Kubernetes secret volume (links into ..data) is judged by the file itself.
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", name)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("%s can be read by other users (mode %#o); make it private: chmod 600 %s", name, perm, name)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFileBytes+1))
	if err != nil {
		return "", err
	}
	if len(b) > maxSecretFileBytes {
		return "", fmt.Errorf("%s is larger than %d bytes: not a secret file", name, maxSecretFileBytes)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", errors.New(name + " is empty")
	}
	return v, nil
}

// devKeyFile loads the key file name of `securepay dev` with load, first writing 32 random
// bytes (base64) there if it does not exist yet; what names the key in errors.
func devKeyFile[K any](name, what string, load func(string) (K, error)) (K, string, error) {
	key, err := load(name)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, name, err
	}
	raw := make([]byte, 32)
	_, _ = rand.Read(raw) // crypto/rand.Read never fails
	// O_EXCL: never overwrite a key another process just wrote (what it sealed needs it).
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return key, name, fmt.Errorf("create the %s %s: %w", what, name, err)
	}
	if _, err := f.WriteString(base64.StdEncoding.EncodeToString(raw) + "\n"); err != nil {
		f.Close()
		return key, name, fmt.Errorf("write the %s %s: %w", what, name, err)
	}
	if err := f.Close(); err != nil {
		return key, name, fmt.Errorf("write the %s %s: %w", what, name, err)
	}
	key, err = load(name)
	return key, name, err
}
