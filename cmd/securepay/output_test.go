package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// balanceRow is the row of account in the first balances table after the line that
// contains after: its posted amount and position.
func balanceRow(t *testing.T, out, after, account string) (posted, position string) {
	t.Helper()
	i := strings.Index(out, after)
	if i < 0 {
		t.Fatalf("want %q in:\n%s", after, out)
	}
	inTable := false
	for _, line := range strings.Split(out[i:], "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 8 && f[0] == "ACCOUNT" && f[2] == "POSTED":
			inTable = true
		case inTable && len(f) == 7 && f[0] == account:
			return f[2], f[6]
		}
	}
	t.Fatalf("no balance of %s after %q in:\n%s", account, after, out)
	return "", ""
}

// TestBalancesCarryTheirOwnPosition: every balance the CLI prints is labelled with the
// position it is true at. A replay shows the balances of now, each with the position that
// last changed it (not the original write's position); an answer without a position says
// "-", never position 0.
func TestBalancesCarryTheirOwnPosition(t *testing.T) {
	dev := startDev(t)
	getenv := serverEnv(dev, t.TempDir())
	mustRun(t, getenv, "account", "open", "world", "--kind", "external")
	mustRun(t, getenv, "account", "open", "alice")
	transfer := []string{"transfer", "--from", "world", "--to", "alice", "--amount", "2.00", "--id", "t1"}
	mustRun(t, getenv, transfer...)
	mustRun(t, getenv, "transfer", "--from", "world", "--to", "alice", "--amount", "1.00") // later activity
	now := balanceOf(t, getenv, "alice")
	if now.Posted != "3.00" {
		t.Fatalf("alice posted %s, want 3.00", now.Posted)
	}

	out := mustRun(t, getenv, transfer...)
	posted, pos := balanceRow(t, out, "balances now:", "alice")
	if posted != now.Posted || pos != now.Position {
		t.Errorf("replay: alice %s at %s, want %s at %s (the balance of now, at the position that made it):\n%s", posted, pos, now.Posted, now.Position, out)
	}

	var js struct {
		Result struct {
			Replayed bool          `json:"replayed"`
			Balances []balanceJSON `json:"balances"`
		} `json:"result"`
	}
	out = mustRun(t, getenv, append(transfer, "--json")...)
	if err := json.Unmarshal([]byte(out), &js); err != nil || !js.Result.Replayed || len(js.Result.Balances) != 2 {
		t.Fatalf("replay --json: want a replayed result with two balances, got %v:\n%s", err, out)
	}
	for _, b := range js.Result.Balances {
		if b.Posted == "3.00" && b.Position != now.Position {
			t.Errorf("replay --json: alice 3.00 at %s, want at %s:\n%s", b.Position, now.Position, out)
		}
	}

	// GetAccount labels the write side's state with the position of its last event.
	out = mustRun(t, getenv, "account", "get", "alice")
	if posted, pos := balanceRow(t, out, "", "alice"); posted != "3.00" || pos != now.Position {
		t.Errorf("account get: alice %s at %q, want 3.00 at %q (the position that made it):\n%s", posted, pos, now.Position, out)
	}
}
