package ledger_test

import (
	"strings"
	"testing"
	"time"

	"github.com/securepay/securepay/services/ledger"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  ledger.Config
		want string // a part of the error; "" for a valid config
	}{
		{"zero value takes the defaults", ledger.Config{}, ""},
		{"explicit values", ledger.Config{MaxBatch: 64, QueueSize: 100, CacheSize: 10, MaxAttempts: 3, LoadWorkers: 4, BatchTimeout: time.Second}, ""},
		{"negative batch", ledger.Config{MaxBatch: -1}, "MaxBatch is -1"},
		{"negative queue", ledger.Config{QueueSize: -5}, "QueueSize is -5"},
		{"negative cache", ledger.Config{CacheSize: -1}, "CacheSize is -1"},
		{"negative attempts", ledger.Config{MaxAttempts: -2}, "MaxAttempts is -2"},
		{"negative load workers", ledger.Config{LoadWorkers: -1}, "LoadWorkers is -1"},
		{"absurd load workers", ledger.Config{LoadWorkers: 1 << 20}, "LoadWorkers is 1048576"},
		{"negative timeout", ledger.Config{BatchTimeout: -time.Second}, "BatchTimeout is -1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("want a valid config, got %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("want an error containing %q, got %v", tc.want, err)
			}
			if tc.want != "" {
				store, _ := openEmbedded(t)
				if p, err := ledger.New(store, tc.cfg); err == nil {
					p.Close()
					t.Fatal("New accepted what Validate refuses")
				}
			}
		})
	}
	// Every problem is listed at once, so an operator fixes them in one go.
	err := ledger.Config{MaxBatch: -1, QueueSize: -1}.Validate()
	if err == nil || !strings.Contains(err.Error(), "MaxBatch") || !strings.Contains(err.Error(), "QueueSize") {
		t.Fatalf("two bad fields: want both named, got %v", err)
	}
}
