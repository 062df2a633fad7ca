package invariant_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/loadtest/invariant"
)

var usd = domain.Asset{Code: "USD", Scale: 2}

func usd100(minor int64) domain.Money { return domain.Money{Asset: usd, Minor: minor} }

// TestCatchesViolations appends, behind the domain's back, logs that break each invariant,
// and requires the checker to name the break: a checker that never fails proves nothing.
func TestCatchesViolations(t *testing.T) {
	opened := []domain.Event{
		domain.AccountOpened{AccountID: "world", Asset: usd, Kind: domain.KindExternal},
		domain.AccountOpened{AccountID: "alice", Asset: usd, Kind: domain.KindCustomer},
	}
	for _, tc := range []struct {
		name   string
		events []domain.Event
		want   string // part of the error; "" when the log is sound
	}{
		{"a sound transfer", []domain.Event{
			domain.PaymentTransferred{PaymentID: "p1", Source: "world", Destination: "alice", Amount: usd100(5)},
			domain.AccountDebited{AccountID: "world", PaymentID: "p1", Amount: usd100(5), PostedAfter: -5},
			domain.AccountCredited{AccountID: "alice", PaymentID: "p1", Amount: usd100(5), PostedAfter: 5},
		}, ""},
		{"overdraft", []domain.Event{
			domain.AccountDebited{AccountID: "alice", PaymentID: "p1", Amount: usd100(5), PostedAfter: -5},
			domain.AccountCredited{AccountID: "world", PaymentID: "p1", Amount: usd100(5), PostedAfter: 5},
		}, "below its floor"},
		{"payment created twice", []domain.Event{
			domain.PaymentTransferred{PaymentID: "p1", Source: "world", Destination: "alice", Amount: usd100(5)},
			domain.PaymentTransferred{PaymentID: "p1", Source: "world", Destination: "alice", Amount: usd100(5)},
		}, "created twice"},
		{"money from nowhere", []domain.Event{
			domain.AccountCredited{AccountID: "alice", PaymentID: "p1", Amount: usd100(5), PostedAfter: 5},
		}, "sum to 5"},
		{"capture applied twice", []domain.Event{
			domain.PaymentCaptured{PaymentID: "a1", CaptureID: "c1", Amount: usd100(1)},
			domain.PaymentCaptured{PaymentID: "a1", CaptureID: "c1", Amount: usd100(1)},
		}, "recorded 2 times"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			store, err := embedded.Open(t.TempDir(), embedded.Options{})
			if err != nil {
				t.Fatalf("open store: %v", err)
			}
			defer store.Close()
			for i, e := range append(append([]domain.Event(nil), opened...), tc.events...) {
				name, data, err := domain.EncodeEvent(e)
				if err != nil {
					t.Fatalf("encode %T: %v", e, err)
				}
				ev := eventstore.EventData{ID: "e" + string(rune('a'+i)), Type: name, Data: data}
				if _, err := store.Append(ctx, eventstore.StreamAppend{Stream: e.Stream(), Expected: eventstore.Any(), Events: []eventstore.EventData{ev}}); err != nil {
					t.Fatalf("append %T: %v", e, err)
				}
			}
			m, err := invariant.Fold(ctx, store, 2)
			if err == nil {
				err = m.CheckFinal()
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("a sound log: want no violation, got %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("want a violation mentioning %q, got %v", tc.want, err)
			}
		})
	}
}
