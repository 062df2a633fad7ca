package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/durationpb"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/services"
	"github.com/securepay/securepay/services/edge"
	"github.com/securepay/securepay/services/telemetry"
	"github.com/securepay/securepay/services/webhook"
)

// forwardedHeaders are the client's request headers a component sees; everything else
// (Authorization above all: the token stays at the edge) is dropped. The client's
// traceparent is dropped too: the component trusts the gateway's trace context, so a
// forwarded one would let a client choose our trace ids and sampling. The gateway's own
// client span (Config.Interceptors) is what the component continues; the client's is a
// link on the gateway's server span.
var forwardedHeaders = []string{services.IdempotencyKeyHeader}

// returnedHeaders are the component's response headers the client sees.
var returnedHeaders = []string{services.ReplayedHeader}

// target is what a request names that the policy checks.
type target struct {
	accounts  []string // accounts the request acts on (sources of payments)
	paymentID string   // the payment of capture, void, refund, get
	open      *ledgerv1.OpenAccountRequest
	// endpointID is the webhook endpoint of Get/Delete/RotateSecret; endpoint, when set,
	// receives the endpoint the OwnsEndpoint check looked up.
	endpointID string
	endpoint   **ledgerv1.WebhookEndpoint
}

// authorize applies the policy to one call. It returns the payment it looked up, if the
// check needed one, so GetPayment need not fetch it twice.
func (g *Gateway) authorize(ctx context.Context, procedure string, t target, minPosition uint64) (*ledgerv1.Payment, error) {
	c, ok := callOf(ctx)
	if !ok {
		return nil, services.NewError(services.ReasonInternal, "internal error")
	}
	rule := g.policy[procedure]
	var checks []Check
	for _, r := range c.principal.Roles {
		if ch, ok := rule[r]; ok {
			if ch == Any {
				return nil, nil
			}
			checks = append(checks, ch)
		}
	}
	if len(checks) == 0 {
		g.cfg.Refusals.Refused(telemetry.RefusalForbidden)
		return nil, services.NewError(services.ReasonPermissionDenied,
			fmt.Sprintf("the token's roles %v do not allow %s", c.principal.Roles, procedure))
	}
	// Only the customer role has object checks today; one principal has one set of
	// accounts, so the first check decides.
	switch checks[0] {
	case OwnsAccounts:
		for _, a := range t.accounts {
			if !c.principal.Owns(a) {
				g.cfg.Refusals.Refused(telemetry.RefusalForbidden)
				return nil, accountNotFound(a)
			}
		}
		return nil, nil
	case OwnsNewAccount:
		o := t.open
		var refusal error
		switch {
		case !c.principal.Owns(o.GetAccountId()):
			refusal = services.NewError(services.ReasonPermissionDenied,
				fmt.Sprintf("account %s is not among the accounts of this token; an operator opens accounts for others", o.GetAccountId()))
		case o.GetKind() == ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL:
			refusal = services.NewError(services.ReasonPermissionDenied, "only an operator opens external accounts")
		case o.GetCreditLimit() != "" && o.GetCreditLimit() != "0":
			refusal = services.NewError(services.ReasonPermissionDenied, "only an operator grants a credit limit")
		}
		if refusal != nil {
			g.cfg.Refusals.Refused(telemetry.RefusalForbidden)
		}
		return nil, refusal
	case PartyToPayment, PayeeOfPayment:
		p, err := g.lookupPayment(ctx, t.paymentID, minPosition)
		if err != nil {
			return nil, err
		}
		for _, leg := range p.GetLegs() {
			if c.principal.Owns(leg.GetDestinationAccountId()) ||
				(checks[0] == PartyToPayment && c.principal.Owns(leg.GetSourceAccountId())) {
				return p, nil
			}
		}
		g.cfg.Refusals.Refused(telemetry.RefusalForbidden)
		return nil, paymentNotFound(t.paymentID)
	case OwnsEndpoint:
		e, err := g.lookupEndpoint(ctx, t.endpointID)
		if err != nil {
			return nil, err
		}
		if !c.principal.Owns(e.GetAccountId()) || e.GetOwner() != c.principal.Subject {
			g.cfg.Refusals.Refused(telemetry.RefusalForbidden)
			return nil, webhook.EndpointNotFound(t.endpointID)
		}
		if t.endpoint != nil {
			*t.endpoint = e
		}
		return nil, nil
	}
	g.cfg.Refusals.Refused(telemetry.RefusalForbidden)
	return nil, services.NewError(services.ReasonPermissionDenied, fmt.Sprintf("no rule allows %s", procedure))
}

// accountNotFound and paymentNotFound are the one answer a customer gets for an account
// or payment that is not its own, word for word what the ledger says of one that does
// not exist, so the two cannot be told apart.
func accountNotFound(id string) error {
	return services.NewError(services.Reason(domain.ReasonAccountUnknown),
		fmt.Sprintf("%v: account %s does not exist", domain.ErrAccountUnknown, id))
}

func paymentNotFound(id string) error {
	return services.NewError(services.Reason(domain.ReasonPaymentUnknown),
		fmt.Sprintf("%v: payment %s does not exist", domain.ErrPaymentUnknown, id))
}

// lookupPayment reads a payment from the queries component for an ownership check. A
// payment the views do not hold is not found, whatever the reason.
func (g *Gateway) lookupPayment(ctx context.Context, id string, minPosition uint64) (*ledgerv1.Payment, error) {
	req := connect.NewRequest(&ledgerv1.GetPaymentRequest{PaymentId: id, MinPosition: max(minPosition, g.lastWrite.Load())})
	g.stamp(ctx, nil, req.Header())
	res, err := g.up.of(ledgerv1connect.PaymentServiceGetPaymentProcedure).payments.GetPayment(ctx, req)
	if err != nil {
		if connect.CodeOf(err) == connect.CodeNotFound {
			return nil, paymentNotFound(id)
		}
		return nil, g.upstreamError(ctx, ledgerv1connect.PaymentServiceGetPaymentProcedure, err)
	}
	return res.Msg.GetPayment(), nil
}

// lookupEndpoint reads a webhook endpoint from the payments component for an ownership
// check. One that does not exist gets the answer one of another principal gets.
func (g *Gateway) lookupEndpoint(ctx context.Context, id string) (*ledgerv1.WebhookEndpoint, error) {
	req := connect.NewRequest(&ledgerv1.GetEndpointRequest{EndpointId: id})
	g.stamp(ctx, nil, req.Header())
	res, err := g.up.of(ledgerv1connect.WebhookServiceGetEndpointProcedure).webhooks.GetEndpoint(ctx, req)
	if err != nil {
		if connect.CodeOf(err) == connect.CodeNotFound {
			return nil, webhook.EndpointNotFound(id)
		}
		return nil, g.upstreamError(ctx, ledgerv1connect.WebhookServiceGetEndpointProcedure, err)
	}
	return res.Msg.GetEndpoint(), nil
}

// stamp writes what a component receives besides the message: the forwarded client
// headers and the gateway's identity headers.
func (g *Gateway) stamp(ctx context.Context, from http.Header, to http.Header) {
	for _, name := range forwardedHeaders {
		if from == nil {
			break
		}
		if v := from.Values(name); len(v) > 0 {
			to[http.CanonicalHeaderKey(name)] = append([]string(nil), v...)
		}
	}
	c, _ := callOf(ctx)
	edge.Set(to, edge.Identity{Principal: c.principal.Subject, CorrelationID: c.correlation})
}

// writeResponse is a write's answer, whose position the gateway remembers.
type writeResponse interface{ GetResult() *ledgerv1.WriteResult }

// forward sends an authorised unary request upstream (as the bytes the client sent, when
// it sent binary protobuf) and relays the answer (as the bytes the component sent).
func forward[Req, Res any](ctx context.Context, g *Gateway, req *connect.Request[frame[Req]], h *hop[Req, Res]) (*connect.Response[frame[Res]], error) {
	out := connect.NewRequest(req.Msg)
	g.stamp(ctx, req.Header(), out.Header())
	res, err := h.client.CallUnary(ctx, out)
	if err != nil {
		return nil, concealCounterparty(ctx, g.upstreamError(ctx, req.Spec().Procedure, err))
	}
	if h.writes {
		noteWrite(ctx, g, req.Spec().Procedure, res.Msg, h)
	}
	relayed := connect.NewResponse(res.Msg)
	copyHeaders(relayed.Header(), res.Header(), returnedHeaders)
	return relayed, nil
}

// noteWrite remembers the log position a write committed at (lastWrite), read from the
// answer's bytes without decoding the rest.
func noteWrite[Req, Res any](ctx context.Context, g *Gateway, procedure string, answer *frame[Res], h *hop[Req, Res]) {
	var pos uint64
	if wire, ok := answer.wireBytes(); ok {
		if pos, ok = writePosition(wire, h.result, h.position); !ok {
			// The client gets the bytes as they are and finds out; the gateway only loses
			// one read-your-writes hint.
			g.cfg.Logger.WarnContext(ctx, "gateway: a write's answer is not protobuf", "procedure", procedure)
			return
		}
	} else if w, ok := any(answer.decoded).(writeResponse); ok {
		pos = w.GetResult().GetPosition()
	}
	for {
		cur := g.lastWrite.Load()
		if pos <= cur || g.lastWrite.CompareAndSwap(cur, pos) {
			return
		}
	}
}

func copyHeaders(to, from http.Header, names []string) {
	for _, n := range names {
		if v := from.Values(n); len(v) > 0 {
			to[http.CanonicalHeaderKey(n)] = append([]string(nil), v...)
		}
	}
}

// upstreamError relays a component's answer: its code, message and details when it is one
// of the API's own refusals (it carries a reason); anything else (a transport failure
// whose message names internal addresses, a component refusing the gateway's identity)
// is logged and reaches the client only as UNAVAILABLE or INTERNAL.
func (g *Gateway) upstreamError(ctx context.Context, procedure string, err error) error {
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		g.cfg.Logger.ErrorContext(ctx, "gateway: upstream call failed", "procedure", procedure, "error", err)
		return services.NewError(services.ReasonInternal, "internal error")
	}
	switch cerr.Code() {
	case connect.CodeCanceled:
		return connect.NewError(connect.CodeCanceled, errors.New("request canceled"))
	case connect.CodeDeadlineExceeded:
		if services.ReasonOf(cerr) == "" {
			return connect.NewError(connect.CodeDeadlineExceeded, errors.New("request deadline exceeded"))
		}
	}
	if services.ReasonOf(cerr) == "" && cerr.Code() != connect.CodeInvalidArgument {
		g.cfg.Logger.WarnContext(ctx, "gateway: upstream answered without a reason", "procedure", procedure, "code", cerr.Code(), "error", cerr)
		if cerr.Code() == connect.CodeUnavailable || cerr.Code() == connect.CodeUnknown {
			return services.NewError(services.ReasonUnavailable, "the ledger is unreachable; retry with the same ids and Idempotency-Key")
		}
		return services.NewError(services.ReasonInternal, "internal error")
	}
	out := connect.NewError(cerr.Code(), errors.New(cerr.Message()))
	for _, d := range cerr.Details() {
		out.AddDetail(d)
	}
	copyHeaders(out.Meta(), cerr.Meta(), append([]string{"Retry-After"}, returnedHeaders...))
	return out
}

func addRetryInfo(cerr *connect.Error, wait time.Duration) {
	if d, err := connect.NewErrorDetail(&errdetails.RetryInfo{RetryDelay: durationpb.New(wait)}); err == nil {
		cerr.AddDetail(d)
	}
}

// relayStream forwards an authorised server stream message by message, each as the
// bytes the component sent when the client reads binary protobuf.
func relayStream[Req, Res any](ctx context.Context, g *Gateway, req *connect.Request[frame[Req]], stream *connect.ServerStream[frame[Res]], h *hop[Req, Res]) error {
	out := connect.NewRequest(req.Msg)
	g.stamp(ctx, req.Header(), out.Header())
	up, err := h.client.CallServerStream(ctx, out)
	if err != nil {
		return g.upstreamError(ctx, req.Spec().Procedure, err)
	}
	defer up.Close()
	for up.Receive() {
		if err := stream.Send(up.Msg()); err != nil {
			return err
		}
	}
	if err := up.Err(); err != nil {
		return g.upstreamError(ctx, req.Spec().Procedure, err)
	}
	return nil
}

// accountInMessage finds the account ids a ledger refusal names ("destination account bob
// is frozen"). The ledger's messages are written for the owner of the accounts; this is
// how the gateway finds those that name someone else's.
var accountInMessage = regexp.MustCompile(`account ([A-Za-z0-9._:-]+)(?: |,|;|$)`)

// stateReasons are the refusals that describe an account's state.
var stateReasons = map[services.Reason]bool{
	services.Reason(domain.ReasonAccountUnknown): true,
	services.Reason(domain.ReasonAccountFrozen):  true,
	services.Reason(domain.ReasonAccountClosed):  true,
	services.Reason(domain.ReasonAssetMismatch):  true,
}

// concealCounterparty keeps a customer from learning another account's state or balance
// through a payment's refusal: a transfer to bob answered "bob is frozen", "bob is
// closed", "bob holds EUR" or "bob does not exist" would tell alice about bob. For a
// principal that is only a customer, every such refusal about an account it does not own
// becomes the one answer of a missing account, and an overflow of the resulting balance
// (which says the counterparty is near the ledger's ceiling) no longer names whose.
// Operators and auditors, who may read any account, get the ledger's own words.
func concealCounterparty(ctx context.Context, err error) error {
	c, ok := callOf(ctx)
	if !ok || c.principal.Has(RoleOperator) || c.principal.Has(RoleAuditor) {
		return err
	}
	reason := services.ReasonOf(err)
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		return err
	}
	switch {
	case stateReasons[reason]:
		// "account frozen: destination account bob is frozen": the sentinel's own words
		// come first and are not an account.
		_, detail, _ := strings.Cut(cerr.Message(), ": ")
		for _, m := range accountInMessage.FindAllStringSubmatch(detail, -1) {
			if !c.principal.Owns(m[1]) {
				return services.NewError(services.Reason(domain.ReasonAccountUnknown),
					fmt.Sprintf("%v: account %s does not exist or cannot take part in this payment", domain.ErrAccountUnknown, m[1]))
			}
		}
	case reason == services.Reason(domain.ReasonLimitExceeded) && strings.Contains(cerr.Message(), "resulting balance"):
		return services.NewError(services.Reason(domain.ReasonLimitExceeded),
			fmt.Sprintf("%v: the payment would take an account beyond the largest balance the ledger can hold; pay less", domain.ErrLimitExceeded))
	}
	return err
}
