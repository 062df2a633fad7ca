package main

import (
	"strings"
	"testing"
)

// A mistaken loadtest command line is a usage error (exit 2) that names the flag, and
// sends nothing anywhere.
func TestLoadtestRefusesBadFlags(t *testing.T) {
	noEnv := func(string) string { return "" }
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--http", "3"}, "--http must be 2 or 1.1"},
		{[]string{"--rpc", "rest"}, "--rpc must be connect or grpc"},
		{[]string{"--process", "/usr/bin/postgres"}, "--process"},
		{[]string{"--server", "https://example.com"}, "not on loopback"},
		{[]string{"--scenario", "all"}, "--scenario must be one of"},
		{[]string{"--accounts", "1", "--concurrency", "0"}, "--concurrency must be in 1..4096"},
		{[]string{"--gc-percent", "0"}, "--gc-percent must be in 1..10000"},
	}
	for _, c := range cases {
		code, _, stderr := execCLI(noEnv, append([]string{"loadtest"}, c.args...)...)
		if code != 2 || !strings.Contains(stderr, c.want) {
			t.Errorf("loadtest %v: exit %d, stderr %q; want exit 2 and %q", c.args, code, stderr, c.want)
		}
	}
}
