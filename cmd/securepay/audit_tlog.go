package main

// Signed checkpoints (audit/tlog): the signer that serve and dev run, and the auditor's
// commands that fetch and check checkpoints and receipts. The checks of a receipt or a
// checkpoint need the public key and the files only, never the server's word.

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"

	ledgerv1 "github.com/securepay/securepay/api/gen/securepay/ledger/v1"
	"github.com/securepay/securepay/audit/tlog"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/services"
)

// defaultOrigin names a log whose operator did not choose a name.
const defaultOrigin = "securepay.dev/ledger"

// checkpointFlags are serve's signer settings: both or neither of dir and keyFile.
type checkpointFlags struct {
	dir, keyFile string
	interval     time.Duration
}

func (f *checkpointFlags) register(fs *flag.FlagSet, e env) {
	ef := envFlags{fs, e}
	ef.String(&f.dir, "checkpoint-dir", "SECUREPAY_CHECKPOINT_DIR", "", "sign checkpoints of the log's Merkle tree into this `directory` (one the database cannot write; it also keeps the tree); needs --checkpoint-key-file")
	ef.String(&f.keyFile, "checkpoint-key-file", "SECUREPAY_CHECKPOINT_KEY_FILE", "", "`file` holding the checkpoint signing key, readable only by its owner (securepay audit keygen writes one)")
	fs.DurationVar(&f.interval, "checkpoint-interval", tlog.DefaultCheckpointInterval, "sign a new checkpoint this often when the log has grown")
}

// key reads and checks the signing key; "" when checkpoints are off.
func (f *checkpointFlags) key() (string, error) {
	switch {
	case f.dir == "" && f.keyFile == "":
		return "", nil
	case f.dir == "" || f.keyFile == "":
		return "", errors.New("checkpoints need both --checkpoint-dir and --checkpoint-key-file (SECUREPAY_CHECKPOINT_DIR, SECUREPAY_CHECKPOINT_KEY_FILE)")
	case f.interval <= 0:
		return "", fmt.Errorf("--checkpoint-interval must be positive, got %s", f.interval)
	}
	key, err := readSecretFile(f.keyFile)
	if err != nil {
		return "", fmt.Errorf("the checkpoint signing key (--checkpoint-key-file): %w", err)
	}
	if _, err := tlog.PublicKey(key); err != nil {
		return "", fmt.Errorf("the checkpoint signing key in %s: %w", f.keyFile, err)
	}
	return key, nil
}

// checkpointer is a running tree follower and signer.
type checkpointer struct {
	tree   *tlog.Tree
	signer *tlog.Signer
	store  eventstore.Store
	log    *slog.Logger
}

// openCheckpointer opens the tree in dir/tree and a signer publishing into dir.
func openCheckpointer(store eventstore.Store, dir, privateKey string, interval time.Duration, log *slog.Logger) (*checkpointer, error) {
	tree, err := tlog.OpenTree(filepath.Join(dir, tlog.TreeDir))
	if err != nil {
		return nil, err
	}
	signer, err := tlog.NewSigner(tlog.SignerConfig{Tree: tree, PrivateKey: privateKey, Dir: dir, Interval: interval, Logger: log})
	if err != nil {
		tree.Close()
		return nil, err
	}
	return &checkpointer{tree: tree, signer: signer, store: store, log: log}, nil
}

func (c *checkpointer) services() *services.Checkpoints {
	return &services.Checkpoints{Tree: c.tree, Signer: c.signer}
}

// run follows the log and signs until ctx ends; bg waits for both.
func (c *checkpointer) run(ctx context.Context, bg *sync.WaitGroup) {
	f := &tlog.Follower{Store: c.store, Tree: c.tree, Logger: c.log}
	bg.Go(func() { _ = f.Run(ctx) })
	bg.Go(func() { _ = c.signer.Run(ctx) })
}

// runUntil is run, returning once both have stopped.
func (c *checkpointer) runUntil(ctx context.Context) {
	var wg sync.WaitGroup
	c.run(ctx, &wg)
	wg.Wait()
}

func (c *checkpointer) close() { c.tree.Close() }

// devKey returns dev's signing key, generating it into dir on first use, and the paths
// of the key and its public half.
func devKey(dir string) (private, keyFile, pubFile string, created bool, err error) {
	keyFile, pubFile = filepath.Join(dir, "checkpoint-key"), filepath.Join(dir, "checkpoint-key.pub")
	if b, err := readSecretFile(keyFile); err == nil {
		return b, keyFile, pubFile, false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", "", "", false, err
	}
	private, public, err := tlog.GenerateKey(defaultOrigin)
	if err != nil {
		return "", "", "", false, err
	}
	if err := writeKeyPair(keyFile, pubFile, private, public); err != nil {
		return "", "", "", false, err
	}
	return private, keyFile, pubFile, true, nil
}

// writeKeyPair writes a private key (mode 600, never over an existing file) and its
// public key beside it.
func writeKeyPair(keyFile, pubFile, private, public string) error {
	f, err := os.OpenFile(keyFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write the signing key: %w", err)
	}
	if _, err := f.WriteString(private + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("write the signing key: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write the signing key: %w", err)
	}
	if err := os.WriteFile(pubFile, []byte(public+"\n"), 0o644); err != nil {
		return fmt.Errorf("write the public key: %w", err)
	}
	return nil
}

// readPublicKey reads a public key from a file (or takes it as given, if it is one).
func readPublicKey(cmd, arg string) (note.Verifier, error) {
	if arg == "" {
		return nil, usagef("%s: --public-key is required: the checkpoint signer's public key file (securepay dev writes checkpoint-key.pub)", cmd)
	}
	text := arg
	if b, err := os.ReadFile(arg); err == nil {
		text = string(b)
	} else if !strings.Contains(arg, "+") {
		return nil, fmt.Errorf("%s: read the public key: %w", cmd, err)
	}
	return tlog.NewVerifier(text)
}

// auditCheckpointCmd is `securepay audit checkpoint`.
type auditCheckpointCmd struct {
	client    clientFlags
	publicKey string
	out       string
}

func auditCheckpointCommand(e env) *Command {
	c := &auditCheckpointCmd{}
	cmd := &Command{
		UsageLine: "securepay audit checkpoint --public-key FILE [--out FILE] [flags]",
		Short:     "fetch the newest signed checkpoint from the server and verify its signature",
		Long: "Fetch the newest signed checkpoint (the log's size and Merkle root) and verify it\n" +
			"against the signer's public key. Keep it (--out): `audit verify --since-checkpoint`\n" +
			"later proves the log still extends it.",
	}
	c.client.register(cmd, e, reads)
	cmd.Flag.StringVar(&c.publicKey, "public-key", "", "`file` with the checkpoint signer's public key")
	cmd.Flag.StringVar(&c.out, "out", "", "write the signed checkpoint to this `file`")
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *auditCheckpointCmd) run(ctx context.Context, api *apiClient, _ []string) error {
	v, err := readPublicKey("audit checkpoint", c.publicKey)
	if err != nil {
		return err
	}
	res, err := invoke(ctx, api, api.audit.GetCheckpoint, &ledgerv1.GetCheckpointRequest{})
	if err != nil {
		return err
	}
	cp, err := tlog.OpenCheckpoint([]byte(res.Msg.GetCheckpoint()), v)
	if err != nil {
		return fmt.Errorf("audit checkpoint: the server's checkpoint does not verify: %w", err)
	}
	if c.out != "" {
		if err := os.WriteFile(c.out, []byte(res.Msg.GetCheckpoint()), 0o644); err != nil {
			return fmt.Errorf("audit checkpoint: %w", err)
		}
	}
	return api.print(res.Msg, func(t *tabw) {
		t.line("checkpoint verified: log %s, %d events, root %s (signed by key %08x)", cp.Origin, cp.Size, base64.StdEncoding.EncodeToString(cp.Root), v.KeyHash())
		if c.out != "" {
			t.line("written to %s", c.out)
		}
	})
}

// auditProveCmd is `securepay audit prove`.
type auditProveCmd struct {
	client    clientFlags
	publicKey string
	out       string
	event     uint64
}

func auditProveCommand(e env) *Command {
	c := &auditProveCmd{}
	cmd := &Command{
		UsageLine: "securepay audit prove PAYMENT_ID [--out FILE] [--public-key FILE] [flags]",
		Short:     "write a receipt: a payment's event, its inclusion proof and the signed checkpoint",
		Long: "Ask the server to prove that a payment's event is in the log, and write the receipt\n" +
			"(the event, its Merkle inclusion proof and the signed checkpoint) to a file that\n" +
			"`securepay audit check-receipt` verifies offline. With --public-key the receipt is\n" +
			"checked before it is written.",
		Args: []Arg{{Name: "PAYMENT_ID", Missing: "name the payment to prove"}},
	}
	c.client.register(cmd, e, reads)
	cmd.Flag.StringVar(&c.publicKey, "public-key", "", "`file` with the checkpoint signer's public key, to check the receipt")
	cmd.Flag.StringVar(&c.out, "out", "", "receipt `file` (default: receipt-PAYMENT_ID.json)")
	cmd.Flag.Uint64Var(&c.event, "event", 1, "which event of the payment, by its `version` in the payment's stream (1: the one that made it)")
	cmd.Run = c.client.unary(c.run)
	return cmd
}

func (c *auditProveCmd) run(ctx context.Context, api *apiClient, args []string) error {
	res, err := invoke(ctx, api, api.audit.ProveInclusion, &ledgerv1.ProveInclusionRequest{
		Target: &ledgerv1.ProveInclusionRequest_PaymentId{PaymentId: args[0]}, PaymentEvent: c.event,
	})
	if err != nil {
		return err
	}
	m := res.Msg
	ev, err := eventFromProto(m.GetEvent())
	if err != nil {
		return fmt.Errorf("audit prove: the server's event: %w", err)
	}
	cp, err := tlog.ParseCheckpointNote([]byte(m.GetCheckpoint()))
	if err != nil {
		return fmt.Errorf("audit prove: the server's checkpoint: %w", err)
	}
	rec, err := tlog.NewReceipt(&ev, m.GetLeafIndex(), m.GetProof(), tlog.Signed{Checkpoint: cp, Note: []byte(m.GetCheckpoint())}).Marshal()
	if err != nil {
		return err
	}
	if c.publicKey != "" {
		v, err := readPublicKey("audit prove", c.publicKey)
		if err != nil {
			return err
		}
		if _, _, err := tlog.CheckReceipt(rec, v); err != nil {
			return fmt.Errorf("audit prove: the server's proof does not verify, no receipt written: %w", err)
		}
	}
	out := c.out
	if out == "" {
		out = "receipt-" + args[0] + ".json"
	}
	if err := os.WriteFile(out, rec, 0o644); err != nil {
		return fmt.Errorf("audit prove: %w", err)
	}
	return api.print(m, func(t *tabw) {
		t.line("receipt for payment %s (event %s at position %d) in checkpoint %d written to %s", args[0], ev.Type, ev.Position, cp.Size, out)
	})
}

// eventFromProto is the event as stored, from the API's copy.
func eventFromProto(p *ledgerv1.Event) (eventstore.RecordedEvent, error) {
	prev, err := eventstore.ParseHash(p.GetPrevHash())
	if err != nil {
		return eventstore.RecordedEvent{}, err
	}
	hash, err := eventstore.ParseHash(p.GetHash())
	if err != nil {
		return eventstore.RecordedEvent{}, err
	}
	md := p.GetMetadata()
	return eventstore.RecordedEvent{
		Position: p.GetPosition(), Stream: p.GetStream(), StreamVersion: p.GetStreamVersion(), ID: p.GetId(), Type: p.GetType(),
		RecordedAt: p.GetRecordedAt().AsTime().UTC(), Data: p.GetData(),
		Metadata: eventstore.Metadata{CorrelationID: md.GetCorrelationId(), CausationID: md.GetCausationId(), Actor: md.GetActor(), TraceParent: md.GetTraceParent()},
		PrevHash: prev, Hash: hash,
	}, nil
}

// auditCheckReceiptCmd is `securepay audit check-receipt`: offline.
type auditCheckReceiptCmd struct{ publicKey string }

func auditCheckReceiptCommand(e env) *Command {
	c := &auditCheckReceiptCmd{}
	cmd := &Command{
		UsageLine: "securepay audit check-receipt FILE --public-key FILE",
		Short:     "verify a receipt offline: the event hashes to its leaf, the proof leads to the signed root",
		Args:      []Arg{{Name: "FILE", Missing: "name the receipt file (securepay audit prove writes one)"}},
	}
	cmd.Flag.StringVar(&c.publicKey, "public-key", "", "`file` with the checkpoint signer's public key")
	cmd.Run = func(_ context.Context, e env, args []string) error {
		v, err := readPublicKey("audit check-receipt", c.publicKey)
		if err != nil {
			return err
		}
		b, err := readBounded(args[0], tlog.MaxReceiptBytes)
		if err != nil {
			return fmt.Errorf("audit check-receipt: %w", err)
		}
		r, cp, err := tlog.CheckReceipt(b, v)
		if err != nil {
			return fmt.Errorf("audit check-receipt: %s: %w", args[0], err)
		}
		fmt.Fprintf(e.stdout, "OK: event %s (%s version %d, %s) is at position %d of log %s, in checkpoint %d signed by key %08x\n",
			r.Event.ID, r.Event.Stream, r.Event.StreamVersion, r.Event.Type, r.Event.Position, cp.Origin, cp.Size, v.KeyHash())
		return nil
	}
	return cmd
}

// auditKeygenCmd is `securepay audit keygen`.
func auditKeygenCommand(e env) *Command {
	var origin, keyFile string
	cmd := &Command{
		UsageLine: "securepay audit keygen --key-file FILE [--origin NAME]",
		Short:     "make the checkpoint signer's Ed25519 key: FILE (private, mode 600) and FILE.pub",
	}
	cmd.Flag.StringVar(&keyFile, "key-file", "", "where to write the private key `file` (never over an existing one); the public key goes to FILE.pub")
	cmd.Flag.StringVar(&origin, "origin", defaultOrigin, "the log's `name` in every checkpoint (C2SP origin), e.g. payments.example.com/ledger")
	cmd.Run = func(_ context.Context, e env, _ []string) error {
		if keyFile == "" {
			return usagef("audit keygen: --key-file is required")
		}
		private, public, err := tlog.GenerateKey(origin)
		if err != nil {
			return usagef("audit keygen: --origin %q: %v", origin, err)
		}
		if err := writeKeyPair(keyFile, keyFile+".pub", private, public); err != nil {
			return fmt.Errorf("audit keygen: %w", err)
		}
		fmt.Fprintf(e.stdout, "signing key written to %s (keep it private: only the signer reads it)\npublic key written to %s: %s\n", keyFile, keyFile+".pub", public)
		return nil
	}
	return cmd
}

// sinceFlags are `audit verify`'s checkpoint flags.
type sinceFlags struct{ checkpoint, publicKey, tree string }

func (c *auditCmd) registerSince(fs *flag.FlagSet) {
	fs.StringVar(&c.since.checkpoint, "since-checkpoint", "", "a signed checkpoint `file` kept earlier: prove the log now extends it, unchanged")
	fs.StringVar(&c.since.publicKey, "public-key", "", "`file` with the checkpoint signer's public key (with --since-checkpoint)")
	fs.StringVar(&c.since.tree, "tree", "", "the checkpoint signer's `directory`: its tree names the first changed event even when the hash chain was recomputed")
}

// verifySince is `audit verify --since-checkpoint`: the log read directly, checked
// against a checkpoint the auditor kept.
func (c *auditCmd) verifySince(ctx context.Context, e env) error {
	v, err := readPublicKey("audit verify", c.since.publicKey)
	if err != nil {
		return err
	}
	signed, err := tlog.ReadCheckpointFile(c.since.checkpoint)
	if err != nil {
		return fmt.Errorf("audit verify: %w", err)
	}
	var witness *tlog.Tree
	if c.since.tree != "" {
		if _, err := os.Stat(filepath.Join(c.since.tree, tlog.TreeDir)); err != nil {
			return fmt.Errorf("audit verify: --tree %s is not a checkpoint signer's directory: %w", c.since.tree, err)
		}
		witness, err = tlog.OpenTree(filepath.Join(c.since.tree, tlog.TreeDir))
		if err != nil {
			return fmt.Errorf("audit verify: %w", err)
		}
		defer witness.Close()
	}
	o, err := c.store.open(ctx, e, "audit")
	if err != nil {
		return err
	}
	defer o.close()
	rep, err := tlog.VerifySince(ctx, o.store, signed, v, tlog.VerifyOptions{Witness: witness})
	if rep.WitnessNote != "" {
		fmt.Fprintf(e.stdout, "note: the signer's tree was not used: %s\n", rep.WitnessNote)
	}
	var tam *tlog.Tampering
	switch {
	case errors.As(err, &tam):
		fmt.Fprintf(e.stdout, "FAILED: %v\n", tam)
		err = fmt.Errorf("audit verify: the log was changed since checkpoint %d (see above)", tam.Checkpoint)
	case err != nil:
		return fmt.Errorf("audit verify: %w", err)
	default:
		fmt.Fprintf(e.stdout, "OK: the log (%d events, root %s) extends checkpoint %d of %s: every event hashes to its leaf, none of the first %d changed\n",
			rep.Head, base64.StdEncoding.EncodeToString(rep.Root), rep.Checkpoint.Size, rep.Checkpoint.Origin, rep.Checkpoint.Size)
	}
	// Snapshots are outside the log and its tree: checked against the events (the log
	// just proved to extend the checkpoint), both findings reported from one run.
	if serr := checkSnapshots(ctx, e, o.store); err == nil {
		err = serr
	}
	return err
}

// readBounded reads a file of at most limit bytes.
func readBounded(name string, limit int) ([]byte, error) {
	fi, err := os.Stat(name)
	if err != nil {
		return nil, err
	}
	if fi.Size() > int64(limit) {
		return nil, fmt.Errorf("%s is %d bytes, more than %d", name, fi.Size(), limit)
	}
	return os.ReadFile(name)
}

// devCheckpointInterval is short so that a receipt can be had seconds after a payment.
const devCheckpointInterval = 2 * time.Second

// printDevCheckpoints tells a dev user where the signing key is and how to get a receipt.
func printDevCheckpoints(w io.Writer, dir, keyFile, pubFile string, created bool) {
	how := "kept from an earlier run"
	if created {
		how = "generated now"
	}
	fmt.Fprintf(w, "Checkpoints of the log's Merkle tree are signed every %s into %s\n", devCheckpointInterval, filepath.Join(dir, "tlog"))
	fmt.Fprintf(w, "with the key in %s (%s). Get a payment's receipt and check it offline:\n\n", keyFile, how)
	fmt.Fprintf(w, "  securepay audit prove PAYMENT_ID --out receipt.json && \\\n")
	fmt.Fprintf(w, "  securepay audit check-receipt receipt.json --public-key %s\n\n", pubFile)
}
