package bank

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"

	"github.com/securepay/securepay/loadtest"
)

// Principals runs the bank through the gateway, as its users would: every call carries a
// bearer token, and the gateway authorises it by role and by the accounts the token owns.
//
//   - An administrator (roles operator and auditor, and customer owning the external
//     account) opens the accounts, funds them from the external account, reads every
//     balance and streams the log for the checks: reading all accounts is an operator's
//     or auditor's right, funding is a transfer out of the external account it owns.
//   - Count customer principals own the accounts between them (account i belongs to
//     principal i mod Count), and writer w acts as principal w mod Count: it moves money
//     only out of accounts its principal owns, to any account.
//
// The invariants are the same as without a gateway. The gateway's per-principal rate
// limit must allow the run's pace (one principal per writer, or a limit set high enough),
// or transfers are refused RESOURCE_EXHAUSTED, which the checker counts as unknown and
// retries.
type Principals struct {
	// Count is how many customer principals there are: 1..Accounts.
	Count int
	// Token returns a bearer token for subject, holding roles and owning accounts.
	Token func(subject string, roles []string, accounts []string) (string, error)
}

// The gateway's role names (services/gateway.Roles), as a token must carry them.
const (
	roleCustomer = "customer"
	roleOperator = "operator"
	roleAuditor  = "auditor"
)

func (p *Principals) validate(accounts int) error {
	switch {
	case p.Token == nil:
		return errors.New("principals: a Token function is required")
	case p.Count < 1 || p.Count > accounts:
		return fmt.Errorf("principals: count must be in 1..%d (each owns at least one account), got %d", accounts, p.Count)
	}
	return nil
}

// writerView is what one writer sends with: its clients and the accounts it may debit
// (indexes into checker.accts).
type writerView struct {
	clients *loadtest.Clients
	owned   []int
}

// dialPrincipals builds the administrator's clients (returned) and each principal's
// writer view, one connection per principal.
func (k *checker) dialPrincipals() (*loadtest.Clients, error) {
	p := k.cfg.Principals
	admin, err := p.Token(k.cfg.RunID+"-admin", []string{roleOperator, roleAuditor, roleCustomer}, []string{k.ext})
	if err != nil {
		return nil, fmt.Errorf("principals: the administrator's token: %w", err)
	}
	at := k.cfg.Target
	at.Token = admin
	adminClients, err := at.Dial()
	if err != nil {
		return nil, err
	}
	views := make([]writerView, p.Count)
	owned := make([][]string, p.Count)
	for i, a := range k.accts {
		views[i%p.Count].owned = append(views[i%p.Count].owned, i)
		owned[i%p.Count] = append(owned[i%p.Count], a)
	}
	for n := range views {
		tok, err := p.Token(k.cfg.RunID+"-p"+strconv.Itoa(n), []string{roleCustomer}, owned[n])
		if err != nil {
			return nil, fmt.Errorf("principals: the token of principal %d: %w", n, err)
		}
		t := k.cfg.Target
		t.Token, t.Conns = tok, 1
		if views[n].clients, err = t.Dial(); err != nil {
			return nil, err
		}
	}
	k.writers = views
	return adminClients, nil
}

// source picks the account writer w debits: any account without principals, else one its
// principal owns.
func (k *checker) source(w int, rng *rand.Rand) int {
	if len(k.writers) == 0 {
		return rng.IntN(len(k.accts))
	}
	owned := k.writers[w%len(k.writers)].owned
	return owned[rng.IntN(len(owned))]
}

// transferClient is the client writer w sends transfers with.
func (k *checker) transferClient(w int) *loadtest.Clients {
	if len(k.writers) == 0 {
		return k.c
	}
	return k.writers[w%len(k.writers)].clients
}
