// Package kvm is a thin typed layer over the Linux KVM ioctl interface for
// x86-64: the constants and structures of include/uapi/linux/kvm.h and
// arch/x86/include/uapi/asm/kvm.h (golang.org/x/sys/unix has none), and one
// method per ioctl the VMM uses. All unsafe code and raw system calls of the
// VMM live in this package.
package kvm

// _IOC encoding (include/uapi/asm-generic/ioctl.h).
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
	kvmio    = 0xae
)

func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | kvmio<<8 | nr }
func io(nr uintptr) uintptr             { return ioc(iocNone, nr, 0) }
func iow(nr, size uintptr) uintptr      { return ioc(iocWrite, nr, size) }
func ior(nr, size uintptr) uintptr      { return ioc(iocRead, nr, size) }
func iowr(nr, size uintptr) uintptr     { return ioc(iocRead|iocWrite, nr, size) }

// ioctl request numbers, computed from the structure sizes exactly as the C
// macros do; abi_test.go pins them to the values the kernel headers give.
var (
	ioGetAPIVersion       = io(0x00)
	ioCreateVM            = io(0x01)
	ioCheckExtension      = io(0x03)
	ioGetVCPUMmapSize     = io(0x04)
	ioGetSupportedCPUID   = iowr(0x05, sizeofCPUID2)
	ioSetUserMemoryRegion = iow(0x46, sizeofUserspaceMemoryRegion)
	ioSetTSSAddr          = io(0x47)
	ioSetIdentityMapAddr  = iow(0x48, 8)
	ioCreateIRQChip       = io(0x60)
	ioIRQLine             = iow(0x61, sizeofIRQLevel)
	ioIRQFD               = iow(0x76, sizeofIRQFD)
	ioCreatePIT2          = iow(0x77, sizeofPITConfig)
	ioIOEventFD           = iow(0x79, sizeofIOEventFD)
	ioCreateVCPU          = io(0x41)
	ioRun                 = io(0x80)
	ioGetRegs             = ior(0x81, sizeofRegs)
	ioSetRegs             = iow(0x82, sizeofRegs)
	ioGetSregs            = ior(0x83, sizeofSregs)
	ioSetSregs            = iow(0x84, sizeofSregs)
	ioSetMSRs             = iow(0x89, sizeofMSRsHeader)
	ioGetFPU              = ior(0x8c, sizeofFPU)
	ioSetFPU              = iow(0x8d, sizeofFPU)
	ioGetLAPIC            = ior(0x8e, sizeofLAPICState)
	ioSetLAPIC            = iow(0x8f, sizeofLAPICState)
	ioSetCPUID2           = iow(0x90, sizeofCPUID2)
	ioSetXCRS             = iow(0xa7, sizeofXCRS)
)

// APIVersion is the only KVM API version there has ever been.
const APIVersion = 12

// Capabilities checked with KVM_CHECK_EXTENSION.
const (
	CapIRQChip          = 0
	CapUserMemory       = 3
	CapSetTSSAddr       = 4
	CapIRQFD            = 32
	CapPIT2             = 33
	CapIOEventFD        = 36
	CapXCRS             = 56
	CapTSCDeadlineTimer = 72
	CapImmediateExit    = 136
)

// Exit reasons (kvm_run.exit_reason).
const (
	ExitUnknown       = 0
	ExitException     = 1
	ExitIO            = 2
	ExitHypercall     = 3
	ExitDebug         = 4
	ExitHLT           = 5
	ExitMMIO          = 6
	ExitIRQWindowOpen = 7
	ExitShutdown      = 8
	ExitFailEntry     = 9
	ExitIntr          = 10
	ExitNMI           = 16
	ExitInternalError = 17
	ExitSystemEvent   = 24
)

// Directions of an ExitIO.
const (
	IOIn  = 0
	IOOut = 1
)

// kvm_run.system_event.type values.
const (
	SystemEventShutdown = 1
	SystemEventReset    = 2
	SystemEventCrash    = 3
)

// kvm_run.internal.suberror values.
const (
	InternalErrorEmulation      = 1
	InternalErrorSimulEx        = 2
	InternalErrorDeliveryEv     = 3
	InternalErrorUnexpectedExit = 4
)

// Flags.
const (
	PITSpeakerDummy    = 1      // KVM_PIT_SPEAKER_DUMMY: port 0x61 handled in the kernel
	IOEventFDDataMatch = 1 << 0 // KVM_IOEVENTFD_FLAG_DATAMATCH
	IOEventFDPIO       = 1 << 1 // KVM_IOEVENTFD_FLAG_PIO
	IOEventFDDeassign  = 1 << 2 // KVM_IOEVENTFD_FLAG_DEASSIGN
	IRQFDDeassign      = 1 << 0 // KVM_IRQFD_FLAG_DEASSIGN
	MaxCPUIDEntries    = 256    // our bound on GET_SUPPORTED_CPUID (the kernel allows 256)
)

// Structure sizes from the kernel headers (checked by abi_test.go).
const (
	sizeofUserspaceMemoryRegion = 32
	sizeofRegs                  = 144
	sizeofSegment               = 24
	sizeofDtable                = 16
	sizeofSregs                 = 312
	sizeofFPU                   = 416
	sizeofLAPICState            = 1024
	sizeofCPUID2                = 8
	sizeofCPUIDEntry2           = 40
	sizeofMSRsHeader            = 8
	sizeofMSREntry              = 16
	sizeofPITConfig             = 64
	sizeofIRQFD                 = 32
	sizeofIOEventFD             = 64
	sizeofIRQLevel              = 8
	sizeofXCRS                  = 392
)

// UserspaceMemoryRegion is struct kvm_userspace_memory_region.
type UserspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// Regs is struct kvm_regs (general purpose registers).
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

// Segment is struct kvm_segment.
type Segment struct {
	Base                           uint64
	Limit                          uint32
	Selector                       uint16
	Type                           uint8
	Present, DPL, DB, S, L, G, AVL uint8
	Unusable                       uint8
	_                              uint8
}

// Dtable is struct kvm_dtable (GDTR/IDTR).
type Dtable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Sregs is struct kvm_sregs (segment and control registers).
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               Dtable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	InterruptBitmap        [4]uint64
}

// FPU is struct kvm_fpu.
type FPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

// LAPICState is struct kvm_lapic_state: the local APIC register page.
type LAPICState struct {
	Regs [1024]byte
}

// CPUIDEntry is struct kvm_cpuid_entry2.
type CPUIDEntry struct {
	Function uint32
	Index    uint32
	Flags    uint32
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

// CPUIDFlagSignificantIndex marks a leaf whose sub-leaf (Index) matters.
const CPUIDFlagSignificantIndex = 1 << 0

// MSREntry is struct kvm_msr_entry.
type MSREntry struct {
	Index uint32
	_     uint32
	Data  uint64
}

// PITConfig is struct kvm_pit_config.
type PITConfig struct {
	Flags uint32
	_     [15]uint32
}

// IRQFD is struct kvm_irqfd.
type IRQFD struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	_          [16]uint8
}

// IOEventFD is struct kvm_ioeventfd.
type IOEventFD struct {
	DataMatch uint64
	Addr      uint64
	Len       uint32
	FD        int32
	Flags     uint32
	_         [36]uint8
}

// IRQLevel is struct kvm_irq_level.
type IRQLevel struct {
	IRQ   uint32
	Level uint32
}

// XCR is struct kvm_xcr.
type XCR struct {
	XCR   uint32
	_     uint32
	Value uint64
}

// XCRS is struct kvm_xcrs.
type XCRS struct {
	NrXCRS uint32
	Flags  uint32
	XCRS   [16]XCR
	_      [16]uint64
}

// kvm_run field offsets (struct kvm_run in include/uapi/linux/kvm.h).
const (
	runImmediateExit = 1
	runExitReason    = 8
	runUnion         = 32 // the exit-specific union
	// io
	runIODirection  = runUnion + 0
	runIOSize       = runUnion + 1
	runIOPort       = runUnion + 2
	runIOCount      = runUnion + 4
	runIODataOffset = runUnion + 8
	// mmio
	runMMIOPhysAddr = runUnion + 0
	runMMIOData     = runUnion + 8
	runMMIOLen      = runUnion + 16
	runMMIOIsWrite  = runUnion + 20
	// fail_entry
	runFailEntryReason = runUnion + 0
	runFailEntryCPU    = runUnion + 8
	// internal
	runInternalSuberror = runUnion + 0
	runInternalNData    = runUnion + 4
	runInternalData     = runUnion + 8
	// system_event
	runSystemEventType = runUnion + 0
	runMinSize         = 2048 // the kernel's kvm_run page is at least this big
)
