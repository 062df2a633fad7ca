package projections_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The read side is split by dependency, the way eventstore is: the contract links no
// driver, and each backend links its own driver and nothing of the others. These rules
// say, for every package under projections/ and for the auditor that reads through the
// contract, which packages of this module and which other modules it may depend on
// (directly or not); the standard library is always allowed. Written as a test, so an
// accidental import fails CI instead of review (domain/imports_test.go does the same for
// the domain).
type importRule struct {
	pkg     string   // relative to the module
	own     []string // packages of this module it may depend on
	modules []string // other modules it may depend on
	why     string
}

var importRules = []importRule{
	{
		pkg: "projections", own: []string{"domain", "eventstore"},
		why: "the runtime, the fold and the query contract: the API and the auditor link it, so it links no driver",
	},
	{
		pkg: "projections/memory", own: []string{"domain", "eventstore", "projections"},
		why: "the views of `securepay dev` keep maps, nothing else",
	},
	{
		pkg: "projections/pg", own: []string{"domain", "eventstore", "projections", "internal/pgerr"},
		modules: []string{"github.com/jackc/pgx/v5", "github.com/jackc/pgpassfile", "github.com/jackc/pgservicefile",
			"github.com/jackc/puddle/v2", "golang.org/x/sync", "golang.org/x/text"}, // pgx and what pgx needs
		why: "the PostgreSQL views link pgx and no other backend",
	},
	{
		pkg: "projections/redis", own: []string{"domain", "eventstore", "projections", "internal/bounded"},
		modules: []string{"github.com/redis/go-redis/v9", "github.com/cespare/xxhash/v2", "go.uber.org/atomic",
			"golang.org/x/sys"}, // go-redis and what go-redis needs
		why: "the Redis views link go-redis and no other backend",
	},
	{
		pkg: "audit", own: []string{"domain", "eventstore", "projections", "internal/progress"},
		modules: []string{"golang.org/x/term", "golang.org/x/sys"}, // the progress bar's terminal
		why: "the auditor is an independent second computation: it reads the log through the eventstore " +
			"interface and compares with a projections.Reader; the CLI wires PostgreSQL, so it links neither pgx nor go-redis",
	},
}

func goList(t *testing.T, args ...string) []string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is not on PATH, so the import rules cannot be checked: %v", err)
	}
	out, err := exec.Command(goBin, append([]string{"list"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("go list %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.Fields(strings.TrimSpace(string(out)))
}

func TestPackagesImportOnlyWhatTheirLayerAllows(t *testing.T) {
	module := goList(t, "-m")[0]
	for _, rule := range importRules {
		t.Run(rule.pkg, func(t *testing.T) {
			self := module + "/" + rule.pkg
			// One line per dependency outside the standard library: its path and its module.
			lines := goList(t, "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}|{{with .Module}}{{.Path}}{{end}}{{end}}", self)
			var offenders []string
			for _, line := range lines {
				pkg, mod, _ := strings.Cut(line, "|")
				switch {
				case pkg == self:
				case mod == module:
					if !slices.Contains(rule.own, strings.TrimPrefix(pkg, module+"/")) {
						offenders = append(offenders, pkg)
					}
				case !slices.Contains(rule.modules, mod) && !slices.Contains(offenders, "module "+mod):
					offenders = append(offenders, "module "+mod)
				}
			}
			if len(offenders) > 0 {
				t.Fatalf("%s depends on what its layer does not allow (%s):\n\t%s", rule.pkg, rule.why, strings.Join(offenders, "\n\t"))
			}
		})
	}
}

// A new backend under projections/ gets its own rule above, so that its driver cannot
// spread unseen.
func TestEveryProjectionsPackageHasAnImportRule(t *testing.T) {
	module := goList(t, "-m")[0]
	for _, pkg := range goList(t, module+"/projections/...") {
		rel := strings.TrimPrefix(pkg, module+"/")
		if !slices.ContainsFunc(importRules, func(r importRule) bool { return r.pkg == rel }) {
			t.Errorf("%s has no rule in importRules: say which packages and modules it may link", rel)
		}
	}
}
