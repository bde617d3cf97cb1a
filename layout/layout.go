// Package layout describes a guest's initial memory image and vCPU start state
// as one ordered list of pages: the "launch layout".
//
// The same Layout drives everything that must agree byte for byte: the VMM
// copies it into guest RAM, a real SEV-SNP/TDX launch issues its launch ioctls
// over it in order, the emulated TEE hashes it with the hardware's algorithm,
// and `krun-tee measure` prints the resulting digest. Keeping one description
// is what makes the emulated and predicted measurements trustworthy.
package layout

import (
	"errors"
	"fmt"
	"sort"
)

// PageSize is the granule of every launch operation (SNP and TDX alike).
const PageSize = 4096

// PageType is the SEV-SNP LAUNCH_UPDATE page type; TDX treats Normal pages as
// measured (PAGE.ADD + MR.EXTEND) and every other type as added unmeasured or
// not added at all.
type PageType uint8

// SEV-SNP page types (SNP firmware ABI, PAGE_INFO.PAGE_TYPE).
const (
	PageNormal     PageType = 0x1
	PageVMSA       PageType = 0x2
	PageZero       PageType = 0x3
	PageUnmeasured PageType = 0x4
	PageSecrets    PageType = 0x5
	PageCPUID      PageType = 0x6
)

func (t PageType) String() string {
	switch t {
	case PageNormal:
		return "normal"
	case PageVMSA:
		return "vmsa"
	case PageZero:
		return "zero"
	case PageUnmeasured:
		return "unmeasured"
	case PageSecrets:
		return "secrets"
	case PageCPUID:
		return "cpuid"
	}
	return fmt.Sprintf("pagetype(%d)", uint8(t))
}

// Measured reports whether the page's contents enter the launch digest.
func (t PageType) Measured() bool { return t == PageNormal || t == PageVMSA }

// Region is a run of guest-physical pages with one page type.
type Region struct {
	Name string   // what the pages hold ("shim", "kernel", "cmdline", ...), for diagnostics
	GPA  uint64   // guest-physical address, PageSize aligned
	Type PageType // how the launch treats these pages
	// Data is the region's initial contents. It is zero-padded up to Size; for
	// Zero and Unmeasured regions it is normally empty.
	Data []byte
	// Size is the region's length in bytes, a multiple of PageSize and at
	// least len(Data). Add fills it in when zero.
	Size uint64
}

// End returns the first guest-physical address after the region.
func (r Region) End() uint64 { return r.GPA + r.Size }

// Page returns the contents of page i of the region: a PageSize slice,
// zero-padded past the end of Data. It allocates only for the final partial
// page.
func (r Region) Page(i uint64) []byte {
	off := i * PageSize
	if off+PageSize <= uint64(len(r.Data)) {
		return r.Data[off : off+PageSize]
	}
	page := make([]byte, PageSize)
	if off < uint64(len(r.Data)) {
		copy(page, r.Data[off:])
	}
	return page
}

// Pages returns the number of pages in the region.
func (r Region) Pages() uint64 { return r.Size / PageSize }

// Segment is an x86 segment register in the SEV-ES save-area form, which is
// also what KVM's kvm_segment carries once the attribute bits are unpacked.
type Segment struct {
	Selector uint16
	// Attrib packs the descriptor's access bits as the VMSA does: bits 0-3
	// type, 4 S, 5-6 DPL, 7 P, 8 AVL, 9 L, 10 D/B, 11 G.
	Attrib uint16
	Limit  uint32
	Base   uint64
}

// DescriptorTable is a GDTR or IDTR value.
type DescriptorTable struct {
	Base  uint64
	Limit uint16
}

// VCPUState is the complete initial architectural state of one vCPU. The VMM
// loads it with KVM_SET_SREGS/REGS/FPU/XCRS; SEV-SNP encodes it into the
// measured VMSA page; TDX ignores it (the TDX module fixes the start state).
type VCPUState struct {
	ES, CS, SS, DS, FS, GS, LDTR, TR Segment
	GDTR, IDTR                       DescriptorTable

	CR0, CR2, CR3, CR4, EFER uint64
	RFLAGS, RIP              uint64
	RAX, RBX, RCX, RDX       uint64
	RSI, RDI, RBP, RSP       uint64
	R8, R9, R10, R11         uint64
	R12, R13, R14, R15       uint64
	DR6, DR7                 uint64
	XCR0                     uint64
	PAT                      uint64
	MXCSR                    uint32
	FCW                      uint16
}

// Layout is a guest's launch image: RAM size, the regions in launch order and
// one start state per vCPU (index = vCPU id).
type Layout struct {
	MemorySize uint64
	Regions    []Region
	VCPUs      []VCPUState
}

// Add appends a region in launch order after checking that it is page
// aligned, inside guest RAM or in the 4 GiB-below firmware window, and does
// not overlap a region already added.
func (l *Layout) Add(r Region) error {
	if r.Size == 0 {
		r.Size = alignUp(uint64(len(r.Data)))
	}
	switch {
	case r.Name == "":
		return errors.New("layout: region without a name")
	case r.GPA%PageSize != 0:
		return fmt.Errorf("layout: region %s: gpa %#x not %d-byte aligned", r.Name, r.GPA, PageSize)
	case r.Size == 0 || r.Size%PageSize != 0:
		return fmt.Errorf("layout: region %s: size %#x not a positive multiple of %d", r.Name, r.Size, PageSize)
	case uint64(len(r.Data)) > r.Size:
		return fmt.Errorf("layout: region %s: %d bytes of data exceed size %#x", r.Name, len(r.Data), r.Size)
	case r.GPA+r.Size < r.GPA:
		return fmt.Errorf("layout: region %s: gpa %#x + size %#x overflows", r.Name, r.GPA, r.Size)
	case r.Type < PageNormal || r.Type > PageCPUID || r.Type == PageVMSA:
		return fmt.Errorf("layout: region %s: page type %v cannot be a memory region", r.Name, r.Type)
	}
	for _, o := range l.Regions {
		if r.GPA < o.End() && o.GPA < r.End() {
			return fmt.Errorf("layout: region %s [%#x,%#x) overlaps %s [%#x,%#x)", r.Name, r.GPA, r.End(), o.Name, o.GPA, o.End())
		}
	}
	l.Regions = append(l.Regions, r)
	return nil
}

// ByGPA returns the regions sorted by guest-physical address, for consumers
// (such as TDX's KVM_TDX_INIT_MEM_REGION) whose order is address order.
func (l *Layout) ByGPA() []Region {
	out := append([]Region(nil), l.Regions...)
	sort.Slice(out, func(i, j int) bool { return out[i].GPA < out[j].GPA })
	return out
}

func alignUp(n uint64) uint64 { return (n + PageSize - 1) &^ (PageSize - 1) }
