package webhook_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/securepay/securepay/services/webhook"
)

// BenchmarkEndpoints is the dispatcher's lookup per notification (Registry.Endpoints) on
// PostgreSQL: from the cache, and with the cache expired at every call (one SELECT and
// one AES-GCM open per endpoint), for an account with 3 endpoints.
//
//	go test ./services/webhook -run '^$' -bench Endpoints -benchmem
func BenchmarkEndpoints(b *testing.B) {
	ctx := context.Background()
	for _, mode := range []struct {
		name string
		ttl  time.Duration
	}{{"cached", time.Hour}, {"uncached", time.Nanosecond}} {
		b.Run(mode.name, func(b *testing.B) {
			st := pgStore(b)
			reg, err := webhook.NewRegistry(webhook.Config{Store: st, Key: testKey(b, keyA), CacheTTL: mode.ttl})
			if err != nil {
				b.Fatal(err)
			}
			for i := range 3 {
				if _, _, err := reg.Register(ctx, "acct", fmt.Sprintf("https://hooks.example/%d", i), nil, "alice"); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				eps, err := reg.Endpoints(ctx, "acct")
				if err != nil || len(eps) != 3 {
					b.Fatalf("%d endpoints, %v", len(eps), err)
				}
			}
		})
	}
}
