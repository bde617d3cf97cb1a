package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/launch"
	"github.com/krun-tee/krun-tee/launchconfig"
	"github.com/krun-tee/krun-tee/vmm"
	"github.com/krun-tee/krun-tee/vmm/boot"
)

// exitRunnerFailed is podman's convention for "the runner, not the
// workload, failed": setup errors and guests that stop without reporting.
const exitRunnerFailed = 125

// exitGuestStalled: the VM was stopped because a vCPU made no progress for
// --stall-timeout.
const exitGuestStalled = guestabi.StatusStalled

// Defaults of `krun-tee run`.
const (
	defaultMemoryMiB = 512
	defaultCPUs      = 1
	maxPortMaps      = 64
)

// runStdout and runStderr are the console and diagnostics streams (swapped
// in tests).
var (
	runStdin  io.Reader = os.Stdin
	runStdout io.Writer = os.Stdout
	runStderr io.Writer = os.Stderr
)

func init() {
	register(command{
		name:    "run",
		summary: "boot a workload image in a microVM and exit with its status",
		run:     runCommand,
	})
}

// runOptions is the parsed command line of `krun-tee run`.
type runOptions struct {
	tee          string
	disks        []string
	diskRO       bool
	kernel       string
	initrd       string
	cmdlineExtra string
	cpus         int
	memoryMiB    int
	ports        map[uint32]string
	stallTimeout time.Duration

	// The confidential launch of a krun-tee image (run_tee.go).
	confidential bool
	image        string
	bundle       string
	emulatedRoot string
	kbsAddr      string
	cpusSet      bool // --cpus given: overrides the image's (and changes the measurement)
	memorySet    bool // --memory given: likewise
	// imageConfig is the image's launch configuration, read once while
	// deciding the path (nil when the header could not be read: planning
	// then reports why).
	imageConfig *launchconfig.Config
}

const runSynopsis = "run [--tee auto|none|emulated-snp|emulated-tdx|snp|tdx] [--emulated-root DIR] [--bundle DIR] [--cpus N] [--memory MiB] [--cmdline-extra S] [--kbs-addr HOST:PORT] IMAGE\n" +
	"       krun-tee run --tee none --disk IMAGE [--disk IMAGE]... [--disk-ro] [--kernel F] [--initrd F] [--cmdline-extra S] [--cpus N] [--memory MiB] [--port GUESTPORT:HOSTADDR]... [IMAGE]"

func parseRunArgs(args []string) (*runOptions, error) {
	fs := newFlagSet("run", runSynopsis, runStderr)
	o := &runOptions{}
	var disks, ports stringList
	defineRunFlags(fs, o, &disks, &ports)
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	o.disks = disks
	switch len(positional) {
	case 0:
	case 1:
		o.disks = append(o.disks, positional[0])
	default:
		return nil, usagef("unexpected arguments %q", positional[1:])
	}
	if conf, err := confidentialRun(o, positional, set); conf || err != nil {
		return o, err
	}
	if err := o.checkPlain(ports); err != nil {
		return nil, err
	}
	return o, nil
}

// defineRunFlags declares run's flags on fs.
func defineRunFlags(fs *flag.FlagSet, o *runOptions, disks, ports *stringList) {
	fs.StringVar(&o.tee, "tee", "", "TEE for a krun-tee IMAGE: default the image's own; auto = this host's SEV-SNP/TDX (never emulated); "+
		"emulated-snp|emulated-tdx = the emulated TEE (testing only); none = no TEE. Anything but the image's TEE changes the measurement")
	fs.StringVar(&o.bundle, "bundle", "", "firmware bundle directory (shim.bin, vmlinux, initrd.cpio) for IMAGE; default $"+launch.EnvBundle+" or the installed one")
	fs.StringVar(&o.emulatedRoot, "emulated-root", os.Getenv(launch.EnvEmulatedRoot), "emulated TEE root `DIR` (made by krun-tee attest emulated-root init); default $"+launch.EnvEmulatedRoot)
	fs.StringVar(&o.kbsAddr, "kbs-addr", "", "HOST:PORT the guest's KBS connection is relayed to (default: the host and port of the image's KBS URL)")
	fs.Var(disks, "disk", "disk image; the first is the guest's root disk /dev/vda (repeatable)")
	fs.BoolVar(&o.diskRO, "disk-ro", false, "attach every disk read-only")
	fs.StringVar(&o.kernel, "kernel", "", "guest kernel (ELF vmlinux or bzImage); default $"+launch.EnvKernel+" or one installed next to krun-tee")
	fs.StringVar(&o.initrd, "initrd", "", "guest initrd holding krun-tee's init; default $"+launch.EnvInitrd+" or one installed next to krun-tee")
	fs.StringVar(&o.cmdlineExtra, "cmdline-extra", "", "extra kernel command-line arguments (IMAGE: measured, so they change the measurement)")
	fs.IntVar(&o.cpus, "cpus", defaultCPUs, fmt.Sprintf("number of vCPUs (1-%d); IMAGE: default the image's, and a different value changes the measurement", launchconfig.MaxVCPUs))
	fs.IntVar(&o.memoryMiB, "memory", defaultMemoryMiB, "guest RAM in MiB; IMAGE: default the image's, and a different value changes the measurement")
	fs.DurationVar(&o.stallTimeout, "stall-timeout", vmm.DefaultStallTimeout, fmt.Sprintf("stop the VM (status %d) when a vCPU stays runnable at one instruction, without exits, this long; 0 disables", exitGuestStalled))
	fs.Var(ports, "port", "expose a host service to the guest: GUESTPORT:tcp:HOST:PORT or GUESTPORT:unix:/PATH (repeatable)")
}

// checkVMSize checks --cpus and --memory with the launch-configuration
// validator mkimage used.
func (o *runOptions) checkVMSize() error {
	if err := launchconfig.ValidateVCPUs(o.cpus); err != nil {
		return usagef("--cpus %d: want 1..%d", o.cpus, launchconfig.MaxVCPUs)
	}
	if err := launchconfig.ValidateMemoryMiB(o.memoryMiB); err != nil {
		return usagef("--memory %d: want %d..%d MiB", o.memoryMiB, launchconfig.MinMemoryMiB, launchconfig.MaxMemoryMiB)
	}
	return nil
}

// checkPlain checks the plain path's flags and fills o.ports.
func (o *runOptions) checkPlain(ports stringList) error {
	if o.tee == "" {
		o.tee = "none"
	}
	if len(o.disks) == 0 {
		return usagef("no disk: pass --disk IMAGE")
	}
	for _, d := range o.disks {
		if d == "" {
			return usagef("--disk: empty path")
		}
	}
	if err := o.checkVMSize(); err != nil {
		return err
	}
	if len(ports) > maxPortMaps {
		return usagef("--port given %d times, at most %d", len(ports), maxPortMaps)
	}
	o.ports = map[uint32]string{}
	for _, p := range ports {
		gp, addr, err := parsePortMap(p)
		if err != nil {
			return usagef("--port %q: %v", p, err)
		}
		if _, dup := o.ports[gp]; dup {
			return usagef("--port: guest port %d given twice", gp)
		}
		o.ports[gp] = addr
	}
	nVirtio := len(o.disks)
	if len(o.ports) > 0 {
		nVirtio++
	}
	if nVirtio > boot.MaxVirtioDevices {
		return usagef("%d disks and vsock need %d device slots, there are %d", len(o.disks), nVirtio, boot.MaxVirtioDevices)
	}
	return nil
}

// parsePortMap splits GUESTPORT:HOSTADDR and checks HOSTADDR's form.
func parsePortMap(s string) (uint32, string, error) {
	port, addr, ok := strings.Cut(s, ":")
	if !ok {
		return 0, "", errors.New("want GUESTPORT:tcp:HOST:PORT or GUESTPORT:unix:/PATH")
	}
	gp, err := strconv.ParseUint(port, 10, 32)
	if err != nil || gp == 0 || gp == 0xffffffff {
		return 0, "", fmt.Errorf("guest port %q: want 1..4294967294", port)
	}
	kind, rest, _ := strings.Cut(addr, ":")
	switch kind {
	case "tcp":
		host, hp, err := net.SplitHostPort(rest)
		if err != nil {
			return 0, "", fmt.Errorf("tcp address %q: %v", rest, err)
		}
		if n, err := strconv.ParseUint(hp, 10, 16); err != nil || n == 0 || host == "" {
			return 0, "", fmt.Errorf("tcp address %q: want HOST:PORT with a port 1..65535", rest)
		}
	case "unix":
		if !filepath.IsAbs(rest) || strings.ContainsRune(rest, 0) {
			return 0, "", fmt.Errorf("unix socket path %q: want an absolute path", rest)
		}
	default:
		return 0, "", fmt.Errorf("host address %q: want tcp:HOST:PORT or unix:/PATH", addr)
	}
	return uint32(gp), addr, nil
}

// runFailed prints one line and ends run with status 125.
func runFailed(format string, args ...any) error {
	fmt.Fprintf(runStderr, "krun-tee run: "+format+"\n", args...)
	for _, a := range args {
		if err, ok := a.(error); ok && hostRefused(err) {
			fmt.Fprintln(runStderr, "krun-tee run: `krun-tee host check` shows what this host can run and how to fix what is missing")
			break
		}
	}
	return exitStatus(exitRunnerFailed)
}

// hostRefused reports whether err says the host, not the image, is the
// problem: no usable KVM or no real TEE.
func hostRefused(err error) bool {
	return errors.Is(err, vmm.ErrSoftwareKVM) || errors.Is(err, launch.ErrRealLaunchUnimplemented) || errors.Is(err, launch.ErrNoHardwareTEE) ||
		errors.Is(err, os.ErrNotExist) && strings.Contains(err.Error(), "/dev/kvm")
}

func runCommand(ctx context.Context, args []string) error {
	o, err := parseRunArgs(args)
	if err != nil {
		return err
	}
	var plan *launch.Plan
	if o.confidential {
		plan, err = planConfidential(o)
	} else {
		plan, err = planPlain(o)
	}
	if err != nil {
		return runFailed("%v", err)
	}
	plan.StallTimeout = vmmStallTimeout(o)
	log := slog.Default()
	if o.confidential {
		log = log.With("tee", plan.TEE)
		warnConfidential(o, plan, log)
	}
	exit, err := plan.Run(ctx, launch.Console{In: runStdin, Out: runStdout}, log)
	if err != nil {
		return runFailed("%v", err)
	}
	if exit.Kind != vmm.ExitWorkload {
		return vmFailed(exit)
	}
	if o.confidential {
		return guestStatus(int(exit.Status))
	}
	return exitStatus(int(exit.Status))
}

// vmFailed ends run for a guest that stopped without a workload status:
// guestabi.StatusStalled for a stalled vCPU, 125 otherwise, with the VMM's
// one-line reason.
func vmFailed(exit vmm.Exit) error {
	if exit.Kind == vmm.ExitStalled {
		fmt.Fprintf(runStderr, "krun-tee run: %s\n", exit.Reason)
		return exitStatus(exitGuestStalled)
	}
	return runFailed("%s", exit.Reason)
}

// vmmStallTimeout maps --stall-timeout to vmm.Config (0 there means the
// default, negative disables).
func vmmStallTimeout(o *runOptions) time.Duration {
	if o.stallTimeout <= 0 {
		return -1
	}
	return o.stallTimeout
}

// planPlain plans `run --tee none --disk ...`.
func planPlain(o *runOptions) (*launch.Plan, error) {
	disks := make([]launch.Disk, len(o.disks))
	for i, d := range o.disks {
		disks[i] = launch.Disk{Path: d, ReadOnly: o.diskRO}
	}
	return launch.PlanPlain(launch.PlainRequest{Kernel: o.kernel, Initrd: o.initrd, Disks: disks, Ports: o.ports,
		CPUs: o.cpus, MemoryMiB: uint64(o.memoryMiB), ExtraCmdline: o.cmdlineExtra})
}
