package snp

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/krun-tee/krun-tee/vmm/kvm"
)

// Host is what Probe asks of a host; HostOf answers it from /dev/kvm and
// /dev/sev, tests from tables.
type Host struct {
	// CheckExtension is KVM_CHECK_EXTENSION on /dev/kvm.
	CheckExtension func(c int) int
	// VMSAFeatures is the SEV VMSA features device attribute.
	VMSAFeatures func() (uint64, error)
	// PlatformStatus opens /dev/sev and reads SNP_PLATFORM_STATUS.
	PlatformStatus func() (kvm.SNPPlatformStatus, error)
}

// HostOf answers Probe's questions from an open /dev/kvm and /dev/sev.
func HostOf(sys *kvm.System) Host {
	return Host{
		CheckExtension: sys.CheckExtension,
		VMSAFeatures:   sys.SEVVMSAFeatures,
		PlatformStatus: func() (kvm.SNPPlatformStatus, error) {
			sev, err := kvm.OpenSEV()
			if err != nil {
				return kvm.SNPPlatformStatus{}, err
			}
			defer sev.Close()
			return sev.SNPPlatformStatus()
		},
	}
}

// vmTypeNames lists the VM types in a KVM_CAP_VM_TYPES mask.
func vmTypeNames(mask uint64) string {
	var names []string
	for t := uint64(0); t < 64; t++ {
		if mask&(1<<t) != 0 {
			names = append(names, kvm.VMTypeName(t))
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// Probe checks what a real SEV-SNP launch needs of the host: KVM offering
// KVM_X86_SNP_VM, guest_memfd, memory-slot v2, private memory attributes and
// the MAP_GPA_RANGE exit, the SEV VMSA-features attribute, and /dev/sev with
// SNP firmware of ABI 1.51 or newer, initialised. It returns nil when
// nothing is missing, else one line listing everything that is.
func Probe(h Host) error {
	var missing []string
	types := uint64(h.CheckExtension(kvm.CapVMTypes))
	switch {
	case types == 0:
		missing = append(missing, "KVM has no KVM_CAP_VM_TYPES (host kernel older than 6.10, SNP needs 6.11+)")
	case types&(1<<kvm.VMTypeSNP) == 0:
		missing = append(missing, fmt.Sprintf("no KVM_X86_SNP_VM in KVM_CAP_VM_TYPES (KVM offers %s: is kvm_amd loaded with sev_snp=1 on an SNP-enabled host?)", vmTypeNames(types)))
	}
	if h.CheckExtension(kvm.CapUserMemory2) == 0 {
		missing = append(missing, "no KVM_CAP_USER_MEMORY2")
	}
	if h.CheckExtension(kvm.CapGuestMemfd) == 0 {
		missing = append(missing, "no guest_memfd (KVM_CAP_GUEST_MEMFD: kernel built without KVM private memory?)")
	}
	if uint64(h.CheckExtension(kvm.CapMemoryAttributes))&kvm.MemoryAttributePrivate == 0 {
		missing = append(missing, "no private memory attribute (KVM_CAP_MEMORY_ATTRIBUTES)")
	}
	if uint64(h.CheckExtension(kvm.CapExitHypercall))&(1<<kvm.HypercallMapGPARange) == 0 {
		missing = append(missing, "no KVM_HC_MAP_GPA_RANGE exit (KVM_CAP_EXIT_HYPERCALL)")
	}
	if _, err := h.VMSAFeatures(); err != nil {
		missing = append(missing, "no SEV VMSA features from KVM (SEV disabled in kvm_amd?): "+errText(err))
	}
	st, err := h.PlatformStatus()
	switch {
	case errors.Is(err, os.ErrNotExist):
		missing = append(missing, "no "+kvm.SEVDevicePath+" (PSP driver ccp not loaded, or SEV off in the BIOS)")
	case err != nil:
		missing = append(missing, "SNP platform status unreadable: "+errText(err))
	case !st.AtLeast(kvm.SNPMinAPIMajor, kvm.SNPMinAPIMinor):
		missing = append(missing, fmt.Sprintf("SNP firmware ABI %d.%d below the needed %d.%d",
			st.APIMajor, st.APIMinor, kvm.SNPMinAPIMajor, kvm.SNPMinAPIMinor))
	case st.State == 0:
		missing = append(missing, fmt.Sprintf("SNP firmware %d.%d (build %d) is not initialised (the kernel did not bring up SNP: is the RMP reserved, SNP on in the BIOS?)",
			st.APIMajor, st.APIMinor, st.BuildID))
	}
	if len(missing) == 0 {
		return nil
	}
	return errors.New("SEV-SNP launch not possible on this host: " + strings.Join(missing, "; "))
}

// errText is err's message without the package prefix, and without
// semicolons, which separate Probe's items.
func errText(err error) string {
	return strings.ReplaceAll(strings.TrimPrefix(err.Error(), "kvm: "), ";", ",")
}
