package kurrentdb

import (
	"strings"
	"testing"
	"time"
)

const testURL = "kurrentdb://admin:changeit@localhost:2113?tls=false"

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name    string
		cfg     Config
		wantErr string // "" means valid
	}{
		{"minimal", Config{URL: testURL}, ""},
		{"esdb scheme", Config{URL: "esdb://localhost:2113?tls=false"}, ""},
		{"everything set", Config{URL: testURL, Namespace: "tenant-1-", MaxAppendAttempts: 5, MaxResends: 2, ReadConcurrency: 4, PollInterval: time.Second, Clock: time.Now, DisableLogWatch: true}, ""},
		{"no URL", Config{}, "URL is required"},
		{"bad URL", Config{URL: "http://admin:secret@localhost"}, "not a valid"},
		{"follower reads refused", Config{URL: testURL + "&nodePreference=follower"}, "nodePreference"},
		{"namespace with $", Config{URL: testURL, Namespace: "a$b"}, "'$'"},
		{"namespace too long", Config{URL: testURL, Namespace: strings.Repeat("n", MaxNamespaceBytes+1)}, "limit"},
		{"namespace not UTF-8", Config{URL: testURL, Namespace: "\xff"}, "UTF-8"},
		{"negative attempts", Config{URL: testURL, MaxAppendAttempts: -1}, "MaxAppendAttempts"},
		{"too many attempts", Config{URL: testURL, MaxAppendAttempts: MaxMaxAppendAttempts + 1}, "MaxAppendAttempts"},
		{"negative resends", Config{URL: testURL, MaxResends: -1}, "MaxResends"},
		{"too many resends", Config{URL: testURL, MaxResends: MaxMaxResends + 1}, "MaxResends"},
		{"too much read concurrency", Config{URL: testURL, ReadConcurrency: MaxReadConcurrency + 1}, "ReadConcurrency"},
		{"poll too fast", Config{URL: testURL, PollInterval: time.Millisecond}, "PollInterval"},
		{"poll too slow", Config{URL: testURL, PollInterval: time.Hour}, "PollInterval"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Validate() = %v, want an error mentioning %q", err, tc.wantErr)
			}
		})
	}
}

func TestConfigValidateDoesNotLeakCredentials(t *testing.T) {
	err := Config{URL: "http://admin:s3cret@localhost"}.Validate()
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("Validate() = %v, want an error that does not repeat the password", err)
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{URL: testURL}.withDefaults()
	if c.Clock == nil || c.MaxAppendAttempts != DefaultMaxAppendAttempts || c.MaxResends != DefaultMaxResends ||
		c.ReadConcurrency != DefaultReadConcurrency || c.PollInterval != DefaultPollInterval {
		t.Fatalf("withDefaults left zero values: %+v", c)
	}
	set := Config{URL: testURL, MaxAppendAttempts: 3, MaxResends: 1, ReadConcurrency: 2, PollInterval: time.Second}.withDefaults()
	if set.MaxAppendAttempts != 3 || set.MaxResends != 1 || set.ReadConcurrency != 2 || set.PollInterval != time.Second {
		t.Fatalf("withDefaults overrode explicit values: %+v", set)
	}
}
