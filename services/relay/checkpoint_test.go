package relay_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/securepay/securepay/internal/pgtest"
	"github.com/securepay/securepay/services/relay"
)

// Both checkpoint stores: empty reads as 0, saves are read back, and a save never moves
// the checkpoint back.
func TestCheckpoints(t *testing.T) {
	ctx := context.Background()
	pg, err := relay.OpenPGCheckpoints(ctx, pgtest.Pool(t, 2), pgtest.Schema(t, "sp_relaycp"), "relay-a")
	if err != nil {
		t.Fatal(err)
	}
	for name, cps := range map[string]relay.Checkpoints{
		"postgres": pg,
		"file":     relay.FileCheckpoints{Path: filepath.Join(t.TempDir(), "relay.checkpoint")},
	} {
		t.Run(name, func(t *testing.T) {
			if cp, err := cps.Load(ctx); err != nil || cp != 0 {
				t.Fatalf("fresh Load = %d, %v; want 0", cp, err)
			}
			for _, pos := range []uint64{7, 7, 1000} {
				if err := cps.Save(ctx, pos); err != nil {
					t.Fatalf("Save %d: %v", pos, err)
				}
				if cp, err := cps.Load(ctx); err != nil || cp != pos {
					t.Fatalf("Load after Save %d = %d, %v", pos, cp, err)
				}
			}
			if err := cps.Save(ctx, 999); !errors.Is(err, relay.ErrCheckpointAhead) {
				t.Fatalf("Save 999 over 1000: %v, want ErrCheckpointAhead", err)
			}
			if cp, _ := cps.Load(ctx); cp != 1000 {
				t.Fatalf("checkpoint moved back to %d", cp)
			}
		})
	}
	// Names are separate relays.
	other, err := relay.OpenPGCheckpoints(ctx, pgtest.Pool(t, 2), "sp_relaycp_unused", "")
	if err == nil {
		t.Fatalf("an empty relay name was accepted: %v", other)
	}
	if _, err := relay.OpenPGCheckpoints(ctx, pgtest.Pool(t, 2), "Bad-Schema", "x"); err == nil {
		t.Fatal("a schema that is not an identifier was accepted")
	}
}

func TestFileCheckpointRefusesGarbage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cp")
	if err := os.WriteFile(path, []byte("twelve\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := (relay.FileCheckpoints{Path: path}).Load(context.Background()); err == nil {
		t.Fatal("a checkpoint file holding no number was read")
	}
}
