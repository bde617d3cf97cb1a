// Package boot turns a Linux kernel, an optional initrd, a command line, a
// memory size and a vCPU count into the guest's launch layout: every page the
// guest starts with (page tables, GDT, zero page, command line, MP table,
// kernel, initrd) and every vCPU's start state.
//
// It is pure Go and knows nothing about KVM, so the VMM that loads the layout,
// `krun-tee measure` that hashes it and a confidential launch that encrypts it
// all see the same bytes. The x86 facts come from the Linux boot protocol
// (Documentation/arch/x86/boot.rst, zero-page.rst) and the Intel
// MultiProcessor Specification 1.4.
package boot

import (
	"errors"
	"fmt"

	"github.com/krun-tee/krun-tee/layout"
)

// Guest-physical addresses of the boot structures, all in the first MiB. The
// kernel never reuses them before it has read them: the zero page and command
// line are copied early, and the page tables and GDT are replaced by the
// kernel's own in startup_64.
const (
	GDTAddr       = 0x1000  // boot GDT (one page)
	ZeroPageAddr  = 0x7000  // struct boot_params, passed in RSI
	BootStackTop  = 0x8ff0  // initial RSP/RBP; the page below 0x9000 is ordinary RAM
	PML4Addr      = 0x9000  // identity page tables: PML4, then PDPT, then the PDs
	PDPTAddr      = 0xa000  //
	PDAddr        = 0xb000  // PDAddr .. PDAddr+IdentityMapGiB pages
	CmdlineAddr   = 0x20000 // NUL-terminated kernel command line
	EBDAStart     = 0x9fc00 // end of conventional RAM in the e820 map
	MPTableAddr   = 0xf0000 // MP floating pointer + configuration table (BIOS ROM area, scanned by Linux)
	HighMemStart  = 0x100000
	IdentityMapGB = 4 // GiB identity-mapped with 2 MiB pages at entry
)

// The 32-bit PCI/MMIO hole: RAM above MMIOHoleStart is relocated to 4 GiB so
// devices (virtio-mmio windows, IOAPIC, LAPIC) have addresses below 4 GiB.
const (
	MMIOHoleStart = 0xc0000000
	MMIOHoleEnd   = 0x100000000
)

// Limits on the inputs.
const (
	MinMemory        = 16 << 20   // below this no kernel of interest boots
	MaxMemory        = 1 << 40    // 1 TiB: keeps every address well inside the 4-level identity map budget
	MaxVCPUs         = 254        // xAPIC ids are 8 bits, 0xff is broadcast and one id goes to the IOAPIC
	MaxKernelSize    = 512 << 20  // a sanity bound on kernel files
	MaxCmdlineELF    = 2047       // COMMAND_LINE_SIZE (2048) minus the NUL, for ELF kernels without a header
	DefaultInitrdMax = 0x7fffffff // highest initrd byte for ELF kernels (no initrd_addr_max field)
)

// Config is what the guest boots.
type Config struct {
	Kernel     []byte // ELF vmlinux (x86-64) or bzImage
	Initrd     []byte // optional initramfs (newc cpio, possibly compressed)
	Cmdline    string // the complete kernel command line
	MemorySize uint64 // bytes of guest RAM, a multiple of 1 MiB
	VCPUs      int    // number of vCPUs, 1..MaxVCPUs
}

// RAMRange is one contiguous run of guest RAM.
type RAMRange struct {
	GPA  uint64
	Size uint64
}

// End returns the first address after the range.
func (r RAMRange) End() uint64 { return r.GPA + r.Size }

// MemoryMap returns where size bytes of guest RAM live in the guest-physical
// address space: from 0 up to the MMIO hole, and the rest from 4 GiB. The VMM
// registers exactly these ranges with KVM, and the e820 map describes them.
func MemoryMap(size uint64) []RAMRange {
	if size <= MMIOHoleStart {
		return []RAMRange{{GPA: 0, Size: size}}
	}
	return []RAMRange{{GPA: 0, Size: MMIOHoleStart}, {GPA: MMIOHoleEnd, Size: size - MMIOHoleStart}}
}

// lowRAMEnd is the end of the RAM below the MMIO hole.
func lowRAMEnd(size uint64) uint64 { return min(size, MMIOHoleStart) }

// Build validates cfg and returns the guest's launch layout. Regions come in
// a fixed order (page tables, GDT, zero page, command line, MP table, kernel,
// initrd), so the same inputs always give the same measurement.
func Build(cfg Config) (*layout.Layout, error) {
	k, initrdGPA, err := prepare(cfg)
	if err != nil {
		return nil, err
	}
	l := &layout.Layout{MemorySize: cfg.MemorySize}
	add := func(r layout.Region) {
		if err == nil {
			err = l.Add(r)
		}
	}
	add(layout.Region{Name: "page-tables", GPA: PML4Addr, Type: layout.PageNormal, Data: identityPageTables()})
	add(layout.Region{Name: "gdt", GPA: GDTAddr, Type: layout.PageNormal, Data: gdtBytes()})
	zp := zeroPage(k, cfg, initrdGPA, E820Map(cfg.MemorySize), 0)
	add(layout.Region{Name: "zero-page", GPA: ZeroPageAddr, Type: layout.PageNormal, Data: zp[:]})
	add(layout.Region{Name: "cmdline", GPA: CmdlineAddr, Type: layout.PageNormal, Data: append([]byte(cfg.Cmdline), 0)})
	add(layout.Region{Name: "mptable", GPA: MPTableAddr, Type: layout.PageNormal, Data: mpTable(cfg.VCPUs)})
	add(layout.Region{Name: "kernel", GPA: k.LoadAddr, Type: layout.PageNormal, Data: k.Image, Size: alignUp(k.End - k.LoadAddr)})
	if len(cfg.Initrd) > 0 {
		add(layout.Region{Name: "initrd", GPA: initrdGPA, Type: layout.PageNormal, Data: cfg.Initrd})
	}
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	l.VCPUs = make([]layout.VCPUState, cfg.VCPUs)
	l.VCPUs[0] = BootCPUState(k.Entry)
	for i := 1; i < cfg.VCPUs; i++ {
		l.VCPUs[i] = ResetCPUState()
	}
	return l, nil
}

// prepare validates cfg, parses the kernel and places the initrd: the part
// both the direct (Build) and the firmware (BuildFirmware) layouts share.
func prepare(cfg Config) (k *Kernel, initrdGPA uint64, err error) {
	if err := cfg.validate(); err != nil {
		return nil, 0, err
	}
	k, err = ParseKernel(cfg.Kernel)
	if err != nil {
		return nil, 0, err
	}
	lowEnd := lowRAMEnd(cfg.MemorySize)
	if k.End > lowEnd {
		return nil, 0, fmt.Errorf("boot: memory %d MiB too small: the kernel needs RAM up to %#x", cfg.MemorySize>>20, k.End)
	}
	maxCmd := k.CmdlineMax
	if len(cfg.Cmdline) > maxCmd {
		return nil, 0, fmt.Errorf("boot: command line is %d bytes, the kernel accepts at most %d", len(cfg.Cmdline), maxCmd)
	}
	for i := 0; i < len(cfg.Cmdline); i++ {
		if cfg.Cmdline[i] == 0 {
			return nil, 0, fmt.Errorf("boot: command line contains a NUL byte at offset %d", i)
		}
	}
	if len(cfg.Initrd) > 0 {
		initrdGPA, err = placeInitrd(uint64(len(cfg.Initrd)), k, lowEnd)
		if err != nil {
			return nil, 0, err
		}
	}
	return k, initrdGPA, nil
}

func (cfg *Config) validate() error {
	switch {
	case len(cfg.Kernel) == 0:
		return errors.New("boot: no kernel")
	case len(cfg.Kernel) > MaxKernelSize:
		return fmt.Errorf("boot: kernel is %d bytes, more than the %d MiB limit", len(cfg.Kernel), MaxKernelSize>>20)
	case cfg.VCPUs < 1 || cfg.VCPUs > MaxVCPUs:
		return fmt.Errorf("boot: %d vCPUs: want 1..%d", cfg.VCPUs, MaxVCPUs)
	case cfg.MemorySize < MinMemory:
		return fmt.Errorf("boot: memory %d MiB too small: at least %d MiB", cfg.MemorySize>>20, MinMemory>>20)
	case cfg.MemorySize > MaxMemory:
		return fmt.Errorf("boot: memory %d MiB exceeds the %d MiB limit", cfg.MemorySize>>20, MaxMemory>>20)
	case cfg.MemorySize%(1<<20) != 0:
		return fmt.Errorf("boot: memory size %#x is not a whole number of MiB", cfg.MemorySize)
	}
	return nil
}

// placeInitrd puts the initrd as high as possible in RAM below the MMIO hole
// and the kernel's initrd_addr_max, page aligned, above the kernel, as the
// boot protocol recommends (the kernel then does not need to move it).
func placeInitrd(size uint64, k *Kernel, lowEnd uint64) (uint64, error) {
	top := min(lowEnd, k.InitrdMax+1)
	if size > top {
		return 0, fmt.Errorf("boot: initrd of %d bytes does not fit below %#x", size, top)
	}
	gpa := (top - size) &^ (layout.PageSize - 1)
	if gpa < alignUp(k.End) {
		return 0, fmt.Errorf("boot: memory %d MiB too small: initrd of %d bytes does not fit between the kernel end %#x and %#x", lowEnd>>20, size, k.End, top)
	}
	return gpa, nil
}

func alignUp(n uint64) uint64 { return (n + layout.PageSize - 1) &^ (layout.PageSize - 1) }
