package kvm

import (
	"encoding/binary"
	"fmt"
)

// Intel TDX host UAPI. It was merged in Linux 6.16 and is not in the 6.12
// headers this repository builds against, so every number below is written
// down from the 6.16 sources, with the version each comes from:
//   - arch/x86/include/uapi/asm/kvm.h (6.16): enum kvm_tdx_cmd_id, struct
//     kvm_tdx_cmd, kvm_tdx_capabilities, kvm_tdx_init_vm,
//     kvm_tdx_init_mem_region, KVM_TDX_MEASURE_MEMORY_REGION;
//   - include/uapi/linux/kvm.h (6.16): KVM_EXIT_TDX (40), the kvm_run.tdx
//     exit, KVM_SYSTEM_EVENT_TDX_FATAL (7);
//   - Documentation/virt/kvm/x86/intel-tdx.rst (6.16): which commands are VM
//     and which vCPU ioctls, and what data carries;
//   - the TDX GHCI (Guest-Hypervisor Communication Interface) for the
//     TDG.VP.VMCALL leaf numbers and status codes.
// tdx_test.go pins every size and offset to these values. The VM type
// (KVM_X86_TDX_VM = 5) and KVM_MEMORY_ENCRYPT_OP, through which every TDX
// command goes with a TDXCmd argument, are shared with SEV and defined with
// it (VMTypeTDX, ioMemoryEncryptOp).

// TDX command ids (enum kvm_tdx_cmd_id, Linux 6.16), the TDXCmd.ID of
// KVM_MEMORY_ENCRYPT_OP. VM commands go to the VM fd, vCPU commands to the
// vCPU fd.
const (
	TDXCapabilities  = 0 // VM: Data -> TDXCapabilitiesArg (+ CPUID entries); Flags 0
	TDXInitVM        = 1 // VM, before any vCPU exists: Data -> TDXInitVMArg (+ CPUID entries)
	TDXInitVCPU      = 2 // vCPU: Data = the initial RCX (the TD's HOB/parameter address)
	TDXInitMemRegion = 3 // vCPU (not VM): Data -> TDXInitMemRegionArg; Flags TDXMeasureMemoryRegion
	TDXFinalizeVM    = 4 // VM: ends the build (TDH.MR.FINALIZE); Data 0
	TDXGetCPUID      = 5 // vCPU: Data -> struct kvm_cpuid2, the CPUID the TDX module presents
)

// TDXMeasureMemoryRegion (KVM_TDX_MEASURE_MEMORY_REGION, 6.16) in
// TDXCmd.Flags of TDXInitMemRegion: also extend MRTD with the pages'
// contents (TDH.MR.EXTEND, 256 bytes at a time), not only with their GPAs
// (TDH.MEM.PAGE.ADD).
const TDXMeasureMemoryRegion = 1 << 0

// TDXCmd is struct kvm_tdx_cmd (6.16), 24 bytes.
type TDXCmd struct {
	ID    uint32 // TDX* command id
	Flags uint32
	Data  uint64 // an immediate or a pointer into this process
	// HWError is the TDX module's status code (TDX_* SEAMCALL error) when
	// the command failed inside the module; 0 otherwise.
	HWError uint64
}

// TDXCapabilitiesArg is the fixed part of struct kvm_tdx_capabilities
// (6.16), 2056 bytes; a kvm_cpuid2 entry array (the CPUID bits userspace
// may configure) follows it, its length in CPUIDNEnt.
type TDXCapabilitiesArg struct {
	SupportedAttrs uint64 // TD ATTRIBUTES bits the module allows
	SupportedXFAM  uint64 // XFAM bits the module allows
	// TDG.VP.VMCALL<GetTdVmCallInfo> sub-functions KVM handles itself
	// (Kernel*) and forwards to userspace (User*), as R11/R12 bitmaps.
	KernelTDVMCallInfo1R11 uint64
	UserTDVMCallInfo1R11   uint64
	KernelTDVMCallInfo1R12 uint64
	UserTDVMCallInfo1R12   uint64
	_                      [250]uint64
	CPUIDNEnt              uint32 // struct kvm_cpuid2: nent, padding, entries[]
	_                      uint32
}

// TDXInitVMArg is the fixed part of struct kvm_tdx_init_vm (6.16): 256
// bytes of TD parameters, then a kvm_cpuid2 header; the CPUID entries
// follow it.
type TDXInitVMArg struct {
	Attributes    uint64    // TD ATTRIBUTES (TDXAttr*)
	XFAM          uint64    // extended features the TD may use (XCR0|IA32_XSS bits)
	MRConfigID    [6]uint64 // SHA-384, software-defined (krun-tee: the init-data digest)
	MROwner       [6]uint64 // SHA-384
	MROwnerConfig [6]uint64 // SHA-384
	_             [12]uint64
	CPUIDNEnt     uint32
	_             uint32
}

// TDXInitMemRegionArg is struct kvm_tdx_init_mem_region (6.16): copy
// NrPages pages from SourceAddr (page aligned) into the TD at GPA, which
// must already be private (KVM_SET_MEMORY_ATTRIBUTES). KVM advances the
// fields over the pages it added when it stops early.
type TDXInitMemRegionArg struct {
	SourceAddr uint64
	GPA        uint64
	NrPages    uint64
}

// TD ATTRIBUTES bits (TDX module ABI; the values KVM passes through).
const (
	TDXAttrDebug         = 1 << 0  // off-TD debug: never for a confidential launch
	TDXAttrSEPTVEDisable = 1 << 28 // no #VE on EPT violations of pending pages: Linux guests require it
	TDXAttrPKS           = 1 << 30
	TDXAttrPerfmon       = 1 << 63
)

// ExitTDX (KVM_EXIT_TDX, Linux 6.16, include/uapi/linux/kvm.h): the guest
// made a TDG.VP.VMCALL that KVM forwards to userspace. Userspace sets the
// return code (TDXExit.SetRet) and runs the vCPU again.
const ExitTDX = 40

// SystemEventTDXFatal (KVM_SYSTEM_EVENT_TDX_FATAL, 6.16) in an
// ExitSystemEvent: the guest reported a fatal error (TDVMCALL
// ReportFatalError) and cannot continue.
const SystemEventTDXFatal = 7

// TDG.VP.VMCALL leaves (TDX GHCI; kvm_run.tdx.nr). KVM 6.16 forwards
// GetQuote, SetupEventNotifyInterrupt and GetTdVmCallInfo leaf 1 to
// userspace as ExitTDX; MapGPA arrives as an ExitHypercall
// (KVM_HC_MAP_GPA_RANGE) and ReportFatalError as SystemEventTDXFatal.
const (
	TDVMCallGetTdVmCallInfo           = 0x10000
	TDVMCallMapGPA                    = 0x10001
	TDVMCallGetQuote                  = 0x10002
	TDVMCallReportFatalError          = 0x10003
	TDVMCallSetupEventNotifyInterrupt = 0x10004
)

// TDG.VP.VMCALL status codes (TDX GHCI), the value userspace returns in
// kvm_run.tdx.<leaf>.ret (the guest's R10).
const (
	TDVMCallStatusSuccess            = 0x0000000000000000
	TDVMCallStatusRetry              = 0x0000000000000001
	TDVMCallStatusInvalidOperand     = 0x8000000000000000
	TDVMCallStatusAlignError         = 0x8000000000000002
	TDVMCallStatusSubfuncUnsupported = 0x8000000000000003
	tdvmcallStatusErrorBit           = 1 << 63
	sizeofTDXCmd                     = 24
	sizeofTDXCapabilitiesArg         = 2056
	sizeofTDXInitVMArg               = 264
	sizeofTDXInitMemRegionArg        = 24
	tdxInitVMParamsSize              = 256 // TD_PARAMS before the CPUID configuration
	tdxPageSize                      = 4096
)

// kvm_run offsets of the tdx exit (6.16): flags, nr, then a union whose
// first word is always ret.
const (
	runTDXFlags = runUnion + 0
	runTDXNr    = runUnion + 8
	runTDXRet   = runUnion + 16
	runTDXArgs  = runUnion + 24 // get_quote {gpa, size}; setup_event_notify {vector}; get_tdvmcall_info {leaf, r11..r14}; unknown data[5]
	tdxExitArgs = 5
)

// TDXExit is kvm_run.tdx: the leaf (Nr) and the words after ret, whose
// meaning depends on the leaf (see GetQuote and EventNotifyVector).
type TDXExit struct {
	Flags uint64
	Nr    uint64
	Ret   uint64
	Args  [tdxExitArgs]uint64
}

// TDX returns the current ExitTDX.
func (c *VCPU) TDX() TDXExit {
	le := binary.LittleEndian
	e := TDXExit{
		Flags: le.Uint64(c.run[runTDXFlags:]),
		Nr:    le.Uint64(c.run[runTDXNr:]),
		Ret:   le.Uint64(c.run[runTDXRet:]),
	}
	for i := range e.Args {
		e.Args[i] = le.Uint64(c.run[runTDXArgs+8*i:])
	}
	return e
}

// SetTDXRet sets the TDVMCALL's return code (a TDVMCallStatus* value),
// which the guest sees in R10 when the vCPU next runs.
func (c *VCPU) SetTDXRet(ret uint64) {
	binary.LittleEndian.PutUint64(c.run[runTDXRet:], ret)
}

// SetTDXArg sets the i-th word after ret (a leaf's output, e.g. the R11..R14
// results of GetTdVmCallInfo at Args[1..4]).
func (c *VCPU) SetTDXArg(i int, v uint64) error {
	if i < 0 || i >= tdxExitArgs {
		return fmt.Errorf("kvm: TDX exit has no argument word %d", i)
	}
	binary.LittleEndian.PutUint64(c.run[runTDXArgs+8*i:], v)
	return nil
}

// GetQuote returns the shared buffer of a TDVMCALL<GetQuote>: its GPA
// (without the shared bit) and size. The guest put a TDREPORT there, and
// polls the buffer's status word for the quote the host writes back.
func (e TDXExit) GetQuote() (gpa, size uint64, err error) {
	if e.Nr != TDVMCallGetQuote {
		return 0, 0, fmt.Errorf("kvm: TDX exit is leaf %#x, not GetQuote", e.Nr)
	}
	gpa, size = e.Args[0], e.Args[1]
	if gpa%tdxPageSize != 0 || size == 0 || size%tdxPageSize != 0 {
		return 0, 0, fmt.Errorf("kvm: GetQuote buffer %#x+%#x is not whole 4 KiB pages", gpa, size)
	}
	return gpa, size, nil
}

// EventNotifyVector returns the interrupt vector a
// TDVMCALL<SetupEventNotifyInterrupt> asks to be notified on (when a quote
// is ready); vectors below 32 are exceptions and are refused.
func (e TDXExit) EventNotifyVector() (uint8, error) {
	if e.Nr != TDVMCallSetupEventNotifyInterrupt {
		return 0, fmt.Errorf("kvm: TDX exit is leaf %#x, not SetupEventNotifyInterrupt", e.Nr)
	}
	v := e.Args[0]
	if v < 32 || v > 255 {
		return 0, fmt.Errorf("kvm: SetupEventNotifyInterrupt vector %d is not 32..255", v)
	}
	return uint8(v), nil
}

// TDXStatusError reports whether a TDVMCALL status code is an error (bit 63).
func TDXStatusError(status uint64) bool { return status&tdvmcallStatusErrorBit != 0 }
