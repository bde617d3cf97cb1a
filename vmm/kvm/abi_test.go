package kvm

import (
	"testing"
	"unsafe"
)

// The sizes come from the kernel's uapi headers (pahole on an x86-64 build)
// and the ioctl numbers from the _IO* macros as the kernel computes them.
func TestStructSizes(t *testing.T) {
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_userspace_memory_region", unsafe.Sizeof(UserspaceMemoryRegion{}), 32},
		{"kvm_regs", unsafe.Sizeof(Regs{}), 144},
		{"kvm_segment", unsafe.Sizeof(Segment{}), 24},
		{"kvm_dtable", unsafe.Sizeof(Dtable{}), 16},
		{"kvm_sregs", unsafe.Sizeof(Sregs{}), 312},
		{"kvm_fpu", unsafe.Sizeof(FPU{}), 416},
		{"kvm_lapic_state", unsafe.Sizeof(LAPICState{}), 1024},
		{"kvm_cpuid_entry2", unsafe.Sizeof(CPUIDEntry{}), 40},
		{"kvm_msr_entry", unsafe.Sizeof(MSREntry{}), 16},
		{"kvm_pit_config", unsafe.Sizeof(PITConfig{}), 64},
		{"kvm_irqfd", unsafe.Sizeof(IRQFD{}), 32},
		{"kvm_ioeventfd", unsafe.Sizeof(IOEventFD{}), 64},
		{"kvm_irq_level", unsafe.Sizeof(IRQLevel{}), 8},
		{"kvm_xcrs", unsafe.Sizeof(XCRS{}), 392},
		// The named constants used in ioctl numbers agree with the types.
		{"sizeofRegs", sizeofRegs, unsafe.Sizeof(Regs{})},
		{"sizeofSregs", sizeofSregs, unsafe.Sizeof(Sregs{})},
		{"sizeofFPU", sizeofFPU, unsafe.Sizeof(FPU{})},
		{"sizeofCPUIDEntry2", sizeofCPUIDEntry2, unsafe.Sizeof(CPUIDEntry{})},
		{"sizeofMSREntry", sizeofMSREntry, unsafe.Sizeof(MSREntry{})},
		{"sizeofIOEventFD", sizeofIOEventFD, unsafe.Sizeof(IOEventFD{})},
		{"sizeofIRQFD", sizeofIRQFD, unsafe.Sizeof(IRQFD{})},
		{"sizeofXCRS", sizeofXCRS, unsafe.Sizeof(XCRS{})},
		{"sizeofPITConfig", sizeofPITConfig, unsafe.Sizeof(PITConfig{})},
		{"sizeofUserspaceMemoryRegion", sizeofUserspaceMemoryRegion, unsafe.Sizeof(UserspaceMemoryRegion{})},
		{"sizeofLAPICState", sizeofLAPICState, unsafe.Sizeof(LAPICState{})},
		{"sizeofIRQLevel", sizeofIRQLevel, unsafe.Sizeof(IRQLevel{})},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s: size %d, want %d", tc.name, tc.got, tc.want)
		}
	}
	// Field offsets the kernel relies on.
	offsets := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_sregs.gdt", unsafe.Offsetof(Sregs{}.GDT), 192},
		{"kvm_sregs.cr0", unsafe.Offsetof(Sregs{}.CR0), 224},
		{"kvm_sregs.efer", unsafe.Offsetof(Sregs{}.EFER), 264},
		{"kvm_sregs.apic_base", unsafe.Offsetof(Sregs{}.APICBase), 272},
		{"kvm_regs.rip", unsafe.Offsetof(Regs{}.RIP), 128},
		{"kvm_fpu.fcw", unsafe.Offsetof(FPU{}.FCW), 128},
		{"kvm_fpu.mxcsr", unsafe.Offsetof(FPU{}.MXCSR), 408},
		{"kvm_ioeventfd.fd", unsafe.Offsetof(IOEventFD{}.FD), 20},
		{"kvm_ioeventfd.flags", unsafe.Offsetof(IOEventFD{}.Flags), 24},
		{"kvm_segment.unusable", unsafe.Offsetof(Segment{}.Unusable), 22},
	}
	for _, tc := range offsets {
		if tc.got != tc.want {
			t.Errorf("%s: offset %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

func TestIoctlNumbers(t *testing.T) {
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"KVM_GET_API_VERSION", ioGetAPIVersion, 0xae00},
		{"KVM_CREATE_VM", ioCreateVM, 0xae01},
		{"KVM_CHECK_EXTENSION", ioCheckExtension, 0xae03},
		{"KVM_GET_VCPU_MMAP_SIZE", ioGetVCPUMmapSize, 0xae04},
		{"KVM_GET_SUPPORTED_CPUID", ioGetSupportedCPUID, 0xc008ae05},
		{"KVM_SET_USER_MEMORY_REGION", ioSetUserMemoryRegion, 0x4020ae46},
		{"KVM_SET_TSS_ADDR", ioSetTSSAddr, 0xae47},
		{"KVM_SET_IDENTITY_MAP_ADDR", ioSetIdentityMapAddr, 0x4008ae48},
		{"KVM_CREATE_IRQCHIP", ioCreateIRQChip, 0xae60},
		{"KVM_IRQ_LINE", ioIRQLine, 0x4008ae61},
		{"KVM_IRQFD", ioIRQFD, 0x4020ae76},
		{"KVM_CREATE_PIT2", ioCreatePIT2, 0x4040ae77},
		{"KVM_IOEVENTFD", ioIOEventFD, 0x4040ae79},
		{"KVM_CREATE_VCPU", ioCreateVCPU, 0xae41},
		{"KVM_RUN", ioRun, 0xae80},
		{"KVM_GET_REGS", ioGetRegs, 0x8090ae81},
		{"KVM_SET_REGS", ioSetRegs, 0x4090ae82},
		{"KVM_GET_SREGS", ioGetSregs, 0x8138ae83},
		{"KVM_SET_SREGS", ioSetSregs, 0x4138ae84},
		{"KVM_SET_MSRS", ioSetMSRs, 0x4008ae89},
		{"KVM_GET_FPU", ioGetFPU, 0x81a0ae8c},
		{"KVM_SET_FPU", ioSetFPU, 0x41a0ae8d},
		{"KVM_GET_LAPIC", ioGetLAPIC, 0x8400ae8e},
		{"KVM_SET_LAPIC", ioSetLAPIC, 0x4400ae8f},
		{"KVM_SET_CPUID2", ioSetCPUID2, 0x4008ae90},
		{"KVM_SET_XCRS", ioSetXCRS, 0x4188aea7},
		{"KVM_GET_MP_STATE", ioGetMPState, 0x8004ae98},
		{"KVM_GET_STATS_FD", ioGetStatsFD, 0xaece},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.got, tc.want)
		}
	}
}
