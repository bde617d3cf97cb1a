package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/krun-tee/krun-tee/init/exitcodes"
	"github.com/krun-tee/krun-tee/init/launchparams"
	"github.com/krun-tee/krun-tee/launch"
	"github.com/krun-tee/krun-tee/luks"
	"github.com/krun-tee/krun-tee/virtio"
	"github.com/krun-tee/krun-tee/virtio/blk"
	"github.com/krun-tee/krun-tee/virtio/vsock"
	"github.com/krun-tee/krun-tee/vmm"
	"github.com/krun-tee/krun-tee/vmm/boot"
)

// Flags of the plain (--tee none, kernel + disks) path that a confidential
// launch does not take: its kernel, initrd and devices are fixed by the
// bundle and the measurement.
var plainOnlyFlags = []string{"disk", "disk-ro", "kernel", "initrd", "port"}

// Flags that only a confidential launch takes.
var confidentialOnlyFlags = []string{"bundle", "emulated-root", "kbs-addr"}

// confidentialRun decides whether run launches a krun-tee image
// confidentially: yes for one IMAGE and a --tee other than none, and for
// an IMAGE whose LUKS2 header carries a krun-tee token unless the plain
// path's flags are given. It fills o's confidential fields and checks
// them.
func confidentialRun(o *runOptions, positional []string, set map[string]bool) (bool, error) {
	plain := ""
	for _, f := range plainOnlyFlags {
		if set[f] {
			plain = f
			break
		}
	}
	switch o.tee {
	case "", launch.ModeAuto, launchparams.TEENone, launchparams.TEESNP, launchparams.TEETDX, launchparams.TEEEmulatedSNP, launchparams.TEEEmulatedTDX:
	default:
		return false, usagef("--tee %q: want auto, none, snp, tdx, emulated-snp or emulated-tdx", o.tee)
	}
	explicit := o.tee != "" && o.tee != launchparams.TEENone
	switch {
	case explicit && plain != "":
		return false, usagef("--tee %s launches a krun-tee IMAGE from its firmware bundle; --%s belongs to the plain --tee none path", o.tee, plain)
	case explicit && len(positional) != 1:
		return false, usagef("--tee %s needs one IMAGE made by `krun-tee mkimage`", o.tee)
	case !explicit && (plain != "" || len(positional) != 1 || !isLaunchImage(positional[0])):
		for _, f := range confidentialOnlyFlags {
			if set[f] {
				return false, usagef("--%s needs one IMAGE made by `krun-tee mkimage` (a LUKS2 image with a krun-tee token)", f)
			}
		}
		return false, nil
	}
	o.confidential, o.image, o.disks = true, positional[0], nil
	o.cpusSet, o.memorySet = set["cpus"], set["memory"]
	if o.cpusSet && (o.cpus < 1 || o.cpus > boot.MaxVCPUs) {
		return false, usagef("--cpus %d: want 1..%d", o.cpus, boot.MaxVCPUs)
	}
	if o.memorySet && (o.memoryMiB < boot.MinMemory>>20 || o.memoryMiB > boot.MaxMemory>>20) {
		return false, usagef("--memory %d: want %d..%d MiB", o.memoryMiB, boot.MinMemory>>20, boot.MaxMemory>>20)
	}
	if o.kbsAddr != "" {
		host, port, err := net.SplitHostPort(o.kbsAddr)
		if n, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || n == 0 || host == "" {
			return false, usagef("--kbs-addr %q: want HOST:PORT with a port 1..65535", o.kbsAddr)
		}
	}
	return true, nil
}

// isLaunchImage reports whether path is meant for the confidential path: a
// LUKS2 image with a krun-tee token, or one that carries the LUKS magic but
// does not open (a damaged header must be reported as such, not booted as a
// plain disk).
func isLaunchImage(path string) bool {
	f, v, err := luks.OpenFile(path, os.O_RDONLY)
	if err != nil {
		return !errors.Is(err, luks.ErrNotLUKS) && !errors.Is(err, fs.ErrNotExist)
	}
	f.Close()
	return v.LaunchConfigTokenID() >= 0
}

// hostTEE asks KVM what real TEEs this host has (a variable for tests).
var hostTEE = func() launch.HostTEE {
	snp, tdx := vmm.HostTEE()
	return launch.HostTEE{SNP: snp, TDX: tdx}
}

// confidentialPlan is everything runConfidential decided before booting.
type confidentialPlan struct {
	tee      string // what the launch uses
	imageTEE string // what the image records
	spec     *launch.Spec
	ports    map[uint32]string // vsock port -> host address; the quote port is added at start
}

// planConfidential reads the image, picks the TEE and builds the launch
// spec; no KVM, so tests can drive it.
func planConfidential(o *runOptions) (*confidentialPlan, error) {
	dir := o.bundle
	if dir == "" {
		d, err := launch.DefaultBundleDir()
		if err != nil {
			return nil, fmt.Errorf("%w (pass --bundle DIR)", err)
		}
		dir = d
	}
	b, err := launch.LoadBundle(dir)
	if err != nil {
		return nil, err
	}
	f, v, err := luks.OpenFile(o.image, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	lc, err := v.ReadLaunchConfig()
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.image, err)
	}
	tee, err := launch.SelectTEE(o.tee, lc.TEE, hostTEE())
	if err != nil {
		return nil, err
	}
	cpus, mem := 0, 0
	if o.cpusSet {
		cpus = o.cpus
	}
	if o.memorySet {
		mem = int(o.memoryMiB)
	}
	spec, err := launch.SpecFromConfig(lc, b, tee, cpus, mem)
	if err != nil {
		return nil, err
	}
	spec.ExtraCmdline = o.cmdlineExtra
	kbsAddr := o.kbsAddr
	if kbsAddr == "" {
		if kbsAddr, err = launch.KBSAddress(spec.Params.KBSURL); err != nil {
			return nil, err
		}
	}
	return &confidentialPlan{tee: tee, imageTEE: lc.TEE, spec: spec, ports: map[uint32]string{launchparams.KBSPort: "tcp:" + kbsAddr}}, nil
}

// runConfidential launches a krun-tee image: the bundle's kernel and initrd
// with the measured launch parameters, the image as virtio-blk, vsock to
// the KBS and (emulated) to the emulated TEE's quote service.
func runConfidential(ctx context.Context, o *runOptions) error {
	start := time.Now()
	plan, err := planConfidential(o)
	if err != nil {
		return runFailed("%v", err)
	}
	log := slog.Default().With("tee", plan.tee)
	if plan.tee != plan.imageTEE {
		log.Warn("the TEE differs from the image's own: the measurement will not match the one registered for the image", "image_tee", plan.imageTEE)
	}
	if o.cpusSet || o.memorySet {
		log.Warn("--cpus/--memory override the image's VM size: the measurement will not match the one registered for the image", "cpus", plan.spec.CPUs, "memory_mib", plan.spec.MemoryMiB)
	}
	l, err := plan.spec.Layout()
	if err != nil {
		return runFailed("%v", err)
	}
	cmdline, _ := plan.spec.Cmdline()
	tLayout := time.Since(start)

	if launch.IsEmulated(plan.tee) {
		fmt.Fprintf(runStderr, "krun-tee run: WARNING: the TEE is EMULATED (%s): memory is not encrypted and the reports are signed by a local test root; for testing only\n", plan.tee)
		t0 := time.Now()
		emu, err := launch.LoadEmulated(plan.tee, o.emulatedRoot, l)
		if err != nil {
			return runFailed("%v", err)
		}
		q, err := launch.StartQuoteServer(ctx, emu.Provider, log)
		if err != nil {
			return runFailed("%v", err)
		}
		defer q.Close()
		plan.ports[launchparams.QuotePort] = "unix:" + q.Path
		m := emu.Measurements
		if plan.tee == launchparams.TEEEmulatedSNP {
			log.Info("emulated TEE measured the launch", "emulated", true, "snp_measurement", fmt.Sprintf("%x", m.SNP), "measure", time.Since(t0))
		} else {
			log.Info("emulated TEE measured the launch", "emulated", true, "tdx_mrtd", fmt.Sprintf("%x", m.MRTD), "measure", time.Since(t0))
		}
	} else {
		log.Warn("launching without a TEE: nothing is attested, and a KBS releases no key to this guest")
	}

	var devs []virtio.Device
	disk, err := blk.New(o.image, false)
	if err != nil {
		return runFailed("disk %s: %v", o.image, err)
	}
	devs = append(devs, disk)
	vs, err := vsock.New(guestVsockCID, plan.ports)
	if err != nil {
		_ = disk.Close()
		return runFailed("vsock: %v", err)
	}
	devs = append(devs, vs)
	if len(devs) != launch.NumDevices {
		return runFailed("internal: %d devices, the measured command line names %d", len(devs), launch.NumDevices)
	}
	m, err := vmm.New(vmm.Config{Layout: l, Console: runStdout, ConsoleInput: runStdin, Devices: devs, StallTimeout: vmmStallTimeout(o)})
	if err != nil {
		return runFailed("%v", err) // New has closed the devices
	}
	defer m.Close()
	log.Info("launching", "workload", plan.spec.Params.WorkloadID, "cpus", plan.spec.CPUs, "memory_mib", plan.spec.MemoryMiB,
		"kbs", plan.ports[launchparams.KBSPort], "layout", tLayout, "setup", time.Since(start))
	log.Debug("launch command line", "cmdline", cmdline)
	exit, err := m.Run(ctx)
	log.Info("guest stopped", "exit", exit.String(), "after", time.Since(start))
	if err != nil {
		return runFailed("%v", err)
	}
	if exit.Kind != vmm.ExitWorkload {
		return vmFailed(exit)
	}
	return guestStatus(int(exit.Status))
}

// guestStatus ends run with the guest's status, printing one line on stderr
// when it is one of the init's own failure statuses (attestation refused,
// KBS unreachable, unlock failed...).
func guestStatus(status int) error {
	if exitcodes.IsInit(status) {
		fmt.Fprintf(runStderr, "krun-tee run: %s\n", exitcodes.Describe(status))
	}
	return exitStatus(status)
}
