package services

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/securepay/securepay/domain"
	"github.com/securepay/securepay/eventstore"
	"github.com/securepay/securepay/projections"
)

// TestEveryDomainReasonHasACode walks domain.Reasons, the domain's closed set, the way
// connect-go's TestCode walks its codes: each reason must map to a deliberate Connect
// code, reach the client as that reason, and keep its message (written for people).
func TestEveryDomainReasonHasACode(t *testing.T) {
	for _, r := range domain.Reasons() {
		code, ok := codes[Reason(r)]
		if !ok {
			t.Errorf("domain reason %s has no Connect code in codes", r)
			continue
		}
		if code == connect.CodeInternal || code == connect.CodeUnknown {
			t.Errorf("domain reason %s maps to %v, which clients read as our failure, not theirs", r, code)
		}
		err := toConnectError(context.Background(), slog.New(slog.DiscardHandler), "/test", fmt.Errorf("decide: %w: details for the caller", r.Err()))
		if connect.CodeOf(err) != code || ReasonOf(err) != Reason(r) || !strings.Contains(err.Error(), "details for the caller") {
			t.Errorf("%s: want %v %s with the message, got %v %q", r, code, r, err, ReasonOf(err))
		}
	}
}

// TestReasonWithoutCodeIsInternal: were a domain reason ever missing from codes, its
// refusal reaches the client as INTERNAL (no guessed code that could mislead it) and the
// operator's log names the reason.
func TestReasonWithoutCodeIsInternal(t *testing.T) {
	missing := domain.ReasonInsufficientFunds
	table := maps.Clone(codes)
	delete(table, Reason(missing))
	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	err := mapError(context.Background(), log, "/test", fmt.Errorf("decide: %w: acc-1 has 0.00 USD", missing.Err()), table)
	var cerr *connect.Error
	if !errors.As(err, &cerr) || cerr.Code() != connect.CodeInternal || ReasonOf(err) != ReasonInternal || cerr.Message() != "internal error" {
		t.Fatalf("want INTERNAL %s \"internal error\", got %v %q", ReasonInternal, err, ReasonOf(err))
	}
	if !strings.Contains(logged.String(), string(missing)) || !strings.Contains(logged.String(), "acc-1 has 0.00 USD") {
		t.Fatalf("want the reason and the refusal in the operator's log, got %q", logged.String())
	}
}

func TestErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		code   connect.Code
		reason Reason
	}{
		{"conflict", fmt.Errorf("append: %w", &eventstore.ConflictError{Stream: "account-a"}), connect.CodeAborted, ReasonConflict},
		{"view behind", fmt.Errorf("wait: %w", projections.ErrNotCaughtUp), connect.CodeDeadlineExceeded, ReasonNotCaughtUp},
		{"trimmed history", projections.ErrHistoryTrimmed, connect.CodeFailedPrecondition, ReasonHistoryTrimmed},
		{"not in a view", projections.ErrNotFound, connect.CodeNotFound, ReasonNotFound},
		{"store closed", eventstore.ErrClosed, connect.CodeUnavailable, ReasonUnavailable},
		{"internal", errors.New("pgx: connect to postgres://admin:hunter2@10.0.0.5/ledger: refused"), connect.CodeInternal, ReasonInternal},
	} {
		var logged bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logged, nil))
		err := toConnectError(context.Background(), log, "/securepay.ledger.v1.PaymentService/Transfer", tc.err)
		if connect.CodeOf(err) != tc.code || ReasonOf(err) != tc.reason {
			t.Errorf("%s: want %v %s, got %v %q", tc.name, tc.code, tc.reason, err, ReasonOf(err))
		}
		if tc.code == connect.CodeInternal {
			var cerr *connect.Error
			if !errors.As(err, &cerr) || cerr.Message() != "internal error" {
				t.Errorf("%s: want the client to see only \"internal error\", got %v", tc.name, err)
			}
			if !strings.Contains(logged.String(), "hunter2") {
				t.Errorf("%s: want the full error in the log for operators, got log %q", tc.name, logged.String())
			}
		}
	}
}

// TestAPIReasonsAreClosed reads the package's source, the way pebble writes lint rules as
// tests, for what the compiler cannot check: every Reason constant of the API has its code
// in codes, and every newError call that names a code and a reason names that reason's
// code, so a client never sees one reason under two codes.
func TestAPIReasonsAreClosed(t *testing.T) {
	domainReasons := reasonConstants(t, "../domain", nil)
	ours := reasonConstants(t, ".", domainReasons)
	for name, r := range ours {
		if _, ok := codes[r]; !ok {
			t.Errorf("Reason constant %s (%q) has no code in codes", name, r)
		}
	}
	calls := 0
	for _, f := range parsePackage(t, ".") {
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || !isIdent(call.Fun, "newError") || len(call.Args) < 2 {
				return true
			}
			code, okCode := connectCode(call.Args[0])
			id, okReason := call.Args[1].(*ast.Ident)
			if !okCode || !okReason {
				return true // a code chosen at run time (the table lookup itself)
			}
			r, known := ours[id.Name]
			if !known {
				return true // a reason chosen at run time
			}
			calls++
			if want := codes[r]; code != want {
				t.Errorf("%s: newError sends %s as %v, codes says %v", fileLine(call), r, code, want)
			}
			return true
		})
	}
	if calls < 5 {
		t.Fatalf("found only %d newError calls with a constant code and reason: the test no longer reads the calls it checks", calls)
	}
}

// TestAPIReadmeListsEveryReason holds api/README.md's reason table, what client authors
// read, to codes: the same reasons, each under its code.
func TestAPIReadmeListsEveryReason(t *testing.T) {
	raw, err := os.ReadFile("../api/README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(raw), "\n| reason | code |\n|---|---|\n")
	if !ok {
		t.Fatal("api/README.md has no \"| reason | code |\" table")
	}
	table, _, _ = strings.Cut(table, "\n\n")
	quoted := regexp.MustCompile("`([A-Z_]+)`")
	documented := map[Reason]string{}
	for _, row := range strings.Split(table, "\n") {
		cells := strings.Split(row, "|")
		if len(cells) != 4 {
			t.Fatalf("api/README.md: reason table row %q does not have two cells", row)
		}
		code := quoted.FindStringSubmatch(cells[2])
		if code == nil {
			t.Fatalf("api/README.md: row %q names no code", row)
		}
		for _, m := range quoted.FindAllStringSubmatch(cells[1], -1) {
			documented[Reason(m[1])] = code[1]
		}
	}
	for _, r := range Reasons() {
		want := strings.ToUpper(codes[r].String())
		switch got, ok := documented[r]; {
		case !ok:
			t.Errorf("api/README.md does not list the reason %s (%s)", r, want)
		case got != want:
			t.Errorf("api/README.md lists %s under %s, the server sends it as %s", r, got, want)
		}
	}
	for r := range documented {
		if _, ok := codes[r]; !ok {
			t.Errorf("api/README.md lists %s, which the server never sends", r)
		}
	}
}

// reasonConstants reads the Reason constants declared in the package in dir: a string
// literal, or a conversion of one of resolve's (the domain's) constants.
func reasonConstants(t *testing.T, dir string, resolve map[string]Reason) map[string]Reason {
	t.Helper()
	out := map[string]Reason{}
	for _, f := range parsePackage(t, dir) {
		for _, decl := range f.Decls {
			gen, ok := decl.(*ast.GenDecl)
			if !ok || gen.Tok != token.CONST {
				continue
			}
			for _, spec := range gen.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, id := range vs.Names {
					if i >= len(vs.Values) {
						continue
					}
					var v ast.Expr = vs.Values[i]
					if conv, ok := v.(*ast.CallExpr); ok && isIdent(conv.Fun, "Reason") && len(conv.Args) == 1 {
						v = conv.Args[0]
					} else if !isIdent(vs.Type, "Reason") {
						continue
					}
					switch v := v.(type) {
					case *ast.BasicLit:
						s, err := strconv.Unquote(v.Value)
						if err != nil {
							t.Fatalf("%s: %v", fileLine(v), err)
						}
						out[id.Name] = Reason(s)
					case *ast.SelectorExpr:
						r, ok := resolve[v.Sel.Name]
						if !ok {
							t.Fatalf("%s: cannot resolve the reason %s", fileLine(v), id.Name)
						}
						out[id.Name] = r
					default:
						t.Fatalf("%s: Reason constant %s must be a string literal or a domain reason, so that this test can read it", fileLine(v), id.Name)
					}
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("no Reason constants found in %s: the test no longer reads the source it checks", dir)
	}
	return out
}

// sourceFiles positions what the source-reading tests parse, for their messages.
var sourceFiles = token.NewFileSet()

func parsePackage(t *testing.T, dir string) []*ast.File {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(sourceFiles, name, nil, 0)
		if err != nil {
			t.Fatalf("parse %s: %v", name, err)
		}
		files = append(files, f)
	}
	return files
}

// camelHump finds where a Go name turns into connect's text form of a code, which is the
// name in snake case: FailedPrecondition -> failed_precondition.
var camelHump = regexp.MustCompile("([a-z])([A-Z])")

// connectCode reads connect.CodeXxx as a code, by its name.
func connectCode(e ast.Expr) (connect.Code, bool) {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok || !isIdent(sel.X, "connect") {
		return 0, false
	}
	name, ok := strings.CutPrefix(sel.Sel.Name, "Code")
	if !ok {
		return 0, false
	}
	var code connect.Code
	snake := camelHump.ReplaceAllString(name, "${1}_${2}")
	if err := code.UnmarshalText([]byte(strings.ToLower(snake))); err != nil {
		return 0, false
	}
	return code, true
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

func fileLine(n ast.Node) string { return sourceFiles.Position(n.Pos()).String() }
