package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/services/ledger"
)

// devLedger writes a few payments into an embedded ledger in a new directory and closes it,
// as a stopped `securepay dev --dir` leaves it.
func devLedger(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	store, err := embedded.Open(dir, embedded.Options{Logger: quietPebble{log: slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatal(err)
	}
	proc, err := ledger.New(store, ledger.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	usd := domain.Asset{Code: "USD", Scale: 2}
	for _, c := range []domain.Command{
		domain.OpenAccount{AccountID: "world", Asset: usd, Kind: domain.KindExternal},
		domain.OpenAccount{AccountID: "alice", Asset: usd, Kind: domain.KindCustomer},
		domain.Transfer{PaymentID: "p1", Source: "world", Destination: "alice", Amount: domain.Money{Asset: usd, Minor: 1234}},
	} {
		if _, err := proc.Execute(ctx, ledger.Request{Command: c}); err != nil {
			t.Fatalf("%T: %v", c, err)
		}
	}
	proc.Close()
	store.Close()
	return dir
}

func TestAuditOnADevLedger(t *testing.T) {
	dir := devLedger(t)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"audit", "verify", "--dir", dir}, "hash chain intact"},
		{[]string{"audit", "balances", "--dir", dir}, "alice"},
		{[]string{"audit", "export", "--dir", dir, "--stream", "payment-p1"}, `"type":"ledger.payment.transferred.v1"`},
		{[]string{"audit", "replay", "account-alice", "--dir", dir}, "ledger.account.credited.v1"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args[:2], " "), func(t *testing.T) {
			var out, errOut strings.Builder
			if err := run(context.Background(), c.args, &out, &errOut, noEnv); err != nil {
				t.Fatalf("securepay %v: %v\n%s", c.args, err, errOut.String())
			}
			if !strings.Contains(out.String(), c.want) {
				t.Fatalf("securepay %v: want %q in the output, got:\n%s", c.args, c.want, out.String())
			}
		})
	}
}

func TestOperatorCommandsRefuseBadInvocations(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"audit"}, "say export, verify, balances, replay, checkpoint, prove, check-receipt or keygen"},
		{[]string{"audit", "verify"}, "say where the log is"},
		{[]string{"audit", "verify", "--dir", dir, "--postgres-dsn", "postgres://127.0.0.1/x"}, "not both"},
		{[]string{"audit", "replay", "--dir", dir}, "name the stream"},
		{[]string{"audit", "verify", "extra", "--dir", dir}, "takes no argument"},
		{[]string{"audit", "balances", "--as-of", "yesterday", "--dir", dir}, "--as-of"},
		{[]string{"projections"}, "say list, status or rebuild"},
		{[]string{"projections", "rebuild"}, "name the projector"},
		{[]string{"projections", "frobnicate"}, "unknown verb"},
		{[]string{"projections", "list", "--dir", dir}, "in memory"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			err := run(context.Background(), c.args, io.Discard, io.Discard, noEnv)
			var u usageError
			if !errors.As(err, &u) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want a usage error mentioning %q, got %v", c.want, err)
			}
		})
	}
}
