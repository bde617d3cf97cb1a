package vmm

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/krun-tee/krun-tee/layout"
	"github.com/krun-tee/krun-tee/vmm/kvm"
)

// CPUID leaves and bits the VMM adjusts (Intel SDM vol. 2A CPUID; AMD APM
// vol. 3 appendix E).
const (
	leafFeatures   = 0x1
	leafPerfMon    = 0xa
	leafXSAVE      = 0xd
	leafTopology   = 0xb
	leafTopologyV2 = 0x1f
	leafAMDSizes   = 0x80000008
	ecxHypervisor  = 1 << 31
	ecxTSCDeadline = 1 << 24
	edxHTT         = 1 << 28
	topoLevelSMT   = 1
	topoLevelCore  = 2
)

// NormalizeCPUID returns the CPUID table for vCPU id of an n-vCPU guest:
// KVM's supported leaves with this vCPU's APIC id in leaf 1 and the
// topology leaves (one thread per core, n cores in one package), the
// hypervisor bit set (so the kernel looks for the KVM leaves 0x40000000+ and
// uses kvmclock), no architectural PMU (no perf setup cost, nothing to leak
// through counters) and the XSAVE size for every supported feature.
func NormalizeCPUID(supported []kvm.CPUIDEntry, id, n int) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, len(supported))
	copy(out, supported)
	coreBits := uint32(bits.Len(uint(n - 1)))
	for i := range out {
		e := &out[i]
		switch e.Function {
		case leafFeatures:
			e.EBX = e.EBX&0x0000ffff | uint32(id)<<24 | uint32(min(n, 255))<<16
			e.ECX |= ecxHypervisor
			if n > 1 {
				e.EDX |= edxHTT
			} else {
				e.EDX &^= edxHTT
			}
		case leafTopology, leafTopologyV2:
			e.EDX = uint32(id) // x2APIC id
			switch e.Index {
			case 0: // SMT level: one thread per core
				e.EAX, e.EBX, e.ECX = 0, 1, topoLevelSMT<<8
			case 1: // core level: n cores per package
				e.EAX, e.EBX, e.ECX = coreBits, uint32(n), topoLevelCore<<8|1
			default:
				e.EAX, e.EBX, e.ECX = 0, 0, e.Index
			}
		case leafPerfMon:
			e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0
		case leafXSAVE:
			// EBX is the XSAVE area size for the features enabled in XCR0.
			// KVM recomputes it from the vCPU's XCR0 (see fullXCR0), so this
			// only matters where it does not; Linux enables every feature in
			// EAX, so the size for all of them (ECX) is the right answer.
			if e.Index == 0 {
				e.EBX = e.ECX
			}
		case leafAMDSizes:
			// ECX[7:0] = cores per package - 1, ECX[15:12] = APIC id bits.
			e.ECX = e.ECX&^0xf0ff | uint32(n-1)&0xff | coreBits<<12
		}
	}
	return out
}

// EnableTSCDeadline sets CPUID.1:ECX.TSC_DEADLINE, which KVM emulates for
// every in-kernel LAPIC but does not report in KVM_GET_SUPPORTED_CPUID (the
// VMM must check KVM_CAP_TSC_DEADLINE_TIMER and set it itself). With it, and
// with ARAT, Linux neither calibrates its LAPIC timer against the PIT nor
// verifies it with PIT ticks: those calibration loops cost boot time, and
// they are what hung guests whose host clock ran in bursts (nested KVM on
// an emulated CPU), waiting for ever for verification ticks.
func EnableTSCDeadline(entries []kvm.CPUIDEntry) {
	for i := range entries {
		if entries[i].Function == leafFeatures {
			entries[i].ECX |= ecxTSCDeadline
		}
	}
}

// fullXCR0 returns every XCR0 feature the CPUID table offers (leaf 0xd.0
// EDX:EAX). The VMM starts vCPUs with this XCR0 and then sets CPUID again,
// because KVM computes leaf 0xd's EBX (the XSAVE size Linux checks its own
// computation against) from the XCR0 current at KVM_SET_CPUID2 time. Under
// nested KVM that value was not refreshed when the guest later wrote XCR0,
// so Linux saw 576 bytes for x87|SSE|AVX, disabled XSAVE with XCR0 still
// enabling AVX, and guests then corrupted vector state and crashed at random.
func fullXCR0(entries []kvm.CPUIDEntry) uint64 {
	for _, e := range entries {
		if e.Function == leafXSAVE && e.Index == 0 {
			return uint64(e.EDX)<<32 | uint64(e.EAX)
		}
	}
	return 0
}

// MSRs set on every vCPU before it first runs: syscall/sysenter MSRs
// cleared, fast strings on, write-back default memory type, the layout's PAT.
const (
	msrIA32TSC          = 0x10
	msrSysenterCS       = 0x174
	msrSysenterESP      = 0x175
	msrSysenterEIP      = 0x176
	msrMiscEnable       = 0x1a0
	msrPAT              = 0x277
	msrMTRRDefType      = 0x2ff
	msrSTAR             = 0xc0000081
	msrLSTAR            = 0xc0000082
	msrCSTAR            = 0xc0000083
	msrSyscallMask      = 0xc0000084
	msrKernelGSBase     = 0xc0000102
	miscEnableFastStr   = 1 << 0
	mtrrEnable          = 1 << 11
	mtrrTypeWriteBack   = 6
	lapicLVT0           = 0x350
	lapicLVT1           = 0x360
	lapicDeliveryMask   = 0x700
	lapicDeliveryNMI    = 4 << 8
	lapicDeliveryExtINT = 7 << 8
)

func bootMSRs(s *layout.VCPUState) []kvm.MSREntry {
	pat := s.PAT
	if pat == 0 {
		pat = 0x0007040600070406 // power-on default
	}
	return []kvm.MSREntry{
		{Index: msrSysenterCS}, {Index: msrSysenterESP}, {Index: msrSysenterEIP},
		{Index: msrSTAR}, {Index: msrCSTAR}, {Index: msrKernelGSBase},
		{Index: msrSyscallMask}, {Index: msrLSTAR}, {Index: msrIA32TSC},
		{Index: msrMiscEnable, Data: miscEnableFastStr},
		{Index: msrMTRRDefType, Data: mtrrEnable | mtrrTypeWriteBack},
		{Index: msrPAT, Data: pat},
	}
}

// setLINT programs LINT0 as ExtINT (the PIC's output, for virtual-wire mode
// before the kernel switches to the IOAPIC) and LINT1 as NMI, as a PC's BIOS
// does; KVM leaves them masked/fixed.
func setLINT(l *kvm.LAPICState) {
	rw := func(off int, mode uint32) {
		v := binary.LittleEndian.Uint32(l.Regs[off:])
		binary.LittleEndian.PutUint32(l.Regs[off:], v&^lapicDeliveryMask|mode)
	}
	rw(lapicLVT0, lapicDeliveryExtINT)
	rw(lapicLVT1, lapicDeliveryNMI)
}

// kvmSegment converts the layout's packed segment to kvm_segment.
func kvmSegment(s layout.Segment) kvm.Segment {
	a := s.Attrib
	seg := kvm.Segment{
		Base: s.Base, Limit: s.Limit, Selector: s.Selector,
		Type:    uint8(a & 0xf),
		S:       uint8(a >> 4 & 1),
		DPL:     uint8(a >> 5 & 3),
		Present: uint8(a >> 7 & 1),
		AVL:     uint8(a >> 8 & 1),
		L:       uint8(a >> 9 & 1),
		DB:      uint8(a >> 10 & 1),
		G:       uint8(a >> 11 & 1),
	}
	if seg.Present == 0 {
		seg.Unusable = 1
	}
	return seg
}

// loadState sets a vCPU's registers from the layout's start state. APIC base
// and the interrupt bitmap keep KVM's values.
func loadState(c *kvm.VCPU, s *layout.VCPUState) error {
	sr, err := c.GetSregs()
	if err != nil {
		return err
	}
	sr.CS, sr.DS, sr.ES = kvmSegment(s.CS), kvmSegment(s.DS), kvmSegment(s.ES)
	sr.FS, sr.GS, sr.SS = kvmSegment(s.FS), kvmSegment(s.GS), kvmSegment(s.SS)
	sr.TR, sr.LDT = kvmSegment(s.TR), kvmSegment(s.LDTR)
	sr.GDT = kvm.Dtable{Base: s.GDTR.Base, Limit: s.GDTR.Limit}
	sr.IDT = kvm.Dtable{Base: s.IDTR.Base, Limit: s.IDTR.Limit}
	sr.CR0, sr.CR2, sr.CR3, sr.CR4, sr.EFER = s.CR0, s.CR2, s.CR3, s.CR4, s.EFER
	if err := c.SetSregs(sr); err != nil {
		return err
	}
	if err := c.SetRegs(kvm.Regs{
		RAX: s.RAX, RBX: s.RBX, RCX: s.RCX, RDX: s.RDX, RSI: s.RSI, RDI: s.RDI, RSP: s.RSP, RBP: s.RBP,
		R8: s.R8, R9: s.R9, R10: s.R10, R11: s.R11, R12: s.R12, R13: s.R13, R14: s.R14, R15: s.R15,
		RIP: s.RIP, RFLAGS: s.RFLAGS,
	}); err != nil {
		return err
	}
	fpu := kvm.FPU{FCW: s.FCW, MXCSR: s.MXCSR}
	if fpu.FCW == 0 {
		fpu.FCW = 0x37f
	}
	if fpu.MXCSR == 0 {
		fpu.MXCSR = 0x1f80
	}
	if err := c.SetFPU(fpu); err != nil {
		return err
	}
	if s.XCR0 > 1 {
		if err := c.SetXCR0(s.XCR0); err != nil {
			return fmt.Errorf("vmm: XCR0 %#x: %w", s.XCR0, err)
		}
	}
	return nil
}
