package services_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/securepay/securepay/services"
)

// TestIdempotencyStoreContract is the one suite both stores pass: the interceptor relies
// on exactly these semantics.
func TestIdempotencyStoreContract(t *testing.T) {
	for _, st := range idempotencyStores() {
		t.Run(st.name, func(t *testing.T) {
			s := st.open(t)
			ctx := testContext(t)
			const ttl = time.Minute
			key := func(name string) string { return fmt.Sprintf("%s-%d", name, time.Now().UnixNano()) }

			t.Run("first claim wins, the next sees it in flight", func(t *testing.T) {
				k := key("claim")
				if _, claimed, err := s.Claim(ctx, k, "owner-a", "fp-1", ttl); err != nil || !claimed {
					t.Fatalf("first claim: want claimed, got %v %v", claimed, err)
				}
				rec, claimed, err := s.Claim(ctx, k, "owner-b", "fp-1", ttl)
				if err != nil || claimed || rec.Done || rec.Fingerprint != "fp-1" || rec.Owner != "owner-a" {
					t.Fatalf("second claim: want owner-a's in-flight record, got %+v claimed=%v err=%v", rec, claimed, err)
				}
			})

			t.Run("complete stores the response for later claims", func(t *testing.T) {
				k := key("complete")
				if _, _, err := s.Claim(ctx, k, "owner-a", "fp-1", ttl); err != nil {
					t.Fatal(err)
				}
				if err := s.Complete(ctx, k, "owner-a", services.IdempotencyRecord{Fingerprint: "fp-1", Done: true, Response: []byte("resp")}, ttl); err != nil {
					t.Fatalf("complete: %v", err)
				}
				rec, claimed, err := s.Claim(ctx, k, "owner-b", "fp-2", ttl)
				if err != nil || claimed || !rec.Done || string(rec.Response) != "resp" || rec.Fingerprint != "fp-1" {
					t.Fatalf("claim after complete: want the stored response of fp-1, got %+v claimed=%v err=%v", rec, claimed, err)
				}
			})

			t.Run("only the owner releases or completes", func(t *testing.T) {
				k := key("owner")
				if _, _, err := s.Claim(ctx, k, "owner-a", "fp-1", ttl); err != nil {
					t.Fatal(err)
				}
				if err := s.Release(ctx, k, "owner-b"); err != nil {
					t.Fatal(err)
				}
				if err := s.Complete(ctx, k, "owner-b", services.IdempotencyRecord{Fingerprint: "fp-1", Done: true, Response: []byte("x")}, ttl); err != nil {
					t.Fatal(err)
				}
				rec, claimed, _ := s.Claim(ctx, k, "owner-c", "fp-1", ttl)
				if claimed || rec.Done || rec.Owner != "owner-a" {
					t.Fatalf("after another owner's release and complete: want owner-a's claim intact, got %+v claimed=%v", rec, claimed)
				}
				if err := s.Release(ctx, k, "owner-a"); err != nil {
					t.Fatal(err)
				}
				if _, claimed, err := s.Claim(ctx, k, "owner-c", "fp-1", ttl); err != nil || !claimed {
					t.Fatalf("after the owner's release: want a new claim to win, got claimed=%v err=%v", claimed, err)
				}
			})

			t.Run("a claim lapses after its ttl", func(t *testing.T) {
				k := key("lapse")
				if _, _, err := s.Claim(ctx, k, "owner-a", "fp-1", 50*time.Millisecond); err != nil {
					t.Fatal(err)
				}
				time.Sleep(120 * time.Millisecond)
				if _, claimed, err := s.Claim(ctx, k, "owner-b", "fp-1", ttl); err != nil || !claimed {
					t.Fatalf("after the claim's ttl: want a new claim to win, got claimed=%v err=%v", claimed, err)
				}
				// The crashed owner coming back must not overwrite the new claim.
				_ = s.Complete(ctx, k, "owner-a", services.IdempotencyRecord{Fingerprint: "fp-1", Done: true, Response: []byte("late")}, ttl)
				rec, _, _ := s.Claim(ctx, k, "owner-c", "fp-1", ttl)
				if rec.Owner != "owner-b" || rec.Done {
					t.Fatalf("a lapsed owner completed over the new claim: got %+v", rec)
				}
			})

			t.Run("exactly one of many concurrent claims wins", func(t *testing.T) {
				k := key("race")
				var wins atomic.Int32
				var wg sync.WaitGroup
				for i := 0; i < 50; i++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						_, claimed, err := s.Claim(ctx, k, fmt.Sprintf("owner-%d", i), "fp", ttl)
						if err != nil {
							t.Errorf("claim %d: %v", i, err)
						}
						if claimed {
							wins.Add(1)
						}
					}()
				}
				wg.Wait()
				if wins.Load() != 1 {
					t.Fatalf("50 concurrent claims: want exactly 1 winner, got %d", wins.Load())
				}
			})
		})
	}
}

func TestMemoryIdempotencyStoreIsBounded(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	s := services.NewMemoryIdempotencyStore(2, clock)
	ctx := context.Background()
	for _, k := range []string{"a", "b"} {
		if _, claimed, err := s.Claim(ctx, k, "o", "fp", time.Minute); err != nil || !claimed {
			t.Fatalf("claim %s: %v %v", k, claimed, err)
		}
	}
	if _, _, err := s.Claim(ctx, "c", "o", "fp", time.Minute); err == nil {
		t.Fatalf("a third live record in a store of 2: want ErrIdempotencyStoreFull, got success")
	}
	now = now.Add(2 * time.Minute) // both expire: the next claim sweeps them
	if _, claimed, err := s.Claim(ctx, "c", "o", "fp", time.Minute); err != nil || !claimed {
		t.Fatalf("claim after expiry: want room again, got %v %v", claimed, err)
	}
	if n := s.Len(); n != 1 {
		t.Fatalf("after the sweep: want 1 record, got %d", n)
	}
}
