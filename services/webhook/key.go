package webhook

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// MinKeyBytes is the least a key file must hold: 32 random bytes as text (base64 is
// fine, as `head -c 32 /dev/urandom | base64` writes it) carry 256 bits behind the
// derived AES key.
const MinKeyBytes = 32

// ErrKeyMismatch is returned when a stored secret was sealed under another key than the
// server's: it cannot be opened, and the server was started with the wrong
// --webhook-key-file (or the key was replaced without re-registering the endpoints).
var ErrKeyMismatch = errors.New("webhook secret sealed under another key")

// Key seals endpoint secrets at rest (AES-256-GCM), so that a dump of the database, a
// replica or a backup does not hand out the keys that sign webhooks: the key lives in a
// file outside the database (--webhook-key-file). Each sealed secret records the key's ID,
// so a server started with another key says so instead of failing to verify a tag.
type Key struct {
	aead cipher.AEAD
	id   string
}

// NewKey derives the sealing key from a key file's content (at least MinKeyBytes). The
// file's bytes go through HKDF-SHA256 with a purpose label, so the same file used by
// mistake for another purpose (the snapshot key) yields an unrelated key.
func NewKey(material []byte) (*Key, error) {
	if len(material) < MinKeyBytes {
		return nil, fmt.Errorf("the webhook key holds %d bytes, want at least %d random ones: head -c 32 /dev/urandom | base64 > FILE && chmod 600 FILE", len(material), MinKeyBytes)
	}
	k, err := hkdf.Key(sha256.New, material, nil, "securepay webhook endpoint secrets v1", 32)
	if err != nil {
		return nil, fmt.Errorf("derive the webhook key: %w", err)
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, fmt.Errorf("webhook key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("webhook key: %w", err)
	}
	idKey, err := hkdf.Key(sha256.New, material, nil, "securepay webhook key id v1", 8)
	if err != nil {
		return nil, fmt.Errorf("derive the webhook key id: %w", err)
	}
	return &Key{aead: aead, id: hex.EncodeToString(idKey)}, nil
}

// ID names the key without revealing it: 16 hex digits, stored beside every sealed secret.
func (k *Key) ID() string { return k.id }

// seal encrypts a secret for the endpoint id: the id is authenticated data, so a sealed
// secret copied onto another endpoint's row does not open there.
func (k *Key) seal(endpointID string, secret []byte) []byte {
	nonce := make([]byte, k.aead.NonceSize(), k.aead.NonceSize()+len(secret)+k.aead.Overhead())
	_, _ = rand.Read(nonce) // crypto/rand.Read never fails (Go 1.24+)
	return k.aead.Seal(nonce, nonce, secret, []byte(endpointID))
}

// open decrypts what seal produced under the key named keyID.
func (k *Key) open(endpointID, keyID string, sealed []byte) ([]byte, error) {
	if keyID != k.id {
		return nil, fmt.Errorf("endpoint %s: %w (%s; this server holds %s): start it with the --webhook-key-file the endpoint was registered under, or rotate the endpoint's secret",
			endpointID, ErrKeyMismatch, keyID, k.id)
	}
	n := k.aead.NonceSize()
	if len(sealed) < n+k.aead.Overhead() {
		return nil, fmt.Errorf("endpoint %s: the sealed secret is %d bytes, too short to be one", endpointID, len(sealed))
	}
	secret, err := k.aead.Open(nil, sealed[:n], sealed[n:], []byte(endpointID))
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: the sealed secret does not open under key %s (altered, or copied from another endpoint)", endpointID, k.id)
	}
	return secret, nil
}
