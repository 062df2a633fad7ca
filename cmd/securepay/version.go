package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"text/tabwriter"
)

func versionCommand() *Command {
	return &Command{
		UsageLine: "securepay version",
		Short:     "print what this binary was built from: module version, VCS revision and time, Go version",
		Run:       runVersion,
	}
}

func runVersion(_ context.Context, e env, _ []string) error {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return errors.New("version: this binary carries no build information")
	}
	return writeVersion(e.stdout, bi)
}

// writeVersion prints the main module's version and, when the build recorded them, the
// VCS revision, its time and whether the work tree had uncommitted changes.
func writeVersion(w io.Writer, bi *debug.BuildInfo) error {
	version := bi.Main.Version
	if version == "" {
		version = "(unknown)"
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "securepay\t%s\n", version)
	for _, key := range []string{"vcs.revision", "vcs.time", "vcs.modified"} {
		for _, s := range bi.Settings {
			if s.Key == key {
				fmt.Fprintf(tw, "%s\t%s\n", key, s.Value)
			}
		}
	}
	fmt.Fprintf(tw, "go\t%s\n", bi.GoVersion)
	return tw.Flush()
}
