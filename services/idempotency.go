package services

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/anypb"
)

// Idempotency-Key support, after the IETF draft "The Idempotency-Key HTTP Header Field":
//
//   - A mutating RPC (every unary method not marked NO_SIDE_EFFECTS in the schema) may carry
//     an Idempotency-Key header. The first request with a key runs; its response is stored
//     per caller for a TTL.
//   - A retry with the same key and the same request gets the stored response, byte for
//     byte the same message (the Connect handlers marshal deterministically), plus the
//     header Idempotent-Replayed: true.
//   - The same key with a different request is refused (ALREADY_EXISTS,
//     IDEMPOTENCY_KEY_REUSED), like a payment id reused with different input.
//   - A retry while the first request is still running is refused with ABORTED,
//     IDEMPOTENCY_REQUEST_IN_PROGRESS: retry after a moment to get the stored response.
//
// Only outcomes that a retry would repeat are stored: successes and refusals of the request
// itself (invalid input, insufficient funds, not found, ...). Transient failures (conflict
// retries exhausted, unavailable, deadline, internal) release the key so a retry runs again.
//
// The store is a cache of responses, not the source of exactly-once: if it loses a record
// (Redis flushed, TTL passed), the retry runs again and the ledger itself recognises the
// payment id (same id + same input = replay, nothing appended). So the store may be
// best-effort and fast, and it is.

// IdempotencyKeyHeader is the request header, and ReplayedHeader marks a stored response.
const (
	IdempotencyKeyHeader = "Idempotency-Key"
	ReplayedHeader       = "Idempotent-Replayed"
	maxIdempotencyKey    = 255
)

// IdempotencyStore keeps one record per (caller, key). Implementations must make Claim
// atomic: of many concurrent Claims of a key, exactly one returns claimed = true.
type IdempotencyStore interface {
	// Claim records that owner is now running the request with this fingerprint, unless a
	// record exists; then it returns that record and claimed = false. The claim lapses
	// after ttl if never completed (a crashed server).
	Claim(ctx context.Context, key string, owner, fingerprint string, ttl time.Duration) (existing IdempotencyRecord, claimed bool, err error)
	// Complete stores the response for ttl, if the record is still owner's claim.
	Complete(ctx context.Context, key, owner string, rec IdempotencyRecord, ttl time.Duration) error
	// Release deletes owner's claim so that a retry runs again.
	Release(ctx context.Context, key, owner string) error
}

// IdempotencyRecord is what a store keeps for a key.
type IdempotencyRecord struct {
	Owner       string `json:"o,omitempty"` // set while in flight
	Fingerprint string `json:"f"`
	Done        bool   `json:"d,omitempty"`
	Response    []byte `json:"r,omitempty"` // an encoded storedResponse, when Done
}

func encodeRecord(r IdempotencyRecord) ([]byte, error) { return json.Marshal(r) }

func decodeRecord(b []byte) (IdempotencyRecord, error) {
	var r IdempotencyRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("decode idempotency record: %w", err)
	}
	return r, nil
}

// storedResponse is a response as replayed: either a message or an error.
type storedResponse struct {
	Message []byte         `json:"m,omitempty"` // deterministic protobuf of the response
	Code    connect.Code   `json:"c,omitempty"` // 0 for success
	Error   string         `json:"e,omitempty"`
	Details []storedDetail `json:"x,omitempty"`
	Header  []storedHeader `json:"h,omitempty"`
}

type storedDetail struct {
	Type  string `json:"t"`
	Value []byte `json:"v"`
}

type storedHeader struct {
	Name   string   `json:"n"`
	Values []string `json:"v"`
}

// CallerFunc names the principal a request acts for; keys are scoped by it so that two
// callers never see each other's responses. The authentication layer provides it; without
// authentication every request is the same caller.
type CallerFunc func(ctx context.Context, h http.Header) string

// AnonymousCaller is the CallerFunc of an unauthenticated server (dev mode).
func AnonymousCaller(context.Context, http.Header) string { return "anonymous" }

// idempotencyConfig configures the interceptor (Config carries the public knobs).
type idempotencyConfig struct {
	Store IdempotencyStore
	// TTL keeps a stored response; 24h by default, long enough for a client's retries
	// across a day's outage, as payment APIs commonly keep them.
	TTL time.Duration
	// InFlightTTL bounds a claim whose server died before completing; it must exceed the
	// longest request (the server's write timeout). Default 2 minutes.
	InFlightTTL time.Duration
	Caller      CallerFunc
	Logger      *slog.Logger
}

type idempotencyInterceptor struct {
	cfg       idempotencyConfig
	replayers map[protoreflect.FullName]replayer
}

// replayer rebuilds a typed response from its stored bytes. connect.NewResponse needs the
// concrete message type, which a stored record cannot name at compile time, so each
// mutating method's response type registers one (see newIdempotencyInterceptor).
type replayer func(stored []byte) (connect.AnyResponse, error)

func replayerOf[T any, PT interface {
	*T
	proto.Message
}]() (protoreflect.FullName, replayer) {
	name := PT(new(T)).ProtoReflect().Descriptor().FullName()
	return name, func(stored []byte) (connect.AnyResponse, error) {
		msg := PT(new(T))
		if err := proto.Unmarshal(stored, msg); err != nil {
			return nil, fmt.Errorf("decode stored %s: %w", name, err)
		}
		return connect.NewResponse((*T)(msg)), nil
	}
}

// newIdempotencyInterceptor covers the mutating unary methods of services; it fails if one
// of them has a response type without a replayer, so a new write RPC cannot silently
// escape replay.
func newIdempotencyInterceptor(cfg idempotencyConfig, services []protoreflect.ServiceDescriptor, replayers map[protoreflect.FullName]replayer) (*idempotencyInterceptor, error) {
	if cfg.Store == nil {
		return nil, errors.New("idempotency: Store is required")
	}
	for _, svc := range services {
		methods := svc.Methods()
		for j := 0; j < methods.Len(); j++ {
			m := methods.Get(j)
			if !mutating(m) {
				continue
			}
			if _, ok := replayers[m.Output().FullName()]; !ok {
				return nil, fmt.Errorf("idempotency: mutating method %s returns %s, which has no replayer", m.FullName(), m.Output().FullName())
			}
		}
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 24 * time.Hour
	}
	if cfg.InFlightTTL <= 0 {
		cfg.InFlightTTL = 2 * time.Minute
	}
	if cfg.Caller == nil {
		cfg.Caller = AnonymousCaller
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &idempotencyInterceptor{cfg: cfg, replayers: replayers}, nil
}

// mutating reports whether a method may change state: unary and not marked
// NO_SIDE_EFFECTS in the schema.
func mutating(m protoreflect.MethodDescriptor) bool {
	if m.IsStreamingClient() || m.IsStreamingServer() {
		return false
	}
	opts, ok := m.Options().(*descriptorpb.MethodOptions)
	return !ok || opts.GetIdempotencyLevel() != descriptorpb.MethodOptions_NO_SIDE_EFFECTS
}

// parseIdempotencyKey accepts the draft's structured-field string ("\"abc\"") and, for
// clients that send it bare, a token (abc): 1..255 visible ASCII characters.
func parseIdempotencyKey(v string) (string, error) {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	if v == "" || len(v) > maxIdempotencyKey {
		return "", fmt.Errorf("the %s header must be 1..%d characters", IdempotencyKeyHeader, maxIdempotencyKey)
	}
	for i := 0; i < len(v); i++ {
		if v[i] <= ' ' || v[i] > '~' || v[i] == '"' || v[i] == '\\' {
			return "", fmt.Errorf("the %s header may contain only visible ASCII characters other than quote and backslash", IdempotencyKeyHeader)
		}
	}
	return v, nil
}

// storeKey scopes a key by caller and hashes both, so store keys have a fixed length
// whatever the client sends.
func storeKey(caller, key string) string {
	h := sha256.New()
	h.Write([]byte(caller))
	h.Write([]byte{0})
	h.Write([]byte(key))
	return hex.EncodeToString(h.Sum(nil))
}

// CausationOfKey is what an event records as its causation id for a request with an
// Idempotency-Key: "idem:" and the first 32 hex digits of SHA-256 over "causation",
// the caller and the key. A client that knows its key can recompute it to find the
// events of its request; nobody else can learn the key from it, and the same key of two
// principals gives two ids. It is a different hash from the store key, so a log reader
// cannot address the stored response either.
func CausationOfKey(caller, key string) string {
	h := sha256.New()
	h.Write([]byte("causation\x00"))
	h.Write([]byte(caller))
	h.Write([]byte{0})
	h.Write([]byte(key))
	return "idem:" + hex.EncodeToString(h.Sum(nil))[:32]
}

// requestFingerprint hashes the procedure and the request message in deterministic
// protobuf form: the same request sent over Connect, gRPC or gRPC-web, as JSON or binary,
// has one fingerprint.
func requestFingerprint(procedure string, msg proto.Message) (string, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		return "", fmt.Errorf("fingerprint %s: %w", procedure, err)
	}
	h := sha256.New()
	h.Write([]byte(procedure))
	h.Write([]byte{0})
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil)), nil
}

func newOwner() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// storable reports whether a retry would get the same outcome, so the outcome may be
// replayed. Transient failures are not stored: a retry should run again.
func storable(err error) bool {
	if err == nil {
		return true
	}
	switch connect.CodeOf(err) {
	case connect.CodeInvalidArgument, connect.CodeFailedPrecondition, connect.CodeNotFound,
		connect.CodeAlreadyExists, connect.CodeOutOfRange, connect.CodePermissionDenied:
		return true
	}
	return false
}

func (i *idempotencyInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		spec := req.Spec()
		raw := req.Header().Get(IdempotencyKeyHeader)
		if raw == "" || spec.IdempotencyLevel == connect.IdempotencyNoSideEffects || spec.IsClient {
			return next(ctx, req)
		}
		key, err := parseIdempotencyKey(raw)
		if err != nil {
			return nil, newError(connect.CodeInvalidArgument, ReasonIdempotencyKey, err.Error())
		}
		msg, ok := req.Any().(proto.Message)
		if !ok {
			return nil, fmt.Errorf("idempotency: request of %s is %T, not a protobuf message", spec.Procedure, req.Any())
		}
		fp, err := requestFingerprint(spec.Procedure, msg)
		if err != nil {
			return nil, err
		}
		skey := storeKey(i.cfg.Caller(ctx, req.Header()), key)
		owner := newOwner()
		existing, claimed, err := i.cfg.Store.Claim(ctx, skey, owner, fp, i.cfg.InFlightTTL)
		if err != nil {
			i.cfg.Logger.ErrorContext(ctx, "idempotency store: claim", "procedure", spec.Procedure, "error", err)
			// The claim may have been stored although its answer was lost (a timeout after
			// Redis wrote it): then every retry would be told "in progress" until the claim
			// lapses. Nothing ran under this owner, so its claim, if any, is released.
			go func() {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer cancel()
				if err := i.cfg.Store.Release(rctx, skey, owner); err != nil {
					i.cfg.Logger.WarnContext(rctx, "idempotency store: release after a failed claim", "procedure", spec.Procedure, "error", err)
				}
			}()
			return nil, newError(connect.CodeUnavailable, ReasonIdempotencyStoreDown, "the idempotency store is unavailable; retry later")
		}
		if !claimed {
			return i.replay(spec, existing, fp)
		}

		res, herr := next(ctx, req)
		// Store with a context that outlives a client that hung up: the work is done and a
		// retry should find it.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if !storable(herr) {
			if err := i.cfg.Store.Release(sctx, skey, owner); err != nil {
				i.cfg.Logger.ErrorContext(ctx, "idempotency store: release", "procedure", spec.Procedure, "error", err)
			}
			return res, herr
		}
		stored, err := encodeResponse(res, herr)
		if err != nil {
			i.cfg.Logger.ErrorContext(ctx, "idempotency: encode response", "procedure", spec.Procedure, "error", err)
			if err := i.cfg.Store.Release(sctx, skey, owner); err != nil {
				// The claim then lapses after InFlightTTL; until then a retry is told to wait.
				i.cfg.Logger.ErrorContext(ctx, "idempotency store: release", "procedure", spec.Procedure, "error", err)
			}
			return res, herr
		}
		rec := IdempotencyRecord{Fingerprint: fp, Done: true, Response: stored}
		if err := i.cfg.Store.Complete(sctx, skey, owner, rec, i.cfg.TTL); err != nil {
			// The command is applied; losing its stored response only means a retry runs
			// again, and the ledger recognises the payment id.
			i.cfg.Logger.ErrorContext(ctx, "idempotency store: complete", "procedure", spec.Procedure, "error", err)
		}
		return res, herr
	}
}

func (i *idempotencyInterceptor) replay(spec connect.Spec, rec IdempotencyRecord, fp string) (connect.AnyResponse, error) {
	if rec.Fingerprint != fp {
		return nil, newError(connect.CodeAlreadyExists, ReasonIdempotencyMismatch,
			"this Idempotency-Key was already used with a different request; use a new key for a new request")
	}
	if !rec.Done {
		return nil, newError(connect.CodeAborted, ReasonIdempotencyInFlight,
			"a request with this Idempotency-Key is still being processed; retry shortly to get its response")
	}
	return decodeResponse(spec, i.replayers, rec.Response)
}

func encodeResponse(res connect.AnyResponse, herr error) ([]byte, error) {
	var s storedResponse
	if herr != nil {
		var cerr *connect.Error
		if !errors.As(herr, &cerr) {
			return nil, fmt.Errorf("handler error is %T, not a *connect.Error", herr)
		}
		s.Code, s.Error = cerr.Code(), cerr.Message()
		for _, d := range cerr.Details() {
			s.Details = append(s.Details, storedDetail{Type: d.Type(), Value: d.Bytes()})
		}
	} else {
		msg, ok := res.Any().(proto.Message)
		if !ok {
			return nil, fmt.Errorf("response is %T, not a protobuf message", res.Any())
		}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
		if err != nil {
			return nil, fmt.Errorf("marshal response: %w", err)
		}
		s.Message = b
		for name, values := range res.Header() {
			s.Header = append(s.Header, storedHeader{Name: name, Values: values})
		}
	}
	return json.Marshal(s)
}

func decodeResponse(spec connect.Spec, replayers map[protoreflect.FullName]replayer, b []byte) (connect.AnyResponse, error) {
	var s storedResponse
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decode stored response of %s: %w", spec.Procedure, err)
	}
	if s.Code != 0 {
		cerr := connect.NewError(s.Code, errors.New(s.Error))
		for _, d := range s.Details {
			detail, err := connect.NewErrorDetail(&anypb.Any{TypeUrl: "type.googleapis.com/" + d.Type, Value: d.Value})
			if err != nil {
				return nil, fmt.Errorf("decode stored error detail of %s: %w", spec.Procedure, err)
			}
			cerr.AddDetail(detail)
		}
		cerr.Meta().Set(ReplayedHeader, "true")
		return nil, cerr
	}
	method, ok := spec.Schema.(protoreflect.MethodDescriptor)
	if !ok {
		return nil, fmt.Errorf("replay %s: no schema for the method", spec.Procedure)
	}
	build, ok := replayers[method.Output().FullName()]
	if !ok {
		return nil, fmt.Errorf("replay %s: no replayer for %s", spec.Procedure, method.Output().FullName())
	}
	res, err := build(s.Message)
	if err != nil {
		return nil, fmt.Errorf("replay %s: %w", spec.Procedure, err)
	}
	for _, h := range s.Header {
		for _, v := range h.Values {
			res.Header().Add(h.Name, v)
		}
	}
	res.Header().Set(ReplayedHeader, "true")
	return res, nil
}

func (i *idempotencyInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler passes streams through: the API's streams are all reads.
func (i *idempotencyInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
