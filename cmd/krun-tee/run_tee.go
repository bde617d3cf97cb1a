package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/krun-tee/krun-tee/guestabi"
	"github.com/krun-tee/krun-tee/launch"
	"github.com/krun-tee/krun-tee/tee"
	"github.com/krun-tee/krun-tee/vmm"
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
	if _, err := tee.Parse(o.tee); err != nil && o.tee != launch.ModeImage && o.tee != launch.ModeAuto {
		return false, usagef("--tee %q: want auto, none, snp, tdx, emulated-snp or emulated-tdx", o.tee)
	}
	explicit := o.tee != "" && o.tee != string(tee.None)
	switch {
	case explicit && plain != "":
		return false, usagef("--tee %s launches a krun-tee IMAGE from its firmware bundle; --%s belongs to the plain --tee none path", o.tee, plain)
	case explicit && len(positional) != 1:
		return false, usagef("--tee %s needs one IMAGE made by `krun-tee mkimage`", o.tee)
	case !explicit && (plain != "" || len(positional) != 1 || !o.readImageConfig(positional[0])):
		for _, f := range confidentialOnlyFlags {
			if set[f] {
				return false, usagef("--%s needs one IMAGE made by `krun-tee mkimage` (a LUKS2 image with a krun-tee token)", f)
			}
		}
		return false, nil
	}
	o.confidential, o.image, o.disks = true, positional[0], nil
	o.cpusSet, o.memorySet = set["cpus"], set["memory"]
	if err := o.checkVMSize(); err != nil {
		return false, err
	}
	if o.kbsAddr != "" {
		if err := launch.CheckKBSAddr(o.kbsAddr); err != nil {
			return false, usagef("--kbs-addr: %v", err)
		}
	}
	return true, nil
}

// readImageConfig reads the launch configuration of the image at path once
// and reports whether the image is meant for the confidential path: a LUKS2
// image with a krun-tee token, or one whose header does not open (a damaged
// header must be reported as such, not booted as a plain disk).
func (o *runOptions) readImageConfig(path string) bool {
	lc, err := launch.ReadImageConfig(path)
	switch {
	case err == nil:
		o.imageConfig = lc
		return true
	case errors.Is(err, launch.ErrNotLaunchImage), errors.Is(err, fs.ErrNotExist):
		return false
	}
	return true
}

// hostTEE asks KVM what real TEEs this host has (a variable for tests).
var hostTEE = func() launch.HostTEE {
	snp, tdx := vmm.HostTEE()
	return launch.HostTEE{SNP: snp, TDX: tdx}
}

// planConfidential plans the launch of a krun-tee image; no KVM, so tests
// can drive it.
func planConfidential(o *runOptions) (*launch.Plan, error) {
	r := launch.ImageRequest{Image: o.image, Config: o.imageConfig, BundleDir: o.bundle, TEE: o.tee,
		ExtraCmdline: o.cmdlineExtra, KBSAddr: o.kbsAddr, EmulatedRoot: o.emulatedRoot, Host: hostTEE()}
	if o.cpusSet {
		r.CPUs = o.cpus
	}
	if o.memorySet {
		r.MemoryMiB = o.memoryMiB
	}
	return launch.PlanImage(r)
}

// warnConfidential says what about a launch weakens or changes its
// attestation before it boots.
func warnConfidential(o *runOptions, plan *launch.Plan, log *slog.Logger) {
	if plan.TEE != plan.ImageTEE {
		log.Warn("the TEE differs from the image's own: the measurement will not match the one registered for the image", "image_tee", plan.ImageTEE)
	}
	if o.cpusSet || o.memorySet {
		log.Warn("--cpus/--memory override the image's VM size: the measurement will not match the one registered for the image",
			"cpus", plan.Spec.CPUs, "memory_mib", plan.Spec.MemoryMiB)
	}
	switch {
	case plan.TEE.IsEmulated():
		fmt.Fprintf(runStderr, "krun-tee run: WARNING: the TEE is EMULATED (%s): memory is not encrypted and the reports are signed by a local test root; for testing only\n", plan.TEE)
	case !plan.TEE.Attests():
		log.Warn("launching without a TEE: nothing is attested, and a KBS releases no key to this guest")
	}
}

// guestStatus ends run with the guest's status, printing one line on stderr
// when it is one of the init's own failure statuses (attestation refused,
// KBS unreachable, unlock failed...).
func guestStatus(status int) error {
	if guestabi.IsInitStatus(status) {
		fmt.Fprintf(runStderr, "krun-tee run: %s\n", guestabi.DescribeStatus(status))
	}
	return exitStatus(status)
}
