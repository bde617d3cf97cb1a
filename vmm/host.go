package vmm

import (
	"errors"
	"os"
)

// pvmModulePath exists when the host's KVM is kvm-pvm, the software-assisted
// KVM of nested cloud VMs that emulates guest kernel mode instruction by
// instruction (DESIGN 6).
const pvmModulePath = "/sys/module/kvm_pvm"

// AllowPVMEnv, set to 1, lets krun-tee boot on kvm-pvm anyway (experiments).
const AllowPVMEnv = "KRUN_TEE_ALLOW_PVM"

// ErrSoftwareKVM is returned when /dev/kvm is kvm-pvm, which cannot run a
// Linux guest kernel reliably.
var ErrSoftwareKVM = errors.New("this host's /dev/kvm is the software-assisted kvm-pvm, which cannot run a Linux guest kernel reliably; run krun-tee on a host with hardware virtualisation (or in the nested harness, tests/e2e), or set " + AllowPVMEnv + "=1 to try anyway")

// IsSoftwareKVM reports whether the host's KVM is kvm-pvm.
func IsSoftwareKVM() bool {
	_, err := os.Stat(pvmModulePath)
	return err == nil
}

// checkHost refuses kvm-pvm unless allowed by the caller or the environment.
func checkHost(allow bool) error {
	if allow || os.Getenv(AllowPVMEnv) == "1" || !IsSoftwareKVM() {
		return nil
	}
	return ErrSoftwareKVM
}
