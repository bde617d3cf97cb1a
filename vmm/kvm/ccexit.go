package kvm

import (
	"encoding/binary"
	"fmt"
	"unsafe"
)

// Exits of confidential guests.
const (
	// ExitMemoryFault (KVM_EXIT_MEMORY_FAULT): the guest touched memory whose
	// private/shared attribute differs from the access. KVM_RUN returns
	// EFAULT with this exit reason set.
	ExitMemoryFault = 39
	// MemoryExitFlagPrivate (KVM_MEMORY_EXIT_FLAG_PRIVATE) in MemoryFaultExit.Flags:
	// the access was private.
	MemoryExitFlagPrivate = 1 << 3
)

// KVM_HC_MAP_GPA_RANGE (include/uapi/linux/kvm_para.h and
// arch/x86/include/uapi/asm/kvm_para.h): the guest asks to convert
// args[0]=gpa, args[1]=pages with args[2]=attributes. Delivered to userspace
// as ExitHypercall once enabled with VM.EnableExitHypercall.
const (
	HypercallMapGPARange  = 12
	MapGPARangePageSz4K   = 0
	MapGPARangePageSz2M   = 1 << 0
	MapGPARangePageSz1G   = 1 << 1
	MapGPARangeEncrypted  = 1 << 4 // KVM_MAP_GPA_RANGE_ENCRYPTED: convert to private
	MapGPARangeDecrypted  = 0      // KVM_MAP_GPA_RANGE_DECRYPTED: convert to shared
	HypercallFlagLongMode = 1 << 0 // KVM_EXIT_HYPERCALL_LONG_MODE
)

// kvm_run offsets of the confidential-computing exits.
const (
	runHypercallNr    = runUnion + 0
	runHypercallArgs  = runUnion + 8
	runHypercallRet   = runUnion + 56
	runHypercallFlags = runUnion + 64
	runMemFaultFlags  = runUnion + 0
	runMemFaultGPA    = runUnion + 8
	runMemFaultSize   = runUnion + 16
)

// EnableCap is struct kvm_enable_cap.
type EnableCap struct {
	Cap   uint32
	Flags uint32
	Args  [4]uint64
	_     [64]uint8
}

// EnableCap issues KVM_ENABLE_CAP on the VM.
func (vm *VM) EnableCap(c EnableCap) error {
	if _, err := ioctlPtr(vm.fd, ioEnableCap, unsafe.Pointer(&c)); err != nil {
		return fmt.Errorf("kvm: KVM_ENABLE_CAP %d args %#x: %w", c.Cap, c.Args, err)
	}
	return nil
}

// EnableExitHypercall makes the hypercalls in mask (bit n = hypercall n,
// e.g. 1<<HypercallMapGPARange) exit to userspace (KVM_CAP_EXIT_HYPERCALL).
func (vm *VM) EnableExitHypercall(mask uint64) error {
	if supported := uint64(vm.CheckExtension(CapExitHypercall)); mask&^supported != 0 {
		return fmt.Errorf("kvm: KVM_CAP_EXIT_HYPERCALL: hypercalls %#x requested, KVM forwards only %#x", mask, supported)
	}
	return vm.EnableCap(EnableCap{Cap: CapExitHypercall, Args: [4]uint64{mask}})
}

// MemoryFaultExit is kvm_run.memory_fault.
type MemoryFaultExit struct {
	Flags uint64
	GPA   uint64
	Size  uint64
}

// Private reports whether the faulting access was private.
func (e MemoryFaultExit) Private() bool { return e.Flags&MemoryExitFlagPrivate != 0 }

// MemoryFault returns the current ExitMemoryFault.
func (c *VCPU) MemoryFault() MemoryFaultExit {
	return MemoryFaultExit{
		Flags: binary.LittleEndian.Uint64(c.run[runMemFaultFlags:]),
		GPA:   binary.LittleEndian.Uint64(c.run[runMemFaultGPA:]),
		Size:  binary.LittleEndian.Uint64(c.run[runMemFaultSize:]),
	}
}

// HypercallExit is kvm_run.hypercall.
type HypercallExit struct {
	Nr    uint64
	Args  [6]uint64
	Ret   uint64
	Flags uint64
}

// Hypercall returns the current ExitHypercall.
func (c *VCPU) Hypercall() HypercallExit {
	h := HypercallExit{
		Nr:    binary.LittleEndian.Uint64(c.run[runHypercallNr:]),
		Ret:   binary.LittleEndian.Uint64(c.run[runHypercallRet:]),
		Flags: binary.LittleEndian.Uint64(c.run[runHypercallFlags:]),
	}
	for i := range h.Args {
		h.Args[i] = binary.LittleEndian.Uint64(c.run[runHypercallArgs+8*i:])
	}
	return h
}

// SetHypercallRet sets kvm_run.hypercall.ret, the value the guest gets in
// RAX when the vCPU next runs (0 = success, else a negative errno).
func (c *VCPU) SetHypercallRet(ret uint64) {
	binary.LittleEndian.PutUint64(c.run[runHypercallRet:], ret)
}
