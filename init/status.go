package main

import (
	"errors"
	"fmt"

	"github.com/krun-tee/krun-tee/guestabi"
	"golang.org/x/sys/unix"
)

// Exit statuses reported for init's own failures; the table lives in
// package guestabi (shared with the host) and is documented in doc.go.
const (
	statusSetup      = guestabi.StatusSetup
	statusRoot       = guestabi.StatusRoot
	statusConfig     = guestabi.StatusConfig
	statusSwitchRoot = guestabi.StatusSwitchRoot
	statusExec       = guestabi.StatusExec
	// statusNotExecutable and statusNotFound follow the shell convention.
	statusNotExecutable = guestabi.StatusNotExecutable
	statusNotFound      = guestabi.StatusNotFound
	// signalBase is added to the number of the signal that killed the workload.
	signalBase = guestabi.StatusSignalBase
)

// initError is a failure of one of init's own steps. It carries the status
// reported to the VMM and renders as the one-line console diagnostic.
type initError struct {
	step   string
	status int
	err    error
}

func (e *initError) Error() string { return fmt.Sprintf("krun-init: %s: %v", e.step, e.err) }
func (e *initError) Unwrap() error { return e.err }

// fail wraps err as a failure of step, reported with status.
func fail(step string, status int, err error) *initError {
	return &initError{step: step, status: status, err: err}
}

// statusOf returns the status to report for err: the status of the first
// initError in its chain, statusExec for anything else.
func statusOf(err error) int {
	var ie *initError
	if errors.As(err, &ie) {
		return ie.status
	}
	return statusExec
}

// waitStatusToExit maps a wait(2) status of the workload to the shell
// convention: the exit code, or 128+signal for a signal death.
func waitStatusToExit(ws unix.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return signalBase + int(ws.Signal())
	default:
		// Stopped/continued are not terminal; callers only pass terminal
		// statuses, so this is a defensive value, not a real outcome.
		return statusExec
	}
}

// execErrorStatus maps an exec failure to 127 (not found) or 126 (found but
// not executable); other errors are init's own (statusExec).
func execErrorStatus(err error) int {
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
		return statusNotFound
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.ENOEXEC),
		errors.Is(err, unix.EISDIR), errors.Is(err, unix.EPERM),
		errors.Is(err, unix.ETXTBSY), errors.Is(err, unix.ELIBBAD):
		return statusNotExecutable
	default:
		return statusExec
	}
}
