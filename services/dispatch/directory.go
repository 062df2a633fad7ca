// Package dispatch turns notification events from Kafka into signed webhook deliveries
// (issue 11, "Notification dispatcher"; docs/WEBHOOKS.md).
package dispatch

import (
	"context"
	"slices"
)

// Endpoint is one receiver subscribed to an account's notifications.
type Endpoint struct {
	// ID names the endpoint in metrics, dead letters and logs; it is stable across
	// secret rotations.
	ID string
	// URL receives the POST; the dispatcher sends to it verbatim.
	URL string
	// Secret keys the endpoint's HMAC-SHA256 signature (docs/WEBHOOKS.md).
	Secret []byte
	// EventTypes the endpoint wants (e.g. "ledger.account.credited.v1"); empty means
	// every notification type.
	EventTypes []string
}

// Wants reports whether the endpoint subscribed to eventType.
func (e Endpoint) Wants(eventType string) bool {
	return len(e.EventTypes) == 0 || slices.Contains(e.EventTypes, eventType)
}

// Directory finds the endpoints subscribed to an account. The dispatcher calls it once
// per notification; an error is retried like a failed delivery (the notification is not
// acknowledged until the directory answers), so implementations return an error only for
// a failure that may heal (database down), and an empty list for an account nobody
// watches.
type Directory interface {
	Endpoints(ctx context.Context, account string) ([]Endpoint, error)
}

// StaticDirectory is a fixed account → endpoints map, for tests and local runs without a
// registry. The key "*" lists endpoints subscribed to every account.
type StaticDirectory map[string][]Endpoint

// Endpoints returns the account's endpoints followed by the "*" ones.
func (d StaticDirectory) Endpoints(_ context.Context, account string) ([]Endpoint, error) {
	out := make([]Endpoint, 0, len(d[account])+len(d["*"]))
	out = append(out, d[account]...)
	if account != "*" {
		out = append(out, d["*"]...)
	}
	return out, nil
}

// Directories asks each directory in turn and lists all their endpoints (the dispatcher
// drops repeated ids): a registry and a static list side by side. An error of any is the
// answer's, so a notification is not delivered to some endpoints only because a
// directory was down.
type Directories []Directory

// Endpoints concatenates the directories' answers.
func (ds Directories) Endpoints(ctx context.Context, account string) ([]Endpoint, error) {
	var out []Endpoint
	for _, d := range ds {
		eps, err := d.Endpoints(ctx, account)
		if err != nil {
			return nil, err
		}
		out = append(out, eps...)
	}
	return out, nil
}
