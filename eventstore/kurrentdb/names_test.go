package kurrentdb

import (
	"errors"
	"strings"
	"testing"

	"github.com/securepay/securepay/eventstore"
)

func TestStreamNames(t *testing.T) {
	n := streamNames{namespace: "t1-"}
	cases := []struct{ got, want string }{
		{n.user("account-1"), "t1-account-1"},
		{n.log(), "t1-securepay-$log"},
		{n.snapshot("account-1"), "t1-securepay-$snapshot-account-1"},
		{streamNames{}.log(), "securepay-$log"},
	}
	for _, tc := range cases {
		if tc.got != tc.want {
			t.Errorf("name %q, want %q", tc.got, tc.want)
		}
	}
	// The store's own streams must be unreachable as user streams, whatever the namespaces.
	for _, own := range []string{n.log(), n.snapshot("x"), logStreamName, snapshotStreamPrefix + "x"} {
		for _, ns := range []string{"", "t1-", "t1-securepay-"} {
			user := strings.TrimPrefix(own, ns)
			if user != own && checkStreamName(user) == nil {
				t.Errorf("user stream %q in namespace %q would be the store's stream %q", user, ns, own)
			}
		}
	}
}

func TestCheckStreamName(t *testing.T) {
	cases := []struct {
		name   string
		stream string
		ok     bool
	}{
		{"plain", "account-42", true},
		{"unicode", "compte-élève", true},
		{"longest", strings.Repeat("a", eventstore.MaxStreamNameBytes), true},
		{"empty", "", false},
		{"too long", strings.Repeat("a", eventstore.MaxStreamNameBytes+1), false},
		{"system stream", "$all", false},
		{"metadata stream", "$$account-1", false},
		{"dollar inside", "a$b", false},
		{"log stream", logStreamName, false},
		{"invalid UTF-8", "acc\xffount", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := checkStreamName(tc.stream); (err == nil) != tc.ok {
				t.Fatalf("checkStreamName(%q) = %v, want ok=%v", tc.stream, err, tc.ok)
			}
		})
	}
}

func TestCheckAppendText(t *testing.T) {
	good := eventstore.EventData{ID: "e1", Type: "t.v1", Data: []byte{0xff, 0}, Metadata: eventstore.Metadata{Actor: "ü"}}
	cases := []struct {
		name string
		edit func(*eventstore.StreamAppend)
		ok   bool
	}{
		{"valid (binary data is fine)", func(*eventstore.StreamAppend) {}, true},
		{"dollar stream", func(a *eventstore.StreamAppend) { a.Stream = "$ce-account" }, false},
		{"bad id", func(a *eventstore.StreamAppend) { a.Events[0].ID = "\xc3" }, false},
		{"bad type", func(a *eventstore.StreamAppend) { a.Events[0].Type = "\xc3" }, false},
		{"bad correlation", func(a *eventstore.StreamAppend) { a.Events[0].Metadata.CorrelationID = "\xc3" }, false},
		{"bad causation", func(a *eventstore.StreamAppend) { a.Events[0].Metadata.CausationID = "\xc3" }, false},
		{"bad actor", func(a *eventstore.StreamAppend) { a.Events[0].Metadata.Actor = "\xc3" }, false},
		{"bad traceparent", func(a *eventstore.StreamAppend) { a.Events[0].Metadata.TraceParent = "\xc3" }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := eventstore.StreamAppend{Stream: "s", Expected: eventstore.Any(), Events: []eventstore.EventData{good}}
			tc.edit(&a)
			err := checkAppendText([]eventstore.StreamAppend{a})
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, eventstore.ErrInvalidAppend)) {
				t.Fatalf("checkAppendText = %v, want ok=%v (and ErrInvalidAppend when refused)", err, tc.ok)
			}
		})
	}
}
