package main

import (
	"errors"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startSupervised makes the test process a child subreaper (so orphans of
// the workload come back to it, as they come to PID 1 in the guest), starts
// sh -c script in its own process group and returns a supervisor whose
// killAll is confined to that group.
func startSupervised(t *testing.T, script string) (*supervisor, chan os.Signal) {
	t.Helper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
	sh, err := lookSh()
	if err != nil {
		t.Skip(err)
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD)
	t.Cleanup(func() { signal.Stop(sigs) })
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	pid, err := syscall.ForkExec(sh, []string{"sh", "-c", script}, &syscall.ProcAttr{
		Env:   []string{"PATH=/usr/bin:/bin"},
		Files: []uintptr{devnull.Fd(), devnull.Fd(), devnull.Fd()},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &supervisor{
		child: pid, wait4: wait4, kill: killProcess,
		killAll: func(sig unix.Signal) error { return unix.Kill(-pid, sig) },
		grace:   2 * time.Second, poll: 20 * time.Millisecond,
	}
	return s, sigs
}

func lookSh() (string, error) {
	for _, p := range []string{"/bin/sh", "/usr/bin/sh"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("no /bin/sh")
}

// assertNoChildren checks that everything was reaped.
func assertNoChildren(t *testing.T) {
	t.Helper()
	var ws unix.WaitStatus
	if pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil); !errors.Is(err, unix.ECHILD) {
		t.Errorf("children left after supervision: wait4 = %d, %v", pid, err)
	}
}

func TestSuperviseExitStatus(t *testing.T) {
	s, sigs := startSupervised(t, "exit 7")
	if got := s.run(sigs); got != 7 {
		t.Errorf("status = %d, want 7", got)
	}
	assertNoChildren(t)
}

func TestSuperviseSignalDeath(t *testing.T) {
	s, sigs := startSupervised(t, "kill -KILL $$")
	if got := s.run(sigs); got != 128+9 {
		t.Errorf("status = %d, want 137", got)
	}
	assertNoChildren(t)
}

func TestSuperviseReapsOrphans(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "orphan")
	// The background sleep outlives the workload: init must terminate and
	// reap it, and still report the workload's own status.
	s, sigs := startSupervised(t, "sleep 60 & echo $! > "+pidFile+"; exit 3")
	if got := s.run(sigs); got != 3 {
		t.Errorf("status = %d, want 3", got)
	}
	assertNoChildren(t)
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	var orphan int
	for _, c := range data {
		if c >= '0' && c <= '9' {
			orphan = orphan*10 + int(c-'0')
		}
	}
	if orphan == 0 {
		t.Fatalf("no orphan pid in %q", data)
	}
	if err := unix.Kill(orphan, 0); !errors.Is(err, unix.ESRCH) {
		t.Errorf("orphan %d still exists (kill 0: %v)", orphan, err)
	}
}

func TestSuperviseForwardsSignals(t *testing.T) {
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready")
	s, sigs := startSupervised(t, "trap 'exit 42' TERM; touch "+ready+"; while :; do sleep 0.05; done")
	go func() {
		// Forward only once the trap is installed; the supervisor is
		// what must deliver it.
		for {
			if _, err := os.Stat(ready); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		sigs <- unix.SIGTERM
	}()
	if got := s.run(sigs); got != 42 {
		t.Errorf("status = %d, want 42 (the workload's TERM trap)", got)
	}
	assertNoChildren(t)
}
