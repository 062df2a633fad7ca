package main

// The client commands: each is a constructor that declares its usage, arguments and flags,
// and a named run method that makes one call to the API.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/api/gen/securepay/ledger/v1/ledgerv1connect"
	"github.com/securepay/securepay/services"
)

// clientKind says which of the common flags a client command offers.
type clientKind int

const (
	// reads ask the views. A retry is always safe, so they take no Idempotency-Key.
	reads clientKind = iota
	// writes change the ledger; --idempotency-key makes a retry return the first answer.
	writes
	// streams last until the user stops them, so --timeout does not apply.
	streams
)

// clientFlags are the flags every client command shares.
type clientFlags struct {
	server  string
	json    bool
	caFile  string
	timeout time.Duration
	idemKey string // writes only
	// tokenFile holds the bearer token (token.go); SECUREPAY_TOKEN gives it directly.
	tokenFile string

	cmd  *Command
	kind clientKind
}

// register adds the common flags to cmd; a write's help also says how a lost answer is
// retried.
func (f *clientFlags) register(cmd *Command, e env, kind clientKind) {
	f.cmd, f.kind = cmd, kind
	fs := &cmd.Flag
	ef := envFlags{fs, e}
	ef.String(&f.server, "server", "SECUREPAY_SERVER", "http://127.0.0.1:8080", "server `URL`: http:// (dev, cleartext HTTP/2) or https://")
	fs.BoolVar(&f.json, "json", false, "print the answer as JSON, and an error as one JSON object on stderr")
	ef.String(&f.caFile, "ca-file", "SECUREPAY_CA_FILE", "", "`file` of PEM CA certificates to trust for https://")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "give up after this long, retries included")
	ef.String(&f.tokenFile, "token-file", "SECUREPAY_TOKEN_FILE", "", "private `file` holding the access token sent as Authorization: Bearer (or give the token in $SECUREPAY_TOKEN)")
	switch kind {
	case writes:
		fs.StringVar(&f.idemKey, "idempotency-key", "", "Idempotency-Key header: a retry with the same `key` returns the first response")
		if cmd.Long == "" {
			cmd.Long = strings.ToUpper(cmd.Short[:1]) + cmd.Short[1:] + "."
		}
		cmd.Long += "\n\n" + retryHelp
	case streams:
		// Accepted because it was once offered (and ignored): a watch ends when stopped.
		hide(fs, "timeout")
	}
}

type apiClient struct {
	f        *clientFlags
	out      io.Writer
	errOut   io.Writer
	accounts ledgerv1connect.AccountServiceClient
	payments ledgerv1connect.PaymentServiceClient
	balances ledgerv1connect.BalanceServiceClient
	audit    ledgerv1connect.AuditServiceClient
	// last remembers this server's last write, for read-your-writes (lastwrite.go).
	last lastWrite
	// plan is set for a write: the ids it uses, for the retry command (retry.go).
	plan *retryPlan
	// notes are printed after a table: what the answer could not show.
	notes []string
}

func (f *clientFlags) dial(e env) (*apiClient, error) {
	var transport *http.Transport
	switch {
	case strings.HasPrefix(f.server, "http://"):
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		transport = &http.Transport{Protocols: &p}
	case strings.HasPrefix(f.server, "https://"):
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if f.caFile != "" {
			pem, err := os.ReadFile(f.caFile)
			if err != nil {
				return nil, fmt.Errorf("read --ca-file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("--ca-file %s holds no PEM certificate", f.caFile)
			}
			cfg.RootCAs = pool
		}
		transport = &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	default:
		return nil, usagef("--server must start with http:// or https://, got %q", f.server)
	}
	hc := &http.Client{Transport: transport}
	base := strings.TrimRight(f.server, "/")
	var opts []connect.ClientOption
	if tok, err := clientToken(e, f.tokenFile); err != nil {
		return nil, err
	} else if tok != "" {
		opts = append(opts, connect.WithInterceptors(bearerAuth(tok)))
	}
	return &apiClient{
		f:        f,
		out:      e.stdout,
		errOut:   e.stderr,
		accounts: ledgerv1connect.NewAccountServiceClient(hc, base, opts...),
		payments: ledgerv1connect.NewPaymentServiceClient(hc, base, opts...),
		balances: ledgerv1connect.NewBalanceServiceClient(hc, base, opts...),
		audit:    ledgerv1connect.NewAuditServiceClient(hc, base, opts...),
		last:     lastWriteFile(e, base),
	}, nil
}

// unary makes a client command's Run from its body: it dials, bounds the call, retries
// included, by --timeout, and keeps an API error whole for the report.
func (f *clientFlags) unary(body func(ctx context.Context, api *apiClient, args []string) error) func(context.Context, env, []string) error {
	return func(ctx context.Context, e env, args []string) error {
		api, err := f.dial(e)
		if err != nil {
			return err
		}
		if f.kind == writes {
			api.plan = &retryPlan{cmd: f.cmd, args: args}
		}
		ctx, cancel := context.WithTimeout(ctx, f.timeout)
		defer cancel()
		return explain(body(ctx, api, args))
	}
}

// print writes an answer: the message as JSON under --json, else the tables table writes.
func (c *apiClient) print(msg proto.Message, table func(*tabw)) error {
	if c.f.json {
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(msg)
		if err != nil {
			return fmt.Errorf("encode JSON: %w", err)
		}
		fmt.Fprintln(c.out, string(b))
		return nil
	}
	tw := newTab(c.out)
	table(tw)
	if len(c.notes) > 0 {
		tw.blank()
		for _, n := range c.notes {
			tw.line("%s", n)
		}
	}
	return tw.flush()
}

// request wraps a message; a write's carries the Idempotency-Key header, if one was given.
func request[T any](c *apiClient, msg *T, write bool) *connect.Request[T] {
	r := connect.NewRequest(msg)
	if write && c.f.idemKey != "" {
		r.Header().Set(services.IdempotencyKeyHeader, c.f.idemKey)
	}
	return r
}

// wrote is what every accepted write does before it prints: remember its position for
// later reads and, for a replay, show the balances as they are now. A replay's answer
// carries the accounts' current balances labelled with the original write's position
// (services.writeResult), a position at which they may not have been true; the views
// label each balance with the position that last changed it. acc is the account of an
// account command, nil for a payment.
func (c *apiClient) wrote(ctx context.Context, r *ledgerv1.WriteResult, acc *ledgerv1.Account) {
	c.rememberWrite(ctx, r.GetPosition())
	if !r.GetReplayed() {
		return
	}
	now := make(map[string]*ledgerv1.Balance, len(r.GetBalances()))
	kept := r.Balances[:0]
	for _, b := range r.GetBalances() {
		res, err := invoke(ctx, c, c.balances.GetBalance, &ledgerv1.GetBalanceRequest{AccountId: b.GetAccountId(), MinPosition: r.GetPosition()})
		if err != nil {
			c.notes = append(c.notes, fmt.Sprintf("%s: balance now not shown (%v): securepay balance %s", b.GetAccountId(), err, b.GetAccountId()))
			continue
		}
		now[b.GetAccountId()] = res.Msg.GetBalance()
		kept = append(kept, res.Msg.GetBalance())
	}
	r.Balances = kept
	if acc != nil {
		acc.Balance = now[acc.GetAccountId()]
	}
}

// apiError is the server's refusal or failure, kept whole: a person reads
// "message (code, REASON)", and --json prints the code and the reason as fields.
type apiError struct{ err *connect.Error }

func (a *apiError) Error() string {
	if reason := services.ReasonOf(a.err); reason != "" {
		return fmt.Sprintf("%s (%s, %s)", a.err.Message(), a.err.Code(), reason)
	}
	return fmt.Sprintf("%s (%s)", a.err.Message(), a.err.Code())
}

func (a *apiError) Unwrap() error { return a.err }

// explain turns an API error into one a person can act on; other errors, and those
// already explained (and perhaps explained further), pass unchanged.
func explain(err error) error {
	var cerr *connect.Error
	var a *apiError
	if !errors.As(err, &cerr) || errors.As(err, &a) {
		return err
	}
	return &apiError{cerr}
}

// newID is a client-chosen payment id: the client picks it so that a retry of the same
// payment is recognised by the ledger.
func newID(prefix string) string { return prefix + "-" + uuid.Must(uuid.NewV7()).String() }

func parseMeta(pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return nil, usagef("--meta wants key=value, got %q", p)
		}
		m[k] = v
	}
	return m, nil
}

// multi is a repeatable string flag.
type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func accountCommand(e env) *Command {
	return &Command{
		UsageLine: "securepay account SUBCOMMAND ACCOUNT_ID [flags]",
		Short:     "open | get | freeze | unfreeze | close an account",
		Long:      "Open an account, show it, freeze or unfreeze it, or close it.",
		Commands: []*Command{
			accountOpenCommand(e),
			accountGetCommand(e),
			accountFreezeCommand(e),
			accountUnfreezeCommand(e),
			accountCloseCommand(e),
		},
	}
}

type accountOpenCmd struct {
	client             clientFlags
	asset, kind, limit string
	meta               multi
}

func accountOpenCommand(e env) *Command {
	c := &accountOpenCmd{}
	cmd := &Command{
		UsageLine: "securepay account open ACCOUNT_ID [--asset ASSET] [--kind KIND] [flags]",
		Short:     "open an account",
		Args:      []Arg{{Name: "ACCOUNT_ID"}},
	}
	c.client.register(cmd, e, writes)
	cmd.Flag.StringVar(&c.asset, "asset", "USD", "`asset`: a currency code (USD) or CODE/SCALE (POINTS/0)")
	cmd.Flag.StringVar(&c.kind, "kind", "customer", "customer, merchant or external")
	cmd.Flag.StringVar(&c.limit, "credit-limit", "", "how far below zero the account may go (decimal `amount`)")
	cmd.Flag.Var(&c.meta, "meta", "`key=value` metadata (repeatable)")
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *accountOpenCmd) run(ctx context.Context, api *apiClient, args []string) error {
	kind, ok := map[string]ledgerv1.AccountKind{
		"customer": ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER,
		"merchant": ledgerv1.AccountKind_ACCOUNT_KIND_MERCHANT,
		"external": ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL,
	}[c.kind]
	if !ok {
		return usagef("--kind must be customer, merchant or external, got %q", c.kind)
	}
	meta, err := parseMeta(c.meta)
	if err != nil {
		return err
	}
	api.plan.uses("account_id", "", args[0])
	res, err := invokeWrite(ctx, api, api.accounts.OpenAccount, &ledgerv1.OpenAccountRequest{
		AccountId: args[0], Asset: c.asset, Kind: kind, CreditLimit: c.limit, Metadata: meta,
	})
	if err != nil {
		return err
	}
	return api.printAccountWrite(ctx, res.Msg)
}

type accountGetCmd struct{ client clientFlags }

func accountGetCommand(e env) *Command {
	c := &accountGetCmd{}
	cmd := &Command{
		UsageLine: "securepay account get ACCOUNT_ID [flags]",
		Short:     "show an account and its balance",
		Args:      []Arg{{Name: "ACCOUNT_ID"}},
	}
	c.client.register(cmd, e, reads)
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *accountGetCmd) run(ctx context.Context, api *apiClient, args []string) error {
	// The write side answers, which has every acknowledged write: nothing to wait for.
	res, err := invoke(ctx, api, api.accounts.GetAccount, &ledgerv1.GetAccountRequest{AccountId: args[0]})
	if err != nil {
		return err
	}
	return api.print(res.Msg, func(t *tabw) { t.account(res.Msg.GetAccount()) })
}

type accountFreezeCmd struct {
	client clientFlags
	reason string
}

func accountFreezeCommand(e env) *Command {
	c := &accountFreezeCmd{}
	cmd := &Command{
		UsageLine: "securepay account freeze ACCOUNT_ID [--reason TEXT] [flags]",
		Short:     "stop all movements on an account until it is unfrozen",
		Args:      []Arg{{Name: "ACCOUNT_ID"}},
	}
	c.client.register(cmd, e, writes)
	cmd.Flag.StringVar(&c.reason, "reason", "", "why, kept in the audit log (free `text`)")
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *accountFreezeCmd) run(ctx context.Context, api *apiClient, args []string) error {
	api.plan.uses("account_id", "", args[0])
	res, err := invokeWrite(ctx, api, api.accounts.FreezeAccount, &ledgerv1.FreezeAccountRequest{AccountId: args[0], Reason: c.reason})
	if err != nil {
		return err
	}
	return api.printAccountWrite(ctx, res.Msg)
}

type accountUnfreezeCmd struct{ client clientFlags }

func accountUnfreezeCommand(e env) *Command {
	c := &accountUnfreezeCmd{}
	cmd := &Command{
		UsageLine: "securepay account unfreeze ACCOUNT_ID [flags]",
		Short:     "lift a freeze",
		Args:      []Arg{{Name: "ACCOUNT_ID"}},
	}
	c.client.register(cmd, e, writes)
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *accountUnfreezeCmd) run(ctx context.Context, api *apiClient, args []string) error {
	api.plan.uses("account_id", "", args[0])
	res, err := invokeWrite(ctx, api, api.accounts.UnfreezeAccount, &ledgerv1.UnfreezeAccountRequest{AccountId: args[0]})
	if err != nil {
		return err
	}
	return api.printAccountWrite(ctx, res.Msg)
}

type accountCloseCmd struct{ client clientFlags }

func accountCloseCommand(e env) *Command {
	c := &accountCloseCmd{}
	cmd := &Command{
		UsageLine: "securepay account close ACCOUNT_ID [flags]",
		Short:     "close an account with a zero balance and no open holds, for good",
		Args:      []Arg{{Name: "ACCOUNT_ID"}},
	}
	c.client.register(cmd, e, writes)
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *accountCloseCmd) run(ctx context.Context, api *apiClient, args []string) error {
	api.plan.uses("account_id", "", args[0])
	res, err := invokeWrite(ctx, api, api.accounts.CloseAccount, &ledgerv1.CloseAccountRequest{AccountId: args[0]})
	if err != nil {
		return err
	}
	return api.printAccountWrite(ctx, res.Msg)
}

// paymentFlags are the flags transfer and authorise share.
type paymentFlags struct {
	id, from, to, amount, asset, reference string
	meta                                   multi
}

func (p *paymentFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&p.id, "id", "", "payment `id` (default: a new one; reuse it to retry safely)")
	fs.StringVar(&p.from, "from", "", "source `account`")
	fs.StringVar(&p.to, "to", "", "destination `account`")
	fs.StringVar(&p.amount, "amount", "", "exact decimal `amount`, e.g. 12.34")
	fs.StringVar(&p.asset, "asset", "USD", "`asset` of the amount")
	fs.StringVar(&p.reference, "reference", "", "free `text` for statements")
	fs.Var(&p.meta, "meta", "`key=value` metadata (repeatable)")
}

func (p *paymentFlags) check(prefix string) (map[string]string, error) {
	if p.from == "" || p.to == "" || p.amount == "" {
		return nil, usagef("--from, --to and --amount are required")
	}
	if p.id == "" {
		p.id = newID(prefix)
	}
	return parseMeta(p.meta)
}

type transferCmd struct {
	client  clientFlags
	payment paymentFlags
}

func transferCommand(e env) *Command {
	c := &transferCmd{}
	cmd := &Command{
		UsageLine: "securepay transfer --from ACCOUNT --to ACCOUNT --amount AMOUNT [--asset ASSET] [--id ID] [flags]",
		Short:     "move money from one account to another",
	}
	c.client.register(cmd, e, writes)
	c.payment.register(&cmd.Flag)
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *transferCmd) run(ctx context.Context, api *apiClient, _ []string) error {
	p := &c.payment
	meta, err := p.check("pay")
	if err != nil {
		return err
	}
	api.plan.uses("payment_id", "id", p.id)
	res, err := invokeWrite(ctx, api, api.payments.Transfer, &ledgerv1.TransferRequest{
		PaymentId: p.id, SourceAccountId: p.from, DestinationAccountId: p.to,
		Amount: &ledgerv1.Money{Value: p.amount, Asset: p.asset}, Reference: p.reference, Metadata: meta,
	})
	if err != nil {
		return err
	}
	return api.printPaymentWrite(ctx, res.Msg)
}

type batchCmd struct {
	client               clientFlags
	id, asset, reference string
	legs                 multi
}

func batchCommand(e env) *Command {
	c := &batchCmd{}
	cmd := &Command{
		UsageLine: "securepay batch --leg FROM:TO:AMOUNT [--leg FROM:TO:AMOUNT ...] [--asset ASSET] [--id ID] [flags]",
		Short:     "apply several transfers together, all or none",
	}
	c.client.register(cmd, e, writes)
	cmd.Flag.StringVar(&c.id, "id", "", "payment `id` (default: a new one; reuse it to retry safely)")
	cmd.Flag.StringVar(&c.asset, "asset", "USD", "`asset` of every leg's amount")
	cmd.Flag.StringVar(&c.reference, "reference", "", "free `text` for statements")
	cmd.Flag.Var(&c.legs, "leg", "`FROM:TO:AMOUNT` (repeatable, at least one)")
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *batchCmd) run(ctx context.Context, api *apiClient, _ []string) error {
	if len(c.legs) == 0 {
		return usagef("give at least one --leg FROM:TO:AMOUNT")
	}
	req := &ledgerv1.BatchTransferRequest{PaymentId: c.id, Reference: c.reference}
	if req.PaymentId == "" {
		req.PaymentId = newID("batch")
	}
	for _, l := range c.legs {
		parts := strings.Split(l, ":")
		if len(parts) != 3 {
			return usagef("--leg wants FROM:TO:AMOUNT, got %q", l)
		}
		req.Legs = append(req.Legs, &ledgerv1.Leg{SourceAccountId: parts[0], DestinationAccountId: parts[1], Amount: &ledgerv1.Money{Value: parts[2], Asset: c.asset}})
	}
	api.plan.uses("payment_id", "id", req.PaymentId)
	res, err := invokeWrite(ctx, api, api.payments.BatchTransfer, req)
	if err != nil {
		return err
	}
	return api.printPaymentWrite(ctx, res.Msg)
}

type authoriseCmd struct {
	client    clientFlags
	payment   paymentFlags
	ttl       time.Duration
	expiresAt string
}

func authoriseCommand(e env) *Command {
	c := &authoriseCmd{}
	cmd := &Command{
		UsageLine: "securepay authorise --from ACCOUNT --to ACCOUNT --amount AMOUNT [--expires-in DURATION | --expires-at TIME] [--id ID] [flags]",
		Short:     "hold money on an account for a later capture",
	}
	c.client.register(cmd, e, writes)
	c.payment.register(&cmd.Flag)
	cmd.Flag.DurationVar(&c.ttl, "expires-in", 7*24*time.Hour, "how long the hold lasts if not captured or voided")
	cmd.Flag.StringVar(&c.expiresAt, "expires-at", "", "when the hold ends, as a `time` (RFC 3339), instead of --expires-in")
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *authoriseCmd) run(ctx context.Context, api *apiClient, _ []string) error {
	p := &c.payment
	meta, err := p.check("auth")
	if err != nil {
		return err
	}
	// The expiry is part of what makes a second authorise with this id the same request,
	// so every retry sends the very instant the first did (the ledger keeps microseconds).
	expires := time.Now().Add(c.ttl).Truncate(time.Microsecond)
	if c.expiresAt != "" {
		if isSet(&c.client.cmd.Flag, "expires-in") {
			return usagef("give at most one of --expires-in and --expires-at")
		}
		if expires, err = time.Parse(time.RFC3339Nano, c.expiresAt); err != nil {
			return usagef("--expires-at: %v", err)
		}
	}
	api.plan.uses("payment_id", "id", p.id)
	api.plan.pin("expires-at", expires.UTC().Format(time.RFC3339Nano), "expires-in")
	res, err := invokeWrite(ctx, api, api.payments.Authorise, &ledgerv1.AuthoriseRequest{
		PaymentId: p.id, SourceAccountId: p.from, DestinationAccountId: p.to,
		Amount:    &ledgerv1.Money{Value: p.amount, Asset: p.asset},
		ExpiresAt: timestamppb.New(expires), Reference: p.reference, Metadata: meta,
	})
	if err != nil {
		return err
	}
	return api.printPaymentWrite(ctx, res.Msg)
}

// isSet says whether the command line gave the flag name.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

type captureCmd struct {
	client                   clientFlags
	amount, asset, captureID string
	full                     bool
}

func captureCommand(e env) *Command {
	c := &captureCmd{}
	cmd := &Command{
		UsageLine: "securepay capture PAYMENT_ID (--amount AMOUNT | --full) [--capture-id ID] [flags]",
		Short:     "capture part or all of an authorisation",
		Args:      []Arg{{Name: "PAYMENT_ID"}},
	}
	c.client.register(cmd, e, writes)
	cmd.Flag.StringVar(&c.amount, "amount", "", "`amount` to capture (or --full)")
	cmd.Flag.StringVar(&c.asset, "asset", "USD", "`asset` of the amount")
	cmd.Flag.BoolVar(&c.full, "full", false, "capture everything the authorisation still holds")
	cmd.Flag.StringVar(&c.captureID, "capture-id", "", "`id` of this capture (default: a new one; reuse it to retry safely)")
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *captureCmd) run(ctx context.Context, api *apiClient, args []string) error {
	if c.full == (c.amount != "") {
		return usagef("give exactly one of --amount and --full")
	}
	if c.captureID == "" {
		c.captureID = newID("cap")
	}
	req := &ledgerv1.CaptureRequest{PaymentId: args[0], CaptureId: c.captureID}
	if c.full {
		req.What = &ledgerv1.CaptureRequest_Full{Full: true}
	} else {
		req.What = &ledgerv1.CaptureRequest_Amount{Amount: &ledgerv1.Money{Value: c.amount, Asset: c.asset}}
	}
	api.plan.uses("payment_id", "", req.PaymentId)
	api.plan.uses("capture_id", "capture-id", req.CaptureId)
	res, err := invokeWrite(ctx, api, api.payments.Capture, req)
	if err != nil {
		return err
	}
	return api.printPaymentWrite(ctx, res.Msg)
}

type voidCmd struct{ client clientFlags }

func voidCommand(e env) *Command {
	c := &voidCmd{}
	cmd := &Command{
		UsageLine: "securepay void PAYMENT_ID [flags]",
		Short:     "release what an authorisation still holds",
		Args:      []Arg{{Name: "PAYMENT_ID"}},
	}
	c.client.register(cmd, e, writes)
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *voidCmd) run(ctx context.Context, api *apiClient, args []string) error {
	api.plan.uses("payment_id", "", args[0])
	res, err := invokeWrite(ctx, api, api.payments.Void, &ledgerv1.VoidRequest{PaymentId: args[0]})
	if err != nil {
		return err
	}
	return api.printPaymentWrite(ctx, res.Msg)
}

type refundCmd struct {
	client                  clientFlags
	amount, asset, refundID string
}

func refundCommand(e env) *Command {
	c := &refundCmd{}
	cmd := &Command{
		UsageLine: "securepay refund PAYMENT_ID --amount AMOUNT [--refund-id ID] [flags]",
		Short:     "return captured money to the payer",
		Args:      []Arg{{Name: "PAYMENT_ID"}},
	}
	c.client.register(cmd, e, writes)
	cmd.Flag.StringVar(&c.amount, "amount", "", "`amount` to refund")
	cmd.Flag.StringVar(&c.asset, "asset", "USD", "`asset` of the amount")
	cmd.Flag.StringVar(&c.refundID, "refund-id", "", "`id` of this refund (default: a new one; reuse it to retry safely)")
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *refundCmd) run(ctx context.Context, api *apiClient, args []string) error {
	if c.amount == "" {
		return usagef("--amount is required")
	}
	if c.refundID == "" {
		c.refundID = newID("ref")
	}
	api.plan.uses("payment_id", "", args[0])
	api.plan.uses("refund_id", "refund-id", c.refundID)
	res, err := invokeWrite(ctx, api, api.payments.Refund, &ledgerv1.RefundRequest{
		PaymentId: args[0], RefundId: c.refundID, Amount: &ledgerv1.Money{Value: c.amount, Asset: c.asset},
	})
	if err != nil {
		return err
	}
	return api.printPaymentWrite(ctx, res.Msg)
}

// paymentCommand shows a payment; `payment get PAYMENT_ID` says the same and is kept for
// the command lines that spell it so.
func paymentCommand(e env) *Command {
	cmd := paymentShowCommand(e, "securepay payment PAYMENT_ID [--min-position POSITION] [flags]", "show a payment")
	cmd.Commands = []*Command{
		paymentShowCommand(e, "securepay payment get PAYMENT_ID [--min-position POSITION] [flags]", "show a payment (the same as securepay payment PAYMENT_ID)"),
	}
	return cmd
}

type paymentShowCmd struct {
	client clientFlags
	minPos minPosition
}

func paymentShowCommand(e env, usage, short string) *Command {
	c := &paymentShowCmd{}
	cmd := &Command{UsageLine: usage, Short: short, Long: "Show a payment.", Args: []Arg{{Name: "PAYMENT_ID"}}}
	c.client.register(cmd, e, reads)
	registerMinPosition(cmd, &c.minPos)
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *paymentShowCmd) run(ctx context.Context, api *apiClient, args []string) error {
	var res *connect.Response[ledgerv1.GetPaymentResponse]
	err := api.readAfter(ctx, c.minPos, func(minPos uint64) (err error) {
		res, err = invoke(ctx, api, api.payments.GetPayment, &ledgerv1.GetPaymentRequest{PaymentId: args[0], MinPosition: minPos})
		return err
	})
	if err != nil {
		return err
	}
	return api.print(res.Msg, func(t *tabw) { t.payment(res.Msg.GetPayment()) })
}

type balanceCmd struct {
	client   clientFlags
	asOfPos  uint64
	minPos   minPosition
	asOfTime string
}

func balanceCommand(e env) *Command {
	c := &balanceCmd{}
	cmd := &Command{
		UsageLine: "securepay balance ACCOUNT_ID [--as-of-position POSITION | --as-of-time TIME] [flags]",
		Short:     "show an account's balance, now or in the past",
		Long: "Show an account's balance, now or in the past. AT POSITION is the log position that\n" +
			"last changed it: the balance is true from there until the account's next change.",
		Args: []Arg{{Name: "ACCOUNT_ID"}},
	}
	c.client.register(cmd, e, reads)
	cmd.Flag.Uint64Var(&c.asOfPos, "as-of-position", 0, "the balance after this log `position`")
	cmd.Flag.StringVar(&c.asOfTime, "as-of-time", "", "the balance at this `time` (RFC 3339)")
	registerMinPosition(cmd, &c.minPos)
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *balanceCmd) run(ctx context.Context, api *apiClient, args []string) error {
	req := &ledgerv1.GetBalanceRequest{AccountId: args[0]}
	switch {
	case c.asOfPos != 0 && c.asOfTime != "":
		return usagef("give at most one of --as-of-position and --as-of-time")
	case c.asOfPos != 0:
		req.AsOf = &ledgerv1.GetBalanceRequest_AsOfPosition{AsOfPosition: c.asOfPos}
	case c.asOfTime != "":
		at, err := time.Parse(time.RFC3339Nano, c.asOfTime)
		if err != nil {
			return usagef("--as-of-time: %v", err)
		}
		req.AsOf = &ledgerv1.GetBalanceRequest_AsOfTime{AsOfTime: timestamppb.New(at)}
	}
	var res *connect.Response[ledgerv1.GetBalanceResponse]
	err := api.readAfter(ctx, c.minPos, func(minPos uint64) (err error) {
		req.MinPosition = minPos
		res, err = invoke(ctx, api, api.balances.GetBalance, req)
		return err
	})
	if err != nil {
		return err
	}
	return api.print(res.Msg, func(t *tabw) { t.balances([]*ledgerv1.Balance{res.Msg.GetBalance()}) })
}

// maxHistoryPage is the largest page the API serves.
const maxHistoryPage = 1000

type historyCmd struct {
	client clientFlags
	after  uint64
	minPos minPosition
	limit  uint
}

func historyCommand(e env) *Command {
	c := &historyCmd{}
	cmd := &Command{
		UsageLine: "securepay history ACCOUNT_ID [--after POSITION] [--limit N] [flags]",
		Short:     "show an account's history, page by page",
		Long:      "Show an account's history, page by page.",
		Args:      []Arg{{Name: "ACCOUNT_ID"}},
	}
	c.client.register(cmd, e, reads)
	cmd.Flag.Uint64Var(&c.after, "after", 0, "entries after this log `position` (the previous page's \"next\")")
	cmd.Flag.UintVar(&c.limit, "limit", 20, "`N` entries per page, 1..1000")
	registerMinPosition(cmd, &c.minPos)
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *historyCmd) run(ctx context.Context, api *apiClient, args []string) error {
	if c.limit == 0 || c.limit > maxHistoryPage {
		return usagef("--limit must be 1..%d, got %d", maxHistoryPage, c.limit)
	}
	var res *connect.Response[ledgerv1.ListHistoryResponse]
	err := api.readAfter(ctx, c.minPos, func(minPos uint64) (err error) {
		res, err = invoke(ctx, api, api.balances.ListHistory, &ledgerv1.ListHistoryRequest{
			AccountId: args[0], AfterPosition: c.after, PageSize: uint32(c.limit), MinPosition: minPos,
		})
		return err
	})
	if err != nil {
		return err
	}
	return api.print(res.Msg, func(t *tabw) { t.history(args[0], res.Msg) })
}

type verifyCmd struct{ client clientFlags }

func verifyCommand(e env) *Command {
	c := &verifyCmd{}
	cmd := &Command{
		UsageLine: "securepay verify [flags]",
		Short:     "verify the hash chain of the whole log on the server",
	}
	c.client.register(cmd, e, reads)
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *verifyCmd) run(ctx context.Context, api *apiClient, _ []string) error {
	res, err := invoke(ctx, api, api.audit.VerifyChain, &ledgerv1.VerifyChainRequest{})
	if err != nil {
		return err
	}
	m := res.Msg
	if !m.GetOk() {
		return fmt.Errorf("hash chain broken at position %d: %s (%d events verified before it)", m.GetBreakPosition(), m.GetBreakReason(), m.GetVerified())
	}
	return api.print(m, func(t *tabw) {
		t.line("hash chain verified: %d events, last position %d, last hash %s", m.GetVerified(), m.GetLastPosition(), m.GetLastHash())
	})
}

type watchCmd struct {
	client     clientFlags
	maxUpdates int
}

func watchCommand(e env) *Command {
	c := &watchCmd{}
	cmd := &Command{
		UsageLine: "securepay watch ACCOUNT_ID [--max-updates N] [flags]",
		Short:     "print an account's balance live, a line per change",
		Long:      "Print an account's balance, then a line per change, until interrupted (or --max-updates).",
		Args:      []Arg{{Name: "ACCOUNT_ID"}},
		Run:       c.run,
	}
	c.client.register(cmd, e, streams)
	cmd.Flag.IntVar(&c.maxUpdates, "max-updates", 0, "stop after `N` changes (0: until interrupted)")
	return cmd
}

func (c *watchCmd) run(ctx context.Context, e env, args []string) error {
	api, err := c.client.dial(e)
	if err != nil {
		return err
	}
	stream, err := api.balances.WatchAccount(ctx, connect.NewRequest(&ledgerv1.WatchAccountRequest{AccountId: args[0]}))
	if err != nil {
		return explain(err)
	}
	defer stream.Close()
	updates := 0
	for stream.Receive() {
		m := stream.Msg()
		if c.client.json {
			b, err := protojson.Marshal(m)
			if err != nil {
				return fmt.Errorf("encode JSON: %w", err)
			}
			fmt.Fprintln(e.stdout, string(b))
		} else {
			b := m.GetBalance()
			what := "now"
			if m.GetEventType() != "" {
				what = m.GetEventType()
				if m.GetPaymentId() != "" {
					what += " by " + m.GetPaymentId()
				}
			}
			fmt.Fprintf(e.stdout, "%-8d posted %s  held %s  available %s  %s  (%s)\n",
				b.GetPosition(), b.GetPosted(), b.GetHeld(), b.GetAvailable(), enumName(b.GetStatus().String(), "ACCOUNT_STATUS_"), what)
		}
		if m.GetEventType() != "" {
			updates++
			if c.maxUpdates > 0 && updates >= c.maxUpdates {
				return nil
			}
		}
	}
	if err := stream.Err(); err != nil && ctx.Err() == nil {
		return explain(err)
	}
	return nil
}

// printAccountWrite prints the answer to an accepted account command.
func (c *apiClient) printAccountWrite(ctx context.Context, m accountWrite) error {
	c.wrote(ctx, m.GetResult(), m.GetAccount())
	return c.print(m, func(t *tabw) { t.accountWrite(m) })
}

// printPaymentWrite prints the answer to an accepted payment command.
func (c *apiClient) printPaymentWrite(ctx context.Context, m paymentWrite) error {
	c.wrote(ctx, m.GetResult(), nil)
	return c.print(m, func(t *tabw) { t.paymentWrite(m) })
}
