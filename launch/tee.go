package launch

import (
	"errors"
	"fmt"

	"github.com/krun-tee/krun-tee/tee"
)

// Values of `krun-tee run --tee` beyond the TEE names (package tee).
const (
	// ModeImage (the empty string) launches with the TEE recorded in the
	// image: emulated-* images run emulated (their measurement names the
	// emulated TEE, so nothing else would attest), snp/tdx images as auto
	// restricted to that technology, none images as none.
	ModeImage = ""
	// ModeAuto picks the host's real SEV-SNP or TDX. It never falls back
	// to the emulated TEE: emulation is strictly opt-in.
	ModeAuto = "auto"
)

// HostTEE is what the host can launch for real.
type HostTEE struct {
	SNP bool // /dev/sev and KVM_X86_SNP_VM in KVM_CAP_VM_TYPES
	TDX bool // KVM_X86_TDX_VM in KVM_CAP_VM_TYPES
}

// ErrNoHardwareTEE: a real TEE was asked for on a host without one.
var ErrNoHardwareTEE = errors.New("no SEV-SNP/TDX on this host; use --tee emulated-snp|emulated-tdx for the emulated TEE (testing only) or --tee none")

// ErrRealLaunchUnimplemented: the host has the TEE, but krun-tee cannot
// launch it yet.
var ErrRealLaunchUnimplemented = errors.New("real SEV-SNP/TDX launches are not implemented in krun-tee yet")

// SelectTEE resolves a --tee request against the image's recorded TEE and
// the host's capabilities, and returns the TEE to launch as.
// Real SNP/TDX are refused even when present (ErrRealLaunchUnimplemented
// names the missing KVM launch steps); without hardware the refusal is
// ErrNoHardwareTEE. Emulated TEEs are chosen only when asked for, by flag
// or by the image.
func SelectTEE(requested string, imageTEE tee.TEE, host HostTEE) (tee.TEE, error) {
	want := tee.TEE(requested)
	if requested == ModeImage {
		want = imageTEE
	}
	switch want {
	case tee.None, tee.EmulatedSNP, tee.EmulatedTDX:
		return want, nil
	case ModeAuto:
		switch {
		case host.SNP:
			want = tee.SNP
		case host.TDX:
			want = tee.TDX
		default:
			return "", ErrNoHardwareTEE
		}
	case tee.SNP:
		if !host.SNP {
			return "", fmt.Errorf("the image asks for SEV-SNP: %w", ErrNoHardwareTEE)
		}
	case tee.TDX:
		if !host.TDX {
			return "", fmt.Errorf("the image asks for TDX: %w", ErrNoHardwareTEE)
		}
	default:
		return "", fmt.Errorf("tee %q: want auto, none, snp, tdx, emulated-snp or emulated-tdx", want)
	}
	if want == tee.SNP {
		return "", fmt.Errorf("this host has SEV-SNP, but %w: the KVM_SEV_INIT2, SNP_LAUNCH_START/UPDATE/FINISH and guest_memfd steps are missing (the emulated TEE runs with --tee emulated-snp)", ErrRealLaunchUnimplemented)
	}
	return "", fmt.Errorf("this host has TDX, but %w: the KVM_TDX_INIT_VM/INIT_VCPU/INIT_MEM_REGION/FINALIZE_VM steps are missing (the emulated TEE runs with --tee emulated-tdx)", ErrRealLaunchUnimplemented)
}
