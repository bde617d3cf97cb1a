package boot

import (
	"bytes"
	"encoding/binary"
	"os"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/layout"
)

var le = binary.LittleEndian

type testSeg struct {
	paddr  uint64
	data   []byte
	memsz  uint64
	ptType uint32
}

// makeELF assembles a minimal ELF64 x86-64 executable with the given program
// headers, laid out the way vmlinux is: header, program headers, segment data.
func makeELF(entry uint64, segs []testSeg) []byte {
	phoff := uint64(elfHeaderSize)
	dataOff := phoff + uint64(len(segs))*elfPhdrSize
	var body []byte
	hdr := make([]byte, elfHeaderSize)
	copy(hdr, elfMagic)
	hdr[elfOffClass], hdr[elfOffData], hdr[6] = elfClass64, elfDataLSB, 1
	le.PutUint16(hdr[elfOffType:], elfTypeExec)
	le.PutUint16(hdr[elfOffMachine:], elfMachineX8664)
	le.PutUint32(hdr[20:], 1)
	le.PutUint64(hdr[elfOffEntry:], entry)
	le.PutUint64(hdr[elfOffPhoff:], phoff)
	le.PutUint16(hdr[52:], elfHeaderSize)
	le.PutUint16(hdr[elfOffPhentsize:], elfPhdrSize)
	le.PutUint16(hdr[elfOffPhnum:], uint16(len(segs)))
	phdrs := make([]byte, len(segs)*elfPhdrSize)
	off := dataOff
	for i, s := range segs {
		ph := phdrs[i*elfPhdrSize:]
		t := s.ptType
		if t == 0 {
			t = ptLoad
		}
		le.PutUint32(ph[phOffType:], t)
		le.PutUint64(ph[phOffOffset:], off)
		le.PutUint64(ph[16:], s.paddr|0xffffffff80000000) // vaddr, unused by the loader
		le.PutUint64(ph[phOffPaddr:], s.paddr)
		le.PutUint64(ph[phOffFilesz:], uint64(len(s.data)))
		memsz := s.memsz
		if memsz == 0 {
			memsz = uint64(len(s.data))
		}
		le.PutUint64(ph[phOffMemsz:], memsz)
		body = append(body, s.data...)
		off += uint64(len(s.data))
	}
	return append(append(hdr, phdrs...), body...)
}

// testKernel is a two-segment "vmlinux": text at 16 MiB, data+bss after it.
func testKernel() []byte {
	text := bytes.Repeat([]byte{0x90}, 5000)
	text[0] = 0xf4 // hlt at the entry
	data := bytes.Repeat([]byte{0xd0}, 3000)
	return makeELF(0x1000000, []testSeg{
		{paddr: 0x1000000, data: text},
		{paddr: 0x1002000, data: data, memsz: 0x10000},
	})
}

// makeBzImage builds a bzImage-shaped file: boot sector + setup sectors with a
// protocol 2.15 header, then the protected-mode payload.
func makeBzImage(version uint16, xload uint16, payload []byte) []byte {
	const setupSects = 4
	b := make([]byte, (setupSects+1)*512)
	b[hdrSetupSects] = setupSects
	le.PutUint16(b[hdrBootFlag:], bootFlagMagic)
	b[hdrJump], b[hdrJump+1] = 0xeb, byte(hdrEnd-hdrMagic)
	le.PutUint32(b[hdrMagic:], hdrSMagic)
	le.PutUint16(b[hdrVersion:], version)
	le.PutUint32(b[hdrInitrdAddrMax:], 0x7fffffff)
	le.PutUint32(b[hdrKernelAlignment:], 0x200000)
	b[hdrRelocatable] = 1
	le.PutUint16(b[hdrXLoadFlags:], xload)
	le.PutUint32(b[hdrCmdlineSize:], 2047)
	le.PutUint64(b[hdrPrefAddress:], 0x1000000)
	le.PutUint32(b[hdrInitSize:], 0x800000)
	return append(b, payload...)
}

func TestBuildELF(t *testing.T) {
	kernel := testKernel()
	initrd := bytes.Repeat([]byte("initrd!"), 1000)
	cmdline := "console=ttyS0 reboot=k panic=-1"
	const mem = 256 << 20
	l, err := Build(Config{Kernel: kernel, Initrd: initrd, Cmdline: cmdline, MemorySize: mem, VCPUs: 2})
	if err != nil {
		t.Fatal(err)
	}
	if l.MemorySize != mem {
		t.Errorf("MemorySize = %#x", l.MemorySize)
	}
	regions := map[string]layout.Region{}
	var names []string
	for _, r := range l.Regions {
		regions[r.Name] = r
		names = append(names, r.Name)
	}
	if got, want := strings.Join(names, ","), "page-tables,gdt,zero-page,cmdline,mptable,kernel,initrd"; got != want {
		t.Fatalf("region order %s, want %s", got, want)
	}

	// Kernel: both segments at their physical addresses, bss zero-filled.
	k := regions["kernel"]
	if k.GPA != 0x1000000 || k.Size != alignUp(0x1002000+0x10000-0x1000000) {
		t.Errorf("kernel region at %#x size %#x", k.GPA, k.Size)
	}
	if readGPA(l, 0x1000000, 1)[0] != 0xf4 || readGPA(l, 0x1000000+4999, 1)[0] != 0x90 {
		t.Error("kernel text not at its physical address")
	}
	if !bytes.Equal(readGPA(l, 0x1002000, 3000), bytes.Repeat([]byte{0xd0}, 3000)) {
		t.Error("kernel data segment not at its physical address")
	}
	if !bytes.Equal(readGPA(l, 0x1002000+3000, 16), make([]byte, 16)) {
		t.Error("kernel bss not zero")
	}

	// Command line: at CmdlineAddr, NUL terminated, pointed to by the zero page.
	if got := readGPA(l, CmdlineAddr, uint64(len(cmdline)+1)); string(got) != cmdline+"\x00" {
		t.Errorf("cmdline bytes %q", got)
	}
	zp := readGPA(l, ZeroPageAddr, ZeroPageSize)
	checks := []struct {
		name string
		got  uint64
		want uint64
	}{
		{"boot_flag", uint64(le.Uint16(zp[0x1fe:])), 0xaa55},
		{"header", uint64(le.Uint32(zp[0x202:])), 0x53726448},
		{"version", uint64(le.Uint16(zp[0x206:])), 0x20c},
		{"type_of_loader", uint64(zp[0x210]), 0xff},
		{"loadflags", uint64(zp[0x211] & 1), 1},
		{"cmd_line_ptr", uint64(le.Uint32(zp[0x228:])), CmdlineAddr},
		{"ext_cmd_line_ptr", uint64(le.Uint32(zp[0x0c8:])), 0},
		{"cmdline_size", uint64(le.Uint32(zp[0x238:])), 2047},
		{"ramdisk_size", uint64(le.Uint32(zp[0x21c:])), uint64(len(initrd))},
		{"ramdisk_image", uint64(le.Uint32(zp[0x218:])), regions["initrd"].GPA},
		{"e820_entries", uint64(zp[0x1e8]), 3},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("zero page %s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	wantE820 := []E820Entry{{0, 0x9fc00, E820RAM}, {0x9fc00, 0x60400, E820Reserved}, {0x100000, mem - 0x100000, E820RAM}}
	for i, w := range wantE820 {
		off := 0x2d0 + 20*i
		got := E820Entry{le.Uint64(zp[off:]), le.Uint64(zp[off+8:]), le.Uint32(zp[off+16:])}
		if got != w {
			t.Errorf("e820[%d] = %+v, want %+v", i, got, w)
		}
	}

	// Initrd: page aligned, as high as possible, above the kernel.
	ird := regions["initrd"]
	if ird.GPA%layout.PageSize != 0 || ird.GPA+uint64(len(initrd)) > mem || mem-ird.GPA-uint64(len(initrd)) >= layout.PageSize {
		t.Errorf("initrd at %#x (size %#x) is not the highest page-aligned spot below %#x", ird.GPA, len(initrd), mem)
	}
	if !bytes.Equal(readGPA(l, ird.GPA, uint64(len(initrd))), initrd) {
		t.Error("initrd contents differ")
	}

	// vCPUs: the BSP enters the kernel in long mode; the AP waits for SIPI.
	if len(l.VCPUs) != 2 {
		t.Fatalf("%d vCPU states", len(l.VCPUs))
	}
	bsp := l.VCPUs[0]
	if bsp.RIP != 0x1000000 || bsp.RSI != ZeroPageAddr || bsp.CS.Selector != 0x10 || bsp.DS.Selector != 0x18 ||
		bsp.CR3 != PML4Addr || bsp.EFER&(EFERLME|EFERLMA) != EFERLME|EFERLMA || bsp.CR0&CR0PG == 0 || bsp.CR4&CR4PAE == 0 {
		t.Errorf("boot vCPU state %+v", bsp)
	}
	if l.VCPUs[1].RIP != 0xfff0 || l.VCPUs[1].CS.Base != 0xffff0000 {
		t.Errorf("AP state %+v", l.VCPUs[1])
	}

	// GDT: the descriptors at the CS/DS/TR selectors decode to the state's attributes.
	gdt := readGPA(l, bsp.GDTR.Base, uint64(bsp.GDTR.Limit)+1)
	for _, seg := range []layout.Segment{bsp.CS, bsp.DS, bsp.TR} {
		d := le.Uint64(gdt[seg.Selector:])
		attrib := uint16(d>>40&0xff) | uint16(d>>52&0xf)<<8
		limit := uint32(d&0xffff) | uint32(d>>32&0xf0000)
		if attrib != seg.Attrib {
			t.Errorf("GDT[%#x] attrib %#x, state says %#x", seg.Selector, attrib, seg.Attrib)
		}
		wantLimit := seg.Limit
		if attrib&(1<<11) != 0 { // granularity: limit in 4 KiB units
			wantLimit >>= 12
		}
		if limit != wantLimit {
			t.Errorf("GDT[%#x] limit %#x, want %#x", seg.Selector, limit, wantLimit)
		}
	}
	if d := le.Uint64(gdt[0x10:]); d != 0x00af9b000000ffff {
		t.Errorf("code descriptor %#x, want the classic 64-bit flat 0x00af9b000000ffff", d)
	}
	if d := le.Uint64(gdt[0x18:]); d != 0x00cf93000000ffff {
		t.Errorf("data descriptor %#x, want 0x00cf93000000ffff", d)
	}

	// Page tables: walking them maps addresses across the first 4 GiB 1:1.
	for _, va := range []uint64{0, 0x7000, 0x1000000, ird.GPA, 0x40000000 + 0x123456, 0xfee00000, 0xffffffff} {
		pa, ok := walk(l, bsp.CR3, va)
		if !ok || pa != va {
			t.Errorf("page walk of %#x = %#x, %v; want identity", va, pa, ok)
		}
	}
	if _, ok := walk(l, bsp.CR3, 1<<32); ok {
		t.Error("address 4 GiB unexpectedly mapped")
	}
}

// readGPA reads guest memory as the layout would initialise it.
func readGPA(l *layout.Layout, gpa, n uint64) []byte {
	out := make([]byte, n)
	for _, r := range l.Regions {
		for i := uint64(0); i < n; i++ {
			a := gpa + i
			if a >= r.GPA && a < r.End() && a-r.GPA < uint64(len(r.Data)) {
				out[i] = r.Data[a-r.GPA]
			}
		}
	}
	return out
}

// walk translates va through 4-level paging as the CPU would.
func walk(l *layout.Layout, cr3, va uint64) (uint64, bool) {
	const addrMask = 0x000ffffffffff000
	e := le.Uint64(readGPA(l, cr3&addrMask+(va>>39&511)*8, 8))
	if e&ptePresent == 0 {
		return 0, false
	}
	e = le.Uint64(readGPA(l, e&addrMask+(va>>30&511)*8, 8))
	if e&ptePresent == 0 {
		return 0, false
	}
	e = le.Uint64(readGPA(l, e&addrMask+(va>>21&511)*8, 8))
	if e&ptePresent == 0 || e&ptePageSize == 0 {
		return 0, false
	}
	return e&0x000fffffffe00000 | va&0x1fffff, true
}

func TestE820Map(t *testing.T) {
	const gib = 1 << 30
	tests := []struct {
		mem  uint64
		want []E820Entry
	}{
		{64 << 20, []E820Entry{{0, 0x9fc00, 1}, {0x9fc00, 0x60400, 2}, {0x100000, 63 << 20, 1}}},
		{3 * gib, []E820Entry{{0, 0x9fc00, 1}, {0x9fc00, 0x60400, 2}, {0x100000, 3*gib - 0x100000, 1}}},
		{4 * gib, []E820Entry{{0, 0x9fc00, 1}, {0x9fc00, 0x60400, 2}, {0x100000, 3*gib - 0x100000, 1}, {4 * gib, gib, 1}}},
		{8 * gib, []E820Entry{{0, 0x9fc00, 1}, {0x9fc00, 0x60400, 2}, {0x100000, 3*gib - 0x100000, 1}, {4 * gib, 5 * gib, 1}}},
	}
	for _, tc := range tests {
		got := E820Map(tc.mem)
		if len(got) != len(tc.want) {
			t.Errorf("mem %#x: %+v, want %+v", tc.mem, got, tc.want)
			continue
		}
		var ram uint64
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("mem %#x: entry %d = %+v, want %+v", tc.mem, i, got[i], tc.want[i])
			}
			if got[i].Type == E820RAM {
				ram += got[i].Size
			}
		}
		// All RAM but the reserved legacy area is described.
		if ram != tc.mem-0x60400 {
			t.Errorf("mem %#x: e820 RAM total %#x", tc.mem, ram)
		}
		var total uint64
		for _, r := range MemoryMap(tc.mem) {
			total += r.Size
			if r.GPA < MMIOHoleEnd && r.End() > MMIOHoleStart {
				t.Errorf("mem %#x: RAM range %+v overlaps the MMIO hole", tc.mem, r)
			}
		}
		if total != tc.mem {
			t.Errorf("mem %#x: memory map covers %#x", tc.mem, total)
		}
	}
}

func TestMPTable(t *testing.T) {
	for _, vcpus := range []int{1, 2, 8, MaxVCPUs} {
		b := mpTable(vcpus)
		fp := b[:16]
		if string(fp[:4]) != "_MP_" || fp[8] != 1 || fp[9] != 4 || sum(fp) != 0 {
			t.Fatalf("%d vCPUs: bad floating pointer % x", vcpus, fp)
		}
		ptr := le.Uint32(fp[4:])
		if ptr != MPTableAddr+16 {
			t.Errorf("table pointer %#x", ptr)
		}
		tbl := b[ptr-MPTableAddr:]
		n := le.Uint16(tbl[4:])
		tbl = tbl[:n]
		if string(tbl[:4]) != "PCMP" || tbl[6] != 4 || sum(tbl) != 0 || le.Uint32(tbl[36:]) != LAPICAddr {
			t.Fatalf("%d vCPUs: bad table header % x", vcpus, tbl[:44])
		}
		count := int(le.Uint16(tbl[34:]))
		var cpus, boot, buses, ioapics, ints, lints int
		pins := map[uint8]bool{}
		e := tbl[44:]
		for i := 0; i < count; i++ {
			switch e[0] {
			case mpEntryCPU:
				if int(e[1]) != cpus || e[3]&mpCPUEnabled == 0 {
					t.Errorf("CPU entry %d: apic id %d flags %#x", cpus, e[1], e[3])
				}
				if e[3]&mpCPUBoot != 0 {
					boot++
				}
				cpus++
				e = e[20:]
				continue
			case mpEntryBus:
				if string(e[2:8]) != "ISA   " {
					t.Errorf("bus %q", e[2:8])
				}
				buses++
			case mpEntryIOAPIC:
				if e[1] != uint8(vcpus) || le.Uint32(e[4:]) != IOAPICAddr || e[3] != 1 {
					t.Errorf("IOAPIC entry % x", e[:8])
				}
				ioapics++
			case mpEntryIntSrc:
				if e[5] != e[7] || e[6] != uint8(vcpus) {
					t.Errorf("interrupt entry % x: want ISA irq n -> IOAPIC %d pin n", e[:8], vcpus)
				}
				pins[e[7]] = true
				ints++
			case mpEntryLintSrc:
				lints++
			default:
				t.Fatalf("unknown entry type %d", e[0])
			}
			e = e[8:]
		}
		if len(e) != 0 {
			t.Errorf("%d bytes after the last entry", len(e))
		}
		if cpus != vcpus || boot != 1 || buses != 1 || ioapics != 1 || ints != IOAPICPins || len(pins) != IOAPICPins || lints != 2 {
			t.Errorf("%d vCPUs: cpus %d boot %d buses %d ioapics %d ints %d lints %d", vcpus, cpus, boot, buses, ioapics, ints, lints)
		}
	}
}

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

func TestBuildBzImage(t *testing.T) {
	payload := bytes.Repeat([]byte{0xcc}, 3*4096+17)
	img := makeBzImage(0x20f, xlfKernel64, payload)
	l, err := Build(Config{Kernel: img, Cmdline: "quiet", MemorySize: 64 << 20, VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if l.VCPUs[0].RIP != 0x100200 {
		t.Errorf("entry %#x, want 0x100200", l.VCPUs[0].RIP)
	}
	if !bytes.Equal(readGPA(l, 0x100000, uint64(len(payload))), payload) {
		t.Error("protected-mode payload not at 1 MiB")
	}
	zp := readGPA(l, ZeroPageAddr, ZeroPageSize)
	// The kernel's own header fields are copied; the loader's are set.
	if le.Uint16(zp[0x206:]) != 0x20f || le.Uint64(zp[0x258:]) != 0x1000000 || le.Uint32(zp[0x260:]) != 0x800000 {
		t.Error("setup header not copied into the zero page")
	}
	if zp[0x210] != 0xff || le.Uint32(zp[0x228:]) != CmdlineAddr || le.Uint32(zp[0x218:]) != 0 {
		t.Error("loader fields wrong")
	}
	// The kernel decompresses to [16 MiB, 24 MiB): memory below that is refused.
	if _, err := Build(Config{Kernel: img, MemorySize: 16 << 20, VCPUs: 1}); err == nil || !strings.Contains(err.Error(), "too small") {
		t.Errorf("16 MiB with an 8 MiB init_size at 16 MiB: err = %v", err)
	}
}

func TestKernelErrors(t *testing.T) {
	good := testKernel()
	mut := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	phdr := func(i int) int { return elfHeaderSize + i*elfPhdrSize }
	tests := []struct {
		name, kernel, want string
	}{
		{"empty", "", "neither"},
		{"garbage", strings.Repeat("x", 4096), "neither"},
		{"short ELF", string(good[:20]), "shorter than an ELF header"},
		{"32-bit", string(mut(func(b []byte) { b[elfOffClass] = 1 })), "class 1"},
		{"big endian", string(mut(func(b []byte) { b[elfOffData] = 2 })), "little endian"},
		{"shared object", string(mut(func(b []byte) { le.PutUint16(b[elfOffType:], 3) })), "want an executable"},
		{"arm64", string(mut(func(b []byte) { le.PutUint16(b[elfOffMachine:], 183) })), "want x86-64"},
		{"no phdrs", string(mut(func(b []byte) { le.PutUint16(b[elfOffPhnum:], 0) })), "program headers"},
		{"phdrs past end", string(mut(func(b []byte) { le.PutUint64(b[elfOffPhoff:], uint64(len(b))-10) })), "past the end"},
		{"phoff overflow", string(mut(func(b []byte) { le.PutUint64(b[elfOffPhoff:], ^uint64(0)-5) })), "past the end"},
		{"segment past file", string(mut(func(b []byte) { le.PutUint64(b[phdr(0)+phOffFilesz:], 1<<40) })), "exceeds memory size"},
		{"segment offset past file", string(mut(func(b []byte) { le.PutUint64(b[phdr(0)+phOffOffset:], 1<<62) })), "outside the"},
		{"low segment", string(mut(func(b []byte) { le.PutUint64(b[phdr(0)+phOffPaddr:], 0x7000) })), "below 1 MiB"},
		{"huge segment", string(mut(func(b []byte) { le.PutUint64(b[phdr(1)+phOffMemsz:], 1<<40) })), "MMIO hole"},
		{"wrapping segment", string(mut(func(b []byte) { le.PutUint64(b[phdr(1)+phOffPaddr:], ^uint64(0)-0x1000) })), "MMIO hole"},
		{"overlap", string(mut(func(b []byte) { le.PutUint64(b[phdr(1)+phOffPaddr:], 0x1001000) })), "overlaps"},
		{"no load", string(mut(func(b []byte) { le.PutUint32(b[phdr(0):], 4); le.PutUint32(b[phdr(1):], 4) })), "no loadable"},
		{"entry outside", string(mut(func(b []byte) { le.PutUint64(b[elfOffEntry:], 0xffffffff81000000) })), "entry point"},
		{"bz old protocol", string(makeBzImage(0x20b, 1, make([]byte, 4096))), "older than 2.12"},
		{"bz 32-bit only", string(makeBzImage(0x20f, 0, make([]byte, 4096))), "XLF_KERNEL_64"},
		{"bz no payload", string(makeBzImage(0x20f, 1, nil)), "no protected-mode kernel"},
		{"bz bad flag", string(func() []byte { b := makeBzImage(0x20f, 1, make([]byte, 9)); b[hdrBootFlag] = 0; return b }()), "boot_flag"},
		{"bz bad alignment", string(func() []byte {
			b := makeBzImage(0x20f, 1, make([]byte, 9))
			le.PutUint32(b[hdrKernelAlignment:], 0x3000)
			return b
		}()), "kernel_alignment"},
		{"bz huge init_size", string(func() []byte {
			b := makeBzImage(0x20f, 1, make([]byte, 9))
			le.PutUint32(b[hdrInitSize:], 0xffffffff)
			return b
		}()), "init_size"},
		{"bz header end", string(func() []byte { b := makeBzImage(0x20f, 1, make([]byte, 9)); b[hdrJump+1] = 0xff; return b }()), "setup header end"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseKernel([]byte(tc.kernel))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestBuildErrors(t *testing.T) {
	k := testKernel()
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no kernel", Config{MemorySize: 64 << 20, VCPUs: 1}, "no kernel"},
		{"zero vcpus", Config{Kernel: k, MemorySize: 64 << 20}, "vCPUs"},
		{"too many vcpus", Config{Kernel: k, MemorySize: 64 << 20, VCPUs: 255}, "vCPUs"},
		{"tiny memory", Config{Kernel: k, MemorySize: 8 << 20, VCPUs: 1}, "too small"},
		{"kernel above memory", Config{Kernel: k, MemorySize: 16 << 20, VCPUs: 1}, "too small"},
		{"odd memory", Config{Kernel: k, MemorySize: 64<<20 + 4096, VCPUs: 1}, "MiB"},
		{"huge memory", Config{Kernel: k, MemorySize: 2 << 40, VCPUs: 1}, "limit"},
		{"long cmdline", Config{Kernel: k, MemorySize: 64 << 20, VCPUs: 1, Cmdline: strings.Repeat("a", 2048)}, "at most 2047"},
		{"nul in cmdline", Config{Kernel: k, MemorySize: 64 << 20, VCPUs: 1, Cmdline: "a\x00b"}, "NUL"},
		{"initrd too big", Config{Kernel: k, MemorySize: 32 << 20, VCPUs: 1, Initrd: make([]byte, 16<<20)}, "initrd"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
	// The limits themselves are accepted.
	if _, err := Build(Config{Kernel: k, MemorySize: 64 << 20, VCPUs: MaxVCPUs, Cmdline: strings.Repeat("a", 2047)}); err != nil {
		t.Errorf("maximal config: %v", err)
	}
}

func TestBuildDeterministic(t *testing.T) {
	cfg := Config{Kernel: testKernel(), Initrd: []byte("x"), Cmdline: "a", MemorySize: 5 << 30, VCPUs: 4}
	a, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Build(cfg)
	if len(a.Regions) != len(b.Regions) {
		t.Fatal("region count differs")
	}
	for i := range a.Regions {
		if a.Regions[i].GPA != b.Regions[i].GPA || !bytes.Equal(a.Regions[i].Data, b.Regions[i].Data) {
			t.Errorf("region %s differs between builds", a.Regions[i].Name)
		}
	}
	// With more than 3 GiB the initrd stays below the MMIO hole.
	for _, r := range a.Regions {
		if r.End() > MMIOHoleStart {
			t.Errorf("region %s ends at %#x, inside the MMIO hole", r.Name, r.End())
		}
	}
}

// TestRealKernel parses the project's guest kernel when it has been built
// (fw-sev/build-kernel.sh) or named by KRUN_TEE_KERNEL.
func TestRealKernel(t *testing.T) {
	path := os.Getenv("KRUN_TEE_KERNEL")
	if path == "" {
		t.Skip("KRUN_TEE_KERNEL not set (point it at a vmlinux or bzImage to check a real kernel)")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParseKernel(data)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %v at %#x, entry %#x, end %#x", path, k.Format, k.LoadAddr, k.Entry, k.End)
	if _, err := Build(Config{Kernel: data, Cmdline: "console=ttyS0", MemorySize: 512 << 20, VCPUs: 2}); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseKernel(f *testing.F) {
	f.Add(testKernel())
	f.Add(makeBzImage(0x20f, 1, make([]byte, 100)))
	f.Add(makeELF(0x200000, []testSeg{{paddr: 0x200000, data: []byte{1, 2, 3}, memsz: 1 << 20}}))
	f.Add([]byte("\x7fELF"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParseKernel(data)
		if err != nil {
			return
		}
		if k.Entry < k.LoadAddr || k.Entry >= k.End || k.LoadAddr%layout.PageSize != 0 || k.LoadAddr+uint64(len(k.Image)) > k.End || k.End > MMIOHoleStart+MMIOHoleStart {
			t.Fatalf("inconsistent kernel: load %#x image %d end %#x entry %#x", k.LoadAddr, len(k.Image), k.End, k.Entry)
		}
		// Whatever parses must also build or fail cleanly.
		_, _ = Build(Config{Kernel: data, Initrd: []byte{1}, MemorySize: 64 << 20, VCPUs: 1})
	})
}

func BenchmarkBuild(b *testing.B) {
	kernel := makeELF(0x1000000, []testSeg{{paddr: 0x1000000, data: bytes.Repeat([]byte{1}, 16<<20), memsz: 20 << 20}})
	initrd := bytes.Repeat([]byte{2}, 8<<20)
	cfg := Config{Kernel: kernel, Initrd: initrd, Cmdline: "console=ttyS0", MemorySize: 512 << 20, VCPUs: 2}
	// Reference: copying the kernel and initrd bytes once, the least any loader does.
	var refNs, buildNs float64
	b.Run("reference-copy", func(b *testing.B) {
		b.SetBytes(int64(len(kernel) + len(initrd)))
		dst := make([]byte, len(kernel)+len(initrd))
		for b.Loop() {
			copy(dst, kernel)
			copy(dst[len(kernel):], initrd)
		}
		refNs = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	b.Run("build", func(b *testing.B) {
		b.SetBytes(int64(len(kernel) + len(initrd)))
		for b.Loop() {
			if _, err := Build(cfg); err != nil {
				b.Fatal(err)
			}
		}
		buildNs = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		if refNs > 0 {
			b.ReportMetric(buildNs/refNs, "x-copy")
		}
	})
}

func TestKernelCmdline(t *testing.T) {
	got, err := KernelCmdline(2, "  krun.rootwait=5 ")
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultCmdline + " virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 krun.rootwait=5"
	if got != want {
		t.Errorf("cmdline\n got %q\nwant %q", got, want)
	}
	if _, err := KernelCmdline(MaxVirtioDevices+1, ""); err == nil {
		t.Error("too many devices accepted")
	}
	seen := map[uint32]bool{}
	for i := 0; i < MaxVirtioDevices; i++ {
		base, irq, err := VirtioSlot(i)
		if err != nil || irq == 4 || irq == 8 || irq >= 16 || seen[irq] || base < MMIOHoleStart || base+VirtioMMIOSize > IOAPICAddr {
			t.Errorf("slot %d: base %#x irq %d err %v", i, base, irq, err)
		}
		seen[irq] = true
	}
}
