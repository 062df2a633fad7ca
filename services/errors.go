// Package services puts the SecurePay ledger on the wire: Connect handlers for the
// accounts, payments, balances and audit services (reachable over Connect, gRPC and
// gRPC-web on one port), the conversions between protobuf and domain types, the error
// mapping, the Idempotency-Key interceptor and the HTTP server that serves them.
package services

import (
	"context"
	"errors"
	"log/slog"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/services/ledger"
)

// ErrorDomain is the domain of every google.rpc.ErrorInfo this API attaches to an error.
const ErrorDomain = "securepay.dev"

// Reasons the API adds to the domain's own (domain.ReasonOf). Clients switch on the
// reason, never on the message.
const (
	ReasonConflict             = "CONFLICT"
	ReasonNotCaughtUp          = "NOT_CAUGHT_UP"
	ReasonHistoryTrimmed       = "HISTORY_TRIMMED"
	ReasonNotFound             = "NOT_FOUND"
	ReasonInvalidInput         = "INVALID_INPUT"
	ReasonUnavailable          = "UNAVAILABLE"
	ReasonInternal             = "INTERNAL"
	ReasonTooManyStreams       = "TOO_MANY_STREAMS"
	ReasonIdempotencyKey       = "IDEMPOTENCY_KEY_INVALID"
	ReasonIdempotencyMismatch  = "IDEMPOTENCY_KEY_REUSED"
	ReasonIdempotencyInFlight  = "IDEMPOTENCY_REQUEST_IN_PROGRESS"
	ReasonIdempotencyStoreDown = "IDEMPOTENCY_STORE_UNAVAILABLE"
)

// codeOfReason maps each domain reason to its Connect code. It is the one place where the
// domain's refusals meet the wire; a reason missing here is a bug caught by a test that
// walks every domain sentinel.
var codeOfReason = map[string]connect.Code{
	"INSUFFICIENT_FUNDS": connect.CodeFailedPrecondition,
	"ACCOUNT_UNKNOWN":    connect.CodeNotFound,
	"ACCOUNT_FROZEN":     connect.CodeFailedPrecondition,
	"ACCOUNT_CLOSED":     connect.CodeFailedPrecondition,
	"ACCOUNT_NOT_EMPTY":  connect.CodeFailedPrecondition,
	"ASSET_MISMATCH":     connect.CodeInvalidArgument,
	"INVALID_AMOUNT":     connect.CodeInvalidArgument,
	"INVALID_INPUT":      connect.CodeInvalidArgument,
	"PAYMENT_UNKNOWN":    connect.CodeNotFound,
	"PAYMENT_STATE":      connect.CodeFailedPrecondition,
	"DUPLICATE_ID":       connect.CodeAlreadyExists,
	// Limits a client controls (metadata size, captures per payment, an amount that would
	// overflow): the request is refused as it stands.
	"LIMIT_EXCEEDED": connect.CodeInvalidArgument,
}

// newError builds a Connect error that carries a machine-readable reason as a
// google.rpc.ErrorInfo detail (what gRPC clients and grpcurl understand).
func newError(code connect.Code, reason, message string) *connect.Error {
	cerr := connect.NewError(code, errors.New(message))
	addReason(cerr, reason)
	return cerr
}

func addReason(cerr *connect.Error, reason string) {
	detail, err := connect.NewErrorDetail(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain})
	if err != nil {
		return // cannot happen: ErrorInfo always marshals; the code alone still says enough
	}
	cerr.AddDetail(detail)
}

// ReasonOf returns the reason carried by a Connect error from this API, or "".
func ReasonOf(err error) string {
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
			return info.GetReason()
		}
	}
	return ""
}

// toConnectError maps any error a handler meets to what the client may see. Domain
// refusals keep their message (written for people, it names only the caller's own
// input); everything unexpected is logged in full and reaches the client only as
// "internal error", so no internal detail (SQL, paths, addresses) leaks.
func toConnectError(ctx context.Context, log *slog.Logger, procedure string, err error) error {
	if err == nil {
		return nil
	}
	var cerr *connect.Error
	if errors.As(err, &cerr) {
		return cerr
	}
	if reason := domain.ReasonOf(err); reason != "" {
		code, ok := codeOfReason[reason]
		if !ok {
			code = connect.CodeFailedPrecondition
		}
		return newError(code, reason, err.Error())
	}
	switch {
	case errors.Is(err, eventstore.ErrConflict):
		return newError(connect.CodeAborted, ReasonConflict, "the accounts changed concurrently too many times; retry the request")
	case errors.Is(err, projections.ErrNotCaughtUp):
		return newError(connect.CodeDeadlineExceeded, ReasonNotCaughtUp, "the view has not reached the requested min_position yet; retry later")
	case errors.Is(err, projections.ErrHistoryTrimmed):
		return newError(connect.CodeFailedPrecondition, ReasonHistoryTrimmed, "this point of the history is no longer kept by the in-memory view")
	case errors.Is(err, projections.ErrNotFound):
		return newError(connect.CodeNotFound, ReasonNotFound, "not found")
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
