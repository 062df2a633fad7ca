package embedded

import (
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/storetest"
)

func TestMain(m *testing.M) {
	storetest.CrashChildMain(m, openLocation)
}

func openLocation(dir string) (eventstore.Store, error) {
	return Open(dir, Options{Logger: quietLogger{}})
}

// quietLogger keeps pebble's informational lines out of test output; fatal errors still
// stop the test.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any)         {}
func (quietLogger) Errorf(string, ...any)        {}
func (quietLogger) Fatalf(f string, args ...any) { pebble.DefaultLogger.Fatalf(f, args...) }

func harness() storetest.Harness {
	return storetest.Harness{
		New: func(t testing.TB) eventstore.Store {
			s, err := Open(t.TempDir(), Options{Logger: quietLogger{}})
			if err != nil {
				t.Fatalf("open a fresh store: %v", err)
			}
			return s
		},
		NewWithPollInterval: func(t testing.TB, poll time.Duration) eventstore.Store {
			s, err := Open(t.TempDir(), Options{Logger: quietLogger{}, PollInterval: poll})
			if err != nil {
				t.Fatalf("open a fresh store polling every %v: %v", poll, err)
			}
			return s
		},
		NewLocation: func(t testing.TB) string { return t.TempDir() },
		Open:        openLocation,
		Tamper:      tamper,
	}
}

// tamper rewrites the data of the record at position directly in pebble, keeping its
// stored hashes, the way someone with write access to the files would.
func tamper(t testing.TB, s eventstore.Store, position uint64) {
	t.Helper()
	st, ok := s.(*Store)
	if !ok {
		t.Fatalf("tamper: store is %T, want *embedded.Store", s)
	}
	key := logKey(nil, position)
	val, closer, err := st.db.Get(key)
	if err != nil {
		t.Fatalf("tamper: read position %d: %v", position, err)
	}
	e, err := decodeRecord(position, val)
	closer.Close()
	if err != nil {
		t.Fatalf("tamper: decode position %d: %v", position, err)
	}
	e.Data = append(e.Data, " (edited)"...)
	if err := st.db.Set(key, appendRecord(nil, &e), pebble.Sync); err != nil {
		t.Fatalf("tamper: write position %d: %v", position, err)
	}
}

func TestConformance(t *testing.T) {
	storetest.Run(t, harness())
}
