package main

// The system calls init makes, each behind a small typed wrapper that names
// what it does and wraps its error with the path involved. Nothing else in
// this package calls unix.* for side effects.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/krun-tee/krun-tee/guestabi"
)

// exitPort is the I/O port the VMM watches: one byte written there is the
// guest's exit status, and the VMM stops the VM.
const exitPort = guestabi.ExitPort

// mountFS mounts a filesystem of type fstype from source at target,
// creating target if needed.
func mountFS(source, target, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", target, err)
	}
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", source, fstype, target, err)
	}
	return nil
}

// moveMount moves the mount at from to to (MS_MOVE), creating to if needed.
func moveMount(from, to string) error {
	if err := os.MkdirAll(to, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", to, err)
	}
	if err := unix.Mount(from, to, "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move mount %s to %s: %w", from, to, err)
	}
	return nil
}

// switchRoot makes the mount at dir the root: move it onto / and chroot
// into it, as switch_root(8) does.
func switchRoot(dir string) error {
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("chdir %s: %w", dir, err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", dir, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	return nil
}

// unmount unmounts target.
func unmount(target string) error {
	if err := unix.Unmount(target, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}

// remountReadOnly flushes and remounts the filesystem at target read-only.
// For the switched-to root this is the clean unmount: ext4 commits its
// journal and marks itself clean, and no later write can dirty it.
func remountReadOnly(target string) error {
	if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("remount %s read-only: %w", target, err)
	}
	return nil
}

// syncAll flushes every filesystem's dirty data to its device.
func syncAll() { unix.Sync() }

// waitForBlockDevice polls until path exists as a block device or timeout
// passes. devtmpfs creates the node when the driver probes the disk.
func waitForBlockDevice(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var st unix.Stat_t
		err := unix.Stat(path, &st)
		if err == nil {
			if st.Mode&unix.S_IFMT != unix.S_IFBLK {
				return fmt.Errorf("%s is not a block device", path)
			}
			return nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("stat %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %s", path, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// isTerminal reports whether f is a tty (so it can be a controlling terminal).
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// startWorkload forks and execs spec with console as its stdio, in a new
// session whose controlling terminal is the console when it is a tty.
func startWorkload(spec *execSpec, console *os.File) (int, error) {
	fd := console.Fd()
	attr := &syscall.ProcAttr{
		Dir:   spec.Dir,
		Env:   spec.Env,
		Files: []uintptr{fd, fd, fd},
		Sys: &syscall.SysProcAttr{
			Setsid:     true,
			Setctty:    isTerminal(console),
			Ctty:       0,
			Credential: &syscall.Credential{Uid: spec.UID, Gid: spec.GID, Groups: []uint32{}},
		},
	}
	pid, err := syscall.ForkExec(spec.Path, spec.Argv, attr)
	if err != nil {
		return 0, fmt.Errorf("exec %s: %w", spec.Path, err)
	}
	return pid, nil
}

// wait4 and killProcess are the supervisor's system calls.
func wait4(pid int, ws *unix.WaitStatus, options int, ru *unix.Rusage) (int, error) {
	return unix.Wait4(pid, ws, options, ru)
}

func killProcess(pid int, sig unix.Signal) error { return unix.Kill(pid, sig) }

// killAllButInit signals every process except PID 1 (and kernel threads).
func killAllButInit(sig unix.Signal) error { return unix.Kill(-1, sig) }

// drainConsole waits until the console has transmitted what was written to
// it, for at most drainTimeout: a console that never drains must not keep the
// status from being reported. Writers that are not terminals need nothing.
func drainConsole(w io.Writer) {
	f, ok := w.(*os.File)
	if !ok || !isTerminal(f) {
		return
	}
	fd := int(f.Fd())
	waitDrained(
		func() { _ = unix.IoctlSetInt(fd, unix.TCSBRK, 1) },
		func() (int, error) { return unix.IoctlGetInt(fd, unix.TIOCOUTQ) },
		time.Now().Add(drainTimeout), time.Sleep)
}

// waitDrained calls tcdrain until the output queue (outq) is empty or the
// deadline passes. tcdrain alone is not enough: TCSBRK returns success as
// soon as any signal reaches the thread (tty_wait_until_sent gives up
// silently, and the Go runtime signals its threads to preempt goroutines),
// so with two vCPUs the status was reported while the tail of the
// workload's output still sat in the UART's buffer, and was lost.
func waitDrained(tcdrain func(), outq func() (int, error), deadline time.Time, sleep func(time.Duration)) {
	for {
		tcdrain()
		n, err := outq()
		if err != nil || n == 0 || !time.Now().Before(deadline) {
			return
		}
		sleep(5 * time.Millisecond)
	}
}

// drainTimeout bounds drainConsole; a 115200-baud UART sends 4 KiB (the
// serial driver's transmit buffer) in about 0.35 s.
const drainTimeout = 2 * time.Second

// reportExitStatus writes status as one byte to the VMM's exit port through
// /dev/port. If /dev/port is missing (devtmpfs failed), it makes its own node
// (char 1:4) in a tmpfs or the root.
func reportExitStatus(status byte) error {
	err := writePort(portDevice, exitPort, status)
	if err == nil || !errors.Is(err, unix.ENOENT) {
		return err
	}
	for _, node := range []string{"/run/.krun-port", "/.krun-port"} {
		if unix.Mknod(node, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 4))) == nil {
			err = writePort(node, exitPort, status)
			_ = unix.Unlink(node)
			return err
		}
	}
	return err
}

// portDevice is the kernel's I/O port device (char 1:4), which devtmpfs
// provides once /dev is mounted.
const portDevice = "/dev/port"

// reportStage writes stage s as one byte to the VMM's stage port through the
// port device node (portDevice in the guest; a plain file in tests, where
// the byte lands at offset guestabi.StagePort). Callers ignore the error: the
// stages are for timing, and timing must never break a boot. Unlike
// reportExitStatus it makes no node of its own when /dev is missing: a boot
// that lost devtmpfs is failing anyway, and one stage fewer costs nothing.
func reportStage(node string, s guestabi.Stage) error {
	return writePort(node, guestabi.StagePort, byte(s))
}

// writePort writes one byte at offset port of the port device node.
func writePort(node string, port int64, b byte) error {
	f, err := os.OpenFile(node, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", node, err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{b}, port); err != nil {
		return fmt.Errorf("write port %#x: %w", port, err)
	}
	return nil
}

// powerOff asks the kernel to power the machine off; it returns only on failure.
func powerOff() error { return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF) }
