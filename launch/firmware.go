package launch

import (
	"github.com/krun-tee/krun-tee/init/launchparams"
	"github.com/krun-tee/krun-tee/layout"
	"github.com/krun-tee/krun-tee/vmm/boot"
)

// TEEKind is the family of TEE a layout is built for (boot.TEEKind): SEV-SNP
// layouts carry the secrets and CPUID pages, TDX and plain ones do not.
type TEEKind = boot.TEEKind

// TEE families.
const (
	KindNone = boot.TEENone
	KindSNP  = boot.TEESNP
	KindTDX  = boot.TEETDX
)

// KindOf maps a launchparams TEE value to its family. Emulated TEEs launch
// exactly the layout the real ones would; the shim runs an SNP or TDX
// layout on plain KVM too (it hides the SNP CC blob from the kernel there).
func KindOf(tee string) TEEKind {
	switch tee {
	case launchparams.TEESNP, launchparams.TEEEmulatedSNP:
		return KindSNP
	case launchparams.TEETDX, launchparams.TEEEmulatedTDX:
		return KindTDX
	}
	return KindNone
}

// buildLayout is the one place that chooses the layout builder: firmware
// mode, every vCPU 0 starting at the reset vector inside the bundle's boot
// shim (the only start a real SNP/TDX guest can have). No CPUID page
// contents are supplied: the launch measures a CPUID page as zeros either
// way, and only real SNP hardware checks its contents.
func buildLayout(cfg boot.Config, shim []byte, kind TEEKind) (*layout.Layout, error) {
	return boot.BuildFirmware(boot.FirmwareConfig{Config: cfg, Shim: shim, TEE: kind})
}
