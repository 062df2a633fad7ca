package services_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/eventstore/embedded"
	"github.com/securepay/securepay/projections/memory"
	"github.com/securepay/securepay/services"
)

// procedure is one method of the API, as the schema declares it.
type procedure struct {
	path      string
	streaming bool
	write     bool // unary and not marked NO_SIDE_EFFECTS
}

func apiProcedures() []procedure {
	var out []procedure
	for _, f := range []protoreflect.FileDescriptor{
		ledgerv1.File_securepay_ledger_v1_accounts_proto,
		ledgerv1.File_securepay_ledger_v1_payments_proto,
		ledgerv1.File_securepay_ledger_v1_balances_proto,
		ledgerv1.File_securepay_ledger_v1_audit_proto,
	} {
		for i := 0; i < f.Services().Len(); i++ {
			svc := f.Services().Get(i)
			for j := 0; j < svc.Methods().Len(); j++ {
				m := svc.Methods().Get(j)
				opts, _ := m.Options().(*descriptorpb.MethodOptions)
				streaming := m.IsStreamingServer() || m.IsStreamingClient()
				out = append(out, procedure{
					path:      "/" + string(svc.FullName()) + "/" + string(m.Name()),
					streaming: streaming,
					// As the idempotency layer reads the schema: the API's streams only read.
					write: !streaming && opts.GetIdempotencyLevel() != descriptorpb.MethodOptions_NO_SIDE_EFFECTS,
				})
			}
		}
	}
	return out
}

// TestEveryProcedureHasOneComponent: the routing table covers the whole API, each
// procedure once, and every write lands on payments (the only component with the
// processor and the idempotency store).
func TestEveryProcedureHasOneComponent(t *testing.T) {
	served := map[string]services.Component{}
	for _, c := range services.Components() {
		for _, p := range services.Procedures(c) {
			if prev, ok := served[p]; ok {
				t.Errorf("%s is served by both %s and %s", p, prev, c)
			}
			served[p] = c
		}
	}
	for _, p := range apiProcedures() {
		c, ok := services.ComponentOf(p.path)
		if !ok || served[p.path] != c {
			t.Errorf("%s: ComponentOf says %q (%v), Procedures says %q", p.path, c, ok, served[p.path])
		}
		if p.write && c != services.ComponentPayments {
			t.Errorf("%s is a write but is served by %s: writes need the processor, which only payments has", p.path, c)
		}
	}
	if n := len(services.Procedures(services.ComponentProjector)); n != 0 {
		t.Errorf("the projector serves no procedure, got %d", n)
	}
	for _, bad := range []string{"", "/", "/securepay.ledger.v1.PaymentService/", "/securepay.ledger.v1.PaymentService/Steal",
		"securepay.ledger.v1.PaymentService/Transfer", "/grpc.health.v1.Health/Check", "/securepay.ledger.v1.Nope/Transfer"} {
		if c, ok := services.ComponentOf(bad); ok {
			t.Errorf("ComponentOf(%q): want no component, got %s", bad, c)
		}
	}
	for _, tc := range []struct {
		path string
		want services.Component
	}{
		{ledgerv1connect.PaymentServiceTransferProcedure, services.ComponentPayments},
		{ledgerv1connect.AccountServiceGetAccountProcedure, services.ComponentPayments},
		{ledgerv1connect.PaymentServiceGetPaymentProcedure, services.ComponentQueries},
		{ledgerv1connect.BalanceServiceWatchAccountProcedure, services.ComponentQueries},
		{ledgerv1connect.AuditServiceStreamLogProcedure, services.ComponentAudit},
	} {
		if got, _ := services.ComponentOf(tc.path); got != tc.want {
			t.Errorf("ComponentOf(%s): want %s, got %s", tc.path, tc.want, got)
		}
	}
}

// callRaw calls a procedure with the Connect protocol in JSON and returns the Connect
// code of its answer ("" for success) and the error's message.
func callRaw(t *testing.T, url string, p procedure) (code, message string) {
	t.Helper()
	body := []byte("{}")
	ctype := "application/json"
	switch p.path {
	case ledgerv1connect.BalanceServiceWatchAccountProcedure:
		body = []byte(`{"accountId":"nobody"}`)
	case ledgerv1connect.AuditServiceStreamLogProcedure:
		body = []byte(`{"afterPosition":"5","toPosition":"1"}`) // ends at once
	}
	if p.streaming {
		ctype = "application/connect+json"
		env := make([]byte, 5, 5+len(body))
		binary.BigEndian.PutUint32(env[1:], uint32(len(body)))
		body = append(env, body...)
	}
	req, err := http.NewRequestWithContext(testContext(t), http.MethodPost, url+p.path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ctype)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", p.path, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s: read the answer: %v", p.path, err)
	}
	var e struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	if !p.streaming {
		if res.StatusCode == http.StatusOK {
			return "", ""
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatalf("%s: HTTP %d with a body that is not a Connect error: %q", p.path, res.StatusCode, raw)
		}
		return e.Code, e.Message
	}
	// A stream's answer is enveloped messages; the one flagged 0x02 ends it, with the error.
	for len(raw) >= 5 {
		flags, n := raw[0], binary.BigEndian.Uint32(raw[1:5])
		if int(n) > len(raw)-5 {
			break
		}
		msg := raw[5 : 5+n]
		raw = raw[5+n:]
		if flags&0x02 == 0 {
			continue
		}
		var end struct {
			Error *struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(msg, &end); err != nil {
			t.Fatalf("%s: end of stream does not parse: %q", p.path, msg)
		}
		if end.Error == nil {
			return "", ""
		}
		return end.Error.Code, end.Error.Message
	}
	t.Fatalf("%s: HTTP %d, a stream without its end message: %q", p.path, res.StatusCode, raw)
	return "", ""
}

// TestComponentsServeOnlyTheirProcedures runs each component alone and calls every
// procedure of the API: its own run (whatever they answer to an empty request, it is
// not Unimplemented), every other is Unimplemented and names the component to call.
func TestComponentsServeOnlyTheirProcedures(t *testing.T) {
	for _, comp := range services.Components() {
		t.Run(string(comp), func(t *testing.T) {
			n := startNode(t, nodeOptions{components: []services.Component{comp}})
			for _, p := range apiProcedures() {
				owner, _ := services.ComponentOf(p.path)
				code, msg := callRaw(t, n.url, p)
				switch {
				case owner == comp && code == "unimplemented":
					t.Errorf("%s serves %s, but it answered unimplemented: %s", comp, p.path, msg)
				case owner != comp && code != "unimplemented":
					t.Errorf("%s does not serve %s: want unimplemented, got %q %q", comp, p.path, code, msg)
				case owner != comp && !strings.Contains(msg, "served by the "+string(owner)+" component"):
					t.Errorf("%s on %s: want the message to name the %s component, got %q", comp, p.path, owner, msg)
				}
			}
			if code, msg := callRaw(t, n.url, procedure{path: "/securepay.ledger.v1.PaymentService/Steal"}); code != "unimplemented" {
				t.Errorf("an unknown procedure: want unimplemented, got %q %q", code, msg)
			}
		})
	}
}

// TestComponentHealth: each component's health names the services it answers, is
// SERVING for them and for the process, and knows no other service.
func TestComponentHealth(t *testing.T) {
	for _, tc := range []struct {
		comp     services.Component
		own, not []string
	}{
		{services.ComponentPayments, []string{ledgerv1connect.AccountServiceName, ledgerv1connect.PaymentServiceName}, []string{ledgerv1connect.BalanceServiceName, ledgerv1connect.AuditServiceName}},
		{services.ComponentQueries, []string{ledgerv1connect.PaymentServiceName, ledgerv1connect.BalanceServiceName}, []string{ledgerv1connect.AccountServiceName, ledgerv1connect.AuditServiceName}},
		{services.ComponentAudit, []string{ledgerv1connect.AuditServiceName}, []string{ledgerv1connect.PaymentServiceName}},
		{services.ComponentProjector, nil, []string{ledgerv1connect.PaymentServiceName, ledgerv1connect.BalanceServiceName}},
	} {
		t.Run(string(tc.comp), func(t *testing.T) {
			n := startNode(t, nodeOptions{components: []services.Component{tc.comp}})
			health := grpchealth.NewClient(h2cClient(), n.url)
			ctx := testContext(t)
			for _, svc := range append([]string{""}, tc.own...) {
				res, err := health.Check(ctx, &grpchealth.CheckRequest{Service: svc})
				if err != nil || res.Status != grpchealth.StatusServing {
					t.Errorf("health of %q: want SERVING, got %v %v", svc, res, err)
				}
			}
			for _, svc := range tc.not {
				_, err := health.Check(ctx, &grpchealth.CheckRequest{Service: svc})
				if connect.CodeOf(err) != connect.CodeNotFound {
					t.Errorf("health of %s, which %s does not serve: want not_found, got %v", svc, tc.comp, err)
				}
			}
			if got := n.srv.Components(); !slices.Equal(got, []services.Component{tc.comp}) {
				t.Errorf("Components(): want [%s], got %v", tc.comp, got)
			}
			// The probe port's handler answers the same.
			rec := httpGet(t, n.srv.HealthHandler(), "/readyz")
			if rec.StatusCode != http.StatusOK {
				t.Errorf("/readyz on the health handler: want 200, got %d", rec.StatusCode)
			}
			if rec := httpGet(t, n.srv.HealthHandler(), ledgerv1connect.PaymentServiceTransferProcedure); rec.StatusCode != http.StatusNotFound {
				t.Errorf("the health handler must serve no procedure: %s answered %d", ledgerv1connect.PaymentServiceTransferProcedure, rec.StatusCode)
			}
		})
	}
}

func httpGet(t *testing.T, h http.Handler, path string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://127.0.0.1"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	w := &recorder{header: http.Header{}, status: http.StatusOK}
	h.ServeHTTP(w, req)
	return &http.Response{StatusCode: w.status, Header: w.header, Body: io.NopCloser(&w.body)}
}

type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
	wrote  bool
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) Write(b []byte) (int, error) {
	r.wrote = true
	return r.body.Write(b)
}
func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
}

// TestComponentConfigNeeds: a component refuses to start without what it needs, and
// says which component needs it.
func TestComponentConfigNeeds(t *testing.T) {
	store, err := embedded.Open(t.TempDir(), embedded.Options{Logger: quietPebble{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	reader := memory.New(0).Reader()
	for _, tc := range []struct {
		name string
		cfg  services.Config
		want string // "" means it starts
	}{
		{"payments without the processor", services.Config{Components: []services.Component{services.ComponentPayments}, Store: store, Idempotency: services.NewMemoryIdempotencyStore(0, nil), AllowH2C: true},
			"Commands (the ledger processor) is required by the payments component"},
		{"queries without views", services.Config{Components: []services.Component{services.ComponentQueries}, Store: store, AllowH2C: true},
			"Reader (the projections) is required by the queries and projector components"},
		{"projector without views", services.Config{Components: []services.Component{services.ComponentProjector}, Store: store, AllowH2C: true},
			"Reader (the projections) is required"},
		{"audit without the store", services.Config{Components: []services.Component{services.ComponentAudit}, AllowH2C: true},
			"Store (the event store) is required"},
		{"unknown component", services.Config{Components: []services.Component{"gateway-ish"}, Store: store, AllowH2C: true},
			`unknown component "gateway-ish": say one of payments, queries, audit, projector`},
		{"audit with the store alone", services.Config{Components: []services.Component{services.ComponentAudit}, Store: store, AllowH2C: true}, ""},
		{"queries with views, no processor, no idempotency store", services.Config{Components: []services.Component{services.ComponentQueries}, Store: store, Reader: reader, AllowH2C: true}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := services.NewServer(tc.cfg)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("want it to start, got %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("want an error saying %q, got %v", tc.want, err)
			}
		})
	}
}
