package kurrentdb

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/storetest"
)

// urlEnv names the KurrentDB server the server tests use. It is the one sanctioned skip
// of this project (issue 2): no KurrentDB server can be installed on the build machines.
const (
	urlEnv     = "SECUREPAY_KURRENTDB_URL"
	skipReason = "SECUREPAY_KURRENTDB_URL not set: no KurrentDB server can be installed on this machine"
)

func TestMain(m *testing.M) {
	// The crash-durability test re-executes this binary as a child that opens the store at
	// a location (a namespace on the server) and appends until it is killed.
	storetest.CrashChildMain(m, func(location string) (eventstore.Store, error) {
		if strings.HasPrefix(location, fakeLocationPrefix) {
			return openFakeLocation(location)
		}
		return openNamespace(os.Getenv(urlEnv), location)
	})
}

func serverURL(t *testing.T) string {
	t.Helper()
	url := os.Getenv(urlEnv)
	if url == "" {
		t.Skip(skipReason)
	}
	return url
}

// newNamespace returns a fresh namespace, so every store made by a test starts empty on a
// shared server. All have the same length, so none is a prefix of another.
func newNamespace(tb testing.TB) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatalf("random namespace: %v", err)
	}
	return "storetest-" + hex.EncodeToString(b[:]) + "-"
}

func openNamespace(url, namespace string) (*Store, error) {
	return openNamespacePolling(url, namespace, 0)
}

// openNamespacePolling is openNamespace with a poll interval (0: the default).
func openNamespacePolling(url, namespace string, poll time.Duration) (*Store, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return Open(ctx, Config{URL: url, Namespace: namespace, PollInterval: poll})
}

func TestConformance(t *testing.T) {
	url := serverURL(t)
	storetest.Run(t, storetest.Harness{
		New: func(tb testing.TB) eventstore.Store {
			s, err := openNamespace(url, newNamespace(tb))
			if err != nil {
				tb.Fatalf("open KurrentDB store at %s: %v", urlEnv, err)
			}
			return s
		},
		NewWithPollInterval: func(tb testing.TB, poll time.Duration) eventstore.Store {
			s, err := openNamespacePolling(url, newNamespace(tb), poll)
			if err != nil {
				tb.Fatalf("open KurrentDB store at %s polling every %v: %v", urlEnv, poll, err)
			}
			return s
		},
		// The kill -9 test kills the client process, not the server, so it applies here:
		// a location is a namespace on the one server.
		NewLocation: newNamespace,
		Open: func(location string) (eventstore.Store, error) {
			return openNamespace(url, location)
		},
		// No Tamper: KurrentDB events are immutable, and there is no way to edit one in
		// place behind the store's back. Detection of an altered or missing event is
		// covered by the unit tests of assemble and by eventstore's ChainVerifier.
	})
}

func TestSnapshots(t *testing.T) {
	url := serverURL(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s, err := openNamespace(url, newNamespace(t))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	if _, ok, err := s.LoadSnapshot(ctx, "account-1"); ok || err != nil {
		t.Fatalf("LoadSnapshot of a stream never snapshotted = found %v, %v; want none, nil", ok, err)
	}
	steps := []struct {
		name      string
		save      eventstore.Snapshot
		wantAfter uint64 // the version LoadSnapshot returns after the save
	}{
		{"first save", eventstore.Snapshot{Stream: "account-1", Version: 5, Schema: "account.v1", State: []byte("five")}, 5},
		{"higher version wins", eventstore.Snapshot{Stream: "account-1", Version: 9, Schema: "account.v1", State: []byte("nine")}, 9},
		{"lower version is ignored", eventstore.Snapshot{Stream: "account-1", Version: 7, Schema: "account.v1", State: []byte("seven")}, 9},
		{"same version is ignored", eventstore.Snapshot{Stream: "account-1", Version: 9, Schema: "account.v2", State: []byte("other")}, 9},
	}
	states := map[uint64][]byte{5: []byte("five"), 9: []byte("nine")}
	for _, st := range steps {
		if err := s.SaveSnapshot(ctx, st.save); err != nil {
			t.Fatalf("%s: SaveSnapshot: %v", st.name, err)
		}
		got, ok, err := s.LoadSnapshot(ctx, "account-1")
		if err != nil || !ok {
			t.Fatalf("%s: LoadSnapshot = found %v, %v; want found", st.name, ok, err)
		}
		if got.Version != st.wantAfter || !bytes.Equal(got.State, states[st.wantAfter]) || got.Schema != "account.v1" || got.Stream != "account-1" {
			t.Fatalf("%s: LoadSnapshot = %+v, want version %d state %q schema account.v1", st.name, got, st.wantAfter, states[st.wantAfter])
		}
	}
	if err := s.SaveSnapshot(ctx, eventstore.Snapshot{Stream: "a$b", Version: 1, Schema: "x"}); err == nil {
		t.Fatal("SaveSnapshot of a stream name with '$' succeeded, want an error")
	}
	// Snapshots are not events: the log must stay empty.
	if h, err := s.Head(ctx); err != nil || h != 0 {
		t.Fatalf("Head after snapshots only = %d, %v; want 0, nil", h, err)
	}
}

func TestStoreRefusesDollarStreams(t *testing.T) {
	url := serverURL(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s, err := openNamespace(url, newNamespace(t))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	_, err = s.Append(ctx, eventstore.StreamAppend{Stream: logStreamName, Expected: eventstore.Any(), Events: []eventstore.EventData{{ID: "x", Type: "t.v1"}}})
	if !errors.Is(err, eventstore.ErrInvalidAppend) {
		t.Fatalf("append to the log stream's name: err = %v, want ErrInvalidAppend", err)
	}
	if got, err := s.ReadStream(ctx, logStreamName, 0, 10); err != nil || len(got) != 0 {
		t.Fatalf("ReadStream of the log stream's name = %d events, %v; want none, nil", len(got), err)
	}
}

func TestOpenRefusesInvalidConfigWithoutAServer(t *testing.T) {
	_, err := Open(t.Context(), Config{URL: testURL, Namespace: "bad$ns"})
	if err == nil {
		t.Fatal("Open with a '$' namespace succeeded, want a config error")
	}
}
