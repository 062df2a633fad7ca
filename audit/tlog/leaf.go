// Package tlog makes the event log verifiable by anyone who holds a small signed
// checkpoint: a Merkle tree over the log's event hashes (RFC 6962 hashing, computed with
// github.com/transparency-dev/merkle), checkpoints of its size and root signed with
// Ed25519 in the C2SP tlog-checkpoint format (golang.org/x/mod/sumdb/note), inclusion
// proofs that make a payment's receipt, and consistency proofs between two checkpoints.
//
// The parts, each with one job:
//   - Tree keeps the tree's node hashes in files, one per level, so a proof reads
//     O(log n) hashes and the process holds only the tree's right edge in memory.
//   - Follower tails the global log from the tree's size, like a projector, reading only
//     each event's position and hashes and checking the chain's links as it goes; it is
//     never on the append path (recomputing each hash is VerifySince's job).
//   - Signer signs and publishes checkpoints of the tree to a directory, at an interval
//     and on demand; it alone holds the private key.
//   - VerifySince, CheckReceipt and OpenCheckpoint are the auditor's checks: they need
//     the public key, the files and (for VerifySince) the log, nothing of the server's.
//
// Where the nodes live carries no trust: every answer is checked against a signed root,
// so a corrupted node store yields proofs that fail, never a false "verified".
// docs/EVENTS.md ("Signed checkpoints") gives the formats for independent verifiers.
package tlog

import (
	"crypto/sha256"

	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/securepay/securepay/eventstore"
)

// eventHash is an event's chain hash: the leaf data of its position in the tree.
type eventHash = eventstore.Hash

// LeafHash is the tree's leaf for an event whose chain hash is h: RFC 6962's
// SHA-256(0x00 || h). The chain hash already covers every stored field of the event and
// its position (eventstore.ChainHash), so the leaf commits to all of them.
func LeafHash(h eventstore.Hash) []byte {
	// rfc6962.Hasher's HashLeaf allocates a digest and its sum per call; the follower
	// hashes every event, so this is the same SHA-256 over a stack buffer and one
	// allocation for the result (TestTreeAgreesWithTheReference holds them equal).
	var in [1 + len(h)]byte
	in[0] = rfc6962.RFC6962LeafHashPrefix
	copy(in[1:], h[:])
	sum := sha256.Sum256(in[:])
	return append(make([]byte, 0, sha256.Size), sum[:]...)
}

// hashChildren is RFC 6962's interior node, SHA-256(0x01 || left || right), as
// rfc6962.Hasher.HashChildren computes it but with one allocation instead of three: it
// runs once or twice per event in the follower. The result is a new slice, as
// compact.Range keeps it.
func hashChildren(left, right []byte) []byte {
	var in [1 + 2*sha256.Size]byte
	if len(left) != sha256.Size || len(right) != sha256.Size {
		return hasher.HashChildren(left, right) // never in this package; kept exact anyway
	}
	in[0] = rfc6962.RFC6962NodeHashPrefix
	copy(in[1:], left)
	copy(in[1+sha256.Size:], right)
	sum := sha256.Sum256(in[:])
	return append(make([]byte, 0, sha256.Size), sum[:]...)
}

// EventLeaf recomputes an event's leaf from its fields, trusting none of its stored
// hashes except the previous one, which the chain hash covers: an event whose fields
// were changed gets a different leaf, whatever its stored hash says.
func EventLeaf(e *eventstore.RecordedEvent) []byte {
	return LeafHash(eventstore.ChainHash(e.PrevHash, e))
}
