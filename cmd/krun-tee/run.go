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

	"github.com/krun-tee/krun-tee/init/exitcodes"
	"github.com/krun-tee/krun-tee/launch"
	"github.com/krun-tee/krun-tee/virtio"
	"github.com/krun-tee/krun-tee/virtio/blk"
	"github.com/krun-tee/krun-tee/virtio/vsock"
	"github.com/krun-tee/krun-tee/vmm"
	"github.com/krun-tee/krun-tee/vmm/boot"
)

// exitRunnerFailed is podman's convention for "the runner, not the
// workload, failed": setup errors and guests that stop without reporting.
const exitRunnerFailed = 125

// exitGuestStalled: the VM was stopped because a vCPU made no progress for
// --stall-timeout.
const exitGuestStalled = exitcodes.Stalled

// Defaults of `krun-tee run`.
const (
	defaultMemoryMiB = 512
	defaultCPUs      = 1
	guestVsockCID    = 3
	maxPortMaps      = 64
)

// Where run looks for the guest kernel and initrd when no flag names them.
const (
	envKernel = "KRUN_TEE_KERNEL"
	envInitrd = "KRUN_TEE_INITRD"
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
	memoryMiB    uint64
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
}

const runSynopsis = "run [--tee auto|none|emulated-snp|emulated-tdx|snp|tdx] [--emulated-root DIR] [--bundle DIR] [--cpus N] [--memory MiB] [--cmdline-extra S] [--kbs-addr HOST:PORT] IMAGE\n" +
	"       krun-tee run --tee none --disk IMAGE [--disk IMAGE]... [--disk-ro] [--kernel F] [--initrd F] [--cmdline-extra S] [--cpus N] [--memory MiB] [--port GUESTPORT:HOSTADDR]... [IMAGE]"

func parseRunArgs(args []string) (*runOptions, error) {
	fs := newFlagSet("run", runSynopsis, runStderr)
	o := &runOptions{}
	var disks, ports stringList
	fs.StringVar(&o.tee, "tee", "", "TEE for a krun-tee IMAGE: default the image's own; auto = this host's SEV-SNP/TDX (never emulated); "+
		"emulated-snp|emulated-tdx = the emulated TEE (testing only); none = no TEE. Anything but the image's TEE changes the measurement")
	fs.StringVar(&o.bundle, "bundle", "", "firmware bundle directory (shim.bin, vmlinux, initrd.cpio) for IMAGE; default $"+launch.EnvBundle+" or the installed one")
	fs.StringVar(&o.emulatedRoot, "emulated-root", os.Getenv(launch.EnvEmulatedRoot), "emulated TEE root `DIR` (made by krun-tee attest emulated-root init); default $"+launch.EnvEmulatedRoot)
	fs.StringVar(&o.kbsAddr, "kbs-addr", "", "HOST:PORT the guest's KBS connection is relayed to (default: the host and port of the image's KBS URL)")
	fs.Var(&disks, "disk", "disk image; the first is the guest's root disk /dev/vda (repeatable)")
	fs.BoolVar(&o.diskRO, "disk-ro", false, "attach every disk read-only")
	fs.StringVar(&o.kernel, "kernel", "", "guest kernel (ELF vmlinux or bzImage); default $"+envKernel+" or one installed next to krun-tee")
	fs.StringVar(&o.initrd, "initrd", "", "guest initrd holding krun-tee's init; default $"+envInitrd+" or one installed next to krun-tee")
	fs.StringVar(&o.cmdlineExtra, "cmdline-extra", "", "extra kernel command-line arguments (IMAGE: measured, so they change the measurement)")
	fs.IntVar(&o.cpus, "cpus", defaultCPUs, fmt.Sprintf("number of vCPUs (1-%d); IMAGE: default the image's, and a different value changes the measurement", boot.MaxVCPUs))
	fs.Uint64Var(&o.memoryMiB, "memory", defaultMemoryMiB, "guest RAM in MiB; IMAGE: default the image's, and a different value changes the measurement")
	fs.DurationVar(&o.stallTimeout, "stall-timeout", vmm.DefaultStallTimeout, fmt.Sprintf("stop the VM (status %d) when a vCPU stays runnable at one instruction, without exits, this long; 0 disables", exitGuestStalled))
	fs.Var(&ports, "port", "expose a host service to the guest: GUESTPORT:tcp:HOST:PORT or GUESTPORT:unix:/PATH (repeatable)")
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
	if o.tee == "" {
		o.tee = "none"
	}
	if len(o.disks) == 0 {
		return nil, usagef("no disk: pass --disk IMAGE")
	}
	for _, d := range o.disks {
		if d == "" {
			return nil, usagef("--disk: empty path")
		}
	}
	if o.cpus < 1 || o.cpus > boot.MaxVCPUs {
		return nil, usagef("--cpus %d: want 1..%d", o.cpus, boot.MaxVCPUs)
	}
	if o.memoryMiB < boot.MinMemory>>20 || o.memoryMiB > boot.MaxMemory>>20 {
		return nil, usagef("--memory %d: want %d..%d MiB", o.memoryMiB, boot.MinMemory>>20, boot.MaxMemory>>20)
	}
	if len(ports) > maxPortMaps {
		return nil, usagef("--port given %d times, at most %d", len(ports), maxPortMaps)
	}
	o.ports = map[uint32]string{}
	for _, p := range ports {
		gp, addr, err := parsePortMap(p)
		if err != nil {
			return nil, usagef("--port %q: %v", p, err)
		}
		if _, dup := o.ports[gp]; dup {
			return nil, usagef("--port: guest port %d given twice", gp)
		}
		o.ports[gp] = addr
	}
	nVirtio := len(o.disks)
	if len(o.ports) > 0 {
		nVirtio++
	}
	if nVirtio > boot.MaxVirtioDevices {
		return nil, usagef("%d disks and vsock need %d device slots, there are %d", len(o.disks), nVirtio, boot.MaxVirtioDevices)
	}
	return o, nil
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

// bootFile resolves the kernel or initrd: the flag, the environment
// variable, then the install locations next to the binary.
func bootFile(what, flagVal, env string, installed []string) (string, error) {
	if flagVal != "" {
		return flagVal, nil
	}
	if v := os.Getenv(env); v != "" {
		return v, nil
	}
	var tried []string
	for _, p := range installed {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		tried = append(tried, p)
	}
	return "", fmt.Errorf("no guest %s: pass --%s, set %s, or install one at %s", what, what, env, strings.Join(tried, " or "))
}

// installDirs returns <dir of krun-tee>/../share/krun-tee and <dir>.
func installDirs() []string {
	exe, err := os.Executable()
	if err != nil {
		return nil
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	dir := filepath.Dir(exe)
	return []string{filepath.Join(dir, "..", "share", "krun-tee"), dir}
}

func defaultKernelPaths() []string {
	d := installDirs()
	if len(d) < 2 {
		return nil
	}
	return []string{filepath.Join(d[0], "vmlinux"), filepath.Join(d[1], "vmlinux")}
}

func defaultInitrdPaths() []string {
	d := installDirs()
	if len(d) < 2 {
		return nil
	}
	return []string{filepath.Join(d[0], "initrd"), filepath.Join(d[1], "initrd.cpio")}
}

// runFailed prints one line and ends run with status 125.
func runFailed(format string, args ...any) error {
	fmt.Fprintf(runStderr, "krun-tee run: "+format+"\n", args...)
	return exitStatus(exitRunnerFailed)
}

func runCommand(ctx context.Context, args []string) error {
	o, err := parseRunArgs(args)
	if err != nil {
		return err
	}
	if o.confidential {
		return runConfidential(ctx, o)
	}
	kernelPath, err := bootFile("kernel", o.kernel, envKernel, defaultKernelPaths())
	if err != nil {
		return runFailed("%v", err)
	}
	initrdPath, err := bootFile("initrd", o.initrd, envInitrd, defaultInitrdPaths())
	if err != nil {
		return runFailed("%v", err)
	}
	kernel, err := readBounded(kernelPath, boot.MaxKernelSize)
	if err != nil {
		return runFailed("kernel: %v", err)
	}
	// The initrd must fit in guest RAM; anything larger is refused by the
	// layout builder, so cap the read there.
	initrd, err := readBounded(initrdPath, int64(o.memoryMiB)<<20)
	if err != nil {
		return runFailed("initrd: %v", err)
	}

	var devs []virtio.Device
	closeDevs := func() {
		for _, d := range devs {
			_ = d.Close()
		}
	}
	for _, path := range o.disks {
		d, err := blk.New(path, o.diskRO)
		if err != nil {
			closeDevs()
			return runFailed("disk %s: %v", path, err)
		}
		devs = append(devs, d)
	}
	if len(o.ports) > 0 {
		v, err := vsock.New(guestVsockCID, o.ports)
		if err != nil {
			closeDevs()
			return runFailed("vsock: %v", err)
		}
		devs = append(devs, v)
	}
	cmdline, err := boot.KernelCmdline(len(devs), o.cmdlineExtra)
	if err != nil {
		closeDevs()
		return runFailed("%v", err)
	}
	l, err := boot.Build(boot.Config{Kernel: kernel, Initrd: initrd, Cmdline: cmdline, MemorySize: o.memoryMiB << 20, VCPUs: o.cpus})
	if err != nil {
		closeDevs()
		return runFailed("%v", err)
	}
	start := time.Now()
	m, err := vmm.New(vmm.Config{Layout: l, Console: runStdout, ConsoleInput: runStdin, Devices: devs, StallTimeout: vmmStallTimeout(o)})
	if err != nil {
		return runFailed("%v", err) // New has closed the devices
	}
	defer m.Close()
	slog.Debug("run: VM created", "cpus", o.cpus, "memory_mib", o.memoryMiB, "disks", len(o.disks), "cmdline", cmdline, "setup", time.Since(start))
	exit, err := m.Run(ctx)
	slog.Debug("run: VM stopped", "exit", exit.String(), "after", time.Since(start))
	if err != nil {
		return runFailed("%v", err)
	}
	if exit.Kind == vmm.ExitWorkload {
		return exitStatus(int(exit.Status))
	}
	return vmFailed(exit)
}

// vmFailed ends run for a guest that stopped without a workload status:
// exitcodes.Stalled for a stalled vCPU, 125 otherwise, with the VMM's one-line reason.
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

// readBounded reads a whole file of at most limit bytes.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if st.Size() > limit {
		return nil, fmt.Errorf("%s is %d bytes, more than the %d allowed", path, st.Size(), limit)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s grew beyond %d bytes while being read", path, limit)
	}
	return data, nil
}
