package ledger_test

import (
	"fmt"
	"os"
	"testing"
)

// TestMain says, once and before any test, which backend the backend tests (backends in
// backends_test.go) leave out and why: an omission nobody sees reads as coverage that is
// not there. Leaving KurrentDB out is not skipping a required service: no KurrentDB
// server can be installed on these machines (README, "What is tested here, and what is not").
func TestMain(m *testing.M) {
	if os.Getenv(kurrentEnv) == "" {
		fmt.Printf("services/ledger: the kurrentdb backend is left out of the backend tests (embedded and postgres run): "+
			"%s is not set, and no KurrentDB server can be installed on these machines (README)\n", kurrentEnv)
	}
	m.Run()
}
