package dispatch_test

import (
	"context"
	"strings"
	"testing"

	"github.com/securepay/securepay/services/dispatch"
)

func TestParseEndpoints(t *testing.T) {
	secret := strings.Repeat("s", 32)
	good := `{"endpoints":[{"id":"ep-1","url":"https://hooks.example/a","secret":"` + secret + `","accounts":["alice","*"]},
		{"id":"ep-2","url":"http://127.0.0.1:9/b","secret":"` + secret + `","accounts":["alice"],"event_types":["ledger.account.credited.v1"]}]}`
	dir, err := dispatch.ParseEndpoints([]byte(good))
	if err != nil {
		t.Fatalf("ParseEndpoints(good) = %v", err)
	}
	eps, _ := dir.Endpoints(context.Background(), "alice")
	var ids []string
	for _, e := range eps {
		ids = append(ids, e.ID)
	}
	if strings.Join(ids, ",") != "ep-1,ep-2,ep-1" { // alice's own, then "*"; the dispatcher dedupes by id
		t.Errorf("alice's endpoints %v, want ep-1, ep-2 then ep-1 (from *)", ids)
	}
	if eps, _ := dir.Endpoints(context.Background(), "bob"); len(eps) != 1 || eps[0].ID != "ep-1" {
		t.Errorf("bob's endpoints %v, want ep-1 (from *)", eps)
	}

	for _, tc := range []struct{ name, file, want string }{
		{"not JSON", `endpoints:`, "not the JSON"},
		{"unknown field", `{"endpoints":[{"id":"e","acounts":["a"]}]}`, "unknown field"},
		{"two values", `{"endpoints":[]} {}`, "more than one JSON value"},
		{"no id", `{"endpoints":[{"url":"https://x/","secret":"` + secret + `","accounts":["a"]}]}`, "no id"},
		{"id twice", `{"endpoints":[{"id":"e","url":"https://x/","secret":"` + secret + `","accounts":["a"]},{"id":"e","url":"https://x/","secret":"` + secret + `","accounts":["a"]}]}`, "used twice"},
		{"relative url", `{"endpoints":[{"id":"e","url":"/hook","secret":"` + secret + `","accounts":["a"]}]}`, "not an absolute http(s) URL"},
		{"ftp url", `{"endpoints":[{"id":"e","url":"ftp://x/","secret":"` + secret + `","accounts":["a"]}]}`, "not an absolute http(s) URL"},
		{"short secret", `{"endpoints":[{"id":"e","url":"https://x/","secret":"short","accounts":["a"]}]}`, "the secret has 5 bytes"},
		{"no accounts", `{"endpoints":[{"id":"e","url":"https://x/","secret":"` + secret + `"}]}`, "no accounts"},
		{"empty account", `{"endpoints":[{"id":"e","url":"https://x/","secret":"` + secret + `","accounts":[""]}]}`, "an empty account"},
		{"unknown type", `{"endpoints":[{"id":"e","url":"https://x/","secret":"` + secret + `","accounts":["a"],"event_types":["ledger.payment.captured.v1"]}]}`, "not a notification type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dispatch.ParseEndpoints([]byte(tc.file))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseEndpoints = %v, want an error saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("the error repeats the secret: %v", err)
			}
		})
	}
}
