package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/krun-tee/krun-tee/hostcheck"
)

func init() {
	register(command{
		name:    "host",
		summary: "host check: what this host can run (KVM, TSC, private memory, SEV-SNP, TDX) and how to fix what is missing",
		run: func(ctx context.Context, args []string) error {
			return hostCommand(args, runStdout, runStderr)
		},
	})
}

const hostSynopsis = "host check [--json]"

// hostCommand runs `krun-tee host check`: a table (or JSON) of findings on
// stdout; exit status 0 when at least one mode can run, 1 otherwise.
func hostCommand(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprintln(stdout, "usage: krun-tee "+hostSynopsis)
			return nil
		}
		return usagef("usage: krun-tee %s", hostSynopsis)
	}
	fs := newFlagSet("host check", hostSynopsis, stderr)
	asJSON := fs.Bool("json", false, "print the findings as JSON")
	rest, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("unexpected arguments %q", rest)
	}
	r := hostcheck.Check(hostcheck.Probe())
	summary, sumErr := r.Summary()
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CHECK\tSTATUS\tDETAIL")
		for _, f := range r.Findings {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Name, f.Status, f.Detail)
			if f.Fix != "" && f.Status != hostcheck.OK {
				fmt.Fprintf(tw, "\t\tfix: %s\n", f.Fix)
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if sumErr == nil {
			fmt.Fprintln(stdout, summary)
		}
	}
	if sumErr != nil {
		fmt.Fprintf(stderr, "krun-tee host check: %v\n", sumErr)
		return exitStatus(exitError)
	}
	return nil
}
