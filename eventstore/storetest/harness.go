// Package storetest is the one conformance suite that every eventstore backend passes.
//
// A backend's test calls Run with a Harness; the crash-durability test re-executes the
// test binary as a child process, so the backend's test package must also route its
// TestMain through CrashChildMain.
package storetest

import (
	"testing"
	"time"

	"github.com/securepay/securepay/eventstore"
)

// Harness tells the suite how to make and reopen stores of one backend.
type Harness struct {
	// New returns a fresh, empty store. The suite closes it.
	New func(t testing.TB) eventstore.Store

	// NewWithPollInterval returns a fresh, empty store like New, whose idle subscriptions
	// re-read the log on their own only every pollInterval. The subscription tests set it
	// far beyond their deadlines, so that only the store's wake-up on a commit can deliver
	// in time: a broken wake-up then fails instead of being rescued by the next poll.
	NewWithPollInterval func(t testing.TB, pollInterval time.Duration) eventstore.Store

	// NewLocation returns where a fresh, empty store can be created (a directory, a DSN
	// with its own schema, ...). Open opens (creating if needed) the store at a location,
	// in this process or in a child process. Both are needed for the kill -9 durability
	// and reopen tests; a backend that cannot give them (a remote server we cannot kill)
	// leaves them nil and says so in its own tests.
	NewLocation func(t testing.TB) string
	Open        func(location string) (eventstore.Store, error)

	// Tamper edits the stored data of the event at position behind the store's back (the
	// way an attacker with disk or database access would), leaving the stored hashes as they
	// were. It needs backend-specific access, so it is optional; when set, the suite checks
	// that VerifyChain on s reports a *ChainBreak at exactly that position. s must still be
	// open and must read the edited event when Tamper returns.
	Tamper func(t testing.TB, s eventstore.Store, position uint64)
}
