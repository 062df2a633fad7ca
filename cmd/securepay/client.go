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
}

func (f *clientFlags) register(fs *flag.FlagSet, e env, kind clientKind) {
	ef := envFlags{fs, e}
	ef.String(&f.server, "server", "SECUREPAY_SERVER", "http://127.0.0.1:8080", "server `URL`: http:// (dev, cleartext HTTP/2) or https://")
	fs.BoolVar(&f.json, "json", false, "print the answer as JSON, and an error as one JSON object on stderr")
	ef.String(&f.caFile, "ca-file", "SECUREPAY_CA_FILE", "", "`file` of PEM CA certificates to trust for https://")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "give up after this long")
	switch kind {
	case writes:
		fs.StringVar(&f.idemKey, "idempotency-key", "", "Idempotency-Key header: a retry with the same `key` returns the first response")
	case streams:
		// Accepted because it was once offered (and ignored): a watch ends when stopped.
		hide(fs, "timeout")
	}
}

type apiClient struct {
	f        *clientFlags
	out      io.Writer
	accounts ledgerv1connect.AccountServiceClient
	payments ledgerv1connect.PaymentServiceClient
	balances ledgerv1connect.BalanceServiceClient
	audit    ledgerv1connect.AuditServiceClient
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
	return &apiClient{
		f:        f,
		out:      e.stdout,
		accounts: ledgerv1connect.NewAccountServiceClient(hc, base),
		payments: ledgerv1connect.NewPaymentServiceClient(hc, base),
		balances: ledgerv1connect.NewBalanceServiceClient(hc, base),
		audit:    ledgerv1connect.NewAuditServiceClient(hc, base),
	}, nil
}

// unary makes a client command's Run from its body: it dials, bounds the call by
// --timeout, and keeps an API error whole for the report.
func (f *clientFlags) unary(body func(ctx context.Context, api *apiClient, args []string) error) func(context.Context, env, []string) error {
	return func(ctx context.Context, e env, args []string) error {
		api, err := f.dial(e)
		if err != nil {
			return err
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
	return tw.flush()
}

// request wraps a message with the Idempotency-Key header, if one was given.
func request[T any](c *apiClient, msg *T) *connect.Request[T] {
	r := connect.NewRequest(msg)
	if c.f.idemKey != "" {
		r.Header().Set(services.IdempotencyKeyHeader, c.f.idemKey)
	}
	return r
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

// explain turns an API error into one a person can act on; other errors pass unchanged.
func explain(err error) error {
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
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
	c.client.register(&cmd.Flag, e, writes)
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
	res, err := api.accounts.OpenAccount(ctx, request(api, &ledgerv1.OpenAccountRequest{
		AccountId: args[0], Asset: c.asset, Kind: kind, CreditLimit: c.limit, Metadata: meta,
	}))
	if err != nil {
		return err
	}
	return api.print(res.Msg, func(t *tabw) { t.accountWrite(res.Msg) })
}

type accountGetCmd struct{ client clientFlags }

func accountGetCommand(e env) *Command {
	c := &accountGetCmd{}
	cmd := &Command{
		UsageLine: "securepay account get ACCOUNT_ID [flags]",
		Short:     "show an account and its balance",
		Args:      []Arg{{Name: "ACCOUNT_ID"}},
	}
	c.client.register(&cmd.Flag, e, reads)
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *accountGetCmd) run(ctx context.Context, api *apiClient, args []string) error {
	res, err := api.accounts.GetAccount(ctx, connect.NewRequest(&ledgerv1.GetAccountRequest{AccountId: args[0]}))
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
	c.client.register(&cmd.Flag, e, writes)
	cmd.Flag.StringVar(&c.reason, "reason", "", "why, kept in the audit log (free `text`)")
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *accountFreezeCmd) run(ctx context.Context, api *apiClient, args []string) error {
	res, err := api.accounts.FreezeAccount(ctx, request(api, &ledgerv1.FreezeAccountRequest{AccountId: args[0], Reason: c.reason}))
	if err != nil {
		return err
	}
	return api.print(res.Msg, func(t *tabw) { t.accountWrite(res.Msg) })
}

type accountUnfreezeCmd struct{ client clientFlags }

func accountUnfreezeCommand(e env) *Command {
	c := &accountUnfreezeCmd{}
	cmd := &Command{
		UsageLine: "securepay account unfreeze ACCOUNT_ID [flags]",
		Short:     "lift a freeze",
		Args:      []Arg{{Name: "ACCOUNT_ID"}},
	}
	c.client.register(&cmd.Flag, e, writes)
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *accountUnfreezeCmd) run(ctx context.Context, api *apiClient, args []string) error {
	res, err := api.accounts.UnfreezeAccount(ctx, request(api, &ledgerv1.UnfreezeAccountRequest{AccountId: args[0]}))
	if err != nil {
		return err
	}
	return api.print(res.Msg, func(t *tabw) { t.accountWrite(res.Msg) })
}

type accountCloseCmd struct{ client clientFlags }

func accountCloseCommand(e env) *Command {
	c := &accountCloseCmd{}
	cmd := &Command{
		UsageLine: "securepay account close ACCOUNT_ID [flags]",
		Short:     "close an account with a zero balance and no open holds, for good",
		Args:      []Arg{{Name: "ACCOUNT_ID"}},
	}
	c.client.register(&cmd.Flag, e, writes)
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *accountCloseCmd) run(ctx context.Context, api *apiClient, args []string) error {
	res, err := api.accounts.CloseAccount(ctx, request(api, &ledgerv1.CloseAccountRequest{AccountId: args[0]}))
	if err != nil {
		return err
	}
	return api.print(res.Msg, func(t *tabw) { t.accountWrite(res.Msg) })
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
	c.client.register(&cmd.Flag, e, writes)
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
	res, err := api.payments.Transfer(ctx, request(api, &ledgerv1.TransferRequest{
		PaymentId: p.id, SourceAccountId: p.from, DestinationAccountId: p.to,
		Amount: &ledgerv1.Money{Value: p.amount, Asset: p.asset}, Reference: p.reference, Metadata: meta,
	}))
	if err != nil {
		return err
	}
	return api.print(res.Msg, func(t *tabw) { t.paymentWrite(res.Msg) })
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
	c.client.register(&cmd.Flag, e, writes)
	cmd.Flag.StringVar(&c.id, "id", "", "payment `id` (default: a new one)")
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
	res, err := api.payments.BatchTransfer(ctx, request(api, req))
	if err != nil {
		return err
	}
	return api.print(res.Msg, func(t *tabw) { t.paymentWrite(res.Msg) })
}

type authoriseCmd struct {
	client  clientFlags
	payment paymentFlags
	ttl     time.Duration
}

func authoriseCommand(e env) *Command {
	c := &authoriseCmd{}
	cmd := &Command{
		UsageLine: "securepay authorise --from ACCOUNT --to ACCOUNT --amount AMOUNT [--expires-in DURATION] [--id ID] [flags]",
		Short:     "hold money on an account for a later capture",
	}
	c.client.register(&cmd.Flag, e, writes)
	c.payment.register(&cmd.Flag)
	cmd.Flag.DurationVar(&c.ttl, "expires-in", 7*24*time.Hour, "how long the hold lasts if not captured or voided")
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *authoriseCmd) run(ctx context.Context, api *apiClient, _ []string) error {
	p := &c.payment
	meta, err := p.check("auth")
	if err != nil {
		return err
	}
	res, err := api.payments.Authorise(ctx, request(api, &ledgerv1.AuthoriseRequest{
		PaymentId: p.id, SourceAccountId: p.from, DestinationAccountId: p.to,
		Amount:    &ledgerv1.Money{Value: p.amount, Asset: p.asset},
		ExpiresAt: timestamppb.New(time.Now().Add(c.ttl)), Reference: p.reference, Metadata: meta,
	}))
	if err != nil {
		return err
	}
	return api.print(res.Msg, func(t *tabw) { t.paymentWrite(res.Msg) })
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
	c.client.register(&cmd.Flag, e, writes)
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
	res, err := api.payments.Capture(ctx, request(api, req))
	if err != nil {
		return err
	}
	return api.print(res.Msg, func(t *tabw) { t.paymentWrite(res.Msg) })
}

type voidCmd struct{ client clientFlags }

func voidCommand(e env) *Command {
	c := &voidCmd{}
	cmd := &Command{
		UsageLine: "securepay void PAYMENT_ID [flags]",
		Short:     "release what an authorisation still holds",
		Args:      []Arg{{Name: "PAYMENT_ID"}},
	}
	c.client.register(&cmd.Flag, e, writes)
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *voidCmd) run(ctx context.Context, api *apiClient, args []string) error {
	res, err := api.payments.Void(ctx, request(api, &ledgerv1.VoidRequest{PaymentId: args[0]}))
	if err != nil {
		return err
	}
	return api.print(res.Msg, func(t *tabw) { t.paymentWrite(res.Msg) })
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
	c.client.register(&cmd.Flag, e, writes)
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
	res, err := api.payments.Refund(ctx, request(api, &ledgerv1.RefundRequest{
		PaymentId: args[0], RefundId: c.refundID, Amount: &ledgerv1.Money{Value: c.amount, Asset: c.asset},
	}))
	if err != nil {
		return err
	}
	return api.print(res.Msg, func(t *tabw) { t.paymentWrite(res.Msg) })
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
	minPos uint64
}

func paymentShowCommand(e env, usage, short string) *Command {
	c := &paymentShowCmd{}
	cmd := &Command{UsageLine: usage, Short: short, Args: []Arg{{Name: "PAYMENT_ID"}}}
	c.client.register(&cmd.Flag, e, reads)
	cmd.Flag.Uint64Var(&c.minPos, "min-position", 0, "wait until the view has applied this log `position` (read your write)")
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *paymentShowCmd) run(ctx context.Context, api *apiClient, args []string) error {
	res, err := api.payments.GetPayment(ctx, connect.NewRequest(&ledgerv1.GetPaymentRequest{PaymentId: args[0], MinPosition: c.minPos}))
	if err != nil {
		return err
	}
	return api.print(res.Msg, func(t *tabw) { t.payment(res.Msg.GetPayment()) })
}

type balanceCmd struct {
	client          clientFlags
	asOfPos, minPos uint64
	asOfTime        string
}

func balanceCommand(e env) *Command {
	c := &balanceCmd{}
	cmd := &Command{
		UsageLine: "securepay balance ACCOUNT_ID [--as-of-position POSITION | --as-of-time TIME] [flags]",
		Short:     "show an account's balance, now or in the past",
		Args:      []Arg{{Name: "ACCOUNT_ID"}},
	}
	c.client.register(&cmd.Flag, e, reads)
	cmd.Flag.Uint64Var(&c.asOfPos, "as-of-position", 0, "the balance after this log `position`")
	cmd.Flag.StringVar(&c.asOfTime, "as-of-time", "", "the balance at this `time` (RFC 3339)")
	cmd.Flag.Uint64Var(&c.minPos, "min-position", 0, "wait until the view has applied this log `position` (read your write)")
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *balanceCmd) run(ctx context.Context, api *apiClient, args []string) error {
	req := &ledgerv1.GetBalanceRequest{AccountId: args[0], MinPosition: c.minPos}
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
	res, err := api.balances.GetBalance(ctx, connect.NewRequest(req))
	if err != nil {
		return err
	}
	return api.print(res.Msg, func(t *tabw) { t.balances([]*ledgerv1.Balance{res.Msg.GetBalance()}) })
}

// maxHistoryPage is the largest page the API serves.
const maxHistoryPage = 1000

type historyCmd struct {
	client        clientFlags
	after, minPos uint64
	limit         uint
}

func historyCommand(e env) *Command {
	c := &historyCmd{}
	cmd := &Command{
		UsageLine: "securepay history ACCOUNT_ID [--after POSITION] [--limit N] [flags]",
		Short:     "show an account's history, page by page",
		Args:      []Arg{{Name: "ACCOUNT_ID"}},
	}
	c.client.register(&cmd.Flag, e, reads)
	cmd.Flag.Uint64Var(&c.after, "after", 0, "entries after this log `position` (the previous page's \"next\")")
	cmd.Flag.UintVar(&c.limit, "limit", 20, "`N` entries per page, 1..1000")
	cmd.Flag.Uint64Var(&c.minPos, "min-position", 0, "wait until the view has applied this log `position`")
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *historyCmd) run(ctx context.Context, api *apiClient, args []string) error {
	if c.limit == 0 || c.limit > maxHistoryPage {
		return usagef("--limit must be 1..%d, got %d", maxHistoryPage, c.limit)
	}
	res, err := api.balances.ListHistory(ctx, connect.NewRequest(&ledgerv1.ListHistoryRequest{
		AccountId: args[0], AfterPosition: c.after, PageSize: uint32(c.limit), MinPosition: c.minPos,
	}))
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
	c.client.register(&cmd.Flag, e, reads)
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *verifyCmd) run(ctx context.Context, api *apiClient, _ []string) error {
	res, err := api.audit.VerifyChain(ctx, connect.NewRequest(&ledgerv1.VerifyChainRequest{}))
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
	c.client.register(&cmd.Flag, e, streams)
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
