package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// KernelFormat names the kind of kernel file.
type KernelFormat int

// Supported kernel formats.
const (
	FormatELF     KernelFormat = iota + 1 // uncompressed vmlinux, loaded at its physical addresses
	FormatBzImage                         // bzImage, protected-mode part loaded at 1 MiB
)

func (f KernelFormat) String() string {
	switch f {
	case FormatELF:
		return "elf"
	case FormatBzImage:
		return "bzImage"
	}
	return fmt.Sprintf("format(%d)", int(f))
}

// Kernel is a parsed kernel, ready to be placed in guest memory.
type Kernel struct {
	Format KernelFormat
	// LoadAddr is the page-aligned guest-physical address of Image[0].
	LoadAddr uint64
	// Image is the kernel's initial memory contents from LoadAddr on; memory
	// between len(Image) and End is zero (bss).
	Image []byte
	// End is the first guest-physical address the kernel does not claim
	// (for a bzImage this includes the decompression area, init_size).
	End uint64
	// Entry is the 64-bit entry point (startup_64).
	Entry uint64
	// Setup is the bzImage setup header (zero page offsets 0x1f1 up to its
	// end), copied into the zero page; empty for ELF.
	Setup []byte
	// CmdlineMax is the longest command line the kernel accepts, NUL excluded.
	CmdlineMax int
	// InitrdMax is the highest address the initrd may occupy.
	InitrdMax uint64
}

// ELF64 layout (System V gABI, x86-64 psABI).
const (
	elfHeaderSize   = 64
	elfPhdrSize     = 56
	elfOffClass     = 4
	elfOffData      = 5
	elfOffType      = 16
	elfOffMachine   = 18
	elfOffEntry     = 24
	elfOffPhoff     = 32
	elfOffPhentsize = 54
	elfOffPhnum     = 56
	elfClass64      = 2
	elfDataLSB      = 1
	elfTypeExec     = 2
	elfMachineX8664 = 62
	ptLoad          = 1
	phOffType       = 0
	phOffOffset     = 8
	phOffPaddr      = 24
	phOffFilesz     = 32
	phOffMemsz      = 40
	maxPhnum        = 64 // vmlinux has a handful; bound the work on hostile headers
)

// Setup header (boot.rst "THE REAL-MODE KERNEL HEADER"), offsets in the file
// and in the zero page alike.
const (
	hdrSetupSects      = 0x1f1
	hdrBootFlag        = 0x1fe
	hdrJump            = 0x200
	hdrMagic           = 0x202
	hdrVersion         = 0x206
	hdrTypeOfLoader    = 0x210
	hdrLoadFlags       = 0x211
	hdrRamdiskImage    = 0x218
	hdrRamdiskSize     = 0x21c
	hdrCmdLinePtr      = 0x228
	hdrInitrdAddrMax   = 0x22c
	hdrKernelAlignment = 0x230
	hdrRelocatable     = 0x234
	hdrXLoadFlags      = 0x236
	hdrCmdlineSize     = 0x238
	hdrPrefAddress     = 0x258
	hdrInitSize        = 0x260
	hdrEnd             = 0x26c // end of struct setup_header in protocol 2.15

	bootFlagMagic      = 0xaa55
	hdrSMagic          = 0x53726448 // "HdrS"
	minBootProtocol    = 0x20c      // 2.12: xloadflags and the 64-bit entry
	xlfKernel64        = 1 << 0
	loaderUndefined    = 0xff
	loadFlagLoadedHigh = 1 << 0
	bzEntryOffset      = 0x200 // 64-bit entry = load address + 0x200
)

var elfMagic = []byte{0x7f, 'E', 'L', 'F'}

// ParseKernel recognises an ELF vmlinux or a bzImage and checks that it is a
// 64-bit x86 kernel whose pieces fit in a guest; data is never trusted.
func ParseKernel(data []byte) (*Kernel, error) {
	switch {
	case bytes.HasPrefix(data, elfMagic):
		k, err := parseELF(data)
		if err != nil {
			return nil, fmt.Errorf("boot: kernel ELF: %w", err)
		}
		return k, nil
	case len(data) >= hdrMagic+4 && binary.LittleEndian.Uint32(data[hdrMagic:]) == hdrSMagic:
		k, err := parseBzImage(data)
		if err != nil {
			return nil, fmt.Errorf("boot: kernel bzImage: %w", err)
		}
		return k, nil
	}
	return nil, errors.New("boot: kernel is neither an ELF vmlinux nor a bzImage")
}

type elfSegment struct{ off, paddr, filesz, memsz uint64 }

func parseELF(data []byte) (*Kernel, error) {
	le := binary.LittleEndian
	if len(data) < elfHeaderSize {
		return nil, fmt.Errorf("file of %d bytes is shorter than an ELF header", len(data))
	}
	switch {
	case data[elfOffClass] != elfClass64:
		return nil, fmt.Errorf("ELF class %d, want 64-bit", data[elfOffClass])
	case data[elfOffData] != elfDataLSB:
		return nil, fmt.Errorf("ELF data encoding %d, want little endian", data[elfOffData])
	case le.Uint16(data[elfOffType:]) != elfTypeExec:
		return nil, fmt.Errorf("ELF type %d, want an executable", le.Uint16(data[elfOffType:]))
	case le.Uint16(data[elfOffMachine:]) != elfMachineX8664:
		return nil, fmt.Errorf("ELF machine %d, want x86-64", le.Uint16(data[elfOffMachine:]))
	case le.Uint16(data[elfOffPhentsize:]) != elfPhdrSize:
		return nil, fmt.Errorf("program header size %d, want %d", le.Uint16(data[elfOffPhentsize:]), elfPhdrSize)
	}
	entry := le.Uint64(data[elfOffEntry:])
	phoff := le.Uint64(data[elfOffPhoff:])
	phnum := uint64(le.Uint16(data[elfOffPhnum:]))
	if phnum == 0 || phnum > maxPhnum {
		return nil, fmt.Errorf("%d program headers, want 1..%d", phnum, maxPhnum)
	}
	if phoff > uint64(len(data)) || phnum*elfPhdrSize > uint64(len(data))-phoff {
		return nil, fmt.Errorf("program headers at %#x (%d) run past the end of the %d-byte file", phoff, phnum, len(data))
	}
	segs, err := elfLoadSegments(data, phoff, phnum)
	if err != nil {
		return nil, err
	}
	start, end, fileEnd := ^uint64(0), uint64(0), uint64(0)
	for _, s := range segs {
		start = min(start, s.paddr)
		end = max(end, s.paddr+s.memsz)
		fileEnd = max(fileEnd, s.paddr+s.filesz)
	}
	start &^= 0xfff
	// The image is bounded by the MMIO hole (3 GiB) above and by the checks
	// above; in practice it is the vmlinux's text+data, a few tens of MiB.
	if fileEnd-start > 2*uint64(len(data))+(64<<20) {
		return nil, fmt.Errorf("load segments span %#x bytes, far more than the %d-byte file holds", fileEnd-start, len(data))
	}
	if entry < start || entry >= end {
		return nil, fmt.Errorf("entry point %#x is outside the loaded image [%#x,%#x)", entry, start, end)
	}
	img := make([]byte, max(fileEnd, start)-start)
	for _, s := range segs {
		copy(img[s.paddr-start:], data[s.off:s.off+s.filesz])
	}
	return &Kernel{
		Format:     FormatELF,
		LoadAddr:   start,
		Image:      img,
		End:        end,
		Entry:      entry,
		CmdlineMax: MaxCmdlineELF,
		InitrdMax:  DefaultInitrdMax,
	}, nil
}

// elfLoadSegments returns the non-empty PT_LOAD segments of the program
// headers at phoff, each checked to lie inside the file, above the boot
// structures, below the MMIO hole and clear of the others.
func elfLoadSegments(data []byte, phoff, phnum uint64) ([]elfSegment, error) {
	le := binary.LittleEndian
	var segs []elfSegment
	for i := uint64(0); i < phnum; i++ {
		ph := data[phoff+i*elfPhdrSize:][:elfPhdrSize]
		if le.Uint32(ph[phOffType:]) != ptLoad {
			continue
		}
		s := elfSegment{off: le.Uint64(ph[phOffOffset:]), paddr: le.Uint64(ph[phOffPaddr:]),
			filesz: le.Uint64(ph[phOffFilesz:]), memsz: le.Uint64(ph[phOffMemsz:])}
		switch {
		case s.filesz > s.memsz:
			return nil, fmt.Errorf("segment %d: file size %#x exceeds memory size %#x", i, s.filesz, s.memsz)
		case s.off > uint64(len(data)) || s.filesz > uint64(len(data))-s.off:
			return nil, fmt.Errorf("segment %d: bytes [%#x,+%#x) outside the %d-byte file", i, s.off, s.filesz, len(data))
		case s.paddr < HighMemStart:
			return nil, fmt.Errorf("segment %d: physical address %#x is below 1 MiB, where the boot structures live", i, s.paddr)
		case s.memsz > MMIOHoleStart || s.paddr > MMIOHoleStart-s.memsz:
			return nil, fmt.Errorf("segment %d: [%#x,+%#x) does not fit below the MMIO hole at %#x", i, s.paddr, s.memsz, uint64(MMIOHoleStart))
		}
		if s.memsz == 0 {
			continue
		}
		for j, o := range segs {
			if s.paddr < o.paddr+o.memsz && o.paddr < s.paddr+s.memsz {
				return nil, fmt.Errorf("segment %d overlaps load segment %d", i, j)
			}
		}
		segs = append(segs, s)
	}
	if len(segs) == 0 {
		return nil, errors.New("no loadable segments")
	}
	return segs, nil
}

func parseBzImage(data []byte) (*Kernel, error) {
	le := binary.LittleEndian
	if len(data) < hdrEnd {
		return nil, fmt.Errorf("file of %d bytes is shorter than the setup header", len(data))
	}
	if bf := le.Uint16(data[hdrBootFlag:]); bf != bootFlagMagic {
		return nil, fmt.Errorf("boot_flag %#x, want %#x", bf, bootFlagMagic)
	}
	version := le.Uint16(data[hdrVersion:])
	if version < minBootProtocol {
		return nil, fmt.Errorf("boot protocol %d.%02d is older than 2.12 (needed for the 64-bit entry)", version>>8, version&0xff)
	}
	if le.Uint16(data[hdrXLoadFlags:])&xlfKernel64 == 0 {
		return nil, errors.New("xloadflags lacks XLF_KERNEL_64: no 64-bit entry point")
	}
	// The header runs from 0x1f1 to 0x202 + the jump's displacement byte.
	setupEnd := hdrMagic + int(data[hdrJump+1])
	if setupEnd < hdrEnd {
		setupEnd = hdrEnd
	}
	if setupEnd > 0x290 || setupEnd > len(data) {
		return nil, fmt.Errorf("setup header end %#x is outside the zero page's header area or the file", setupEnd)
	}
	setupSects := int(data[hdrSetupSects])
	if setupSects == 0 {
		setupSects = 4 // boot.rst: "If this field is 0, the real value is 4."
	}
	pmOff := (setupSects + 1) * 512
	if pmOff >= len(data) {
		return nil, fmt.Errorf("setup code of %d sectors leaves no protected-mode kernel in the %d-byte file", setupSects, len(data))
	}
	img := data[pmOff:]
	initSize := uint64(le.Uint32(data[hdrInitSize:]))
	prefAddr := le.Uint64(data[hdrPrefAddress:])
	align := uint64(le.Uint32(data[hdrKernelAlignment:]))
	relocatable := data[hdrRelocatable] != 0
	// Loaded at 1 MiB, a relocatable kernel moves itself to the first
	// kernel_alignment boundary at or above LOAD_PHYSICAL_ADDR (pref_address)
	// and needs init_size bytes there; a fixed kernel decompresses in place.
	runAt := uint64(HighMemStart)
	if relocatable {
		if align == 0 || align&(align-1) != 0 || align > 1<<30 {
			return nil, fmt.Errorf("kernel_alignment %#x is not a power of two up to 1 GiB", align)
		}
		runAt = max(runAt, (prefAddr+align-1)&^(align-1))
	}
	if prefAddr > MMIOHoleStart || initSize > MMIOHoleStart {
		return nil, fmt.Errorf("pref_address %#x / init_size %#x outside low memory", prefAddr, initSize)
	}
	end := max(uint64(HighMemStart)+uint64(len(img)), runAt+initSize)
	cmdMax := int(le.Uint32(data[hdrCmdlineSize:]))
	if cmdMax <= 0 || cmdMax > 1<<20 {
		return nil, fmt.Errorf("cmdline_size %d outside 1..1 MiB", cmdMax)
	}
	initrdMax := uint64(le.Uint32(data[hdrInitrdAddrMax:]))
	if initrdMax == 0 {
		initrdMax = DefaultInitrdMax
	}
	return &Kernel{
		Format:     FormatBzImage,
		LoadAddr:   HighMemStart,
		Image:      img,
		End:        end,
		Entry:      HighMemStart + bzEntryOffset,
		Setup:      data[hdrSetupSects:setupEnd],
		CmdlineMax: cmdMax,
		InitrdMax:  initrdMax,
	}, nil
}
