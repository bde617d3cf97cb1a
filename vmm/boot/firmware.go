package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"github.com/krun-tee/krun-tee/layout"
	"github.com/krun-tee/krun-tee/tee"
)

// Firmware-mode boot: instead of entering the kernel in 64-bit mode with
// VMM-built page tables (Build), every vCPU-0 starts at the x86 reset vector
// inside the boot shim (fw-sev/shim), a small flat binary that ends at 4 GiB.
// The shim finds out which TEE it runs in, builds its own identity page
// tables (with the SEV-SNP C-bit when needed), enters long mode, validates
// (SNP) or accepts (TDX) the RAM the launch did not add, and jumps to the
// kernel. This is the only way a confidential guest can start: SNP and TDX
// do not let the host hand the guest a 64-bit register state it chose, and
// the guest has to validate its own memory.
//
// The shim and this file agree on two byte layouts: the shim header at the
// start of shim.bin (ParseShim checks it) and the parameter block the shim
// reads at ShimParamsAddr (BuildFirmware writes it, measured). Their offsets
// are named constants here and .set symbols in fw-sev/shim/shim.asm; the
// fw-sev/shim tests assemble the shim and compare the two.

// Values of the parameter block's TEE field (ParamOffTEE): the shim's
// encoding (shim.asm TEE_NONE, TEE_SNP, TEE_TDX) of the technology a layout
// is for. Layouts take a tee.TEE; an emulated TEE gets its hardware's layout.
const (
	ParamTEENone = 0 // plain VM
	ParamTEESNP  = 1 // AMD SEV-SNP: adds the SECRETS and CPUID pages and the CC blob
	ParamTEETDX  = 2 // Intel TDX: the shim accepts the RAM the launch did not add
)

// teeOfParam decodes the parameter block's TEE field ("" for a code the
// shim does not know, which it refuses).
var teeOfParam = map[uint32]tee.TEE{ParamTEENone: tee.None, ParamTEESNP: tee.SNP, ParamTEETDX: tee.TDX}

// paramTEE is t's parameter-block code.
func paramTEE(t tee.TEE) uint32 {
	switch t.Hardware() {
	case tee.SNP:
		return ParamTEESNP
	case tee.TDX:
		return ParamTEETDX
	}
	return ParamTEENone
}

// Guest-physical addresses of the firmware-mode boot structures. All lie in
// low RAM below the zero page's neighbours used by Build, and below
// CmdlineAddr; the shim assembles the same values (shim.asm).
const (
	// FirmwareWindowEnd is where the shim ends: the 4 GiB boundary, so the
	// reset vector (ResetVector) is its last 16 bytes.
	FirmwareWindowEnd = 1 << 32
	// ShimMaxSize bounds the shim; the firmware window is the 64 KiB below
	// 4 GiB (inside the MMIO hole, reserved in the e820 map).
	ShimMaxSize = 64 << 10
	// FirmwareWindowStart is the lowest address a shim may occupy.
	FirmwareWindowStart = FirmwareWindowEnd - ShimMaxSize
	// ResetVector is where every x86 CPU (and every TD vCPU) starts.
	ResetVector = 0xfffffff0

	// ShimParamsAddr is the parameter block page (measured, reserved in e820).
	ShimParamsAddr = 0x4000
	// SNPSecretsAddr and SNPCPUIDAddr are the SEV-SNP SECRETS and CPUID
	// pages (reserved in e820; the CC blob points at them).
	SNPSecretsAddr = 0x5000
	SNPCPUIDAddr   = 0x6000
	// ShimScratchAddr is a launch-zeroed page holding the shim's IDTs (from
	// its start) and stack (down from ShimStackTop).
	ShimScratchAddr = 0x8000
	ShimStackTop    = 0x8ff0
	// ShimPageTablesAddr: the identity map the shim builds at run time (a
	// PML4, a PDPT and four PDs of 2 MiB pages: the first 4 GiB), followed
	// by nothing else. Launch-zeroed pages, so SNP and TDX have them valid
	// before the shim writes them with paging off.
	ShimPageTablesAddr  = 0x9000
	ShimPageTablesPages = 6
	// shimScratchSize covers the scratch page and the page tables: one ZERO
	// region from 0x8000 to 0xf000.
	shimScratchSize = layout.PageSize + ShimPageTablesPages*layout.PageSize
)

// Shim header: the first bytes of shim.bin.
const (
	ShimMagic         = "KRUNSHIM" // 8 bytes at offset 0
	ShimVersion       = 1
	shimHdrMagic      = 0x00 // [8]byte ShimMagic
	shimHdrVersion    = 0x08 // u32 ShimVersion
	shimHdrLength     = 0x0c // u32 header length (shimHeaderSize)
	shimHdrParams     = 0x10 // u32 parameter block GPA
	shimHdrPageTables = 0x14 // u32 page-table GPA
	shimHdrScratch    = 0x18 // u32 scratch (IDT, stack) page GPA
	shimHdrMaxRanges  = 0x1c // u32 most RAM ranges the shim walks
	shimHeaderSize    = 0x20
)

// Parameter block: one page at ShimParamsAddr, little-endian.
const (
	ParamMagic          = "KRUNPARM" // 8 bytes at offset 0
	ParamVersion        = 1
	ParamOffMagic       = 0x00  // [8]byte ParamMagic
	ParamOffVersion     = 0x08  // u32 ParamVersion
	ParamOffTEE         = 0x0c  // u32 ParamTEE* the layout was built for
	ParamOffFlags       = 0x10  // u32 ParamFlag*
	ParamOffRangeCount  = 0x14  // u32 number of RAM ranges
	ParamOffKernelEntry = 0x18  // u64 kernel 64-bit entry GPA (below 4 GiB)
	ParamOffZeroPage    = 0x20  // u64 boot_params GPA, passed in RSI
	ParamOffPageTables  = 0x28  // u64 page-table GPA (must equal the shim's)
	ParamOffRanges      = 0x40  // ParamMaxRanges x {u64 gpa, u64 size}
	ParamRangeSize      = 16    //
	ParamMaxRanges      = 128   // ranges end at 0x840
	ParamOffCCBlob      = 0xf00 // SNP: struct cc_blob_sev_info (40 bytes)
	ParamFlagCCBlob     = 1 << 0
	ccBlobMagic         = 0x45444d41 // "AMDE", CC_BLOB_SEV_HDR_MAGIC
	ccBlobVersion       = 0
	ccBlobOffSecrets    = 0x08 // u64 secrets page GPA
	ccBlobOffSecretsLen = 0x10 // u32
	ccBlobOffCPUID      = 0x18 // u64 CPUID page GPA
	ccBlobOffCPUIDLen   = 0x20 // u32
)

// FirmwareConfig is what a guest booted through the shim starts with.
type FirmwareConfig struct {
	Config        // Kernel, Initrd, Cmdline, MemorySize, VCPUs
	Shim   []byte // flat shim binary (fw-sev/shim), ending at 4 GiB
	// TEE decides the layout by its hardware: SNP (and emulated SNP) adds
	// the SNP pages, TDX and none do not.
	TEE tee.TEE
	// CPUIDPage is the optional SEV-SNP CPUID page contents (real hardware
	// fills it from KVM; the PSP checks it). The launch measures a CPUID page
	// as zero bytes either way.
	CPUIDPage []byte
}

// ShimInfo is what ParseShim learned from a shim binary.
type ShimInfo struct {
	Size            uint64 // bytes, a page multiple
	GPA             uint64 // load address: FirmwareWindowEnd - Size
	Version         uint32
	Entry           uint64 // target of the reset-vector jump
	ParamsGPA       uint64
	PageTablesGPA   uint64
	ScratchGPA      uint64
	MaxRanges       uint32
	ResetVectorCode []byte // the 16 bytes at ResetVector
}

// ParseShim checks a shim binary: a page multiple of at most ShimMaxSize
// bytes, the header with this package's addresses, and a near jump at the
// reset vector that lands inside the shim.
func ParseShim(b []byte) (*ShimInfo, error) {
	n := uint64(len(b))
	switch {
	case n == 0:
		return nil, errors.New("boot: shim: empty")
	case n > ShimMaxSize:
		return nil, fmt.Errorf("boot: shim: %d bytes, more than the %d KiB firmware window", n, ShimMaxSize>>10)
	case n%layout.PageSize != 0:
		return nil, fmt.Errorf("boot: shim: %d bytes is not a multiple of %d", n, layout.PageSize)
	case !bytes.Equal(b[shimHdrMagic:shimHdrMagic+8], []byte(ShimMagic)):
		return nil, fmt.Errorf("boot: shim: bad magic %q, want %q", b[:8], ShimMagic)
	}
	le := binary.LittleEndian
	info := &ShimInfo{
		Size:          n,
		GPA:           FirmwareWindowEnd - n,
		Version:       le.Uint32(b[shimHdrVersion:]),
		ParamsGPA:     uint64(le.Uint32(b[shimHdrParams:])),
		PageTablesGPA: uint64(le.Uint32(b[shimHdrPageTables:])),
		ScratchGPA:    uint64(le.Uint32(b[shimHdrScratch:])),
		MaxRanges:     le.Uint32(b[shimHdrMaxRanges:]),
	}
	if info.Version != ShimVersion {
		return nil, fmt.Errorf("boot: shim: version %d, this krun-tee speaks %d", info.Version, ShimVersion)
	}
	if l := le.Uint32(b[shimHdrLength:]); l != shimHeaderSize {
		return nil, fmt.Errorf("boot: shim: header length %d, want %d", l, shimHeaderSize)
	}
	for _, f := range []struct {
		name      string
		got, want uint64
	}{
		{"parameter block", info.ParamsGPA, ShimParamsAddr},
		{"page tables", info.PageTablesGPA, ShimPageTablesAddr},
		{"scratch page", info.ScratchGPA, ShimScratchAddr},
		{"range limit", uint64(info.MaxRanges), ParamMaxRanges},
	} {
		if f.got != f.want {
			return nil, fmt.Errorf("boot: shim: %s %#x, this krun-tee uses %#x", f.name, f.got, f.want)
		}
	}
	rv := b[n-(FirmwareWindowEnd-ResetVector):]
	info.ResetVectorCode = append([]byte(nil), rv...)
	if rv[0] != 0xe9 { // jmp rel32
		return nil, fmt.Errorf("boot: shim: reset vector starts with %#02x, want a near jump (0xe9)", rv[0])
	}
	info.Entry = uint64(int64(ResetVector+5) + int64(int32(le.Uint32(rv[1:]))))
	if info.Entry < info.GPA+shimHeaderSize || info.Entry >= ResetVector {
		return nil, fmt.Errorf("boot: shim: reset vector jumps to %#x, outside the shim code [%#x,%#x)", info.Entry, info.GPA+shimHeaderSize, uint64(ResetVector))
	}
	return info, nil
}

// BuildFirmware returns the launch layout for booting through the shim. The
// regions come in a fixed order: shim (NORMAL, ending at 4 GiB), parameter
// block, zero page, command line, MP table, kernel, initrd, then for SNP the
// SECRETS and CPUID pages, and last the ZERO scratch page and page tables.
// vCPU 0 starts in 32-bit flat protected mode at the reset vector; the others
// wait for INIT-SIPI.
func BuildFirmware(c FirmwareConfig) (*layout.Layout, error) {
	if !c.TEE.Valid() {
		return nil, fmt.Errorf("boot: unknown TEE %q", c.TEE)
	}
	snp := c.TEE.Hardware() == tee.SNP
	shim, err := ParseShim(c.Shim)
	if err != nil {
		return nil, err
	}
	if len(c.CPUIDPage) > layout.PageSize {
		return nil, fmt.Errorf("boot: CPUID page is %d bytes, more than a page", len(c.CPUIDPage))
	}
	if len(c.CPUIDPage) > 0 && !snp {
		return nil, fmt.Errorf("boot: a CPUID page is only for SEV-SNP, not %v", c.TEE)
	}
	if snp && c.MemorySize > MMIOHoleStart {
		// The shim validates through its 4 GiB identity map; RAM above
		// 4 GiB would need more page tables.
		return nil, fmt.Errorf("boot: SEV-SNP through the shim supports at most %d MiB of RAM, not %d MiB", MMIOHoleStart>>20, c.MemorySize>>20)
	}
	k, initrdGPA, err := prepare(c.Config)
	if err != nil {
		return nil, err
	}
	if k.Entry >= FirmwareWindowStart {
		return nil, fmt.Errorf("boot: kernel entry %#x is outside the shim's identity map", k.Entry)
	}

	l := &layout.Layout{MemorySize: c.MemorySize}
	add := func(r layout.Region) {
		if err == nil {
			err = l.Add(r)
		}
	}
	var ccBlob uint32
	if snp {
		ccBlob = ShimParamsAddr + ParamOffCCBlob
	}
	params := make([]byte, layout.PageSize) // filled once the ranges are known
	add(layout.Region{Name: "shim", GPA: shim.GPA, Type: layout.PageNormal, Data: c.Shim})
	add(layout.Region{Name: "shim-params", GPA: ShimParamsAddr, Type: layout.PageNormal, Data: params})
	zp := zeroPage(k, c.Config, initrdGPA, FirmwareE820Map(c.MemorySize, shim.Size, c.TEE), ccBlob)
	add(layout.Region{Name: "zero-page", GPA: ZeroPageAddr, Type: layout.PageNormal, Data: zp[:]})
	add(layout.Region{Name: "cmdline", GPA: CmdlineAddr, Type: layout.PageNormal, Data: append([]byte(c.Cmdline), 0)})
	add(layout.Region{Name: "mptable", GPA: MPTableAddr, Type: layout.PageNormal, Data: mpTable(c.VCPUs)})
	add(layout.Region{Name: "kernel", GPA: k.LoadAddr, Type: layout.PageNormal, Data: k.Image, Size: alignUp(k.End - k.LoadAddr)})
	if len(c.Initrd) > 0 {
		add(layout.Region{Name: "initrd", GPA: initrdGPA, Type: layout.PageNormal, Data: c.Initrd})
	}
	if snp {
		add(layout.Region{Name: "snp-secrets", GPA: SNPSecretsAddr, Type: layout.PageSecrets, Size: layout.PageSize})
		add(layout.Region{Name: "snp-cpuid", GPA: SNPCPUIDAddr, Type: layout.PageCPUID, Data: c.CPUIDPage, Size: layout.PageSize})
	}
	add(layout.Region{Name: "shim-scratch", GPA: ShimScratchAddr, Type: layout.PageZero, Size: shimScratchSize})
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	p := ShimParams{
		TEE:         c.TEE.Hardware(),
		KernelEntry: k.Entry,
		ZeroPage:    ZeroPageAddr,
		PageTables:  ShimPageTablesAddr,
		Ranges:      UnlaunchedRAM(c.MemorySize, l.Regions),
	}
	if snp {
		p.Flags |= ParamFlagCCBlob
	}
	if err := p.encode(params); err != nil {
		return nil, err
	}
	l.VCPUs = make([]layout.VCPUState, c.VCPUs)
	l.VCPUs[0] = FirmwareCPUState()
	for i := 1; i < c.VCPUs; i++ {
		l.VCPUs[i] = ResetCPUState()
	}
	return l, nil
}

// ShimParams is the decoded parameter block.
type ShimParams struct {
	TEE         tee.TEE // tee.None, tee.SNP or tee.TDX
	Flags       uint32
	KernelEntry uint64
	ZeroPage    uint64
	PageTables  uint64
	// Ranges is the RAM the launch did not add: the shim PVALIDATEs (SNP)
	// or accepts (TDX) every 4 KiB page of it.
	Ranges []RAMRange
}

// encode writes p into the parameter block page b (PageSize bytes).
func (p *ShimParams) encode(b []byte) error {
	if len(p.Ranges) > ParamMaxRanges {
		return fmt.Errorf("boot: %d RAM ranges to validate, the shim takes at most %d", len(p.Ranges), ParamMaxRanges)
	}
	le := binary.LittleEndian
	copy(b[ParamOffMagic:], ParamMagic)
	le.PutUint32(b[ParamOffVersion:], ParamVersion)
	le.PutUint32(b[ParamOffTEE:], paramTEE(p.TEE))
	le.PutUint32(b[ParamOffFlags:], p.Flags)
	le.PutUint32(b[ParamOffRangeCount:], uint32(len(p.Ranges)))
	le.PutUint64(b[ParamOffKernelEntry:], p.KernelEntry)
	le.PutUint64(b[ParamOffZeroPage:], p.ZeroPage)
	le.PutUint64(b[ParamOffPageTables:], p.PageTables)
	for i, r := range p.Ranges {
		off := ParamOffRanges + i*ParamRangeSize
		le.PutUint64(b[off:], r.GPA)
		le.PutUint64(b[off+8:], r.Size)
	}
	if p.Flags&ParamFlagCCBlob != 0 {
		cc := b[ParamOffCCBlob:]
		le.PutUint32(cc[0:], ccBlobMagic)
		le.PutUint16(cc[4:], ccBlobVersion)
		le.PutUint64(cc[ccBlobOffSecrets:], SNPSecretsAddr)
		le.PutUint32(cc[ccBlobOffSecretsLen:], layout.PageSize)
		le.PutUint64(cc[ccBlobOffCPUID:], SNPCPUIDAddr)
		le.PutUint32(cc[ccBlobOffCPUIDLen:], layout.PageSize)
	}
	return nil
}

// DecodeShimParams parses a parameter block page, checking what the shim
// checks, for tools and tests that inspect a layout.
func DecodeShimParams(b []byte) (*ShimParams, error) {
	if len(b) < layout.PageSize {
		return nil, fmt.Errorf("boot: parameter block: %d bytes, want %d", len(b), layout.PageSize)
	}
	le := binary.LittleEndian
	if !bytes.Equal(b[:8], []byte(ParamMagic)) {
		return nil, fmt.Errorf("boot: parameter block: bad magic %q", b[:8])
	}
	if v := le.Uint32(b[ParamOffVersion:]); v != ParamVersion {
		return nil, fmt.Errorf("boot: parameter block: version %d, want %d", v, ParamVersion)
	}
	n := le.Uint32(b[ParamOffRangeCount:])
	if n > ParamMaxRanges {
		return nil, fmt.Errorf("boot: parameter block: %d ranges, at most %d", n, ParamMaxRanges)
	}
	p := &ShimParams{
		TEE:         teeOfParam[le.Uint32(b[ParamOffTEE:])],
		Flags:       le.Uint32(b[ParamOffFlags:]),
		KernelEntry: le.Uint64(b[ParamOffKernelEntry:]),
		ZeroPage:    le.Uint64(b[ParamOffZeroPage:]),
		PageTables:  le.Uint64(b[ParamOffPageTables:]),
	}
	for i := 0; i < int(n); i++ {
		off := ParamOffRanges + i*ParamRangeSize
		p.Ranges = append(p.Ranges, RAMRange{GPA: le.Uint64(b[off:]), Size: le.Uint64(b[off+8:])})
	}
	return p, nil
}

// UnlaunchedRAM returns the guest RAM (MemoryMap(memSize)) not covered by any
// region, in address order: what the shim must validate or accept. Regions
// outside RAM (the shim window) are ignored.
func UnlaunchedRAM(memSize uint64, regions []layout.Region) []RAMRange {
	rs := append([]layout.Region(nil), regions...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].GPA < rs[j].GPA })
	var out []RAMRange
	for _, ram := range MemoryMap(memSize) {
		cur := ram.GPA
		for _, r := range rs {
			if r.End() <= cur || r.GPA >= ram.End() {
				continue
			}
			if r.GPA > cur {
				out = append(out, RAMRange{GPA: cur, Size: r.GPA - cur})
			}
			cur = max(cur, r.End())
		}
		if cur < ram.End() {
			out = append(out, RAMRange{GPA: cur, Size: ram.End() - cur})
		}
	}
	return out
}

// FirmwareE820Map is E820Map with the firmware-mode reservations: the
// parameter block (it holds the CC blob the kernel keeps a pointer to), for
// SNP the SECRETS and CPUID pages (the kernel maps them for the guest
// driver), and the shim window below 4 GiB. The scratch page and page
// tables stay RAM: the kernel switches to its own page tables and IDT before
// it allocates memory.
func FirmwareE820Map(memSize, shimSize uint64, t tee.TEE) []E820Entry {
	m := E820Map(memSize)
	m = reserveE820(m, ShimParamsAddr, layout.PageSize)
	if t.Hardware() == tee.SNP {
		m = reserveE820(m, SNPSecretsAddr, 2*layout.PageSize)
	}
	m = append(m, E820Entry{Addr: FirmwareWindowEnd - shimSize, Size: shimSize, Type: E820Reserved})
	sort.Slice(m, func(i, j int) bool { return m[i].Addr < m[j].Addr })
	return m
}

// reserveE820 carves [addr, addr+size) out of the RAM entries of m and adds
// it as reserved, keeping the map sorted.
func reserveE820(m []E820Entry, addr, size uint64) []E820Entry {
	end := addr + size
	var out []E820Entry
	for _, e := range m {
		eEnd := e.Addr + e.Size
		if e.Type != E820RAM || eEnd <= addr || e.Addr >= end {
			out = append(out, e)
			continue
		}
		if e.Addr < addr {
			out = append(out, E820Entry{Addr: e.Addr, Size: addr - e.Addr, Type: E820RAM})
		}
		if eEnd > end {
			out = append(out, E820Entry{Addr: end, Size: eEnd - end, Type: E820RAM})
		}
	}
	out = append(out, E820Entry{Addr: addr, Size: size, Type: E820Reserved})
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}

// Selectors and attributes of the firmware start state. They match the
// shim's own GDT (shim.asm), which it loads before reloading the segments.
const (
	SelectorCode32 = 0x08
	AttribCode32   = 0xc9b // G, D/B, P, S, type 0xb (execute/read, accessed)
	AttribTSS32    = 0x08b // P, type 0xb (busy TSS): VMX wants a usable TR
)

// FirmwareCPUState is the boot vCPU's state at the reset vector in firmware
// mode: 32-bit protected mode with flat 4 GiB segments and paging off, which
// is how a TDX TD starts; KVM_SET_SREGS and the SNP VMSA set the same.
func FirmwareCPUState() layout.VCPUState {
	code := layout.Segment{Selector: SelectorCode32, Attrib: AttribCode32, Limit: 0xffffffff}
	data := layout.Segment{Selector: SelectorData, Attrib: AttribData, Limit: 0xffffffff}
	return layout.VCPUState{
		CS: code, DS: data, ES: data, SS: data, FS: data, GS: data,
		TR:     layout.Segment{Attrib: AttribTSS32, Limit: 0xffff},
		LDTR:   layout.Segment{Attrib: AttribLDT, Limit: 0xffff},
		GDTR:   layout.DescriptorTable{Limit: 0xffff},
		IDTR:   layout.DescriptorTable{Limit: 0xffff},
		CR0:    CR0PE | CR0ET | CR0NE,
		RFLAGS: 2,
		RIP:    ResetVector,
		DR6:    0xffff0ff0,
		DR7:    0x400,
		XCR0:   1,
		PAT:    0x0007040600070406,
		MXCSR:  0x1f80,
		FCW:    0x37f,
	}
}
