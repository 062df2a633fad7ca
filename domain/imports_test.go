package domain_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The domain must stay pure Go over the standard library (STYLE principle 1): no SQL, no
// protobuf runtime, no backend, not even another package of this module. Writing the rule as
// a test makes an accidental import fail CI instead of review.
func TestDomainImportsOnlyStandardLibrary(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is not on PATH, so the import rule cannot be checked: %v", err)
	}
	// The test runs in domain/, so ./... is the domain package and anything under it.
	cmd := exec.Command(goBin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "./...")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps ./... failed: %v\n%s", err, out)
	}
	self, err := exec.Command(goBin, "list", ".").Output()
	if err != nil {
		t.Fatalf("go list . failed: %v", err)
	}
	domainPath := strings.TrimSpace(string(self))
	var offenders []string
	seenSelf := false
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg := strings.TrimSpace(line)
		switch {
		case pkg == "":
		case pkg == domainPath || strings.HasPrefix(pkg, domainPath+"/"):
			seenSelf = true
		default:
			offenders = append(offenders, pkg)
		}
	}
	if !seenSelf {
		t.Fatalf("go list -deps did not list the domain package %s itself; output:\n%s", domainPath, out)
	}
	if len(offenders) > 0 {
		t.Fatalf("domain must import only the standard library, but depends on: %s", strings.Join(offenders, ", "))
	}
}
