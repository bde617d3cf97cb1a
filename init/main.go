package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/init/confidential"
	"github.com/krun-tee/krun-tee/init/workload"
	"github.com/krun-tee/krun-tee/internal/boundedfile"
	"golang.org/x/sys/unix"
)

// newRoot is where the root disk is mounted before init switches to it.
const newRoot = "/newroot"

// maxWorkloadConfig bounds the workload configuration read from the root disk.
const maxWorkloadConfig = 1 << 20

// guest tracks which shutdown steps are owed.
type guest struct {
	console     io.Writer
	rootMounted bool // the root disk is mounted at newRoot
	switched    bool // and is now /
	// verityRoot: the root is a dm-verity device (krun.verity), so an I/O
	// error reading it is a verification failure.
	verityRoot bool
	// portNode is the port device the boot stages are written to
	// (portDevice; empty: stages are not reported).
	portNode string
}

// reached reports boot stage s to the VMM's stage port for boot timing
// (guestabi.Stage). A failed write is ignored on purpose: the stages are a
// measurement aid, and a boot must not fail or print because of them.
func (g *guest) reached(s guestabi.Stage) {
	if g.portNode == "" {
		return
	}
	_ = reportStage(g.portNode, s)
}

func main() {
	if os.Getpid() != 1 {
		// Everything below (mounts, chroot, kill(-1), poweroff) is only
		// safe as the first process of a guest.
		fmt.Fprintln(os.Stderr, "krun-init: must run as PID 1 inside the guest")
		os.Exit(2)
	}
	g := &guest{console: os.Stderr, portNode: portDevice}
	status := g.run()
	g.shutdown(status)
}

// run performs the boot steps and the workload, returning the status to report.
func (g *guest) run() (status int) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(g.console, "krun-init: internal: panic: %v\n", r)
			status = statusExec
		}
	}()
	status, err := g.boot()
	if err != nil {
		fmt.Fprintln(g.console, err.Error())
		return statusOf(err)
	}
	return status
}

func (g *guest) boot() (int, error) {
	if err := mountBase(); err != nil {
		return 0, fail("setup", statusSetup, err)
	}
	// The first moment the port device exists (devtmpfs is mounted); the
	// mounts before it take a few milliseconds.
	g.reached(guestabi.StageInitStarted)
	raw, err := boundedfile.Read("/proc/cmdline", maxCmdline)
	if err != nil {
		return 0, fail("setup", statusSetup, err)
	}
	bc, err := parseCmdline(string(raw))
	if err != nil {
		return 0, fail("setup", statusSetup, fmt.Errorf("/proc/cmdline: %w", err))
	}

	if confidential.HasLaunchParams(string(raw)) {
		// Confidential path: the root is a LUKS2 disk opened with a key
		// the KBS releases only to this attested launch.
		if err := g.mountConfidentialRoot(string(raw), bc); err != nil {
			return 0, err
		}
	} else {
		if err := waitForBlockDevice(bc.Root, bc.RootWait); err != nil {
			return 0, fail("root", statusRoot, err)
		}
		g.reached(guestabi.StageRootDevice)
		if err := mountFS(bc.Root, newRoot, bc.RootFSType, 0, ""); err != nil {
			return 0, fail("root", statusRoot, err)
		}
	}
	g.reached(guestabi.StageRootMounted)
	g.rootMounted = true

	data, err := boundedfile.Read(newRoot+workload.Path, maxWorkloadConfig)
	if err != nil {
		if g.verityRoot && errors.Is(err, unix.EIO) {
			return 0, fail("verity", guestabi.StatusVerity, fmt.Errorf("%s: %w (dm-verity refused a block: the disk failed verification)", workload.Path, err))
		}
		return 0, fail("config", statusConfig, err)
	}
	cfg, err := workload.Parse(data)
	if err != nil {
		return 0, fail("config", statusConfig, err)
	}

	for _, m := range baseMounts {
		if err := moveMount(m.target, newRoot+m.target); err != nil {
			return 0, fail("switch-root", statusSwitchRoot, err)
		}
	}
	if err := switchRoot(newRoot); err != nil {
		return 0, fail("switch-root", statusSwitchRoot, err)
	}
	g.switched = true

	spec, err := buildExecSpec(cfg, os.Stat)
	if err != nil {
		return 0, err
	}
	console, err := os.OpenFile("/dev/console", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return 0, fail("exec", statusExec, err)
	}
	defer console.Close()

	// Subscribe before the fork: an exit between fork and Notify would
	// otherwise be noticed only by the poll.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, append([]os.Signal{unix.SIGCHLD}, forwardedSignals...)...)
	defer signal.Stop(sigs)

	if !kernelMessagesWanted(string(raw)) {
		// Not fatal: the workload runs either way, with kernel messages.
		level := consoleLogLevelQuiet
		if g.verityRoot {
			// dm-verity's "data block N is corrupted" (KERN_ERR) must
			// reach the console when the workload later hits one.
			level = consoleLogLevelErrors
		}
		if err := os.WriteFile("/proc/sys/kernel/printk", []byte(level), 0); err != nil {
			fmt.Fprintf(console, "krun-init: console log level: %v\n", err)
		}
	}
	pid, err := startWorkload(spec, console)
	if err != nil {
		return 0, fail("exec", execErrorStatus(err), err)
	}
	// ForkExec returns once the exec succeeded (or failed), so this is the
	// workload's start.
	g.reached(guestabi.StageWorkloadExec)
	s := &supervisor{
		child: pid, wait4: wait4, kill: killProcess, killAll: killAllButInit,
		grace: 2 * time.Second, poll: 500 * time.Millisecond,
	}
	return s.run(sigs), nil
}

// baseMount is one of the API filesystems init mounts before the root.
type baseMount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

var baseMounts = []baseMount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
}

func mountBase() error {
	for _, m := range baseMounts {
		if err := mountFS(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
			return err
		}
	}
	return nil
}

// shutdown flushes and detaches the root, reports status to the VMM and
// powers off. It never returns: PID 1 exiting would panic the kernel.
func (g *guest) shutdown(status int) {
	syncAll()
	switch {
	case g.switched:
		if err := remountReadOnly("/"); err != nil {
			// sync(2) has written the data; only the clean flag is at
			// stake, so the workload's status stands.
			fmt.Fprintf(g.console, "krun-init: unmount: %v\n", err)
		}
	case g.rootMounted:
		if err := unmount(newRoot); err != nil {
			fmt.Fprintf(g.console, "krun-init: unmount: %v\n", err)
		}
	}
	syncAll()
	// The VMM stops the instant it sees the status, so anything still in
	// the console's transmit buffer would be lost: wait for it to drain.
	drainConsole(g.console)
	if err := reportExitStatus(byte(status)); err != nil {
		fmt.Fprintf(g.console, "krun-init: report: %v\n", err)
	}
	if err := powerOff(); err != nil {
		fmt.Fprintf(g.console, "krun-init: poweroff: %v\n", err)
	}
	for {
		time.Sleep(time.Hour)
	}
}
