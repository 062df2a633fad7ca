package tlog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// MaxCheckpointBytes bounds a signed checkpoint read from a file or the network: the
// origin, a size, a root and a few signature lines fit in far less.
const MaxCheckpointBytes = 16 << 10

// ErrCheckpoint reports a checkpoint that is malformed or not signed by the trusted key.
var ErrCheckpoint = errors.New("tlog: checkpoint refused")

// Checkpoint is the body of a C2SP tlog-checkpoint: the log's origin (its name, which is
// also the signing key's name), its size in events and the RFC 6962 root of its tree.
type Checkpoint struct {
	Origin string
	Size   uint64
	Root   []byte
}

// Text is the checkpoint body as signed: three lines, each ending in a newline.
func (c Checkpoint) Text() string {
	return fmt.Sprintf("%s\n%d\n%s\n", c.Origin, c.Size, base64.StdEncoding.EncodeToString(c.Root))
}

// ParseCheckpoint parses a checkpoint body. It refuses anything our signer would not
// have written in the first three lines (a size with a sign or leading zeros, a root that
// is not 32 bytes of padded base64); extension lines after them are allowed, as C2SP
// says, and ignored.
func ParseCheckpoint(text string) (Checkpoint, error) {
	lines := strings.SplitAfter(text, "\n")
	if len(lines) < 4 || lines[len(lines)-1] != "" {
		return Checkpoint{}, fmt.Errorf("%w: the body must be at least three lines, each ending in a newline", ErrCheckpoint)
	}
	origin := strings.TrimSuffix(lines[0], "\n")
	sizeText := strings.TrimSuffix(lines[1], "\n")
	rootText := strings.TrimSuffix(lines[2], "\n")
	if origin == "" {
		return Checkpoint{}, fmt.Errorf("%w: empty origin line", ErrCheckpoint)
	}
	size, err := strconv.ParseUint(sizeText, 10, 64)
	if err != nil || strconv.FormatUint(size, 10) != sizeText {
		return Checkpoint{}, fmt.Errorf("%w: size line %q is not a decimal number", ErrCheckpoint, sizeText)
	}
	root, err := base64.StdEncoding.Strict().DecodeString(rootText)
	if err != nil || len(root) != HashSize || base64.StdEncoding.EncodeToString(root) != rootText {
		return Checkpoint{}, fmt.Errorf("%w: root line %q is not %d bytes of base64", ErrCheckpoint, rootText, HashSize)
	}
	for _, l := range lines[3 : len(lines)-1] {
		if l == "\n" {
			return Checkpoint{}, fmt.Errorf("%w: empty extension line", ErrCheckpoint)
		}
	}
	return Checkpoint{Origin: origin, Size: size, Root: root}, nil
}

// GenerateKey makes an Ed25519 key pair for a log named origin, in the note formats:
// the private key ("PRIVATE+KEY+origin+hash+key") for the signer's key file, the public
// key ("origin+hash+key") for auditors.
func GenerateKey(origin string) (private, public string, err error) {
	private, public, err = note.GenerateKey(rand.Reader, origin)
	if err != nil {
		return "", "", fmt.Errorf("tlog: generate a key named %q: %w", origin, err)
	}
	return private, public, nil
}

// NewVerifier parses a public key in the note format ("origin+hash+key").
func NewVerifier(publicKey string) (note.Verifier, error) {
	v, err := note.NewVerifier(strings.TrimSpace(publicKey))
	if err != nil {
		return nil, fmt.Errorf("tlog: public key: %w (want NAME+HASH+KEY, as `securepay dev` or `securepay audit keygen` write it)", err)
	}
	return v, nil
}

// SignCheckpoint signs c with signer, whose name must be c's origin.
func SignCheckpoint(c Checkpoint, signer note.Signer) ([]byte, error) {
	if signer.Name() != c.Origin {
		return nil, fmt.Errorf("tlog: key %q cannot sign for origin %q", signer.Name(), c.Origin)
	}
	msg, err := note.Sign(&note.Note{Text: c.Text()}, signer)
	if err != nil {
		return nil, fmt.Errorf("tlog: sign checkpoint: %w", err)
	}
	return msg, nil
}

// OpenCheckpoint verifies a signed checkpoint with the trusted public key and parses it.
// It refuses a note that this key did not sign (whatever other keys did), and a body
// whose origin is not the key's name.
func OpenCheckpoint(signed []byte, v note.Verifier) (Checkpoint, error) {
	if len(signed) > MaxCheckpointBytes {
		return Checkpoint{}, fmt.Errorf("%w: %d bytes, at most %d", ErrCheckpoint, len(signed), MaxCheckpointBytes)
	}
	if err := canonicalSignatures(signed); err != nil {
		return Checkpoint{}, err
	}
	n, err := note.Open(signed, note.VerifierList(v))
	var unverified *note.UnverifiedNoteError
	switch {
	case errors.As(err, &unverified):
		names := make([]string, 0, len(unverified.Note.UnverifiedSigs))
		for _, s := range unverified.Note.UnverifiedSigs {
			names = append(names, fmt.Sprintf("%s (key hash %08x)", s.Name, s.Hash))
		}
		return Checkpoint{}, fmt.Errorf("%w: not signed by the trusted key %s (key hash %08x); signed by %s",
			ErrCheckpoint, v.Name(), v.KeyHash(), strings.Join(names, ", "))
	case err != nil:
		return Checkpoint{}, fmt.Errorf("%w: %v", ErrCheckpoint, err)
	}
	c, err := ParseCheckpoint(n.Text)
	if err != nil {
		return Checkpoint{}, err
	}
	if c.Origin != v.Name() {
		return Checkpoint{}, fmt.Errorf("%w: origin %q is not the key's log %q", ErrCheckpoint, c.Origin, v.Name())
	}
	return c, nil
}

// Signed is a checkpoint with its signed note, exactly as published.
type Signed struct {
	Checkpoint
	Note []byte
}

// Equal reports whether two signed checkpoints are the same bytes.
func (s Signed) Equal(o Signed) bool { return bytes.Equal(s.Note, o.Note) }

// PublicKey derives the public key ("origin+hash+key") from a private key in the note
// format ("PRIVATE+KEY+origin+hash+" base64 of the algorithm byte and the Ed25519 seed),
// so an operator needs to keep only the private key file.
func PublicKey(private string) (string, error) {
	parts := strings.SplitN(strings.TrimSpace(private), "+", 5) // base64 may hold a +
	if len(parts) != 5 || parts[0] != "PRIVATE" || parts[1] != "KEY" {
		return "", errors.New("the private key is not PRIVATE+KEY+NAME+HASH+KEY")
	}
	raw, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(raw) != 1+ed25519.SeedSize || raw[0] != 1 /* note's algEd25519 */ {
		return "", errors.New("the private key is not an Ed25519 key in the note format")
	}
	pub := ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)
	vkey, err := note.NewEd25519VerifierKey(parts[2], pub)
	if err != nil {
		return "", fmt.Errorf("public key: %w", err)
	}
	return vkey, nil
}

// canonicalSignatures refuses signature lines whose base64 has another spelling than the
// standard one (note.Open ignores the unused bits of the last character), so a signed
// checkpoint has exactly one byte form, as receipts require.
func canonicalSignatures(signed []byte) error {
	i := bytes.LastIndex(signed, []byte("\n\n"))
	if i < 0 {
		return fmt.Errorf("%w: no signature block", ErrCheckpoint)
	}
	for _, line := range strings.Split(strings.TrimSuffix(string(signed[i+2:]), "\n"), "\n") {
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			return fmt.Errorf("%w: malformed signature line %q", ErrCheckpoint, line)
		}
		if _, err := base64.StdEncoding.Strict().DecodeString(line[sp+1:]); err != nil {
			return fmt.Errorf("%w: signature of %q is not canonical base64", ErrCheckpoint, line[:sp])
		}
	}
	return nil
}

// ParseCheckpointNote reads the checkpoint in a signed note without checking any
// signature: for assembling a receipt, which CheckReceipt then verifies.
func ParseCheckpointNote(signed []byte) (Checkpoint, error) {
	i := bytes.Index(signed, []byte("\n\n"))
	if i < 0 || len(signed) > MaxCheckpointBytes {
		return Checkpoint{}, fmt.Errorf("%w: not a signed note", ErrCheckpoint)
	}
	return ParseCheckpoint(string(signed[:i+1]))
}
