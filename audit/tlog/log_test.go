package tlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/eventstore/embedded"
)

// testLog is a real embedded store with a tree, a follower and a signer on it.
type testLog struct {
	store    eventstore.Store
	tree     *Tree
	signer   *Signer
	verifier note.Verifier
	public   string
	private  string
	dir      string // the signer's directory
}

func newTestLog(t *testing.T) *testLog {
	t.Helper()
	store, err := embedded.Open(t.TempDir(), embedded.Options{Logger: quietPebble{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return newTestLogOn(t, store)
}

func newTestLogOn(t *testing.T, store eventstore.Store) *testLog {
	t.Helper()
	dir := t.TempDir()
	tree, err := OpenTree(filepath.Join(dir, TreeDir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tree.Close() })
	private, public := testKey(t, "securepay.test/ledger")
	signer, err := NewSigner(SignerConfig{Tree: tree, PrivateKey: private, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(public)
	if err != nil {
		t.Fatal(err)
	}
	return &testLog{store: store, tree: tree, signer: signer, verifier: v, public: public, private: private, dir: dir}
}

// appendPayments appends n one-event payment streams, ids from first on.
func appendPayments(t testing.TB, s eventstore.Store, first, n int) {
	t.Helper()
	for i := first; i < first+n; i++ {
		_, err := s.Append(context.Background(), eventstore.StreamAppend{
			Stream: fmt.Sprintf("payment-p%d", i), Expected: eventstore.NoStream(),
			Events: []eventstore.EventData{{ID: fmt.Sprintf("ev-%d", i), Type: "test.paid.v1",
				Data: []byte(fmt.Sprintf(`{"amount":"%d.00"}`, i)), Metadata: eventstore.Metadata{Actor: "tester"}}},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// catchUp runs a follower until the tree holds the whole log, then returns.
func (l *testLog) catchUp(t testing.TB) {
	t.Helper()
	head, err := l.store.Head(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := &Follower{Store: l.store, Tree: l.tree, Appended: func(size uint64) {
		if size >= head {
			cancel()
		}
	}}
	if l.tree.Size() >= head {
		return
	}
	if err := f.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if l.tree.Size() != head {
		t.Fatalf("follower stopped at %d, the log has %d", l.tree.Size(), head)
	}
}

func (l *testLog) publish(t testing.TB) Signed {
	t.Helper()
	s, err := l.signer.Publish()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (l *testLog) receipt(t testing.TB, position uint64) []byte {
	t.Helper()
	cp, ok := l.signer.Latest()
	if !ok {
		t.Fatal("no checkpoint")
	}
	events, err := l.store.ReadAll(context.Background(), position-1, 1)
	if err != nil || len(events) != 1 {
		t.Fatalf("read %d: %v", position, err)
	}
	p, err := l.tree.InclusionProof(position-1, cp.Size)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewReceipt(&events[0], position-1, p, cp).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFollowerSignerAndVerifySince(t *testing.T) {
	l := newTestLog(t)
	appendPayments(t, l.store, 0, 37)
	l.catchUp(t)
	first := l.publish(t)
	if first.Size != 37 {
		t.Fatalf("checkpoint of size %d, the log has 37", first.Size)
	}
	published, err := os.ReadFile(filepath.Join(l.dir, LatestFile))
	if err != nil || !bytes.Equal(published, first.Note) {
		t.Fatalf("latest file %q (%v), signed %q", published, err, first.Note)
	}
	if _, err := os.Stat(filepath.Join(l.dir, HistoryDir, "00000000000000000037")); err != nil {
		t.Fatalf("history: %v", err)
	}
	appendPayments(t, l.store, 37, 20)
	l.catchUp(t)
	second := l.publish(t)
	if again := l.publish(t); !again.Equal(second) {
		t.Fatal("publishing an unchanged tree signed a new checkpoint")
	}
	rep, err := VerifySince(context.Background(), l.store, first.Note, l.verifier, VerifyOptions{Witness: l.tree})
	if err != nil {
		t.Fatalf("untouched log: %v", err)
	}
	if rep.Head != 57 || !bytes.Equal(rep.Root, second.Root) {
		t.Fatalf("report %+v; want head 57 and the second checkpoint's root", rep)
	}
	// The consistency proof between the two checkpoints verifies against their roots.
	p, err := l.tree.ConsistencyProof(first.Size, second.Size)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyConsistency(first.Checkpoint, second.Checkpoint, p); err != nil {
		t.Fatalf("consistency %d..%d: %v", first.Size, second.Size, err)
	}
	if err := VerifyConsistency(second.Checkpoint, first.Checkpoint, p); err == nil {
		t.Fatal("consistency backwards verified")
	}

}

func TestSignerRestartsFromItsLastCheckpointAndRefusesADivergentTree(t *testing.T) {
	l := newTestLog(t)
	appendPayments(t, l.store, 0, 9)
	l.catchUp(t)
	first := l.publish(t)

	again, err := NewSigner(SignerConfig{Tree: l.tree, PrivateKey: l.private, Dir: l.dir})
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := again.Latest(); !ok || !got.Equal(first) {
		t.Fatalf("restarted signer's latest: %q, want %q", got.Note, first.Note)
	}

	// A tree that does not extend the published checkpoint (here: other events) is
	// never signed over it.
	other, err := OpenTree(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Append(syntheticLeaves(3, 12)); err != nil {
		t.Fatal(err)
	}
	divergent, err := NewSigner(SignerConfig{Tree: other, PrivateKey: l.private, Dir: l.dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := divergent.Publish(); err == nil || !strings.Contains(err.Error(), "do not hash to the last checkpoint") {
		t.Fatalf("signing a tree that contradicts checkpoint %d: %v", first.Size, err)
	}
	published, err := os.ReadFile(filepath.Join(l.dir, LatestFile))
	if err != nil || !bytes.Equal(published, first.Note) {
		t.Fatalf("the published checkpoint changed: %q (%v)", published, err)
	}

	// A key file of another log cannot take over the directory.
	otherPrivate, _ := testKey(t, "securepay.test/ledger")
	if _, err := NewSigner(SignerConfig{Tree: l.tree, PrivateKey: otherPrivate, Dir: l.dir}); err == nil {
		t.Fatal("a signer with another key accepted the directory's checkpoint")
	}
}

func TestReceiptVerifiesOfflineAndFailsForAnyChangedByte(t *testing.T) {
	l := newTestLog(t)
	appendPayments(t, l.store, 0, 11)
	l.catchUp(t)
	l.publish(t)
	rec := l.receipt(t, 6)
	r, cp, err := CheckReceipt(rec, l.verifier)
	if err != nil {
		t.Fatalf("receipt as issued: %v\n%s", err, rec)
	}
	if r.Event.Position != 6 || cp.Size != 11 || r.Event.Stream != "payment-p5" {
		t.Fatalf("receipt for %+v in checkpoint %d", r.Event, cp.Size)
	}
	// Every byte, changed in three ways (a low bit, the case bit, the top bit): refused.
	for i := range rec {
		for _, flip := range []byte{0x01, 0x20, 0x80} {
			bad := bytes.Clone(rec)
			bad[i] ^= flip
			if _, _, err := CheckReceipt(bad, l.verifier); err == nil {
				t.Fatalf("byte %d (%q) xor %#x: the changed receipt verified: %s", i, rec[i], flip, rec[max(0, i-40):min(len(rec), i+20)])
			}
		}
	}
	// Dropped or added bytes too.
	if _, _, err := CheckReceipt(rec[:len(rec)-1], l.verifier); err == nil {
		t.Fatal("receipt without its last byte verified")
	}
	if _, _, err := CheckReceipt(append(bytes.Clone(rec), ' '), l.verifier); err == nil {
		t.Fatal("receipt with a trailing space verified")
	}
	// Another key: refused, even though the receipt is intact.
	_, otherPublic := testKey(t, "securepay.test/ledger")
	ov, err := NewVerifier(otherPublic)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := CheckReceipt(rec, ov); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("receipt checked with another key: %v, want a checkpoint refusal", err)
	}
}

func FuzzCheckReceipt(f *testing.F) {
	store, err := embedded.Open(f.TempDir(), embedded.Options{Logger: quietPebble{}})
	if err != nil {
		f.Fatal(err)
	}
	defer store.Close()
	dir := f.TempDir()
	tree, err := OpenTree(filepath.Join(dir, TreeDir))
	if err != nil {
		f.Fatal(err)
	}
	defer tree.Close()
	private, public := testKey(f, "securepay.test/ledger")
	signer, err := NewSigner(SignerConfig{Tree: tree, PrivateKey: private, Dir: dir})
	if err != nil {
		f.Fatal(err)
	}
	v, _ := NewVerifier(public)
	l := &testLog{store: store, tree: tree, signer: signer, verifier: v}
	appendPayments(f, store, 0, 5)
	l.catchUp(f)
	l.publish(f)
	rec := l.receipt(f, 3)
	f.Add(rec)
	f.Add([]byte(`{"format":"securepay.receipt.v1"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, _, err := CheckReceipt(b, v)
		if err != nil {
			return
		}
		// Only the issued receipt (or one for another event of the same checkpoint, which
		// the fuzzer cannot forge) verifies.
		if !bytes.Equal(b, rec) {
			t.Fatalf("a receipt other than the issued one verified: event %+v", r.Event)
		}
	})
}

// quietPebble keeps pebble's start-up lines out of the test output.
type quietPebble struct{}

func (quietPebble) Infof(string, ...any)      {}
func (quietPebble) Errorf(string, ...any)     {}
func (quietPebble) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
