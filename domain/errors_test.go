package domain_test

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/securepay/securepay/domain"
)

var reasonShape = regexp.MustCompile(`^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$`)

// TestReasons walks the closed set the way connect-go's TestCode walks its codes: every
// reason has exactly one sentinel, finds its way back from it even when wrapped, and
// counts as a domain error.
func TestReasons(t *testing.T) {
	reasons := domain.Reasons()
	if len(reasons) == 0 {
		t.Fatal("Reasons is empty")
	}
	seen := map[domain.Reason]bool{}
	sentinels := map[error]domain.Reason{}
	for _, r := range reasons {
		if r == "" {
			t.Error("a sentinel in refusals carries no reason: make it a refusal, not errors.New")
			continue
		}
		if seen[r] {
			t.Errorf("Reasons lists %s twice", r)
		}
		seen[r] = true
		if !reasonShape.MatchString(string(r)) {
			t.Errorf("reason %q is not UPPER_SNAKE_CASE, the form clients switch on", r)
		}
		err := r.Err()
		if err == nil {
			t.Errorf("%s has no sentinel error", r)
			continue
		}
		if other, dup := sentinels[err]; dup {
			t.Errorf("%s and %s share the sentinel %q", other, r, err)
		}
		sentinels[err] = r
		if got := domain.ReasonOf(err); got != r {
			t.Errorf("the sentinel of %s says its reason is %q", r, got)
		}
		wrapped := fmt.Errorf("decide: %w: account acc-1 has 0.00 USD available", err)
		if got := domain.ReasonOf(wrapped); got != r || !domain.IsDomainError(wrapped) || !errors.Is(wrapped, err) {
			t.Errorf("%s wrapped with %%w: ReasonOf = %q, IsDomainError = %v, errors.Is = %v", r, got, domain.IsDomainError(wrapped), errors.Is(wrapped, err))
		}
	}
	if err := domain.Reason("NO_SUCH_REASON").Err(); err != nil {
		t.Errorf("a reason outside the set has the sentinel %v", err)
	}
	for _, err := range []error{nil, errors.New(domain.ErrInsufficientFunds.Error()), errors.New("disk full")} {
		if r := domain.ReasonOf(err); r != "" || domain.IsDomainError(err) {
			t.Errorf("ReasonOf(%v) = %q, want \"\": only the sentinels themselves carry a reason", err, r)
		}
	}
	// The caller owns what Reasons returns: changing it must not change the set.
	reasons[0] = "CHANGED"
	if domain.Reasons()[0] == "CHANGED" {
		t.Error("Reasons returned the package's own list, not a copy")
	}
}

// TestReasonsAreClosed reads this package's source, the way pebble writes lint rules as
// tests, because the compiler cannot see the rule: every exported Err… variable must be
// listed in refusals (so Reasons, which the API's test walks, includes it) and every Reason
// constant must belong to a listed sentinel. A refusal added without either would reach
// the API with no Connect code, and no other test would notice.
func TestReasonsAreClosed(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var (
		sentinels []string              // exported package-level Err… variables
		listed    []string              // the elements of refusals
		constants = map[string]string{} // Reason constant name -> value
	)
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatalf("parse %s: %v", name, err)
		}
		for _, decl := range f.Decls {
			gen, ok := decl.(*ast.GenDecl)
			if !ok {
				continue
			}
			for _, spec := range gen.Specs {
				vs, ok := spec.(*ast.ValueSpec)
				if !ok {
					continue
				}
				for i, id := range vs.Names {
					switch {
					case gen.Tok == token.CONST && isIdent(vs.Type, "Reason"):
						lit, ok := vs.Values[i].(*ast.BasicLit)
						if !ok || lit.Kind != token.STRING {
							t.Fatalf("%s: Reason constant %s must be a string literal, so that this test can read it", fset.Position(id.Pos()), id.Name)
						}
						constants[id.Name], _ = strconv.Unquote(lit.Value)
					case gen.Tok == token.VAR && strings.HasPrefix(id.Name, "Err") && id.IsExported():
						sentinels = append(sentinels, id.Name)
					case gen.Tok == token.VAR && id.Name == "refusals":
						list, ok := vs.Values[i].(*ast.CompositeLit)
						if !ok {
							t.Fatalf("%s: refusals must be a composite literal", fset.Position(id.Pos()))
						}
						for _, el := range list.Elts {
							if el, ok := el.(*ast.Ident); ok {
								listed = append(listed, el.Name)
							}
						}
					}
				}
			}
		}
	}
	if len(sentinels) == 0 || len(listed) == 0 || len(constants) == 0 {
		t.Fatalf("found %d sentinels, %d listed refusals and %d Reason constants: the test no longer reads the source it checks", len(sentinels), len(listed), len(constants))
	}
	for _, s := range sentinels {
		if !slices.Contains(listed, s) {
			t.Errorf("%s is not listed in refusals: Reasons misses it, so the API has no code for it", s)
		}
	}
	for i, s := range listed {
		if slices.Contains(listed[:i], s) {
			t.Errorf("refusals lists %s twice", s)
		}
	}
	reasons := domain.Reasons()
	named := map[string]string{} // value -> constant
	for name, value := range constants {
		if !slices.Contains(reasons, domain.Reason(value)) {
			t.Errorf("Reason constant %s (%q) belongs to no listed sentinel", name, value)
		}
		if other, dup := named[value]; dup {
			t.Errorf("Reason constants %s and %s share the value %q", other, name, value)
		}
		named[value] = name
	}
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}
