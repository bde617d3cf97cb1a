package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

func TestExitCodes(t *testing.T) {
	register(command{name: "test-fail", summary: "x", run: func(context.Context, []string) error { return errors.New("boom") }})
	register(command{name: "test-status", summary: "x", run: func(context.Context, []string) error { return exitStatus(42) }})
	register(command{name: "test-usage", summary: "x", run: func(context.Context, []string) error { return usagef("need --x") }})
	defer func() {
		delete(commands, "test-fail")
		delete(commands, "test-status")
		delete(commands, "test-usage")
	}()
	cases := []struct {
		args      []string
		code      int
		stderrHas string
		stdoutHas string
	}{
		{[]string{}, exitUsage, "", "usage: krun-tee"},
		{[]string{"--help"}, exitOK, "", "commands:"},
		{[]string{"nope"}, exitUsage, "unknown command", ""},
		{[]string{"test-fail"}, exitError, "krun-tee test-fail: boom", ""},
		{[]string{"test-status"}, 42, "", ""},
		{[]string{"test-usage"}, exitUsage, "need --x", ""},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		got := runMain(c.args, &out, &errb)
		if got != c.code {
			t.Errorf("%v: exit %d, want %d (stderr %q)", c.args, got, c.code, errb.String())
		}
		if !strings.Contains(errb.String(), c.stderrHas) || !strings.Contains(out.String(), c.stdoutHas) {
			t.Errorf("%v: stdout %q stderr %q", c.args, out.String(), errb.String())
		}
	}
}
