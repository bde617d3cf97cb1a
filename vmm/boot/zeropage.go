package boot

import "encoding/binary"

// struct boot_params ("zero page", Documentation/arch/x86/zero-page.rst).
const (
	ZeroPageSize      = 4096
	zpExtRamdiskImage = 0x0c0
	zpExtRamdiskSize  = 0x0c4
	zpExtCmdLinePtr   = 0x0c8
	zpCCBlobAddress   = 0x13c // u32: struct cc_blob_sev_info (SEV-SNP CPUID and secrets pages)
	zpE820Entries     = 0x1e8
	zpE820Table       = 0x2d0
	e820EntrySize     = 20 // u64 addr, u64 size, u32 type
	e820MaxEntries    = 128
)

// E820 memory types.
const (
	E820RAM      = 1
	E820Reserved = 2
)

// E820Entry is one line of the BIOS memory map the kernel reads from the zero
// page.
type E820Entry struct {
	Addr, Size uint64
	Type       uint32
}

// E820Map returns the memory map for memSize bytes of RAM: conventional RAM
// below the EBDA, the legacy BIOS area reserved (it holds the MP table), and
// RAM from 1 MiB split around the 32-bit MMIO hole.
func E820Map(memSize uint64) []E820Entry {
	m := []E820Entry{
		{Addr: 0, Size: EBDAStart, Type: E820RAM},
		{Addr: EBDAStart, Size: HighMemStart - EBDAStart, Type: E820Reserved},
	}
	for _, r := range MemoryMap(memSize) {
		start := max(r.GPA, HighMemStart)
		if r.End() > start {
			m = append(m, E820Entry{Addr: start, Size: r.End() - start, Type: E820RAM})
		}
	}
	return m
}

// zeroPage builds boot_params: the bzImage's own setup header (or a minimal
// one for an ELF kernel), loader fields, command line, initrd, the e820 map
// and, when not zero, the SEV-SNP confidential-computing blob's address.
func zeroPage(k *Kernel, cfg Config, initrdGPA uint64, e820 []E820Entry, ccBlob uint32) *[ZeroPageSize]byte {
	le := binary.LittleEndian
	zp := new([ZeroPageSize]byte)
	if len(k.Setup) > 0 {
		copy(zp[hdrSetupSects:], k.Setup)
	} else {
		// An ELF vmlinux has no setup header: write the fields the kernel
		// reads at run time, claiming protocol 2.12 (64-bit entry).
		le.PutUint16(zp[hdrBootFlag:], bootFlagMagic)
		le.PutUint32(zp[hdrMagic:], hdrSMagic)
		le.PutUint16(zp[hdrVersion:], minBootProtocol)
		le.PutUint32(zp[hdrKernelAlignment:], 0x1000000)
		le.PutUint32(zp[hdrCmdlineSize:], uint32(k.CmdlineMax))
		le.PutUint32(zp[hdrInitrdAddrMax:], uint32(k.InitrdMax))
	}
	zp[hdrTypeOfLoader] = loaderUndefined
	zp[hdrLoadFlags] |= loadFlagLoadedHigh
	le.PutUint32(zp[hdrCmdLinePtr:], CmdlineAddr)
	le.PutUint32(zp[zpExtCmdLinePtr:], 0)
	if len(cfg.Initrd) > 0 {
		size := uint64(len(cfg.Initrd))
		le.PutUint32(zp[hdrRamdiskImage:], uint32(initrdGPA))
		le.PutUint32(zp[hdrRamdiskSize:], uint32(size))
		le.PutUint32(zp[zpExtRamdiskImage:], uint32(initrdGPA>>32))
		le.PutUint32(zp[zpExtRamdiskSize:], uint32(size>>32))
	}
	le.PutUint32(zp[zpCCBlobAddress:], ccBlob)
	zp[zpE820Entries] = byte(len(e820))
	for i, e := range e820 {
		off := zpE820Table + i*e820EntrySize
		le.PutUint64(zp[off:], e.Addr)
		le.PutUint64(zp[off+8:], e.Size)
		le.PutUint32(zp[off+16:], e.Type)
	}
	return zp
}
