package services

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
)

// Component is one part of SecurePay that runs alone: `securepay serve COMPONENT`. A
// Server serves the procedures of the components in its Config.Components and answers
// every other procedure of the API with Unimplemented, naming the component that serves
// it, so a caller sent to the wrong place learns where to go.
//
// The split follows what each part needs, so that each can be scaled, placed and
// authorised on its own:
//
//   - payments: every write (and GetAccount, below), the idempotency store, the command
//     processor and the authorisation expirer; it needs the event store. It also serves
//     WebhookService, the registry of webhook endpoints (services/webhook).
//   - queries: the reads answered from the views (GetPayment, GetBalance, ListHistory)
//     and WatchAccount; read-your-writes by min_position. It needs the views and the log.
//   - audit: AuditService, the whole log; it needs the event store only.
//   - projector: runs the projections; it serves health only.
//
// GetAccount stays with payments: it answers from the write side's aggregate (metadata,
// stream version, open holds, exact as of its last event), which no view keeps. Moving it
// to queries would change its answer.
type Component string

const (
	ComponentPayments  Component = "payments"
	ComponentQueries   Component = "queries"
	ComponentAudit     Component = "audit"
	ComponentProjector Component = "projector"
)

// APIComponents are the components that serve procedures of the API, in the order a
// one-process server (`securepay serve all`, `securepay dev`) mounts them.
func APIComponents() []Component {
	return []Component{ComponentPayments, ComponentQueries, ComponentAudit}
}

// Components are all the components a Server can run, the projector included.
func Components() []Component {
	return append(APIComponents(), ComponentProjector)
}

// ParseComponent reads a component's name as `securepay serve` takes it.
func ParseComponent(s string) (Component, error) {
	for _, c := range Components() {
		if string(c) == s {
			return c, nil
		}
	}
	names := make([]string, 0, 4)
	for _, c := range Components() {
		names = append(names, string(c))
	}
	return "", fmt.Errorf("unknown component %q: say one of %s", s, strings.Join(names, ", "))
}

// componentOfService is the component that serves a service's procedures, unless
// componentOfProcedure says otherwise for one of them. By service, so that a procedure
// added to a service later (an audit RPC) lands with its siblings without a change here.
func componentOfService() map[protoreflect.FullName]Component {
	return map[protoreflect.FullName]Component{
		ledgerv1connect.AccountServiceName: ComponentPayments,
		ledgerv1connect.PaymentServiceName: ComponentPayments,
		ledgerv1connect.BalanceServiceName: ComponentQueries,
		ledgerv1connect.AuditServiceName:   ComponentAudit,
		// Webhook endpoints are registered by the payments component: like every write it
		// acts for the principal the gateway asserts (the endpoint's owner), it already
		// admits only the gateway, and it holds the PostgreSQL pool the registry lives in.
		// The dispatcher does not serve the API: it reads the registry straight from the
		// store (webhook.Registry), as the projector and the relay read the log.
		ledgerv1connect.WebhookServiceName: ComponentPayments,
	}
}

// componentOfProcedure are the exceptions to componentOfService.
func componentOfProcedure() map[string]Component {
	return map[string]Component{
		// A view read; its siblings are writes.
		ledgerv1connect.PaymentServiceGetPaymentProcedure: ComponentQueries,
	}
}

// ComponentOf names the component that serves procedure ("/package.Service/Method"), for
// a gateway that forwards each call where it belongs.
func ComponentOf(procedure string) (Component, bool) {
	if c, ok := componentOfProcedure()[procedure]; ok {
		return c, true
	}
	svc, _, ok := strings.Cut(strings.TrimPrefix(procedure, "/"), "/")
	if !ok || !strings.HasPrefix(procedure, "/") {
		return "", false
	}
	for _, d := range serviceDescriptors() {
		if string(d.FullName()) != svc {
			continue
		}
		if d.Methods().ByName(protoreflect.Name(procedure[len(svc)+2:])) == nil {
			return "", false
		}
		c, ok := componentOfService()[d.FullName()]
		return c, ok
	}
	return "", false
}

// Procedures lists the procedures c serves, in schema order.
func Procedures(c Component) []string {
	var out []string
	for _, svc := range serviceDescriptors() {
		for i := 0; i < svc.Methods().Len(); i++ {
			p := "/" + string(svc.FullName()) + "/" + string(svc.Methods().Get(i).Name())
			if owner, _ := ComponentOf(p); owner == c {
				out = append(out, p)
			}
		}
	}
	return out
}

// componentSet is the components one Server runs.
type componentSet []Component

func (s componentSet) has(c Component) bool { return slices.Contains(s, c) }

// serves reports whether the server answers procedure itself.
func (s componentSet) serves(procedure string) bool {
	c, ok := ComponentOf(procedure)
	return ok && s.has(c)
}

// services are the API services (as health and reflection name them) of which the server
// answers at least one procedure.
func (s componentSet) services() []string {
	var out []string
	for _, name := range serviceNames {
		for _, c := range s {
			if slices.ContainsFunc(Procedures(c), func(p string) bool { return strings.HasPrefix(p, "/"+name+"/") }) {
				out = append(out, name)
				break
			}
		}
	}
	return out
}

func (s componentSet) String() string {
	names := make([]string, len(s))
	for i, c := range s {
		names[i] = string(c)
	}
	return strings.Join(names, "+")
}

// onlyOwnProcedures passes the procedures the server's components serve to next and
// answers the others with Unimplemented, naming the component that serves them: a
// service's handler would run any of its procedures, and a split service (PaymentService)
// is mounted by two components.
func onlyOwnProcedures(next http.Handler, set componentSet, errs *connect.ErrorWriter) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if set.serves(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		var err *connect.Error
		if owner, ok := ComponentOf(r.URL.Path); ok {
			err = connect.NewError(connect.CodeUnimplemented, fmt.Errorf("%s is served by the %s component, not by this one (%s)", r.URL.Path, owner, set))
		} else {
			err = connect.NewError(connect.CodeUnimplemented, fmt.Errorf("%s is not a procedure of the SecurePay API", r.URL.Path))
		}
		if errs.IsSupported(r) {
			_ = errs.Write(w, r, err)
			return
		}
		http.Error(w, err.Message(), http.StatusNotFound)
	})
}

// componentDependencies are what health checks for set: the log always, the views for
// queries and the projector, then the caller's own. Each is needed only by the services
// the server answers; a projector answers none, so its dependencies are needed by the
// process itself (a pseudo-service named after it), and it is not ready without them.
func componentDependencies(cfg Config, set componentSet, services []string) []Dependency {
	needed := func(d Dependency) Dependency {
		if len(services) == 0 {
			d.NeededBy = ServicesOf(set)
			return d
		}
		var keep []string
		for _, s := range d.NeededBy {
			if slices.Contains(services, s) {
				keep = append(keep, s)
			}
		}
		d.NeededBy = keep
		return d
	}
	deps := []Dependency{needed(storeDependency(cfg.Store))}
	if set.has(ComponentQueries) || set.has(ComponentProjector) {
		deps = append(deps, needed(viewsDependency(cfg.Store, cfg.Reader, cfg.MaxViewLag)))
	}
	return append(deps, cfg.Dependencies...)
}

// ServicesOf names what a server running set answers, as Dependency.NeededBy does: its API
// services, or for the projector alone the projector itself. A dependency needed by all
// of them (a component's SVID) makes the server not ready without it.
func ServicesOf(set []Component) []string {
	if s := componentSet(set).services(); len(s) > 0 {
		return s
	}
	return []string{string(ComponentProjector)}
}
