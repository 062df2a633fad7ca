package audit_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/securepay/securepay/audit"
	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/internal/pgtest"
	"github.com/securepay/securepay/internal/projtest"
	"github.com/securepay/securepay/projections"
	"github.com/securepay/securepay/projections/pg"
)

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// writeLog writes a generated ledger into s and returns it with the last position.
func writeLog(t testing.TB, s eventstore.Store, commands int) (*projtest.Ledger, uint64) {
	t.Helper()
	l := projtest.NewLedger(42, "a-")
	last, err := projtest.NewWriter(s, l).Write(testContext(t), commands, 25, 5)
	if err != nil {
		t.Fatalf("write log: %v", err)
	}
	return l, last
}

// recompute is the auditor's own hash computation, written from the documented encoding
// with nothing but the standard library and the exported JSON.
func recompute(t testing.TB, line map[string]any) string {
	t.Helper()
	prev, err := hex.DecodeString(line["prev_hash"].(string))
	if err != nil {
		t.Fatalf("prev_hash: %v", err)
	}
	data, err := base64.StdEncoding.DecodeString(line["data_base64"].(string))
	if err != nil {
		t.Fatalf("data_base64: %v", err)
	}
	num := func(k string) uint64 {
		n, err := line[k].(json.Number).Int64()
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		return uint64(n)
	}
	h := sha256.New()
	h.Write(prev)
	var b [8]byte
	for _, k := range []string{"position", "stream_version", "recorded_at_unix_us"} {
		binary.BigEndian.PutUint64(b[:], num(k))
		h.Write(b[:])
	}
	lp := func(s []byte) {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(s)))
		h.Write(n[:])
		h.Write(s)
	}
	meta := line["metadata"].(map[string]any)
	lp([]byte(line["stream"].(string)))
	lp([]byte(line["id"].(string)))
	lp([]byte(line["type"].(string)))
	lp(data)
	for _, k := range []string{"correlation_id", "causation_id", "actor", "traceparent"} {
		lp([]byte(meta[k].(string)))
	}
	return hex.EncodeToString(h.Sum(nil))
}

func decodeLines(t testing.TB, out []byte) []map[string]any {
	t.Helper()
	var lines []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		d := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		d.UseNumber()
		var m map[string]any
		if err := d.Decode(&m); err != nil {
			t.Fatalf("export line %q is not JSON: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	return lines
}

func TestExportIsVerifiableWithoutOurCode(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	_, last := writeLog(t, store, 400)
	ctx := testContext(t)
	cases := []struct {
		name       string
		opts       audit.ExportOptions
		first, end uint64
	}{
		{"all", audit.ExportOptions{PageSize: 97}, 1, last},
		{"from-to", audit.ExportOptions{From: 100, To: 250, PageSize: 64}, 100, 250},
		{"from", audit.ExportOptions{From: last - 5}, last - 5, last},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			n, err := audit.Export(ctx, store, &out, tc.opts)
			if err != nil {
				t.Fatalf("export: %v", err)
			}
			lines := decodeLines(t, out.Bytes())
			if want := tc.end - tc.first + 1; n != want || uint64(len(lines)) != want {
				t.Fatalf("exported %d events (%d lines); want %d", n, len(lines), want)
			}
			prevHash := ""
			for i, m := range lines {
				pos, _ := m["position"].(json.Number).Int64()
				if uint64(pos) != tc.first+uint64(i) {
					t.Fatalf("line %d has position %d; want %d", i, pos, tc.first+uint64(i))
				}
				if got := recompute(t, m); got != m["hash"] {
					t.Fatalf("position %d: recomputed hash %s, exported %s", pos, got, m["hash"])
				}
				if prevHash != "" && m["prev_hash"] != prevHash {
					t.Fatalf("position %d: prev_hash %s does not link to %s", pos, m["prev_hash"], prevHash)
				}
				prevHash = m["hash"].(string)
				if _, ok := m["payload"].(map[string]any); !ok || m["decode_error"] != nil {
					t.Fatalf("position %d: payload %v decode_error %v; want a JSON object and no error", pos, m["payload"], m["decode_error"])
				}
			}
		})
	}
	t.Run("one-stream", func(t *testing.T) {
		var out bytes.Buffer
		stream := domain.AccountStream("a-world")
		n, err := audit.Export(ctx, store, &out, audit.ExportOptions{Stream: stream, PageSize: 10})
		if err != nil {
			t.Fatalf("export %s: %v", stream, err)
		}
		lines := decodeLines(t, out.Bytes())
		if n == 0 || uint64(len(lines)) != n {
			t.Fatalf("exported %d events in %d lines; want the stream's events", n, len(lines))
		}
		for i, m := range lines {
			v, _ := m["stream_version"].(json.Number).Int64()
			if m["stream"] != stream || v != int64(i+1) {
				t.Fatalf("line %d: stream %v version %d; want %s version %d", i, m["stream"], v, stream, i+1)
			}
		}
	})
}

// tamper rewrites one stored event's payload as the superuser, bypassing the append-only
// triggers: what an attacker with database access would do.
func tamper(t testing.TB, schema string, position uint64) {
	t.Helper()
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, pgtest.DSN(t))
	if err != nil {
		t.Fatalf("tamper: connect: %v", err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "SET LOCAL session_replication_role = replica"); err != nil {
		t.Fatalf("tamper: bypass triggers: %v", err)
	}
	tag, err := tx.Exec(ctx, `UPDATE `+pgx.Identifier{schema, "events"}.Sanitize()+
		` SET data = convert_to(replace(convert_from(data, 'UTF8'), '"minor":"', '"minor":"1'), 'UTF8') WHERE position = $1`, int64(position))
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("tamper position %d: %v (%d rows)", position, err, tag.RowsAffected())
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyNamesTheTamperedPosition(t *testing.T) {
	schema := pgtest.Schema(t, "sp_log")
	store := projtest.PostgresStoreIn(t, schema)
	_, last := writeLog(t, store, 300)
	ctx := testContext(t)
	var out, progress bytes.Buffer
	n, err := audit.Verify(ctx, store, &out, audit.VerifyOptions{PageSize: 100, Progress: &progress})
	if err != nil || n != last || !strings.HasPrefix(out.String(), "OK:") {
		t.Fatalf("verify of an untouched log: %d events, %v, %q; want %d events OK", n, err, out.String(), last)
	}
	// Find a debit to tamper with (its amount grows by a digit).
	var target uint64
	page, err := store.ReadAll(ctx, last/2, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range page {
		if e.Type == domain.NameAccountDebited {
			target = e.Position
			break
		}
	}
	if target == 0 {
		t.Fatal("no debit in the middle of the log to tamper with")
	}
	tamper(t, schema, target)
	out.Reset()
	n, err = audit.Verify(ctx, store, &out, audit.VerifyOptions{PageSize: 100})
	var brk *eventstore.ChainBreak
	if !errors.As(err, &brk) || brk.Position != target {
		t.Fatalf("verify after tampering with position %d: err = %v; want a chain break at %d", target, err, target)
	}
	if n != target-1 || !strings.Contains(out.String(), "FAILED") {
		t.Fatalf("verify after tampering: %d verified, output %q; want %d and FAILED", n, out.String(), target-1)
	}
	t.Logf("verify output: %s", strings.TrimSpace(out.String()))
}

func TestBalancesAsOfAgreeWithTheViewsAndCatchDifferences(t *testing.T) {
	store := projtest.PostgresStore(t)
	pool := pgtest.Pool(t, 8)
	schema := pgtest.Schema(t, "sp_views")
	views, err := pg.Open(testContext(t), pg.Config{Pool: pool, Schema: schema, Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	l, last := writeLog(t, store, 600)
	r, err := projections.NewRunner(projections.RunnerConfig{Store: store, Projectors: views.Projectors()})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(rctx) }()
	t.Cleanup(func() { cancel(); <-done })
	ctx := testContext(t)
	if err := r.Wait(ctx, projections.AccountsProjector, last); err != nil {
		t.Fatal(err)
	}
	mid, err := store.ReadAll(ctx, last/2-1, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, asOf := range []projections.AsOf{{}, {Position: last / 3}, {Position: last / 2}, {Time: mid[0].RecordedAt}} {
		var out bytes.Buffer
		rep, err := audit.Balances(ctx, store, &out, audit.BalancesOptions{AsOf: asOf, Reader: views.Reader(), PageSize: 128})
		if err != nil {
			t.Fatalf("balances as of %+v: %v\n%s", asOf, err, out.String())
		}
		if rep.Accounts == 0 || len(rep.Differences) != 0 {
			t.Fatalf("balances as of %+v: %d accounts, differences %+v", asOf, rep.Accounts, rep.Differences)
		}
		if asOf.Time.IsZero() && asOf.Position == 0 && rep.Position != last {
			t.Fatalf("balances now stopped at %d; want %d", rep.Position, last)
		}
		if !asOf.Time.IsZero() {
			// Events of one append share their record time: the point includes all of them.
			next, err := store.ReadAll(ctx, rep.Position, 1)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Position < last/2 || len(next) == 1 && !next[0].RecordedAt.After(asOf.Time) {
				t.Fatalf("balances as of the time of position %d stopped at %d, before the last event recorded by then", last/2, rep.Position)
			}
		}
	}
	// The view is changed behind the projector's back: the audit reports it and fails.
	victim := l.Accounts()[3]
	if _, err := pool.Exec(ctx, `UPDATE `+pgx.Identifier{schema, "balances"}.Sanitize()+` SET posted = posted + 1 WHERE account_id = $1`, string(victim)); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep, err := audit.Balances(ctx, store, &out, audit.BalancesOptions{Reader: views.Reader()})
	if !errors.Is(err, audit.ErrDifferences) {
		t.Fatalf("balances after editing the view: err = %v; want ErrDifferences\n%s", err, out.String())
	}
	found := false
	for _, d := range rep.Differences {
		if d.AccountID == victim && d.What == "posted" && d.View == d.Log+1 {
			found = true
		}
	}
	if !found {
		t.Fatalf("differences %+v do not name %s's posted balance off by one", rep.Differences, victim)
	}
	if !strings.Contains(out.String(), "DIFFERENCES") {
		t.Fatalf("report does not list the differences:\n%s", out.String())
	}
}

func TestReplayShowsStateAfterEachEvent(t *testing.T) {
	store := projtest.EmbeddedStore(t)
	l, _ := writeLog(t, store, 300)
	ctx := testContext(t)
	id := l.Accounts()[0]
	var out bytes.Buffer
	n, err := audit.Replay(ctx, store, &out, domain.AccountStream(id), audit.ReplayOptions{PageSize: 7})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if uint64(len(lines)) != n || n == 0 {
		t.Fatalf("replay wrote %d lines for %d events", len(lines), n)
	}
	var final audit.ReplayLine
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &final); err != nil {
		t.Fatal(err)
	}
	want := l.State.Accounts[id]
	if final.Account == nil || final.Account.Posted != want.Posted || final.Account.Held != want.Held || final.Account.Version != n {
		t.Fatalf("state after the last event = %+v; want posted %d held %d version %d", final.Account, want.Posted, want.Held, n)
	}
	// A payment stream.
	for pid, p := range l.State.Payments {
		out.Reset()
		if _, err := audit.Replay(ctx, store, &out, domain.PaymentStream(pid), audit.ReplayOptions{}); err != nil {
			t.Fatal(err)
		}
		ls := strings.Split(strings.TrimSpace(out.String()), "\n")
		var lastLine audit.ReplayLine
		if err := json.Unmarshal([]byte(ls[len(ls)-1]), &lastLine); err != nil {
			t.Fatal(err)
		}
		if lastLine.Payment == nil || lastLine.Payment.Status != p.Status.String() || lastLine.Payment.Captured != p.Captured {
			t.Fatalf("payment %s after replay = %+v; want status %s captured %d", pid, lastLine.Payment, p.Status, p.Captured)
		}
		break
	}
	if _, err := audit.Replay(ctx, store, &out, "nonsense", audit.ReplayOptions{}); err == nil {
		t.Fatal("replay of a stream that is neither an account nor a payment: no error")
	}
}

func TestParseAsOf(t *testing.T) {
	cases := []struct {
		in   string
		want projections.AsOf
		bad  bool
	}{
		{"42", projections.AsOf{Position: 42}, false},
		{"2026-01-02T03:04:05Z", projections.AsOf{Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}, false},
		{"2026-01-02T03:04:05.5+01:00", projections.AsOf{Time: time.Date(2026, 1, 2, 2, 4, 5, 5e8, time.UTC)}, false},
		{"0", projections.AsOf{}, true},
		{"yesterday", projections.AsOf{}, true},
	}
	for _, tc := range cases {
		got, err := audit.ParseAsOf(tc.in)
		if (err != nil) != tc.bad || !got.Time.Equal(tc.want.Time) || got.Position != tc.want.Position {
			t.Errorf("ParseAsOf(%q) = %+v, %v; want %+v (error: %v)", tc.in, got, err, tc.want, tc.bad)
		}
	}
}
