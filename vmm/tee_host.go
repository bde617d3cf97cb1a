package vmm

import (
	"os"

	"github.com/krun-tee/krun-tee/vmm/kvm"
)

// KVM facts for detecting the host's confidential-computing support
// (include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h).
const (
	capVMTypes = 235 // KVM_CAP_VM_TYPES: bitmask of the VM types KVM_CREATE_VM accepts
	vmTypeSNP  = 4   // KVM_X86_SNP_VM
	vmTypeTDX  = 5   // KVM_X86_TDX_VM
	sevDevice  = "/dev/sev"
)

// HostTEE reports which real TEEs this host's KVM can create: SEV-SNP needs
// the PSP device /dev/sev and KVM_X86_SNP_VM among KVM_CAP_VM_TYPES, TDX
// needs KVM_X86_TDX_VM. A host without /dev/kvm has neither.
func HostTEE() (snp, tdx bool) {
	sys, err := kvm.Open()
	if err != nil {
		return false, false
	}
	defer sys.Close()
	types := sys.CheckExtension(capVMTypes)
	_, sevErr := os.Stat(sevDevice)
	return sevErr == nil && types&(1<<vmTypeSNP) != 0, types&(1<<vmTypeTDX) != 0
}
