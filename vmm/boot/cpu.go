package boot

import (
	"encoding/binary"

	"github.com/krun-tee/krun-tee/layout"
)

// Boot GDT selectors required by the 64-bit boot protocol (boot.rst: "__BOOT_CS
// (0x10) and __BOOT_DS (0x18)"), plus a TSS because VMX refuses to enter long
// mode with an unusable TR.
const (
	SelectorCode = 0x10
	SelectorData = 0x18
	SelectorTSS  = 0x20
	gdtEntries   = 5
)

// Segment attributes in layout.Segment's packed form: bits 0-3 type, 4 S,
// 5-6 DPL, 7 P, 8 AVL, 9 L, 10 D/B, 11 G.
const (
	AttribCode64 = 0xa9b // G, L, P, S, type 0xb (execute/read, accessed)
	AttribData   = 0xc93 // G, D/B, P, S, type 0x3 (read/write, accessed)
	AttribTSS    = 0x08b // P, type 0xb (busy 64-bit TSS)
	AttribLDT    = 0x082 // P, type 0x2
)

// Control register and EFER bits used at entry.
const (
	CR0PE   = 1 << 0
	CR0ET   = 1 << 4
	CR0NE   = 1 << 5
	CR0PG   = 1 << 31
	CR4PAE  = 1 << 5
	EFERLME = 1 << 8
	EFERLMA = 1 << 10
)

// Page-table entry bits.
const (
	ptePresent  = 1 << 0
	pteWritable = 1 << 1
	ptePageSize = 1 << 7 // 2 MiB page in a PD entry
)

// gdtDescriptor encodes a segment descriptor from base, limit (20 bits) and
// the packed attribute.
func gdtDescriptor(attrib uint16, base uint64, limit uint32) uint64 {
	return (base&0xff000000)<<32 | (base&0x00ffffff)<<16 | uint64(limit&0xffff) |
		uint64(limit&0xf0000)<<32 | uint64(attrib&0xff)<<40 | uint64(attrib>>8&0xf)<<52
}

func gdtBytes() []byte {
	entries := [gdtEntries]uint64{
		0, 0,
		gdtDescriptor(AttribCode64, 0, 0xfffff),
		gdtDescriptor(AttribData, 0, 0xfffff),
		gdtDescriptor(AttribTSS, 0, 0x67),
	}
	b := make([]byte, 8*gdtEntries)
	for i, e := range entries {
		binary.LittleEndian.PutUint64(b[i*8:], e)
	}
	return b
}

// identityPageTables maps the first IdentityMapGB GiB 1:1 with 2 MiB pages: a
// PML4, a PDPT and one PD per GiB, in consecutive pages from PML4Addr. The
// kernel, boot structures and initrd all lie below 4 GiB.
func identityPageTables() []byte {
	le := binary.LittleEndian
	b := make([]byte, (2+IdentityMapGB)*layout.PageSize)
	le.PutUint64(b[0:], PDPTAddr|ptePresent|pteWritable)
	pdpt := b[layout.PageSize:]
	for g := 0; g < IdentityMapGB; g++ {
		pd := uint64(PDAddr + g*layout.PageSize)
		le.PutUint64(pdpt[g*8:], pd|ptePresent|pteWritable)
		pdb := b[2*layout.PageSize+g*layout.PageSize:]
		for i := 0; i < 512; i++ {
			addr := uint64(g)<<30 | uint64(i)<<21
			le.PutUint64(pdb[i*8:], addr|ptePresent|pteWritable|ptePageSize)
		}
	}
	return b
}

// BootCPUState is the boot vCPU's state at the kernel's 64-bit entry: long
// mode with the identity map, flat boot segments, RSI = zero page.
func BootCPUState(entry uint64) layout.VCPUState {
	code := layout.Segment{Selector: SelectorCode, Attrib: AttribCode64, Limit: 0xffffffff}
	data := layout.Segment{Selector: SelectorData, Attrib: AttribData, Limit: 0xffffffff}
	return layout.VCPUState{
		CS: code, DS: data, ES: data, SS: data, FS: data, GS: data,
		TR:     layout.Segment{Selector: SelectorTSS, Attrib: AttribTSS, Limit: 0x67},
		LDTR:   layout.Segment{Attrib: AttribLDT, Limit: 0xffff},
		GDTR:   layout.DescriptorTable{Base: GDTAddr, Limit: 8*gdtEntries - 1},
		CR0:    CR0PE | CR0ET | CR0NE | CR0PG,
		CR3:    PML4Addr,
		CR4:    CR4PAE,
		EFER:   EFERLME | EFERLMA,
		RFLAGS: 2,
		RIP:    entry,
		RSP:    BootStackTop,
		RBP:    BootStackTop,
		RSI:    ZeroPageAddr,
		DR6:    0xffff0ff0,
		DR7:    0x400,
		XCR0:   1,
		PAT:    0x0007040600070406,
		MXCSR:  0x1f80,
		FCW:    0x37f,
	}
}

// ResetCPUState is the architectural power-on state (Intel SDM vol. 3 9.1.1)
// of an application processor, which waits for INIT-SIPI-SIPI from the boot
// CPU; the kernel's SMP bring-up sets its real start state.
func ResetCPUState() layout.VCPUState {
	seg := layout.Segment{Attrib: 0x93, Limit: 0xffff}
	return layout.VCPUState{
		CS: layout.Segment{Selector: 0xf000, Base: 0xffff0000, Attrib: 0x9b, Limit: 0xffff},
		DS: seg, ES: seg, SS: seg, FS: seg, GS: seg,
		TR:     layout.Segment{Attrib: 0x8b, Limit: 0xffff},
		LDTR:   layout.Segment{Attrib: AttribLDT, Limit: 0xffff},
		GDTR:   layout.DescriptorTable{Limit: 0xffff},
		IDTR:   layout.DescriptorTable{Limit: 0xffff},
		CR0:    0x60000010,
		RFLAGS: 2,
		RIP:    0xfff0,
		DR6:    0xffff0ff0,
		DR7:    0x400,
		XCR0:   1,
		PAT:    0x0007040600070406,
		MXCSR:  0x1f80,
		FCW:    0x37f,
	}
}
