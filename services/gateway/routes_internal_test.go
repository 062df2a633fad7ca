package gateway

import (
	"net/http"
	"testing"

	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
)

// Every procedure of the public API is forwarded to the component services.ComponentOf
// names, and only there: the routes the gateway works out at start agree with the
// components' table for each one.
func TestEveryProcedureHasItsRoute(t *testing.T) {
	marks := map[services.Component]clients{}
	for _, c := range []services.Component{services.ComponentPayments, services.ComponentQueries, services.ComponentAudit} {
		// A client set of its own per component, told apart by identity.
		marks[c] = clients{accounts: ledgerv1connect.NewAccountServiceClient(http.DefaultClient, "https://"+string(c)+".invalid")}
	}
	u := newUpstreams(marks)
	for proc := range Policy() {
		want, ok := services.ComponentOf(proc)
		if !ok {
			t.Errorf("%s: services.ComponentOf knows no component for it", proc)
			continue
		}
		got, routed := u[proc]
		switch {
		case !routed:
			t.Errorf("%s: no route (its component is %s)", proc, want)
		case got.accounts != marks[want].accounts:
			t.Errorf("%s: routed to another component than %s", proc, want)
		}
	}
	if len(u) != len(Policy()) {
		t.Errorf("the gateway routes %d procedures, its policy names %d", len(u), len(Policy()))
	}
}
