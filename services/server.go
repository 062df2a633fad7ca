package services

import (
	"compress/gzip"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	connectcors "connectrpc.com/cors"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"connectrpc.com/validate"
	"github.com/rs/cors"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/internal/coalesce"
	"github.com/securepay/securepay/projections"
)

// Config wires a Server. Store is always required; Commands and Idempotency when it runs
// the payments component, Reader when it runs queries or the projector. Every other field
// has a default.
type Config struct {
	// Components are what this server runs (see Component); empty means every API
	// component in one server: payments, queries and audit.
	Components  []Component
	Commands    Commands           // the write side (*ledger.Processor)
	Reader      projections.Reader // the read models
	Store       eventstore.Store   // the log, for audit and watch streams
	Idempotency IdempotencyStore   // Redis in production, memory in dev
	// IdempotencyTTL keeps stored responses; default 24h.
	IdempotencyTTL time.Duration
	Caller         CallerFunc // default AnonymousCaller
	// CorrelationID returns the correlation id assigned at the edge for this request
	// (edge.Funcs reads the gateway's header), recorded in its events; "" (and the
	// default) records the command's own id: the payment id, or the account id.
	CorrelationID func(ctx context.Context, h http.Header) string
	Logger        *slog.Logger

	// Interceptors run before all of the server's own, outermost first: tracing and RPC
	// metrics (services/telemetry's RPCInterceptors), so they see every call and its final
	// code. Metrics, when set, is served at /metrics on the API port and the health port.
	Interceptors []connect.Interceptor
	Metrics      http.Handler

	// TLS serves HTTP/2 over TLS. Without it the server speaks cleartext HTTP/2 (h2c) and
	// HTTP/1.1, which is only allowed with AllowH2C (local development).
	TLS      *tls.Config
	AllowH2C bool
	// CORSOrigins lists the browser origins allowed to call (gRPC-web, Connect); empty
	// means browsers from other origins are refused. "*" allows any origin, and
	// LoopbackOrigins any http(s) origin on a loopback host (any port).
	CORSOrigins []string
	// LoopbackHostsOnly refuses requests whose Host (HTTP/2 :authority) is not a loopback
	// name or address: a DNS-rebinding page reaches a loopback server under its own name.
	LoopbackHostsOnly bool
	// Reflection serves gRPC server reflection (v1 and v1alpha), for grpcurl and buf curl.
	Reflection bool
	// Authorize, when set, wraps every handler of the API port (procedures, health,
	// reflection): the east-west policy of a component (services/mtls) or the gateway's
	// authentication. It runs after the Host check and CORS, before anything else.
	Authorize func(http.Handler) http.Handler

	MaxRequestBytes   int           // one request message; default 1 MiB
	RequestTimeout    time.Duration // unary handler deadline; default 30s
	ReadWait          time.Duration // read-your-writes wait bound; default 5s
	ReadHeaderTimeout time.Duration // HTTP/1.1 headers; HTTP/2 frames (see Serve); default 5s
	ReadTimeout       time.Duration // whole request read (streams: until the request arrived); default 30s
	WriteTimeout      time.Duration // whole response write (streams: until the request arrived); default 60s
	IdleTimeout       time.Duration // keep-alive; default 120s
	ShutdownTimeout   time.Duration // in-flight requests get this long to finish; default 30s
	MaxStreams        int           // concurrent server streams (watch, log), counted from their headers; default 256

	// Dependencies are checked by health (grpc.health.v1 and /readyz) besides the store
	// and the views, which are always checked: for example Redis, which reads degrade
	// without.
	Dependencies []Dependency
	// HealthCheckTimeout bounds one dependency check; default 500ms.
	HealthCheckTimeout time.Duration
	// HealthCacheTTL is how long a health answer is reused, so probes cannot hammer the
	// database; default 1s.
	HealthCacheTTL time.Duration
	// MaxViewLag is how many positions the views may trail the log and still be ready;
	// default 10000.
	MaxViewLag uint64
	// Checkpoints answers the AuditService's checkpoint and proof calls; nil on a server
	// that keeps no Merkle tree (they answer CHECKPOINT_UNAVAILABLE).
	Checkpoints *Checkpoints
	// Webhooks serves WebhookService on the payments component (services/webhook's
	// Service, which needs the webhook key); nil answers its procedures FAILED_PRECONDITION
	// saying the server runs without a webhook registry.
	Webhooks ledgerv1connect.WebhookServiceHandler
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	set := c.components()
	for _, comp := range set {
		if _, err := ParseComponent(string(comp)); err != nil {
			return fmt.Errorf("server config: %w", err)
		}
	}
	needsReader := set.has(ComponentQueries) || set.has(ComponentProjector)
	switch {
	case set.has(ComponentPayments) && c.Commands == nil:
		return errors.New("server config: Commands (the ledger processor) is required by the payments component")
	case needsReader && c.Reader == nil:
		return errors.New("server config: Reader (the projections) is required by the queries and projector components")
	case c.Store == nil:
		return errors.New("server config: Store (the event store) is required")
	case set.has(ComponentPayments) && c.Idempotency == nil:
		return errors.New("server config: Idempotency store is required by the payments component")
	case c.TLS == nil && !c.AllowH2C:
		return errors.New("server config: TLS is required (cleartext h2c only with AllowH2C, for local development)")
	case c.MaxRequestBytes < 0, c.RequestTimeout < 0, c.ReadWait < 0, c.ReadHeaderTimeout < 0,
		c.ReadTimeout < 0, c.WriteTimeout < 0, c.IdleTimeout < 0, c.ShutdownTimeout < 0, c.MaxStreams < 0,
		c.HealthCheckTimeout < 0, c.HealthCacheTTL < 0:
		return errors.New("server config: sizes and timeouts must not be negative")
	}
	for _, d := range c.Dependencies {
		if d.Name == "" || d.Check == nil {
			return errors.New("server config: every dependency needs a Name and a Check")
		}
	}
	return nil
}

// components is Components, or every API component when it is empty.
func (c Config) components() componentSet {
	if len(c.Components) == 0 {
		return componentSet(APIComponents())
	}
	return slices.Clone(componentSet(c.Components))
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.MaxRequestBytes == 0 {
		c.MaxRequestBytes = 1 << 20
	}
	def(&c.RequestTimeout, 30*time.Second)
	def(&c.ReadWait, 5*time.Second)
	def(&c.ReadHeaderTimeout, 5*time.Second)
	def(&c.ReadTimeout, 30*time.Second)
	def(&c.WriteTimeout, 60*time.Second)
	def(&c.IdleTimeout, 120*time.Second)
	def(&c.ShutdownTimeout, 30*time.Second)
	def(&c.HealthCheckTimeout, defaultHealthCheckTimeout)
	def(&c.HealthCacheTTL, defaultHealthCacheTTL)
	if c.MaxViewLag == 0 {
		c.MaxViewLag = defaultMaxViewLag
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = 256
	}
	if c.Caller == nil {
		c.Caller = AnonymousCaller
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// compressMinBytes: responses smaller than this are sent uncompressed.
const compressMinBytes = 4 << 10

// Server serves the API on one port: Connect, gRPC and gRPC-web, health and reflection.
type Server struct {
	cfg     Config
	set     componentSet
	handler http.Handler
	streams *streamLimiter
	health  *healthChecker
}

// serviceNames are the API's services, as health and reflection name them.
var serviceNames = []string{
	ledgerv1connect.AccountServiceName,
	ledgerv1connect.PaymentServiceName,
	ledgerv1connect.BalanceServiceName,
	ledgerv1connect.AuditServiceName,
	ledgerv1connect.WebhookServiceName,
}

func serviceDescriptors() []protoreflect.ServiceDescriptor {
	files := []protoreflect.FileDescriptor{
		ledgerv1.File_securepay_ledger_v1_accounts_proto,
		ledgerv1.File_securepay_ledger_v1_payments_proto,
		ledgerv1.File_securepay_ledger_v1_balances_proto,
		ledgerv1.File_securepay_ledger_v1_audit_proto,
		ledgerv1.File_securepay_ledger_v1_webhooks_proto,
	}
	var out []protoreflect.ServiceDescriptor
	for _, f := range files {
		for i := 0; i < f.Services().Len(); i++ {
			out = append(out, f.Services().Get(i))
		}
	}
	return out
}

// ledgerServiceDescriptors are the services whose writes go through the idempotency
// store: all but WebhookService (see NewServer).
func ledgerServiceDescriptors() []protoreflect.ServiceDescriptor {
	var out []protoreflect.ServiceDescriptor
	for _, d := range serviceDescriptors() {
		if d.FullName() != ledgerv1connect.WebhookServiceName {
			out = append(out, d)
		}
	}
	return out
}

// writeReplayers lists the response type of every write RPC (see replayer).
func writeReplayers() map[protoreflect.FullName]replayer {
	m := map[protoreflect.FullName]replayer{}
	add := func(name protoreflect.FullName, r replayer) { m[name] = r }
	add(replayerOf[ledgerv1.OpenAccountResponse]())
	add(replayerOf[ledgerv1.FreezeAccountResponse]())
	add(replayerOf[ledgerv1.UnfreezeAccountResponse]())
	add(replayerOf[ledgerv1.CloseAccountResponse]())
	add(replayerOf[ledgerv1.TransferResponse]())
	add(replayerOf[ledgerv1.BatchTransferResponse]())
	add(replayerOf[ledgerv1.AuthoriseResponse]())
	add(replayerOf[ledgerv1.CaptureResponse]())
	add(replayerOf[ledgerv1.VoidResponse]())
	add(replayerOf[ledgerv1.RefundResponse]())
	return m
}

// NewServer builds the handlers. It does not listen; see Serve.
func NewServer(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	s := &Server{
		cfg:     cfg,
		set:     cfg.components(),
		streams: newStreamLimiter(cfg.MaxStreams),
	}
	services := s.set.services()
	s.health = newHealthChecker(componentDependencies(cfg, s.set, services), services, cfg.HealthCheckTimeout, cfg.HealthCacheTTL, cfg.Logger)
	meta := newMetaFunc(cfg.Caller, cfg.CorrelationID)
	// Interceptors run outermost first: reasons are added to validation refusals last,
	// validation happens before the idempotency store is touched, and idempotency sees the
	// final Connect codes that errorInterceptor produced.
	interceptors := slices.Clip(cfg.Interceptors)
	if cfg.CorrelationID != nil {
		interceptors = append(interceptors, correlationInterceptor{correlation: cfg.CorrelationID})
	}
	interceptors = append(interceptors,
		validationReasonInterceptor{},
		validationMessages{}, // services/validation.go: sentences instead of regexes
		timeoutInterceptor{timeout: cfg.RequestTimeout},
		validate.NewInterceptor(),
	)
	if s.set.has(ComponentPayments) {
		// Only writes use the idempotency store, and only payments serves writes.
		idem, err := newIdempotencyInterceptor(idempotencyConfig{
			Store:  cfg.Idempotency,
			TTL:    cfg.IdempotencyTTL,
			Caller: cfg.Caller,
			Logger: cfg.Logger,
			// A claim must outlive the longest request it guards.
			InFlightTTL: cfg.RequestTimeout + cfg.WriteTimeout,
		}, ledgerServiceDescriptors(), writeReplayers())
		if err != nil {
			return nil, err
		}
		interceptors = append(interceptors, idem)
	}
	// WebhookService skips the idempotency store: its answers carry signing secrets, which
	// must not be kept in Redis, and a retried RegisterEndpoint is refused by URL instead.
	webhookInterceptors := append(slices.Clip(interceptors), errorInterceptor{log: cfg.Logger})
	interceptors = append(interceptors, errorInterceptor{log: cfg.Logger})
	handlerOpts := func(interceptors []connect.Interceptor) []connect.HandlerOption {
		return []connect.HandlerOption{
			connect.WithCodec(deterministicCodec{}),
			// requestLimits and boundedGzip refuse oversized messages first, with a message
			// that says the limit; connect-go's own check stays as the backstop.
			connect.WithReadMaxBytes(cfg.MaxRequestBytes),
			connect.WithCompression("gzip", newBoundedGzip(cfg.MaxRequestBytes), func() connect.Compressor { return gzip.NewWriter(io.Discard) }),
			// Our answers are a few hundred bytes: gzip would cost more CPU than it saves.
			connect.WithCompressMinBytes(compressMinBytes),
			connect.WithInterceptors(interceptors...),
		}
	}
	opts := handlerOpts(interceptors)
	errs := connect.NewErrorWriter(opts...)
	mux := http.NewServeMux()
	// Every service is mounted, so that a procedure of another component is answered
	// Unimplemented with where to go (onlyOwnProcedures), never served.
	mount := func(path string, h http.Handler) { mux.Handle(path, onlyOwnProcedures(h, s.set, errs)) }
	mount(ledgerv1connect.NewAccountServiceHandler(&accountService{cmds: cfg.Commands, meta: meta}, opts...))
	mount(ledgerv1connect.NewPaymentServiceHandler(&paymentService{cmds: cfg.Commands, reader: cfg.Reader, meta: meta, readWait: cfg.ReadWait}, opts...))
	mount(ledgerv1connect.NewBalanceServiceHandler(&balanceService{reader: cfg.Reader, store: cfg.Store, readWait: cfg.ReadWait, streams: s.streams}, opts...))
	mount(ledgerv1connect.NewAuditServiceHandler(&auditService{store: cfg.Store, streams: s.streams, checkpoints: cfg.Checkpoints}, opts...))
	webhooks := cfg.Webhooks
	if webhooks == nil {
		webhooks = noWebhookRegistry{}
	}
	mount(ledgerv1connect.NewWebhookServiceHandler(webhooks, handlerOpts(webhookInterceptors)...))
	mux.Handle(grpchealth.NewHandler(s.health))
	s.health.healthHTTP(mux)
	if cfg.Metrics != nil {
		mux.Handle("/metrics", cfg.Metrics)
	}
	if cfg.Reflection {
		reflector := grpcreflect.NewStaticReflector(append([]string{grpchealth.HealthV1ServiceName}, services...)...)
		mux.Handle(grpcreflect.NewHandlerV1(reflector))
		// grpcurl and many tools still speak only the v1alpha reflection protocol.
		mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	}

	var h http.Handler = mux
	h = admitStreams(h, streamingPaths(), s.streams, errs)
	h = requestLimits(h, cfg.MaxRequestBytes, errs)
	if s.set.has(ComponentPayments) {
		// HopService.Forward (services/hop.go) serves its calls through s.handler, the
		// whole of this chain, so each is authorised and served as if it came alone.
		hopInterceptors := append(slices.Clip(cfg.Interceptors), timeoutInterceptor{timeout: cfg.RequestTimeout})
		h = hopRouter(h, newHopHandler(func() http.Handler { return s.handler }, hopInterceptors, cfg.Logger), errs)
	}
	if cfg.Authorize != nil {
		h = cfg.Authorize(h)
	}
	if len(cfg.CORSOrigins) > 0 {
		h = cors.New(cors.Options{
			AllowOriginFunc: originAllowed(cfg.CORSOrigins),
			AllowedMethods:  connectcors.AllowedMethods(),
			AllowedHeaders:  append(connectcors.AllowedHeaders(), IdempotencyKeyHeader, "Authorization"),
			ExposedHeaders:  append(connectcors.ExposedHeaders(), ReplayedHeader),
			MaxAge:          7200,
		}).Handler(h)
	}
	if cfg.LoopbackHostsOnly {
		h = loopbackHostsOnly(h, errs)
	}
	h = GrowStackFirst(h)
	s.handler = h
	return s, nil
}

// Handler is the server's whole HTTP handler, for tests and for embedding.
func (s *Server) Handler() http.Handler { return s.handler }

// HealthHandler serves only health: /healthz, /readyz and grpc.health.v1, for a probe
// port of its own. A component on mTLS serves its API only to callers with an SVID, which
// a kubelet or load balancer has not, and a component still waiting for its SVID serves
// no API at all yet answers here that it is not ready.
func (s *Server) HealthHandler() http.Handler {
	mux := s.health.probeMux()
	if s.cfg.Metrics != nil {
		mux.Handle("/metrics", s.cfg.Metrics)
	}
	return mux
}

// Components are what the server runs.
func (s *Server) Components() []Component { return slices.Clone(s.set) }

// Serve serves on ln until ctx ends, then shuts down gracefully: health (gRPC and /readyz)
// turns to NOT_SERVING, server streams are ended with UNAVAILABLE (clients reconnect elsewhere),
// in-flight unary requests finish (bounded by ShutdownTimeout), then connections close.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	if s.cfg.TLS != nil {
		protocols.SetHTTP2(true)
	} else {
		protocols.SetUnencryptedHTTP2(true)
	}
	srv := &http.Server{
		Handler:           s.handler,
		Protocols:         &protocols,
		TLSConfig:         s.cfg.TLS,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		WriteTimeout:      s.cfg.WriteTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		// ReadHeaderTimeout covers HTTP/1.1 only: an HTTP/2 HEADERS frame sent a byte a
		// second held a connection until IdleTimeout (121 s). HTTP/2 has no header
		// deadline, but a connection on which no whole frame arrives for this long is
		// pinged, and closed when the answer does not come as soon: a frame stuck half
		// sent blocks the answer behind it. Healthy idle clients answer pings.
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: s.cfg.ReadHeaderTimeout,
			PingTimeout:     s.cfg.ReadHeaderTimeout,
		},
		ErrorLog: slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn),
		// Requests must not be canceled by the caller's ctx ending: shutdown is graceful.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() {
		if s.cfg.TLS != nil {
			// Under TLS, the answers of many streams on one HTTP/2 connection go out in
			// fewer write system calls (internal/coalesce). Cleartext stays as it is:
			// net/http's HTTP/1 server wants the bare TCP connection there (CloseWrite).
			errc <- srv.ServeTLS(coalesce.Listener(ln, coalesce.Options{}), "", "")
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	s.health.drain()
	s.streams.drain()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("graceful shutdown of %s: %w", ln.Addr(), err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	}
	return nil
}

// streamingPaths are the URL paths of server-streaming methods.
func streamingPaths() map[string]bool {
	out := map[string]bool{}
	for _, svc := range serviceDescriptors() {
		for i := 0; i < svc.Methods().Len(); i++ {
			m := svc.Methods().Get(i)
			if m.IsStreamingServer() || m.IsStreamingClient() {
				out["/"+string(svc.FullName())+"/"+string(m.Name())] = true
			}
		}
	}
	return out
}

// admitStreams counts a server stream against MaxStreams from its first byte and keeps the
// server's read and write deadlines on it until its request message has arrived; only
// then are they lifted, so a long-lived stream (watch, log following) is not cut after
// WriteTimeout. Its lifetime is then bounded by the client, MaxStreams and shutdown.
//
// Lifting the deadlines before the request was read let a slow HTTP/1.1 body hold a watch
// open past 75 s, and counting only in the handler let 250 half-sent HTTP/2 streams per
// connection wait outside the bound. The slot taken here is given back when the message
// has arrived, just before the handler takes its own (services/balances.go, audit.go), so
// waiting and serving streams together never exceed MaxStreams.
func admitStreams(next http.Handler, paths map[string]bool, streams *streamLimiter, errs *connect.ErrorWriter) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !paths[r.URL.Path] {
			next.ServeHTTP(w, r)
			return
		}
		release, err := streams.acquire()
		if err != nil {
			var cerr *connect.Error
			if errors.As(err, &cerr) && errs.IsSupported(r) {
				_ = errs.Write(w, r, cerr)
				return
			}
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		var once sync.Once
		arrived := func() {
			once.Do(func() {
				release()
				rc := http.NewResponseController(w)
				_ = rc.SetWriteDeadline(time.Time{}) // not supported by every writer; then the server's timeout stays
				_ = rc.SetReadDeadline(time.Time{})
			})
		}
		// A request that failed before its message arrived gives its slot back here.
		defer once.Do(release)
		if r.Body == nil || r.Body == http.NoBody {
			arrived()
		} else {
			r.Body = &untilEOF{ReadCloser: r.Body, eof: arrived}
		}
		next.ServeHTTP(w, r)
	})
}

// untilEOF calls eof when the body ends. connect-go reads a server stream's body to its end
// (one message, then EOF) before it calls the handler, so EOF is "the request arrived".
type untilEOF struct {
	io.ReadCloser
	eof func()
}

func (b *untilEOF) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		b.eof()
	}
	return n, err
}

// timeoutInterceptor bounds every unary handler, whatever deadline the client sent.
type timeoutInterceptor struct{ timeout time.Duration }

func (t timeoutInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		// A client deadline sooner than ours already bounds the handler (Connect derived it
		// from the request's timeout header): a second timer would only cost a timer.
		if d, ok := ctx.Deadline(); ok && time.Until(d) <= t.timeout {
			return next(ctx, req)
		}
		ctx, cancel := context.WithTimeout(ctx, t.timeout)
		defer cancel()
		return next(ctx, req)
	}
}

func (t timeoutInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (t timeoutInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// metaFunc builds the metadata recorded with a command's events. It refuses what the
// request carries that cannot be recorded (a malformed traceparent), so the one request is
// refused instead of the batch it would have joined.
type metaFunc func(ctx context.Context, req connect.AnyRequest, correlationID string) (eventstore.Metadata, error)

func newMetaFunc(caller CallerFunc, correlation func(context.Context, http.Header) string) metaFunc {
	return func(ctx context.Context, req connect.AnyRequest, correlationID string) (eventstore.Metadata, error) {
		h := req.Header()
		if correlation != nil {
			if c := correlation(ctx, h); c != "" {
				correlationID = c
			}
		}
		actor := caller(ctx, h)
		m := eventstore.Metadata{CorrelationID: correlationID, Actor: recordableActor(actor)}
		if tp := h.Get("traceparent"); tp != "" {
			if !validTraceParent(tp) {
				return m, fmt.Errorf("%w: the traceparent header is not a W3C trace context (version-traceid-parentid-flags in lower-case hex, e.g. 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01)", domain.ErrInvalidInput)
			}
			m.TraceParent = tp
		}
		// Most writes carry no key: checking first spares building the parse error. The
		// log is read by auditors and, through the audit API, by every auditor principal:
		// it records the key's scoped hash, never the key, which may be a secret of the
		// client's (a retry token) and lets whoever holds it replay the response.
		if raw := h.Get(IdempotencyKeyHeader); raw != "" {
			if key, err := parseIdempotencyKey(raw); err == nil {
				m.CausationID = CausationOfKey(actor, key)
			}
		}
		return m, eventstore.ValidateMetadata(m)
	}
}

// validTraceParent reports whether tp is a W3C traceparent we can record: version 00's
// exact shape (55 bytes), lower-case hex, trace and parent ids not all zero. A higher
// version may append fields after a dash, which we keep only if the first 55 bytes parse.
func validTraceParent(tp string) bool {
	if len(tp) < 55 || (len(tp) > 55 && tp[55] != '-') || len(tp) > 256 {
		return false
	}
	if tp[2] != '-' || tp[35] != '-' || tp[52] != '-' || tp[:2] == "ff" || (tp[:2] == "00" && len(tp) != 55) {
		return false
	}
	hex := func(s string) bool {
		zero := true
		for i := 0; i < len(s); i++ {
			c := s[i]
			switch {
			case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
			default:
				return false
			}
			zero = zero && c == '0'
		}
		return !zero || len(s) == 2 // version and flags may be zero, the ids may not
	}
	return hex(tp[0:2]) && hex(tp[3:35]) && hex(tp[36:52]) && hex(tp[53:55]) && utf8.ValidString(tp)
}

// recordableActor cuts s to what metadata may hold, at a rune boundary so the cut never makes
// valid UTF-8 invalid, and replaces invalid bytes so a caller's name is always recordable.
func recordableActor(s string) string {
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "\uFFFD")
	if len(s) <= eventstore.MaxMetadataBytes {
		return s
	}
	cut := eventstore.MaxMetadataBytes
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// streamLimiter bounds concurrent server streams and ends them at shutdown.
type streamLimiter struct {
	slots    chan struct{}
	draining chan struct{}
	once     sync.Once
}

func newStreamLimiter(n int) *streamLimiter {
	return &streamLimiter{slots: make(chan struct{}, n), draining: make(chan struct{})}
}

func (l *streamLimiter) acquire() (release func(), err error) {
	select {
	case <-l.draining:
		return nil, newError(connect.CodeUnavailable, ReasonUnavailable, "the server is shutting down; reconnect")
	default:
	}
	select {
	case l.slots <- struct{}{}:
		return func() { <-l.slots }, nil
	default:
		return nil, newError(connect.CodeResourceExhausted, ReasonTooManyStreams,
			fmt.Sprintf("the server already serves %d streams; retry later", cap(l.slots)))
	}
}

// bind returns a context that also ends when the server starts draining.
func (l *streamLimiter) bind(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-l.draining:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func (l *streamLimiter) drain() { l.once.Do(func() { close(l.draining) }) }

// endErr turns the end of a stream into what the client sees: a stream ended by shutdown
// says so, so the client reconnects.
func (l *streamLimiter) endErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	select {
	case <-l.draining:
		if ctx.Err() != nil {
			return newError(connect.CodeUnavailable, ReasonUnavailable, "the server is shutting down; reconnect")
		}
	default:
	}
	return err
}

// deterministicCodec is Connect's binary protobuf codec with deterministic marshalling, so
// that a replayed response (Idempotency-Key) is byte-identical to the first: Go randomises
// map order otherwise, and responses carry metadata maps.
type deterministicCodec struct{}

func (deterministicCodec) Name() string { return "proto" }

func (deterministicCodec) Marshal(v any) ([]byte, error) {
	return deterministicCodec{}.MarshalAppend(nil, v)
}

func (deterministicCodec) MarshalAppend(dst []byte, v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("marshal %T: not a protobuf message", v)
	}
	return proto.MarshalOptions{Deterministic: true}.MarshalAppend(dst, m)
}

func (deterministicCodec) MarshalStable(v any) ([]byte, error) {
	return deterministicCodec{}.MarshalAppend(nil, v)
}

func (deterministicCodec) Unmarshal(b []byte, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("unmarshal into %T: not a protobuf message", v)
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("unmarshal into %T: %w", v, err)
	}
	return nil
}

func (deterministicCodec) IsBinary() bool { return true }
