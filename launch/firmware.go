package launch

import (
	"github.com/krun-tee/krun-tee/layout"
	"github.com/krun-tee/krun-tee/tee"
	"github.com/krun-tee/krun-tee/vmm/boot"
)

// buildLayout is the one place that chooses the layout builder: firmware
// mode, every vCPU 0 starting at the reset vector inside the bundle's boot
// shim (the only start a real SNP/TDX guest can have). Emulated TEEs launch
// exactly the layout of their hardware; the shim runs an SNP or TDX layout
// on plain KVM too (it hides the SNP CC blob from the kernel there). No
// CPUID page contents are supplied: the launch measures a CPUID page as
// zeros either way, and only real SNP hardware checks its contents.
func buildLayout(cfg boot.Config, shim []byte, t tee.TEE) (*layout.Layout, error) {
	return boot.BuildFirmware(boot.FirmwareConfig{Config: cfg, Shim: shim, TEE: t})
}
