package audit_test

import (
	"errors"
	"testing"

	"github.com/securepay/securepay/audit"
	"github.com/securepay/securepay/eventstore/embedded"
)

// failingWriter accepts limit bytes, then fails like a full disk or a closed pipe.
type failingWriter struct{ limit int }

var errDiskFull = errors.New("no space left on device")

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.limit {
		n := w.limit
		w.limit = 0
		return n, errDiskFull
	}
	w.limit -= len(p)
	return len(p), nil
}

// An auditor's report that could not be written whole must not come back as a success.
func TestBalancesReportCutShortIsAnError(t *testing.T) {
	store, err := embedded.Open(t.TempDir(), embedded.Options{})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { store.Close() })
	writeLog(t, store, 50)
	for _, limit := range []int{0, 100, 1000} {
		_, err := audit.Balances(testContext(t), store, &failingWriter{limit: limit}, audit.BalancesOptions{})
		if !errors.Is(err, errDiskFull) {
			t.Errorf("report cut after %d bytes: want an error wrapping %q, got %v", limit, errDiskFull, err)
		}
	}
}
