// Package services puts the SecurePay ledger on the wire: Connect handlers for the
// accounts, payments, balances and audit services (reachable over Connect, gRPC and
// gRPC-web on one port), the conversions between protobuf and domain types, the error
// mapping, the Idempotency-Key interceptor and the HTTP server that serves them.
package services

import (
	"context"
	"errors"
	"log/slog"
	"slices"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/services/ledger"
)

// ErrorDomain is the domain of every google.rpc.ErrorInfo this API attaches to an error.
const ErrorDomain = "securepay.dev"

// Reason is the machine-readable cause this API puts in every error it sends, as the
// reason of a google.rpc.ErrorInfo in ErrorDomain. Clients switch on the reason, never on
// the message, so a released value never changes. The set is closed: the domain's reasons
// (domain.Reasons) and the API's own below, each with exactly one Connect code in codes;
// Reasons lists them all.
type Reason string

// Reasons the API adds to the domain's own.
const (
	ReasonConflict              Reason = "CONFLICT"
	ReasonNotCaughtUp           Reason = "NOT_CAUGHT_UP"
	ReasonHistoryTrimmed        Reason = "HISTORY_TRIMMED"
	ReasonNotFound              Reason = "NOT_FOUND"
	ReasonUnavailable           Reason = "UNAVAILABLE"
	ReasonInternal              Reason = "INTERNAL"
	ReasonTooManyStreams        Reason = "TOO_MANY_STREAMS"
	ReasonRequestTooLarge       Reason = "REQUEST_TOO_LARGE"
	ReasonIdempotencyKey        Reason = "IDEMPOTENCY_KEY_INVALID"
	ReasonIdempotencyMismatch   Reason = "IDEMPOTENCY_KEY_REUSED"
	ReasonIdempotencyInFlight   Reason = "IDEMPOTENCY_REQUEST_IN_PROGRESS"
	ReasonIdempotencyStoreDown  Reason = "IDEMPOTENCY_STORE_UNAVAILABLE"
	ReasonCheckpointUnavailable Reason = "CHECKPOINT_UNAVAILABLE"
	// ReasonEndpointLimit: the account has as many webhook endpoints as the server allows;
	// delete one first.
	ReasonEndpointLimit Reason = "ENDPOINT_LIMIT_REACHED"
	// ReasonWebhooksDisabled: the server runs without a webhook registry (no
	// --webhook-key-file).
	ReasonWebhooksDisabled Reason = "WEBHOOKS_DISABLED"

	// The gateway's refusals (services/gateway): no valid token, a role that may not call
	// the procedure, more calls than the principal's rate allows.
	ReasonUnauthenticated  Reason = "UNAUTHENTICATED"
	ReasonPermissionDenied Reason = "PERMISSION_DENIED"
	ReasonRateLimited      Reason = "RATE_LIMITED"
	ReasonRateLimiterDown  Reason = "RATE_LIMITER_UNAVAILABLE"

	// ReasonInvalidInput is the domain's own reason, also given to every refusal of the
	// schema's validation, so that clients have one rule for bad input.
	ReasonInvalidInput = Reason(domain.ReasonInvalidInput)
)

// codes gives every reason its one Connect code: the one place where the domain's refusals
// meet the wire. Tests fail when a domain reason (TestEveryDomainReasonHasACode) or an API
// reason constant is missing here, when a newError call sends a reason under another code
// (TestAPIReasonsAreClosed), or when api/README.md's table disagrees
// (TestAPIReadmeListsEveryReason).
var codes = map[Reason]connect.Code{
	Reason(domain.ReasonInsufficientFunds): connect.CodeFailedPrecondition,
	Reason(domain.ReasonAccountUnknown):    connect.CodeNotFound,
	Reason(domain.ReasonAccountFrozen):     connect.CodeFailedPrecondition,
	Reason(domain.ReasonAccountClosed):     connect.CodeFailedPrecondition,
	Reason(domain.ReasonAccountNotEmpty):   connect.CodeFailedPrecondition,
	Reason(domain.ReasonAssetMismatch):     connect.CodeInvalidArgument,
	Reason(domain.ReasonInvalidAmount):     connect.CodeInvalidArgument,
	Reason(domain.ReasonInvalidInput):      connect.CodeInvalidArgument,
	Reason(domain.ReasonPaymentUnknown):    connect.CodeNotFound,
	Reason(domain.ReasonPaymentState):      connect.CodeFailedPrecondition,
	Reason(domain.ReasonDuplicateID):       connect.CodeAlreadyExists,
	// Limits a client controls (metadata size, captures per payment, an amount that would
	// overflow): the request is refused as it stands.
	Reason(domain.ReasonLimitExceeded): connect.CodeInvalidArgument,

	ReasonConflict:              connect.CodeAborted,
	ReasonNotCaughtUp:           connect.CodeDeadlineExceeded,
	ReasonHistoryTrimmed:        connect.CodeFailedPrecondition,
	ReasonNotFound:              connect.CodeNotFound,
	ReasonUnavailable:           connect.CodeUnavailable,
	ReasonInternal:              connect.CodeInternal,
	ReasonTooManyStreams:        connect.CodeResourceExhausted,
	ReasonRequestTooLarge:       connect.CodeResourceExhausted,
	ReasonIdempotencyKey:        connect.CodeInvalidArgument,
	ReasonIdempotencyMismatch:   connect.CodeAlreadyExists,
	ReasonIdempotencyInFlight:   connect.CodeAborted,
	ReasonIdempotencyStoreDown:  connect.CodeUnavailable,
	ReasonUnauthenticated:       connect.CodeUnauthenticated,
	ReasonPermissionDenied:      connect.CodePermissionDenied,
	ReasonRateLimited:           connect.CodeResourceExhausted,
	ReasonRateLimiterDown:       connect.CodeUnavailable,
	ReasonCheckpointUnavailable: connect.CodeFailedPrecondition,
	ReasonEndpointLimit:         connect.CodeFailedPrecondition,
	ReasonWebhooksDisabled:      connect.CodeFailedPrecondition,
}

// Reasons returns every reason this API sends, sorted. The slice is the caller's own.
func Reasons() []Reason {
	out := make([]Reason, 0, len(codes))
	for r := range codes {
		out = append(out, r)
	}
	slices.Sort(out)
	return out
}

// newError builds a Connect error that carries a machine-readable reason as a
// google.rpc.ErrorInfo detail (what gRPC clients and grpcurl understand). code must be
// codes[reason]; TestAPIReasonsAreClosed checks every call that names both.
func newError(code connect.Code, reason Reason, message string) *connect.Error {
	cerr := connect.NewError(code, errors.New(message))
	addReason(cerr, reason)
	return cerr
}

// NewError is newError for the packages that answer on the API's behalf (the gateway):
// it refuses to send a reason under another code than codes gives it, so the set stays
// closed whoever builds the error.
func NewError(reason Reason, message string) *connect.Error {
	code, ok := codes[reason]
	if !ok {
		code, reason = connect.CodeInternal, ReasonInternal
	}
	return newError(code, reason, message)
}

// NewFieldError is NewError for a refusal of one request field (packages that answer on
// the API's behalf: services/webhook): the ErrorInfo metadata names the field.
func NewFieldError(reason Reason, message, field string) *connect.Error {
	code, ok := codes[reason]
	if !ok {
		return newError(connect.CodeInternal, ReasonInternal, message)
	}
	return newFieldError(code, reason, message, field)
}

// newFieldError is newError for a refusal of one request field: the ErrorInfo metadata
// names the field's path, as protovalidate's refusals do, so a program can point at it.
func newFieldError(code connect.Code, reason Reason, message, field string) *connect.Error {
	return newErrorWithMetadata(code, reason, message, map[string]string{"field": field})
}

// newErrorWithMetadata is newError whose ErrorInfo also carries metadata for programs.
func newErrorWithMetadata(code connect.Code, reason Reason, message string, metadata map[string]string) *connect.Error {
	cerr := connect.NewError(code, errors.New(message))
	info := &errdetails.ErrorInfo{Reason: string(reason), Domain: ErrorDomain, Metadata: metadata}
	if detail, err := connect.NewErrorDetail(info); err == nil {
		cerr.AddDetail(detail)
	}
	return cerr
}

func addReason(cerr *connect.Error, reason Reason) {
	detail, err := connect.NewErrorDetail(&errdetails.ErrorInfo{Reason: string(reason), Domain: ErrorDomain})
	if err != nil {
		return // cannot happen: ErrorInfo always marshals; the code alone still says enough
	}
	cerr.AddDetail(detail)
}

// ReasonOf returns the reason carried by a Connect error from this API, or "". From a
// newer server it may be a reason this version does not know: compare it with the
// constants, and treat any other value by its Connect code.
func ReasonOf(err error) Reason {
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		return ""
	}
	for _, d := range cerr.Details() {
		v, derr := d.Value()
		if derr != nil {
			continue
		}
		if info, ok := v.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return Reason(info.GetReason())
		}
	}
	return ""
}

// toConnectError maps any error a handler meets to what the client may see. Domain
// refusals keep their message (written for people, it names only the caller's own
// input); everything unexpected is logged in full and reaches the client only as
// "internal error", so no internal detail (SQL, paths, addresses) leaks.
func toConnectError(ctx context.Context, log *slog.Logger, procedure string, err error) error {
	return mapError(ctx, log, procedure, err, codes)
}

// mapError is toConnectError with the code table as a parameter, so that a test can drive
// a domain reason that has no code.
func mapError(ctx context.Context, log *slog.Logger, procedure string, err error, table map[Reason]connect.Code) error {
	if err == nil {
		return nil
	}
	var cerr *connect.Error
	if errors.As(err, &cerr) {
		return cerr
	}
	if reason := Reason(domain.ReasonOf(err)); reason != "" {
		if code, ok := table[reason]; ok {
			if field := fieldOf(err); field != "" {
				return newFieldError(code, reason, err.Error(), field)
			}
			return newError(code, reason, err.Error())
		}
		// A refusal without a code is our bug, which TestEveryDomainReasonHasACode exists
		// to catch. Any code guessed here could tell a client something false (that its
		// input is wrong, or that a retry will help), so it gets what every other bug
		// of ours gets: INTERNAL for the client and the whole story for the operator.
		log.ErrorContext(ctx, "internal error: domain reason without a Connect code", "procedure", procedure, "reason", reason, "error", err)
		return newError(connect.CodeInternal, ReasonInternal, "internal error")
	}
	switch {
	case errors.Is(err, eventstore.ErrInvalidAppend):
		// The ledger validates requests before they join a batch, so this is one request
		// whose events a store would not record, retried alone and refused alone.
		log.WarnContext(ctx, "store refused a request's events", "procedure", procedure, "error", err)
		return newError(connect.CodeInvalidArgument, ReasonInvalidInput, "the request carries text the ledger cannot record (invalid UTF-8, a NUL byte, or a field too long)")
	case errors.Is(err, eventstore.ErrConflict):
		return newError(connect.CodeAborted, ReasonConflict, "the accounts changed concurrently too many times; retry the request")
	case errors.Is(err, projections.ErrNotCaughtUp):
		return newError(connect.CodeDeadlineExceeded, ReasonNotCaughtUp, "the view has not reached the requested min_position yet; retry later")
	case errors.Is(err, projections.ErrHistoryTrimmed):
		return newError(connect.CodeFailedPrecondition, ReasonHistoryTrimmed, "this point of the history is no longer kept by the in-memory view")
	case errors.Is(err, projections.ErrNotFound):
		return newError(connect.CodeNotFound, ReasonNotFound, "not found")
	case errors.Is(err, eventstore.ErrUnavailable):
		// Logged as a warning, not an error: an outage is the operator's to see once in
		// health, not a bug per request. The client learns only that a retry may help;
		// writes carry their own ids, so a retry cannot apply one twice.
		log.WarnContext(ctx, "store unreachable", "procedure", procedure, "error", err)
		return newError(connect.CodeUnavailable, ReasonUnavailable, "the ledger's store is unreachable; retry with the same ids and Idempotency-Key")
	case errors.Is(err, ledger.ErrClosed), errors.Is(err, eventstore.ErrClosed):
		return newError(connect.CodeUnavailable, ReasonUnavailable, "the server is shutting down; retry on another instance")
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, errors.New("request canceled"))
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("request deadline exceeded"))
	}
	log.ErrorContext(ctx, "internal error", "procedure", procedure, "error", err)
	return newError(connect.CodeInternal, ReasonInternal, "internal error")
}

// errorInterceptor applies toConnectError to what handlers return, unary and streaming.
// It sits closest to the handlers so that every interceptor outside it (idempotency)
// sees final Connect codes.
type errorInterceptor struct{ log *slog.Logger }

func (i errorInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		if err != nil {
			return nil, toConnectError(ctx, i.log, req.Spec().Procedure, err)
		}
		return res, nil
	}
}

func (i errorInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i errorInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return toConnectError(ctx, i.log, conn.Spec().Procedure, next(ctx, conn))
	}
}

// validationReasonInterceptor gives protovalidate's refusals (InvalidArgument with a
// buf.validate.Violations detail) the same ErrorInfo reason as every other bad input, so
// clients need one rule: read the reason.
type validationReasonInterceptor struct{}

func (validationReasonInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		return res, withInputReason(err)
	}
}

func (validationReasonInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (validationReasonInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return withInputReason(next(ctx, conn))
	}
}

func withInputReason(err error) error {
	var cerr *connect.Error
	if err == nil || !errors.As(err, &cerr) || cerr.Code() != connect.CodeInvalidArgument || ReasonOf(cerr) != "" {
		return err
	}
	addReason(cerr, ReasonInvalidInput)
	return cerr
}
