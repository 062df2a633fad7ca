package gateway

import (
	"net/http"
	"testing"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
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

// TestRoutesAreCheckedAgainstTheSchema: what the generated interfaces checked at compile
// time, New checks when the routes are built: a route's message types and streaming are
// the schema's, its procedure exists and has a component, and it is mounted once.
func TestRoutesAreCheckedAgainstTheSchema(t *testing.T) {
	newRouter := func() *router {
		comps := map[services.Component]component{}
		for _, c := range []services.Component{services.ComponentPayments, services.ComponentQueries, services.ComponentAudit} {
			comps[c] = component{client: http.DefaultClient, url: "https://" + string(c) + ".invalid"}
		}
		return &router{g: &Gateway{}, mux: http.NewServeMux(), components: comps, mounted: map[string]bool{}}
	}
	cases := map[string]func(r *router){
		"wrong request type": func(r *router) {
			forwarded[ledgerv1.GetBalanceRequest, ledgerv1.TransferResponse](r, ledgerv1connect.PaymentServiceTransferProcedure, func(*ledgerv1.GetBalanceRequest) target { return target{} })
		},
		"wrong answer type": func(r *router) {
			forwarded[ledgerv1.TransferRequest, ledgerv1.GetBalanceResponse](r, ledgerv1connect.PaymentServiceTransferProcedure, func(*ledgerv1.TransferRequest) target { return target{} })
		},
		"a stream mounted as unary": func(r *router) {
			forwarded[ledgerv1.WatchAccountRequest, ledgerv1.WatchAccountResponse](r, ledgerv1connect.BalanceServiceWatchAccountProcedure, func(*ledgerv1.WatchAccountRequest) target { return target{} })
		},
		"unary mounted as a stream": func(r *router) {
			streamed[ledgerv1.TransferRequest, ledgerv1.TransferResponse](r, ledgerv1connect.PaymentServiceTransferProcedure, func(*ledgerv1.TransferRequest) target { return target{} })
		},
		"unknown procedure": func(r *router) {
			forwarded[ledgerv1.TransferRequest, ledgerv1.TransferResponse](r, "/securepay.ledger.v1.PaymentService/Teleport", func(*ledgerv1.TransferRequest) target { return target{} })
		},
		"mounted twice": func(r *router) {
			for range 2 {
				forwarded[ledgerv1.TransferRequest, ledgerv1.TransferResponse](r, ledgerv1connect.PaymentServiceTransferProcedure, func(*ledgerv1.TransferRequest) target { return target{} })
			}
		},
	}
	for name, mount := range cases {
		r := newRouter()
		mount(r)
		if r.err == nil {
			t.Errorf("%s: the route was accepted", name)
		}
	}
	r := newRouter()
	forwarded[ledgerv1.TransferRequest, ledgerv1.TransferResponse](r, ledgerv1connect.PaymentServiceTransferProcedure, func(*ledgerv1.TransferRequest) target { return target{} })
	if r.err != nil || !r.mounted[ledgerv1connect.PaymentServiceTransferProcedure] {
		t.Errorf("a right route: %v, mounted %v", r.err, r.mounted)
	}
}
