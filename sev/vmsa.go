package sev

import (
	"encoding/binary"
	"fmt"

	"github.com/krun-tee/krun-tee/layout"
)

// VMSASize is the size of a VMSA page.
const VMSASize = layout.PageSize

// SEV-ES save area (VMSA) offsets: AMD APM vol. 2, table B-4 "VMSA Layout,
// State Save Area for SEV-ES", as Linux's struct sev_es_save_area has them.
const (
	vmsaES   = 0x000 // each segment: selector u16, attrib u16, limit u32, base u64
	vmsaCS   = 0x010
	vmsaSS   = 0x020
	vmsaDS   = 0x030
	vmsaFS   = 0x040
	vmsaGS   = 0x050
	vmsaGDTR = 0x060 // limit at +4, base at +8
	vmsaLDTR = 0x070
	vmsaIDTR = 0x080
	vmsaTR   = 0x090

	vmsaVMPL   = 0x0CA // u8
	vmsaCPL    = 0x0CB // u8
	vmsaEFER   = 0x0D0
	vmsaXSS    = 0x140
	vmsaCR4    = 0x148
	vmsaCR3    = 0x150
	vmsaCR0    = 0x158
	vmsaDR7    = 0x160
	vmsaDR6    = 0x168
	vmsaRFLAGS = 0x170
	vmsaRIP    = 0x178
	vmsaRSP    = 0x1D8
	vmsaRAX    = 0x1F8
	vmsaCR2    = 0x240
	vmsaGPAT   = 0x268
	vmsaPKRU   = 0x2E8 // u32
	vmsaRCX    = 0x308
	vmsaRDX    = 0x310
	vmsaRBX    = 0x318
	vmsaRBP    = 0x328
	vmsaRSI    = 0x330
	vmsaRDI    = 0x338
	vmsaR8     = 0x340 // R8..R15 follow at 8-byte steps to 0x378

	vmsaSEVFeatures = 0x3B0
	vmsaXCR0        = 0x3E8
	vmsaX87DP       = 0x400
	vmsaMXCSR       = 0x408 // u32
	vmsaX87FTW      = 0x40C // u16
	vmsaX87FSW      = 0x40E // u16
	vmsaX87FCW      = 0x410 // u16
)

// Bits KVM forces when it copies a vCPU's state into the VMSA
// (arch/x86/kvm/svm: svm_set_efer, svm_set_cr0/cr4, kvm_set_dr,
// sev_es_sync_vmsa; checked against Linux 6.12). KVM starts the VMSA as a
// copy of the VMCB save area, so the MSR-backed fields there (STAR, LSTAR,
// CSTAR, SFMASK, KERNEL_GS_BASE, SYSENTER_*, DEBUGCTL, SPEC_CTRL) are
// measured too: the VMM must leave them zero, which is what this builder
// writes. Modelling them here keeps the predicted measurement
// equal to what real hardware reports for the same layout.VCPUState.
const (
	eferSVME      = 1 << 12    // KVM always sets EFER.SVME in the guest's VMCB
	cr4MCE        = 1 << 6     // svm_set_cr4 ORs in the host's CR4.MCE (set on every Linux host)
	cr0CD         = 1 << 30    // cleared by svm_set_cr0 (KVM_X86_QUIRK_CD_NW_CLEARED)
	cr0NW         = 1 << 29    //
	dr6FixedOnes  = 0xffff0ff0 // DR6 bits that read as one (DR6_ACTIVE_LOW)
	dr6Volatile   = 0x0001e80f // DR6 bits software can change (DR6_VOLATILE)
	dr7FixedOnes  = 0x400      // DR7 bit 10 reads as one
	rflagsFixed   = 0x2        // RFLAGS bit 1 reads as one
	defaultPAT    = 0x0007040600070406
	defaultMXCSR  = 0x1f80 // INIT2 guests get FPU state synced; these are the reset values
	defaultFCW    = 0x37f
	minXCR0       = 0x1 // x87 state is always enabled
	attribDPLMask = 0x60
)

// ResetDefaults fills the fields of s that architecturally can never be
// zero with their reset values (PAT, MXCSR, FCW, XCR0, DR6, DR7, RFLAGS
// bit 1). The VMM must load the same defaulted state into KVM that the
// VMSA builder measures; both call this.
func ResetDefaults(s layout.VCPUState) layout.VCPUState {
	if s.PAT == 0 {
		s.PAT = defaultPAT
	}
	if s.MXCSR == 0 {
		s.MXCSR = defaultMXCSR
	}
	if s.FCW == 0 {
		s.FCW = defaultFCW
	}
	s.XCR0 |= minXCR0
	s.DR6 = s.DR6&dr6Volatile | dr6FixedOnes
	s.DR7 |= dr7FixedOnes
	s.RFLAGS |= rflagsFixed
	return s
}

// VMSA builds the 4096-byte VMSA page KVM hands the PSP for a vCPU with
// initial state s in an SNP VM created with KVM_SEV_INIT2: segment and
// control registers, GPRs, XCR0, FPU control state (INIT2 VMs sync it) and
// SEV_FEATURES = sevFeatures (already including SNPActive).
func VMSA(s layout.VCPUState, sevFeatures uint64) ([]byte, error) {
	if sevFeatures&SEVFeatureSNPActive == 0 {
		return nil, fmt.Errorf("sev: SEV_FEATURES %#x lacks SNPActive", sevFeatures)
	}
	s = ResetDefaults(s)
	// sev_es_sync_vmsa refuses (EINVAL) to encrypt a VMSA whose DR7 has
	// any bit beyond the fixed one: there is no such launch to measure.
	if s.DR7 != dr7FixedOnes {
		return nil, fmt.Errorf("sev: DR7 %#x: KVM launches SEV-SNP vCPUs only with DR7 = %#x", s.DR7, dr7FixedOnes)
	}
	v := make([]byte, VMSASize)
	le := binary.LittleEndian
	putSeg := func(off int, g layout.Segment) {
		le.PutUint16(v[off:], g.Selector)
		le.PutUint16(v[off+2:], g.Attrib)
		le.PutUint32(v[off+4:], g.Limit)
		le.PutUint64(v[off+8:], g.Base)
	}
	putTable := func(off int, t layout.DescriptorTable) {
		le.PutUint32(v[off+4:], uint32(t.Limit))
		le.PutUint64(v[off+8:], t.Base)
	}
	putSeg(vmsaES, s.ES)
	putSeg(vmsaCS, s.CS)
	putSeg(vmsaSS, s.SS)
	putSeg(vmsaDS, s.DS)
	putSeg(vmsaFS, s.FS)
	putSeg(vmsaGS, s.GS)
	putTable(vmsaGDTR, s.GDTR)
	putSeg(vmsaLDTR, s.LDTR)
	putTable(vmsaIDTR, s.IDTR)
	putSeg(vmsaTR, s.TR)

	v[vmsaVMPL] = 0
	v[vmsaCPL] = byte((s.SS.Attrib & attribDPLMask) >> 5) // svm_set_segment derives CPL from SS.DPL
	le.PutUint64(v[vmsaEFER:], s.EFER|eferSVME)
	le.PutUint64(v[vmsaCR4:], s.CR4|cr4MCE)
	le.PutUint64(v[vmsaCR3:], s.CR3)
	le.PutUint64(v[vmsaCR0:], s.CR0&^(cr0CD|cr0NW))
	// CR2 stays zero: KVM copies vcpu->arch.cr2 into the VMCB only on VM
	// entry, which has not happened when the VMSA is synced.
	le.PutUint64(v[vmsaCR2:], 0)
	le.PutUint64(v[vmsaDR7:], s.DR7)
	le.PutUint64(v[vmsaDR6:], s.DR6)
	le.PutUint64(v[vmsaRFLAGS:], s.RFLAGS)
	le.PutUint64(v[vmsaRIP:], s.RIP)
	le.PutUint64(v[vmsaRSP:], s.RSP)
	le.PutUint64(v[vmsaRAX:], s.RAX)
	le.PutUint64(v[vmsaGPAT:], s.PAT)
	le.PutUint64(v[vmsaRCX:], s.RCX)
	le.PutUint64(v[vmsaRDX:], s.RDX)
	le.PutUint64(v[vmsaRBX:], s.RBX)
	le.PutUint64(v[vmsaRBP:], s.RBP)
	le.PutUint64(v[vmsaRSI:], s.RSI)
	le.PutUint64(v[vmsaRDI:], s.RDI)
	for i, r := range []uint64{s.R8, s.R9, s.R10, s.R11, s.R12, s.R13, s.R14, s.R15} {
		le.PutUint64(v[vmsaR8+8*i:], r)
	}
	le.PutUint64(v[vmsaSEVFeatures:], sevFeatures)
	le.PutUint64(v[vmsaXCR0:], s.XCR0)
	le.PutUint32(v[vmsaMXCSR:], s.MXCSR)
	le.PutUint16(v[vmsaX87FCW:], s.FCW)
	return v, nil
}
