package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
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

// clientFlags are shared by every client command.
type clientFlags struct {
	server  string
	json    bool
	caFile  string
	timeout time.Duration
	idemKey string
}

func addClientFlags(fs *flag.FlagSet, e env) *clientFlags {
	f := &clientFlags{}
	fs.StringVar(&f.server, "server", envOr(e, "SECUREPAY_SERVER", "http://127.0.0.1:8080"), "server URL: http:// (dev, cleartext HTTP/2) or https:// [$SECUREPAY_SERVER]")
	fs.BoolVar(&f.json, "json", false, "print the response as JSON")
	fs.StringVar(&f.caFile, "ca-file", envOr(e, "SECUREPAY_CA_FILE", ""), "PEM CA certificates to trust for https:// [$SECUREPAY_CA_FILE]")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "give up after this long")
	fs.StringVar(&f.idemKey, "idempotency-key", "", "Idempotency-Key header: a retry with the same key returns the first response")
	return f
}

type apiClient struct {
	f        *clientFlags
	accounts ledgerv1connect.AccountServiceClient
	payments ledgerv1connect.PaymentServiceClient
	balances ledgerv1connect.BalanceServiceClient
	audit    ledgerv1connect.AuditServiceClient
}

func (f *clientFlags) dial() (*apiClient, error) {
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
		accounts: ledgerv1connect.NewAccountServiceClient(hc, base),
		payments: ledgerv1connect.NewPaymentServiceClient(hc, base),
		balances: ledgerv1connect.NewBalanceServiceClient(hc, base),
		audit:    ledgerv1connect.NewAuditServiceClient(hc, base),
	}, nil
}

// request wraps a message with the Idempotency-Key header, if one was given.
func request[T any](c *apiClient, msg *T) *connect.Request[T] {
	r := connect.NewRequest(msg)
	if c.f.idemKey != "" {
		r.Header().Set(services.IdempotencyKeyHeader, c.f.idemKey)
	}
	return r
}

// explain turns an API error into a line a person can act on: message, code and reason.
func explain(err error) error {
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		return err
	}
	if reason := services.ReasonOf(err); reason != "" {
		return fmt.Errorf("%s (%s, %s)", cerr.Message(), cerr.Code(), reason)
	}
	return fmt.Errorf("%s (%s)", cerr.Message(), cerr.Code())
}

// clientCommand parses flags, dials, runs do with a deadline, and prints the result.
func clientCommand(ctx context.Context, e env, name string, args []string, maxArgs int, define func(fs *flag.FlagSet),
	do func(ctx context.Context, c *apiClient, positional []string) (proto.Message, func(*tabw), error)) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	cf := addClientFlags(fs, e)
	if define != nil {
		define(fs)
	}
	positional, err := parseInterleaved(fs, args, maxArgs)
	if err != nil {
		return err
	}
	c, err := cf.dial()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	msg, table, err := do(ctx, c, positional)
	if err != nil {
		return explain(err)
	}
	if cf.json {
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(msg)
		if err != nil {
			return fmt.Errorf("encode JSON: %w", err)
		}
		fmt.Fprintln(e.stdout, string(b))
		return nil
	}
	tw := newTab(e.stdout)
	table(tw)
	return tw.flush()
}

func needArgs(positional []string, n int, what string) error {
	if len(positional) < n {
		return usagef("missing %s", what)
	}
	return nil
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

func runAccount(ctx context.Context, e env, args []string) error {
	if len(args) == 0 {
		return usagef("account: want open | get | freeze | unfreeze | close ACCOUNT_ID")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "open":
		var asset, kind, limit string
		var meta multi
		return clientCommand(ctx, e, "account open", args, 1, func(fs *flag.FlagSet) {
			fs.StringVar(&asset, "asset", "USD", "asset: a currency code (USD) or CODE/SCALE (POINTS/0)")
			fs.StringVar(&kind, "kind", "customer", "customer, merchant or external")
			fs.StringVar(&limit, "credit-limit", "", "how far below zero the account may go (decimal)")
			fs.Var(&meta, "meta", "key=value metadata (repeatable)")
		}, func(ctx context.Context, c *apiClient, pos []string) (proto.Message, func(*tabw), error) {
			if err := needArgs(pos, 1, "ACCOUNT_ID"); err != nil {
				return nil, nil, err
			}
			k, ok := map[string]ledgerv1.AccountKind{
				"customer": ledgerv1.AccountKind_ACCOUNT_KIND_CUSTOMER,
				"merchant": ledgerv1.AccountKind_ACCOUNT_KIND_MERCHANT,
				"external": ledgerv1.AccountKind_ACCOUNT_KIND_EXTERNAL,
			}[kind]
			if !ok {
				return nil, nil, usagef("--kind must be customer, merchant or external, got %q", kind)
			}
			m, err := parseMeta(meta)
			if err != nil {
				return nil, nil, err
			}
			res, err := c.accounts.OpenAccount(ctx, request(c, &ledgerv1.OpenAccountRequest{AccountId: pos[0], Asset: asset, Kind: k, CreditLimit: limit, Metadata: m}))
			if err != nil {
				return nil, nil, err
			}
			return res.Msg, func(t *tabw) { t.account(res.Msg.GetAccount()); t.write(res.Msg.GetResult(), false) }, nil
		})
	case "get":
		return clientCommand(ctx, e, "account get", args, 1, nil, func(ctx context.Context, c *apiClient, pos []string) (proto.Message, func(*tabw), error) {
			if err := needArgs(pos, 1, "ACCOUNT_ID"); err != nil {
				return nil, nil, err
			}
			res, err := c.accounts.GetAccount(ctx, connect.NewRequest(&ledgerv1.GetAccountRequest{AccountId: pos[0]}))
			if err != nil {
				return nil, nil, err
			}
			return res.Msg, func(t *tabw) { t.account(res.Msg.GetAccount()) }, nil
		})
	case "freeze", "unfreeze", "close":
		var reason string
		return clientCommand(ctx, e, "account "+sub, args, 1, func(fs *flag.FlagSet) {
			if sub == "freeze" {
				fs.StringVar(&reason, "reason", "", "why (kept in the audit log)")
			}
		}, func(ctx context.Context, c *apiClient, pos []string) (proto.Message, func(*tabw), error) {
			if err := needArgs(pos, 1, "ACCOUNT_ID"); err != nil {
				return nil, nil, err
			}
			var (
				msg interface {
					proto.Message
					GetAccount() *ledgerv1.Account
					GetResult() *ledgerv1.WriteResult
				}
				err error
			)
			switch sub {
			case "freeze":
				var r *connect.Response[ledgerv1.FreezeAccountResponse]
				r, err = c.accounts.FreezeAccount(ctx, request(c, &ledgerv1.FreezeAccountRequest{AccountId: pos[0], Reason: reason}))
				if err == nil {
					msg = r.Msg
				}
			case "unfreeze":
				var r *connect.Response[ledgerv1.UnfreezeAccountResponse]
				r, err = c.accounts.UnfreezeAccount(ctx, request(c, &ledgerv1.UnfreezeAccountRequest{AccountId: pos[0]}))
				if err == nil {
					msg = r.Msg
				}
			default:
				var r *connect.Response[ledgerv1.CloseAccountResponse]
				r, err = c.accounts.CloseAccount(ctx, request(c, &ledgerv1.CloseAccountRequest{AccountId: pos[0]}))
				if err == nil {
					msg = r.Msg
				}
			}
			if err != nil {
				return nil, nil, err
			}
			return msg, func(t *tabw) { t.account(msg.GetAccount()); t.write(msg.GetResult(), false) }, nil
		})
	}
	return usagef("account: unknown subcommand %q (want open | get | freeze | unfreeze | close)", sub)
}

// paymentFlags are the common flags of transfer and authorise.
type paymentFlags struct {
	id, from, to, amount, asset, reference string
	meta                                   multi
}

func (p *paymentFlags) define(fs *flag.FlagSet) {
	fs.StringVar(&p.id, "id", "", "payment id (default: a new one; reuse it to retry safely)")
	fs.StringVar(&p.from, "from", "", "source account")
	fs.StringVar(&p.to, "to", "", "destination account")
	fs.StringVar(&p.amount, "amount", "", "exact decimal amount, e.g. 12.34")
	fs.StringVar(&p.asset, "asset", "USD", "asset of the amount")
	fs.StringVar(&p.reference, "reference", "", "free text for statements")
	fs.Var(&p.meta, "meta", "key=value metadata (repeatable)")
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

func runTransfer(ctx context.Context, e env, args []string) error {
	var p paymentFlags
	return clientCommand(ctx, e, "transfer", args, 0, p.define, func(ctx context.Context, c *apiClient, _ []string) (proto.Message, func(*tabw), error) {
		meta, err := p.check("pay")
		if err != nil {
			return nil, nil, err
		}
		res, err := c.payments.Transfer(ctx, request(c, &ledgerv1.TransferRequest{
			PaymentId: p.id, SourceAccountId: p.from, DestinationAccountId: p.to,
			Amount: &ledgerv1.Money{Value: p.amount, Asset: p.asset}, Reference: p.reference, Metadata: meta,
		}))
		if err != nil {
			return nil, nil, err
		}
		return res.Msg, func(t *tabw) { t.payment(res.Msg.GetPayment()); t.write(res.Msg.GetResult(), true) }, nil
	})
}

func runBatch(ctx context.Context, e env, args []string) error {
	var id, asset, reference string
	var legs multi
	return clientCommand(ctx, e, "batch", args, 0, func(fs *flag.FlagSet) {
		fs.StringVar(&id, "id", "", "payment id (default: a new one)")
		fs.StringVar(&asset, "asset", "USD", "asset of every leg's amount")
		fs.StringVar(&reference, "reference", "", "free text for statements")
		fs.Var(&legs, "leg", "FROM:TO:AMOUNT (repeatable, at least one)")
	}, func(ctx context.Context, c *apiClient, _ []string) (proto.Message, func(*tabw), error) {
		if len(legs) == 0 {
			return nil, nil, usagef("give at least one --leg FROM:TO:AMOUNT")
		}
		req := &ledgerv1.BatchTransferRequest{PaymentId: id, Reference: reference}
		if req.PaymentId == "" {
			req.PaymentId = newID("batch")
		}
		for _, l := range legs {
			parts := strings.Split(l, ":")
			if len(parts) != 3 {
				return nil, nil, usagef("--leg wants FROM:TO:AMOUNT, got %q", l)
			}
			req.Legs = append(req.Legs, &ledgerv1.Leg{SourceAccountId: parts[0], DestinationAccountId: parts[1], Amount: &ledgerv1.Money{Value: parts[2], Asset: asset}})
		}
		res, err := c.payments.BatchTransfer(ctx, request(c, req))
		if err != nil {
			return nil, nil, err
		}
		return res.Msg, func(t *tabw) { t.payment(res.Msg.GetPayment()); t.write(res.Msg.GetResult(), true) }, nil
	})
}

func runAuthorise(ctx context.Context, e env, args []string) error {
	var p paymentFlags
	var ttl time.Duration
	return clientCommand(ctx, e, "authorise", args, 0, func(fs *flag.FlagSet) {
		p.define(fs)
		fs.DurationVar(&ttl, "expires-in", 7*24*time.Hour, "how long the hold lasts if not captured or voided")
	}, func(ctx context.Context, c *apiClient, _ []string) (proto.Message, func(*tabw), error) {
		meta, err := p.check("auth")
		if err != nil {
			return nil, nil, err
		}
		res, err := c.payments.Authorise(ctx, request(c, &ledgerv1.AuthoriseRequest{
			PaymentId: p.id, SourceAccountId: p.from, DestinationAccountId: p.to,
			Amount:    &ledgerv1.Money{Value: p.amount, Asset: p.asset},
			ExpiresAt: timestamppb.New(time.Now().Add(ttl)), Reference: p.reference, Metadata: meta,
		}))
		if err != nil {
			return nil, nil, err
		}
		return res.Msg, func(t *tabw) { t.payment(res.Msg.GetPayment()); t.write(res.Msg.GetResult(), true) }, nil
	})
}

func runCapture(ctx context.Context, e env, args []string) error {
	var amount, asset, captureID string
	var full bool
	return clientCommand(ctx, e, "capture", args, 1, func(fs *flag.FlagSet) {
		fs.StringVar(&amount, "amount", "", "amount to capture (or --full)")
		fs.StringVar(&asset, "asset", "USD", "asset of the amount")
		fs.BoolVar(&full, "full", false, "capture everything the authorisation still holds")
		fs.StringVar(&captureID, "capture-id", "", "id of this capture (default: a new one; reuse it to retry safely)")
	}, func(ctx context.Context, c *apiClient, pos []string) (proto.Message, func(*tabw), error) {
		if err := needArgs(pos, 1, "PAYMENT_ID"); err != nil {
			return nil, nil, err
		}
		if full == (amount != "") {
			return nil, nil, usagef("give exactly one of --amount and --full")
		}
		if captureID == "" {
			captureID = newID("cap")
		}
		req := &ledgerv1.CaptureRequest{PaymentId: pos[0], CaptureId: captureID}
		if full {
			req.What = &ledgerv1.CaptureRequest_Full{Full: true}
		} else {
			req.What = &ledgerv1.CaptureRequest_Amount{Amount: &ledgerv1.Money{Value: amount, Asset: asset}}
		}
		res, err := c.payments.Capture(ctx, request(c, req))
		if err != nil {
			return nil, nil, err
		}
		return res.Msg, func(t *tabw) { t.payment(res.Msg.GetPayment()); t.write(res.Msg.GetResult(), true) }, nil
	})
}

func runVoid(ctx context.Context, e env, args []string) error {
	return clientCommand(ctx, e, "void", args, 1, nil, func(ctx context.Context, c *apiClient, pos []string) (proto.Message, func(*tabw), error) {
		if err := needArgs(pos, 1, "PAYMENT_ID"); err != nil {
			return nil, nil, err
		}
		res, err := c.payments.Void(ctx, request(c, &ledgerv1.VoidRequest{PaymentId: pos[0]}))
		if err != nil {
			return nil, nil, err
		}
		return res.Msg, func(t *tabw) { t.payment(res.Msg.GetPayment()); t.write(res.Msg.GetResult(), true) }, nil
	})
}

func runRefund(ctx context.Context, e env, args []string) error {
	var amount, asset, refundID string
	return clientCommand(ctx, e, "refund", args, 1, func(fs *flag.FlagSet) {
		fs.StringVar(&amount, "amount", "", "amount to refund")
		fs.StringVar(&asset, "asset", "USD", "asset of the amount")
		fs.StringVar(&refundID, "refund-id", "", "id of this refund (default: a new one; reuse it to retry safely)")
	}, func(ctx context.Context, c *apiClient, pos []string) (proto.Message, func(*tabw), error) {
		if err := needArgs(pos, 1, "PAYMENT_ID"); err != nil {
			return nil, nil, err
		}
		if amount == "" {
			return nil, nil, usagef("--amount is required")
		}
		if refundID == "" {
			refundID = newID("ref")
		}
		res, err := c.payments.Refund(ctx, request(c, &ledgerv1.RefundRequest{PaymentId: pos[0], RefundId: refundID, Amount: &ledgerv1.Money{Value: amount, Asset: asset}}))
		if err != nil {
			return nil, nil, err
		}
		return res.Msg, func(t *tabw) { t.payment(res.Msg.GetPayment()); t.write(res.Msg.GetResult(), true) }, nil
	})
}

func runPayment(ctx context.Context, e env, args []string) error {
	if len(args) > 0 && args[0] == "get" {
		args = args[1:]
	}
	var minPos uint64
	return clientCommand(ctx, e, "payment", args, 1, func(fs *flag.FlagSet) {
		fs.Uint64Var(&minPos, "min-position", 0, "wait until the view has applied this log position (read your write)")
	}, func(ctx context.Context, c *apiClient, pos []string) (proto.Message, func(*tabw), error) {
		if err := needArgs(pos, 1, "PAYMENT_ID"); err != nil {
			return nil, nil, err
		}
		res, err := c.payments.GetPayment(ctx, connect.NewRequest(&ledgerv1.GetPaymentRequest{PaymentId: pos[0], MinPosition: minPos}))
		if err != nil {
			return nil, nil, err
		}
		return res.Msg, func(t *tabw) { t.payment(res.Msg.GetPayment()) }, nil
	})
}

func runBalance(ctx context.Context, e env, args []string) error {
	var asOfPos, minPos uint64
	var asOfTime string
	return clientCommand(ctx, e, "balance", args, 1, func(fs *flag.FlagSet) {
		fs.Uint64Var(&asOfPos, "as-of-position", 0, "the balance after this log position")
		fs.StringVar(&asOfTime, "as-of-time", "", "the balance at this time (RFC 3339)")
		fs.Uint64Var(&minPos, "min-position", 0, "wait until the view has applied this log position (read your write)")
	}, func(ctx context.Context, c *apiClient, pos []string) (proto.Message, func(*tabw), error) {
		if err := needArgs(pos, 1, "ACCOUNT_ID"); err != nil {
			return nil, nil, err
		}
		req := &ledgerv1.GetBalanceRequest{AccountId: pos[0], MinPosition: minPos}
		switch {
		case asOfPos != 0 && asOfTime != "":
			return nil, nil, usagef("give at most one of --as-of-position and --as-of-time")
		case asOfPos != 0:
			req.AsOf = &ledgerv1.GetBalanceRequest_AsOfPosition{AsOfPosition: asOfPos}
		case asOfTime != "":
			at, err := time.Parse(time.RFC3339Nano, asOfTime)
			if err != nil {
				return nil, nil, usagef("--as-of-time: %v", err)
			}
			req.AsOf = &ledgerv1.GetBalanceRequest_AsOfTime{AsOfTime: timestamppb.New(at)}
		}
		res, err := c.balances.GetBalance(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, nil, err
		}
		return res.Msg, func(t *tabw) { t.balances([]*ledgerv1.Balance{res.Msg.GetBalance()}) }, nil
	})
}

func runHistory(ctx context.Context, e env, args []string) error {
	var after, minPos uint64
	var limit uint
	return clientCommand(ctx, e, "history", args, 1, func(fs *flag.FlagSet) {
		fs.Uint64Var(&after, "after", 0, "entries after this log position (the previous page's \"next\")")
		fs.UintVar(&limit, "limit", 20, "entries per page, 1..1000")
		fs.Uint64Var(&minPos, "min-position", 0, "wait until the view has applied this log position")
	}, func(ctx context.Context, c *apiClient, pos []string) (proto.Message, func(*tabw), error) {
		if err := needArgs(pos, 1, "ACCOUNT_ID"); err != nil {
			return nil, nil, err
		}
		if limit == 0 || limit > 1000 {
			return nil, nil, usagef("--limit must be 1..1000, got %d", limit)
		}
		res, err := c.balances.ListHistory(ctx, connect.NewRequest(&ledgerv1.ListHistoryRequest{AccountId: pos[0], AfterPosition: after, PageSize: uint32(limit), MinPosition: minPos}))
		if err != nil {
			return nil, nil, err
		}
		return res.Msg, func(t *tabw) { t.history(pos[0], res.Msg) }, nil
	})
}

func runVerify(ctx context.Context, e env, args []string) error {
	return clientCommand(ctx, e, "verify", args, 0, nil, func(ctx context.Context, c *apiClient, _ []string) (proto.Message, func(*tabw), error) {
		res, err := c.audit.VerifyChain(ctx, connect.NewRequest(&ledgerv1.VerifyChainRequest{}))
		if err != nil {
			return nil, nil, err
		}
		m := res.Msg
		if !m.GetOk() {
			return nil, nil, fmt.Errorf("hash chain broken at position %d: %s (%d events verified before it)", m.GetBreakPosition(), m.GetBreakReason(), m.GetVerified())
		}
		return m, func(t *tabw) {
			t.line("hash chain verified: %d events, last position %d, last hash %s", m.GetVerified(), m.GetLastPosition(), m.GetLastHash())
		}, nil
	})
}

// runWatch prints an account's balance, then a line per change, until interrupted.
func runWatch(ctx context.Context, e env, args []string) error {
	fs := flag.NewFlagSet("watch", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	cf := addClientFlags(fs, e)
	maxUpdates := fs.Int("max-updates", 0, "stop after this many changes (0: until interrupted)")
	positional, err := parseInterleaved(fs, args, 1)
	if err != nil {
		return err
	}
	if err := needArgs(positional, 1, "ACCOUNT_ID"); err != nil {
		return err
	}
	c, err := cf.dial()
	if err != nil {
		return err
	}
	// No --timeout here: a watch lasts until the user stops it.
	stream, err := c.balances.WatchAccount(ctx, connect.NewRequest(&ledgerv1.WatchAccountRequest{AccountId: positional[0]}))
	if err != nil {
		return explain(err)
	}
	defer stream.Close()
	updates := 0
	for stream.Receive() {
		m := stream.Msg()
		if cf.json {
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
			if *maxUpdates > 0 && updates >= *maxUpdates {
				return nil
			}
		}
	}
	if err := stream.Err(); err != nil && ctx.Err() == nil {
		return explain(err)
	}
	return nil
}
