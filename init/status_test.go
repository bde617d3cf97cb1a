package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/init/confidential"

	"golang.org/x/sys/unix"
)

func TestWaitStatusToExit(t *testing.T) {
	// Raw wait(2) statuses as the kernel encodes them: exit code in bits
	// 8-15, terminating signal in bits 0-6.
	tests := []struct {
		name string
		ws   unix.WaitStatus
		want int
	}{
		{"exit 0", 0, 0},
		{"exit 7", 7 << 8, 7},
		{"exit 255", 255 << 8, 255},
		{"SIGKILL", unix.WaitStatus(unix.SIGKILL), 137},
		{"SIGTERM", unix.WaitStatus(unix.SIGTERM), 143},
		{"SIGSEGV with core", unix.WaitStatus(unix.SIGSEGV) | 0x80, 139},
		{"stopped is not terminal", 0x7f | unix.WaitStatus(unix.SIGSTOP)<<8, statusExec},
	}
	for _, tt := range tests {
		if got := waitStatusToExit(tt.ws); got != tt.want {
			t.Errorf("%s: waitStatusToExit(%#x) = %d, want %d", tt.name, uint32(tt.ws), got, tt.want)
		}
	}
}

func TestExecErrorStatus(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{unix.ENOENT, statusNotFound},
		{fmt.Errorf("exec /bin/x: %w", unix.ENOENT), statusNotFound},
		{unix.ENOTDIR, statusNotFound},
		{unix.EACCES, statusNotExecutable},
		{unix.ENOEXEC, statusNotExecutable},
		{unix.EISDIR, statusNotExecutable},
		{unix.ENOMEM, statusExec},
		{errors.New("other"), statusExec},
	}
	for _, tt := range tests {
		if got := execErrorStatus(tt.err); got != tt.want {
			t.Errorf("execErrorStatus(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

func TestInitErrorLineAndStatus(t *testing.T) {
	err := fmt.Errorf("outer: %w", fail("root", statusRoot, errors.New("/dev/vda did not appear within 10s")))
	if got := statusOf(err); got != statusRoot {
		t.Errorf("statusOf = %d, want %d", got, statusRoot)
	}
	var ie *initError
	if !errors.As(err, &ie) {
		t.Fatal("errors.As found no initError")
	}
	if want := "krun-init: root: /dev/vda did not appear within 10s"; ie.Error() != want {
		t.Errorf("line = %q, want %q", ie.Error(), want)
	}
	if got := statusOf(errors.New("plain")); got != statusExec {
		t.Errorf("statusOf(plain) = %d, want %d", got, statusExec)
	}
	// The documented statuses must stay distinct and inside 120-124.
	seen := map[int]bool{}
	for _, s := range []int{statusSetup, statusRoot, statusConfig, statusSwitchRoot, statusExec} {
		if s < 120 || s > 124 || seen[s] {
			t.Errorf("init status %d is outside 120-124 or duplicated", s)
		}
		seen[s] = true
	}
}

// TestDocTableMatchesExitcodes keeps the table in doc.go in step with
// package guestabi: every documented "NNN  step:" row names the step the
// code has there, and every init status is documented.
func TestDocTableMatchesExitcodes(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[int]string{}
	for _, line := range strings.Split(string(doc), "\n") {
		f := strings.Fields(strings.TrimPrefix(line, "//"))
		if len(f) < 2 || !strings.HasSuffix(f[1], ":") {
			continue
		}
		code, err := strconv.Atoi(f[0])
		if err != nil {
			continue
		}
		documented[code] = strings.TrimSuffix(f[1], ":")
	}
	for code := 0; code < 256; code++ {
		step, ok := guestabi.StatusStep(code)
		if !ok || code == statusNotExecutable || code == statusNotFound {
			continue
		}
		if documented[code] != step {
			t.Errorf("doc.go documents %d as %q, guestabi says %q", code, documented[code], step)
		}
	}
	for code := range documented {
		if !guestabi.IsInitStatus(code) {
			t.Errorf("doc.go documents %d, which guestabi does not know", code)
		}
	}
}

func TestConfidentialErrorIsOneLine(t *testing.T) {
	_, err := confidential.ParseLaunch("krun.tee=snp")
	ie := asInitError(err)
	if statusOf(ie) != guestabi.StatusLaunchParams {
		t.Fatalf("status %d: %v", statusOf(ie), ie)
	}
	if s := ie.Error(); !strings.HasPrefix(s, "krun-init: launch: launch params: missing") || strings.Contains(s, "\n") {
		t.Fatalf("diagnostic %q", s)
	}
	if statusOf(asInitError(errors.New("x"))) != guestabi.StatusConfidentialInternal {
		t.Fatal("a foreign error is not reported as an internal confidential failure")
	}
}
