package redis

import (
	"fmt"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/securepay/securepay/domain"
)

// What values() writes, notificationFrom reads back; what only another writer makes
// (a field that does not parse, or one every entry has and this one lacks) is an error,
// never a zero.
func TestNotificationEntriesReadBackOrFail(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	usd := domain.Asset{Code: "USD", Scale: 2}
	written := []Notification{
		{Type: "payment.sent", AccountID: "alice", PaymentID: "rent", Amount: domain.Money{Minor: 9500, Asset: usd}, PostedAfter: -500, Position: 9, RecordedAt: at},
		{Type: "balance.low", AccountID: "alice", Amount: domain.Money{Minor: 9500, Asset: usd}, PostedAfter: 500, Threshold: 1000, Position: 9, RecordedAt: at},
		{Type: "authorisation.expiring", AccountID: "alice", PaymentID: "hotel", ExpiresAt: at.Add(time.Hour), Position: 12, RecordedAt: at},
	}
	for _, n := range written {
		n.ID = "9-0"
		got, err := notificationFrom(entry(n.ID, n.values()))
		if err != nil || got != n {
			t.Errorf("%s read back as %+v, %v; want %+v", n.Type, got, err, n)
		}
	}
	good := entry("9-0", written[0].values())
	for _, tc := range []struct{ field, value, want string }{
		{"amount_minor", "95.00", "amount_minor"},
		{"asset_scale", "300", "asset_scale"},
		{"position", "-1", "position"},
		{"recorded_at", "yesterday", "recorded_at"},
		{"recorded_at", "", "recorded_at: missing"},
		{"type", "", "type: missing"},
	} {
		bad := goredis.XMessage{ID: good.ID, Values: map[string]any{}}
		for k, v := range good.Values {
			bad.Values[k] = v
		}
		if tc.value == "" {
			delete(bad.Values, tc.field)
		} else {
			bad.Values[tc.field] = tc.value
		}
		if _, err := notificationFrom(bad); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("entry with %s=%q: err = %v; want one naming %q", tc.field, tc.value, err, tc.want)
		}
	}
}

// entry is the stream entry XADD makes of values: Redis hands every value back as a
// string, the decimal of the number go-redis sent.
func entry(id string, values []any) goredis.XMessage {
	m := goredis.XMessage{ID: id, Values: map[string]any{}}
	for i := 0; i+1 < len(values); i += 2 {
		m.Values[values[i].(string)] = fmt.Sprint(values[i+1])
	}
	return m
}
