package launch

import (
	"github.com/krun-tee/krun-tee/init/launchparams"
	"github.com/krun-tee/krun-tee/vmm/boot"
	"github.com/krun-tee/krun-tee/vmm/layout"
)

// TEEKind is the family of TEE a layout is built for: SEV-SNP layouts carry
// the secrets and CPUID pages, TDX layouts do not.
type TEEKind int

// TEE families.
const (
	KindNone TEEKind = iota
	KindSNP
	KindTDX
)

func (k TEEKind) String() string {
	switch k {
	case KindSNP:
		return "snp"
	case KindTDX:
		return "tdx"
	}
	return "none"
}

// KindOf maps a launchparams TEE value to its family (emulated TEEs launch
// exactly as the real ones do).
func KindOf(tee string) TEEKind {
	switch tee {
	case launchparams.TEESNP, launchparams.TEEEmulatedSNP:
		return KindSNP
	case launchparams.TEETDX, launchparams.TEEEmulatedTDX:
		return KindTDX
	}
	return KindNone
}

// buildLayout is the one place that chooses the layout builder. Until the
// firmware-mode builder (boot.BuildFirmware: shim at 4 GiB, SNP secrets and
// CPUID pages) is available, the direct-boot layout of boot.Build is the
// launch layout: it is complete and deterministic, but the shim is not part
// of it, so it is not yet what real SNP/TDX hardware can start.
func buildLayout(cfg boot.Config, shim []byte, kind TEEKind) (*layout.Layout, error) {
	_, _ = shim, kind
	return boot.Build(cfg)
}
