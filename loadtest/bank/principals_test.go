package bank

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	"github.com/securepay/securepay/loadtest/internal/devserver"
)

// tokenLog is a Token function that makes "tok:SUBJECT" and remembers what each subject
// was given, and a transport wrapper that records which token each procedure was sent
// with.
type tokenLog struct {
	mu       sync.Mutex
	roles    map[string][]string // subject -> roles
	accounts map[string][]string // subject -> owned accounts
	sent     map[string]map[string]bool
}

func (l *tokenLog) token(subject string, roles, accounts []string) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.roles[subject], l.accounts[subject] = roles, accounts
	return "tok:" + subject, nil
}

type recordTokens struct {
	l    *tokenLog
	next http.RoundTripper
}

func (r recordTokens) RoundTrip(req *http.Request) (*http.Response, error) {
	r.l.mu.Lock()
	proc := req.URL.Path[strings.LastIndex(req.URL.Path, "/")+1:]
	if r.l.sent[proc] == nil {
		r.l.sent[proc] = map[string]bool{}
	}
	r.l.sent[proc][strings.TrimPrefix(req.Header.Get("Authorization"), "Bearer ")] = true
	r.l.mu.Unlock()
	return r.next.RoundTrip(req)
}

// TestPrincipalsOwnTheirAccounts: with Principals, the administrator (operator, auditor,
// and customer owning the external account) opens, funds and reads; each writer sends
// its transfers with its own principal's token and only out of the accounts that token
// owns; the accounts are shared out among the principals; and the invariants hold as
// without principals. (The server here ignores tokens: the gateway's enforcement of them
// is tested in services/gateway, and end to end by SECUREPAY_BANK_TOPOLOGY=gateway.)
func TestPrincipalsOwnTheirAccounts(t *testing.T) {
	l := &tokenLog{roles: map[string][]string{}, accounts: map[string][]string{}, sent: map[string]map[string]bool{}}
	cfg := quickConfig(devserver.Start(t), "princ")
	cfg.Accounts, cfg.Writers = 6, 4
	cfg.Principals = &Principals{Count: 3, Token: l.token}
	cfg.Target.Wrap = func(next http.RoundTripper) http.RoundTripper { return recordTokens{l, next} }
	k, err := newChecker(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := k.setUp(ctx); err != nil {
		t.Fatal(err)
	}
	k.load(ctx)
	if err := k.check(ctx); err != nil {
		t.Fatal(err)
	}
	if len(k.rep.Violations) != 0 || k.rep.Acknowledged == 0 {
		t.Fatalf("want acknowledged transfers and no violation: %s", k.rep)
	}

	admin := "princ-admin"
	if got := l.roles[admin]; !slices.Equal(got, []string{"operator", "auditor", "customer"}) || !slices.Equal(l.accounts[admin], []string{"princ-ext"}) {
		t.Errorf("the administrator's token: roles %v accounts %v, want operator, auditor, customer owning princ-ext", got, l.accounts[admin])
	}
	owner := map[string]string{}
	for p := range 3 {
		subject := "princ-p" + strconv.Itoa(p)
		if !slices.Equal(l.roles[subject], []string{"customer"}) {
			t.Errorf("%s: roles %v, want customer only", subject, l.roles[subject])
		}
		want := []string{fmt.Sprintf("princ-a%d", p), fmt.Sprintf("princ-a%d", p+3)}
		if !slices.Equal(l.accounts[subject], want) {
			t.Errorf("%s owns %v, want %v", subject, l.accounts[subject], want)
		}
		for _, a := range l.accounts[subject] {
			owner[a] = subject
		}
	}
	for _, o := range k.ops {
		w, err := strconv.Atoi(strings.Split(strings.TrimPrefix(o.id, "princ-w"), ".")[0])
		if err != nil {
			t.Fatalf("op id %q: %v", o.id, err)
		}
		if want := "princ-p" + strconv.Itoa(w%3); owner[o.src] != want {
			t.Fatalf("writer %d (as %s) debited %s, which %s owns", w, want, o.src, owner[o.src])
		}
	}
	transfers := l.sent["Transfer"]
	for tok := range transfers {
		if tok != "tok:"+admin && !strings.HasPrefix(tok, "tok:princ-p") {
			t.Errorf("a transfer was sent with token %q, want the administrator's (funding) or a principal's", tok)
		}
	}
	if len(transfers) != 4 { // the administrator and three principals
		t.Errorf("transfers were sent with %d tokens (%v), want 4", len(transfers), transfers)
	}
	for _, proc := range []string{"OpenAccount", "GetBalance", "StreamLog"} {
		if got := l.sent[proc]; len(got) != 1 || !got["tok:"+admin] {
			t.Errorf("%s was sent with %v, want the administrator's token only", proc, got)
		}
	}
}

func TestPrincipalsRefuseBadSettings(t *testing.T) {
	tok := func(string, []string, []string) (string, error) { return "t", nil }
	for name, p := range map[string]*Principals{
		"no token function":          {Count: 2},
		"no principal":               {Count: 0, Token: tok},
		"more principals than accts": {Count: 5, Token: tok},
	} {
		c := quickConfig("http://127.0.0.1:1", "x")
		c.Principals = p
		if _, err := newChecker(c); err == nil || !strings.Contains(err.Error(), "principals:") {
			t.Errorf("%s: %v, want a refusal naming principals", name, err)
		}
	}
}

// A refusal by the edge after an attempt whose outcome was unknown leaves the outcome
// unknown; the ledger's own refusals stay refusals.
func TestRefusedBeforeTheLedger(t *testing.T) {
	for code, want := range map[connect.Code]bool{
		connect.CodeUnauthenticated: true, connect.CodePermissionDenied: true,
		connect.CodeFailedPrecondition: false, connect.CodeInvalidArgument: false, connect.CodeNotFound: false,
	} {
		if got := refusedBeforeTheLedger(connect.NewError(code, nil)); got != want {
			t.Errorf("refusedBeforeTheLedger(%v) = %v, want %v", code, got, want)
		}
	}
}
