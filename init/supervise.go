package main

import (
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// forwardedSignals are passed on to the workload when init receives them
// (the VMM or the kernel may deliver them to PID 1).
var forwardedSignals = []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2}

// supervisor waits for the workload as PID 1 must: it reaps every child that
// exits (orphans are re-parented to init), forwards signals to the workload,
// and once the workload is gone terminates and reaps whatever it left behind.
type supervisor struct {
	child int // the workload's pid
	// wait4 and kill are the system calls; killAll signals every process
	// but init (kill(-1, sig) in production, something narrower in tests).
	wait4   func(pid int, ws *unix.WaitStatus, options int, ru *unix.Rusage) (int, error)
	kill    func(pid int, sig unix.Signal) error
	killAll func(sig unix.Signal) error
	// grace is how long leftovers get between SIGTERM and SIGKILL.
	grace time.Duration
	// poll bounds how long a lost SIGCHLD could delay reaping.
	poll time.Duration
}

// run supervises until the workload has exited and its leftovers are reaped,
// and returns the workload's exit status (128+signal for a signal death).
// sigs must have been subscribed to SIGCHLD and forwardedSignals before the
// workload was started, so no exit can go unnoticed.
func (s *supervisor) run(sigs <-chan os.Signal) int {
	tick := time.NewTicker(s.poll)
	defer tick.Stop()
	var (
		ws   unix.WaitStatus
		done bool
	)
	for !done {
		ws, done = s.reap(ws)
		if done {
			break
		}
		select {
		case sig := <-sigs:
			if us, ok := sig.(unix.Signal); ok && us != unix.SIGCHLD {
				_ = s.kill(s.child, us) // it may have just exited: the next reap tells
			}
		case <-tick.C:
		}
	}
	s.cleanup(sigs)
	return waitStatusToExit(ws)
}

// reap collects every exited child without blocking, reporting whether the
// workload was among them (and its status).
func (s *supervisor) reap(prev unix.WaitStatus) (unix.WaitStatus, bool) {
	ws := prev
	done := false
	for {
		var st unix.WaitStatus
		pid, err := s.wait4(-1, &st, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			// ECHILD with the workload never seen would mean someone else
			// reaped it; treat it as gone rather than wait forever.
			if errors.Is(err, unix.ECHILD) && !done {
				return ws, true
			}
			return ws, done
		}
		if pid == s.child && (st.Exited() || st.Signaled()) {
			ws, done = st, true
		}
	}
}

// cleanup sends SIGTERM to every remaining process, waits up to grace for
// them to exit (reaping as they do), then SIGKILLs and reaps the rest.
func (s *supervisor) cleanup(sigs <-chan os.Signal) {
	if s.drain() {
		return
	}
	_ = s.killAll(unix.SIGTERM)
	deadline := time.Now().Add(s.grace)
	for time.Now().Before(deadline) {
		if s.drain() {
			return
		}
		select {
		case <-sigs:
		case <-time.After(s.poll):
		}
	}
	_ = s.killAll(unix.SIGKILL)
	// SIGKILL cannot be caught; allow a bounded time for the kernel to tear
	// processes down (one stuck in uninterruptible sleep must not hang init).
	deadline = time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && !s.drain() {
		time.Sleep(10 * time.Millisecond)
	}
}

// drain reaps exited children and reports whether none are left.
func (s *supervisor) drain() bool {
	for {
		var st unix.WaitStatus
		pid, err := s.wait4(-1, &st, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD):
			return true
		case err != nil || pid == 0:
			return false
		}
	}
}
