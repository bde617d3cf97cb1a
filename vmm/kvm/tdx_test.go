package kvm

import (
	"testing"
	"unsafe"
)

// The TDX layouts are not in the 6.12 headers here: the wanted values are
// the ones written down from Linux 6.16's arch/x86/include/uapi/asm/kvm.h
// and include/uapi/linux/kvm.h (see tdx.go), computed by hand from the C
// declarations, not from the Go types.
func TestTDXLayouts(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof kvm_tdx_cmd", unsafe.Sizeof(TDXCmd{}), 24},
		{"kvm_tdx_cmd.flags", unsafe.Offsetof(TDXCmd{}.Flags), 4},
		{"kvm_tdx_cmd.data", unsafe.Offsetof(TDXCmd{}.Data), 8},
		{"kvm_tdx_cmd.hw_error", unsafe.Offsetof(TDXCmd{}.HWError), 16},
		// 6 u64 + reserved[250] = 2048 bytes, then kvm_cpuid2's 8-byte header.
		{"sizeof kvm_tdx_capabilities", unsafe.Sizeof(TDXCapabilitiesArg{}), 2056},
		{"kvm_tdx_capabilities.supported_xfam", unsafe.Offsetof(TDXCapabilitiesArg{}.SupportedXFAM), 8},
		{"kvm_tdx_capabilities.kernel_tdvmcallinfo_1_r11", unsafe.Offsetof(TDXCapabilitiesArg{}.KernelTDVMCallInfo1R11), 16},
		{"kvm_tdx_capabilities.user_tdvmcallinfo_1_r12", unsafe.Offsetof(TDXCapabilitiesArg{}.UserTDVMCallInfo1R12), 40},
		{"kvm_tdx_capabilities.cpuid", unsafe.Offsetof(TDXCapabilitiesArg{}.CPUIDNEnt), 2048},
		// attributes, xfam, 3 x 48-byte digests, reserved[12]: 256 bytes of
		// TD parameters, then kvm_cpuid2.
		{"sizeof kvm_tdx_init_vm", unsafe.Sizeof(TDXInitVMArg{}), 264},
		{"kvm_tdx_init_vm.xfam", unsafe.Offsetof(TDXInitVMArg{}.XFAM), 8},
		{"kvm_tdx_init_vm.mrconfigid", unsafe.Offsetof(TDXInitVMArg{}.MRConfigID), 16},
		{"kvm_tdx_init_vm.mrowner", unsafe.Offsetof(TDXInitVMArg{}.MROwner), 64},
		{"kvm_tdx_init_vm.mrownerconfig", unsafe.Offsetof(TDXInitVMArg{}.MROwnerConfig), 112},
		{"kvm_tdx_init_vm.cpuid", unsafe.Offsetof(TDXInitVMArg{}.CPUIDNEnt), 256},
		{"sizeof kvm_tdx_init_mem_region", unsafe.Sizeof(TDXInitMemRegionArg{}), 24},
		{"kvm_tdx_init_mem_region.gpa", unsafe.Offsetof(TDXInitMemRegionArg{}.GPA), 8},
		{"kvm_tdx_init_mem_region.nr_pages", unsafe.Offsetof(TDXInitMemRegionArg{}.NrPages), 16},
		// The named sizes agree with the types.
		{"sizeofTDXCmd", sizeofTDXCmd, unsafe.Sizeof(TDXCmd{})},
		{"sizeofTDXCapabilitiesArg", sizeofTDXCapabilitiesArg, unsafe.Sizeof(TDXCapabilitiesArg{})},
		{"sizeofTDXInitVMArg", sizeofTDXInitVMArg, unsafe.Sizeof(TDXInitVMArg{})},
		{"sizeofTDXInitMemRegionArg", sizeofTDXInitMemRegionArg, unsafe.Sizeof(TDXInitMemRegionArg{})},
		{"tdxInitVMParamsSize", tdxInitVMParamsSize, unsafe.Offsetof(TDXInitVMArg{}.CPUIDNEnt)},
		// kvm_run: the exit union starts at 32; tdx is {flags, nr, union{ret, ...}}.
		{"kvm_run.tdx.flags", runTDXFlags, 32},
		{"kvm_run.tdx.nr", runTDXNr, 40},
		{"kvm_run.tdx.get_quote.ret", runTDXRet, 48},
		{"kvm_run.tdx.get_quote.gpa", runTDXArgs, 56},
		{"kvm_run.tdx.get_tdvmcall_info.r14", runTDXArgs + 8*4, 88},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
	// The tdx exit fits the 256-byte union: flags, nr, ret, 5 words.
	if end := runTDXArgs + 8*tdxExitArgs - runUnion; end > 256 {
		t.Errorf("tdx exit ends %d bytes into the 256-byte union", end)
	}
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"KVM_TDX_CAPABILITIES", TDXCapabilities, 0},
		{"KVM_TDX_INIT_VM", TDXInitVM, 1},
		{"KVM_TDX_INIT_VCPU", TDXInitVCPU, 2},
		{"KVM_TDX_INIT_MEM_REGION", TDXInitMemRegion, 3},
		{"KVM_TDX_FINALIZE_VM", TDXFinalizeVM, 4},
		{"KVM_TDX_GET_CPUID", TDXGetCPUID, 5},
		{"KVM_TDX_MEASURE_MEMORY_REGION", TDXMeasureMemoryRegion, 1},
		{"KVM_EXIT_TDX", ExitTDX, 40},
		{"KVM_SYSTEM_EVENT_TDX_FATAL", SystemEventTDXFatal, 7},
		{"TDVMCALL_GET_QUOTE", TDVMCallGetQuote, 0x10002},
		{"TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT", TDVMCallSetupEventNotifyInterrupt, 0x10004},
		{"TDVMCALL_STATUS_INVALID_OPERAND", TDVMCallStatusInvalidOperand, 1 << 63},
		{"TDX_TD_ATTR_SEPT_VE_DISABLE", TDXAttrSEPTVEDisable, 1 << 28},
		{"TDX_TD_ATTR_DEBUG", TDXAttrDebug, 1},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

func TestTDXExitAccessors(t *testing.T) {
	c := &VCPU{run: make([]byte, runMinSize)}
	put := func(off int, v uint64) {
		for i := 0; i < 8; i++ {
			c.run[off+i] = byte(v >> (8 * i))
		}
	}
	put(runExitReason, ExitTDX)
	put(runTDXNr, TDVMCallGetQuote)
	put(runTDXRet, 0xdead)
	put(runTDXArgs, 0x7f000)
	put(runTDXArgs+8, 0x2000)
	e := c.TDX()
	if c.ExitReason() != ExitTDX || e.Nr != TDVMCallGetQuote || e.Ret != 0xdead {
		t.Fatalf("exit %+v reason %d", e, c.ExitReason())
	}
	gpa, size, err := e.GetQuote()
	if err != nil || gpa != 0x7f000 || size != 0x2000 {
		t.Fatalf("GetQuote = %#x, %#x, %v", gpa, size, err)
	}
	if _, err := e.EventNotifyVector(); err == nil {
		t.Error("a GetQuote exit answered as SetupEventNotifyInterrupt")
	}
	c.SetTDXRet(TDVMCallStatusSuccess)
	if c.TDX().Ret != 0 {
		t.Error("SetTDXRet did not reach kvm_run.tdx.ret")
	}
	for _, bad := range [][2]uint64{{0x7f010, 0x1000}, {0x7f000, 0}, {0x7f000, 0x1800}} {
		put(runTDXArgs, bad[0])
		put(runTDXArgs+8, bad[1])
		if _, _, err := c.TDX().GetQuote(); err == nil {
			t.Errorf("GetQuote buffer %#x+%#x accepted", bad[0], bad[1])
		}
	}

	put(runTDXNr, TDVMCallSetupEventNotifyInterrupt)
	for _, tc := range []struct {
		vector uint64
		ok     bool
	}{{0x20, true}, {0xff, true}, {31, false}, {256, false}} {
		put(runTDXArgs, tc.vector)
		v, err := c.TDX().EventNotifyVector()
		if (err == nil) != tc.ok || (tc.ok && uint64(v) != tc.vector) {
			t.Errorf("vector %d: %d, %v", tc.vector, v, err)
		}
	}
	if err := c.SetTDXArg(4, 7); err != nil || c.TDX().Args[4] != 7 {
		t.Errorf("SetTDXArg(4): %v", err)
	}
	if err := c.SetTDXArg(5, 7); err == nil {
		t.Error("SetTDXArg(5) accepted")
	}
	if !TDXStatusError(TDVMCallStatusAlignError) || TDXStatusError(TDVMCallStatusRetry) {
		t.Error("TDXStatusError misclassifies")
	}
}
