package boot

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/layout"
	"github.com/krun-tee/krun-tee/tee"
)

// synthShim builds a shim-shaped binary of size bytes: the header with this
// package's addresses and a reset-vector jump to offset 0x40 (the real shim
// is assembled and checked in fw-sev/shim).
func synthShim(size int) []byte {
	le := binary.LittleEndian
	b := bytes.Repeat([]byte{0xf4}, size)
	copy(b, ShimMagic)
	le.PutUint32(b[shimHdrVersion:], ShimVersion)
	le.PutUint32(b[shimHdrLength:], shimHeaderSize)
	le.PutUint32(b[shimHdrParams:], ShimParamsAddr)
	le.PutUint32(b[shimHdrPageTables:], ShimPageTablesAddr)
	le.PutUint32(b[shimHdrScratch:], ShimScratchAddr)
	le.PutUint32(b[shimHdrMaxRanges:], ParamMaxRanges)
	gpa := uint64(FirmwareWindowEnd - size)
	rv := b[size-16:]
	rv[0] = 0xe9
	le.PutUint32(rv[1:], rel32(ResetVector+5, gpa+0x40))
	return b
}

// rel32 is the displacement of a jump ending at from to to.
func rel32(from, to uint64) uint32 { return uint32(int32(int64(to) - int64(from))) }

func TestParseShim(t *testing.T) {
	for _, size := range []int{4096, 8192, ShimMaxSize} {
		info, err := ParseShim(synthShim(size))
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if info.GPA != FirmwareWindowEnd-uint64(size) || info.Entry != info.GPA+0x40 || info.Size != uint64(size) {
			t.Errorf("size %d: %+v", size, info)
		}
	}
	le := binary.LittleEndian
	for _, tc := range []struct {
		name   string
		shim   func() []byte
		reason string
	}{
		{"empty", func() []byte { return nil }, "empty"},
		{"oversized", func() []byte { return synthShim(ShimMaxSize + 4096) }, "firmware window"},
		{"misaligned", func() []byte { b := synthShim(8192); return b[:8192-16] }, "multiple"},
		{"short-misaligned", func() []byte { return []byte("KRUNSHIM") }, "multiple"},
		{"magic", func() []byte { b := synthShim(4096); b[0] = 'k'; return b }, "magic"},
		{"version", func() []byte { b := synthShim(4096); le.PutUint32(b[shimHdrVersion:], 2); return b }, "version"},
		{"header-length", func() []byte { b := synthShim(4096); le.PutUint32(b[shimHdrLength:], 0x40); return b }, "header length"},
		{"params", func() []byte { b := synthShim(4096); le.PutUint32(b[shimHdrParams:], 0x3000); return b }, "parameter block"},
		{"page-tables", func() []byte { b := synthShim(4096); le.PutUint32(b[shimHdrPageTables:], 0xa000); return b }, "page tables"},
		{"scratch", func() []byte { b := synthShim(4096); le.PutUint32(b[shimHdrScratch:], 0x1000); return b }, "scratch"},
		{"ranges", func() []byte { b := synthShim(4096); le.PutUint32(b[shimHdrMaxRanges:], 64); return b }, "range limit"},
		{"no-jump", func() []byte { b := synthShim(4096); b[4096-16] = 0x90; return b }, "near jump"},
		{"jump-into-header", func() []byte {
			b := synthShim(4096)
			le.PutUint32(b[4096-15:], rel32(ResetVector+5, FirmwareWindowEnd-4096))
			return b
		}, "outside"},
		{"jump-past-end", func() []byte { b := synthShim(4096); le.PutUint32(b[4096-15:], 0x100); return b }, "outside"},
		{"jump-below-shim", func() []byte {
			b := synthShim(4096)
			le.PutUint32(b[4096-15:], rel32(ResetVector+5, FirmwareWindowEnd-0x20000))
			return b
		}, "outside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseShim(tc.shim())
			if err == nil || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("got %v, want an error about %q", err, tc.reason)
			}
		})
	}
}

func FuzzParseShim(f *testing.F) {
	f.Add(synthShim(4096))
	f.Add(synthShim(8192))
	f.Add([]byte(ShimMagic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := ParseShim(b)
		if err != nil {
			return
		}
		if info.Size != uint64(len(b)) || info.Size%layout.PageSize != 0 || info.Size > ShimMaxSize ||
			info.Entry < info.GPA || info.Entry >= ResetVector || len(info.ResetVectorCode) != 16 {
			t.Fatalf("accepted an inconsistent shim: %+v", info)
		}
	})
}

func firmwareConfig(t tee.TEE) FirmwareConfig {
	return FirmwareConfig{
		Config: Config{Kernel: testKernel(), Initrd: bytes.Repeat([]byte{0xab}, 10000), Cmdline: "console=ttyS0 quiet", MemorySize: 128 << 20, VCPUs: 2},
		Shim:   synthShim(8192),
		TEE:    t,
	}
}

func regionByName(t *testing.T, l *layout.Layout, name string) layout.Region {
	t.Helper()
	for _, r := range l.Regions {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no region %q", name)
	return layout.Region{}
}

func TestBuildFirmwareRegions(t *testing.T) {
	for _, tc := range []struct {
		tee   tee.TEE
		names []string
	}{
		{tee.None, []string{"shim", "shim-params", "zero-page", "cmdline", "mptable", "kernel", "initrd", "shim-scratch"}},
		{tee.TDX, []string{"shim", "shim-params", "zero-page", "cmdline", "mptable", "kernel", "initrd", "shim-scratch"}},
		{tee.SNP, []string{"shim", "shim-params", "zero-page", "cmdline", "mptable", "kernel", "initrd", "snp-secrets", "snp-cpuid", "shim-scratch"}},
	} {
		t.Run(tc.tee.String(), func(t *testing.T) {
			c := firmwareConfig(tc.tee)
			l, err := BuildFirmware(c)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, r := range l.Regions {
				names = append(names, r.Name)
			}
			if strings.Join(names, ",") != strings.Join(tc.names, ",") {
				t.Fatalf("regions %v, want %v", names, tc.names)
			}
			shim := regionByName(t, l, "shim")
			if shim.GPA != FirmwareWindowEnd-8192 || shim.End() != FirmwareWindowEnd || shim.Type != layout.PageNormal || !bytes.Equal(shim.Data, c.Shim) {
				t.Errorf("shim region %#x+%#x type %v", shim.GPA, shim.Size, shim.Type)
			}
			// The reset vector is the shim's last 16 bytes.
			if rv := shim.Page(shim.Pages() - 1)[layout.PageSize-16:]; !bytes.Equal(rv, c.Shim[len(c.Shim)-16:]) || rv[0] != 0xe9 {
				t.Errorf("reset vector bytes %x", rv)
			}
			if r := regionByName(t, l, "shim-params"); r.GPA != ShimParamsAddr || r.Type != layout.PageNormal || r.Size != layout.PageSize {
				t.Errorf("params region %+v", r)
			}
			if r := regionByName(t, l, "shim-scratch"); r.GPA != ShimScratchAddr || r.Type != layout.PageZero ||
				r.End() != ShimPageTablesAddr+ShimPageTablesPages*layout.PageSize || len(r.Data) != 0 {
				t.Errorf("scratch region %#x+%#x type %v", r.GPA, r.Size, r.Type)
			}
			if tc.tee == tee.SNP {
				s, cp := regionByName(t, l, "snp-secrets"), regionByName(t, l, "snp-cpuid")
				if s.GPA != SNPSecretsAddr || s.Type != layout.PageSecrets || s.Size != layout.PageSize {
					t.Errorf("secrets %+v", s)
				}
				if cp.GPA != SNPCPUIDAddr || cp.Type != layout.PageCPUID || cp.Size != layout.PageSize {
					t.Errorf("cpuid %+v", cp)
				}
			}
			// The command line, zero page, kernel and initrd are what Build
			// would load.
			direct, err := Build(c.Config)
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"cmdline", "mptable", "kernel", "initrd"} {
				a, b := regionByName(t, l, name), regionByName(t, direct, name)
				if a.GPA != b.GPA || a.Size != b.Size || !bytes.Equal(a.Data, b.Data) {
					t.Errorf("%s differs from the direct-boot layout", name)
				}
			}
		})
	}
}

func TestBuildFirmwareStartState(t *testing.T) {
	l, err := BuildFirmware(firmwareConfig(tee.None))
	if err != nil {
		t.Fatal(err)
	}
	if len(l.VCPUs) != 2 {
		t.Fatalf("%d vCPU states", len(l.VCPUs))
	}
	s := l.VCPUs[0]
	if s.RIP != ResetVector || s.CS.Base != 0 || s.CS.Limit != 0xffffffff || s.CS.Attrib != AttribCode32 ||
		s.CS.Attrib&(1<<9) != 0 || s.CS.Attrib&(1<<10) == 0 {
		t.Errorf("BSP CS/RIP: %+v rip %#x, want a 32-bit flat code segment at the reset vector", s.CS, s.RIP)
	}
	for _, seg := range []layout.Segment{s.DS, s.ES, s.SS, s.FS, s.GS} {
		if seg.Base != 0 || seg.Limit != 0xffffffff || seg.Attrib != AttribData {
			t.Errorf("data segment %+v, want flat", seg)
		}
	}
	if s.CR0&CR0PE == 0 || s.CR0&CR0PG != 0 || s.EFER != 0 || s.CR4 != 0 || s.CR3 != 0 {
		t.Errorf("CR0 %#x CR4 %#x EFER %#x CR3 %#x: want protected mode without paging", s.CR0, s.CR4, s.EFER, s.CR3)
	}
	if l.VCPUs[1] != ResetCPUState() {
		t.Errorf("AP state %+v, want the wait-for-SIPI reset state", l.VCPUs[1])
	}
}

func TestShimParamsEncoding(t *testing.T) {
	c := firmwareConfig(tee.SNP)
	l, err := BuildFirmware(c)
	if err != nil {
		t.Fatal(err)
	}
	raw := regionByName(t, l, "shim-params").Data
	le := binary.LittleEndian
	// Byte-level layout: the shim reads these offsets.
	if string(raw[0:8]) != "KRUNPARM" || le.Uint32(raw[8:]) != 1 || le.Uint32(raw[0x0c:]) != 1 || le.Uint32(raw[0x10:]) != 1 {
		t.Fatalf("header bytes %x", raw[:0x18])
	}
	k, err := ParseKernel(c.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	if le.Uint64(raw[0x18:]) != k.Entry || le.Uint64(raw[0x20:]) != ZeroPageAddr || le.Uint64(raw[0x28:]) != ShimPageTablesAddr {
		t.Errorf("entry %#x zero page %#x page tables %#x", le.Uint64(raw[0x18:]), le.Uint64(raw[0x20:]), le.Uint64(raw[0x28:]))
	}
	p, err := DecodeShimParams(raw)
	if err != nil {
		t.Fatal(err)
	}
	if p.TEE != tee.SNP || p.Flags != ParamFlagCCBlob || p.KernelEntry != k.Entry {
		t.Errorf("decoded %+v", p)
	}
	// The ranges are exactly the RAM no region covers.
	covered := func(gpa uint64) bool {
		for _, r := range l.Regions {
			if gpa >= r.GPA && gpa < r.End() {
				return true
			}
		}
		return false
	}
	inRanges := func(gpa uint64) bool {
		for _, r := range p.Ranges {
			if gpa >= r.GPA && gpa < r.End() {
				return true
			}
		}
		return false
	}
	for gpa := uint64(0); gpa < c.MemorySize; gpa += layout.PageSize {
		if covered(gpa) == inRanges(gpa) {
			t.Fatalf("page %#x: covered by a region %v, listed for validation %v", gpa, covered(gpa), inRanges(gpa))
		}
	}
	for i, r := range p.Ranges {
		if r.GPA%layout.PageSize != 0 || r.Size%layout.PageSize != 0 || r.Size == 0 || (i > 0 && r.GPA < p.Ranges[i-1].End()) {
			t.Errorf("range %d %+v not aligned, empty or unsorted", i, r)
		}
	}
	// The CC blob the kernel finds through boot_params.cc_blob_address.
	zp := regionByName(t, l, "zero-page").Data
	if got := le.Uint32(zp[zpCCBlobAddress:]); got != ShimParamsAddr+ParamOffCCBlob {
		t.Fatalf("cc_blob_address %#x", got)
	}
	cc := raw[ParamOffCCBlob:]
	if le.Uint32(cc) != 0x45444d41 || le.Uint64(cc[8:]) != SNPSecretsAddr || le.Uint32(cc[16:]) != 4096 ||
		le.Uint64(cc[24:]) != SNPCPUIDAddr || le.Uint32(cc[32:]) != 4096 {
		t.Errorf("CC blob %x", cc[:40])
	}

	// Without SNP there is no CC blob.
	l, err = BuildFirmware(firmwareConfig(tee.TDX))
	if err != nil {
		t.Fatal(err)
	}
	raw = regionByName(t, l, "shim-params").Data
	zp = regionByName(t, l, "zero-page").Data
	if le.Uint32(zp[zpCCBlobAddress:]) != 0 || le.Uint32(raw[ParamOffCCBlob:]) != 0 || le.Uint32(raw[ParamOffTEE:]) != ParamTEETDX {
		t.Error("TDX layout carries SNP data")
	}
}

func TestDecodeShimParamsRefuses(t *testing.T) {
	l, err := BuildFirmware(firmwareConfig(tee.None))
	if err != nil {
		t.Fatal(err)
	}
	good := regionByName(t, l, "shim-params").Data
	for name, mutate := range map[string]func(b []byte) []byte{
		"short":   func(b []byte) []byte { return b[:100] },
		"magic":   func(b []byte) []byte { b[3] = 0; return b },
		"version": func(b []byte) []byte { b[ParamOffVersion] = 9; return b },
		"ranges":  func(b []byte) []byte { binary.LittleEndian.PutUint32(b[ParamOffRangeCount:], 1000); return b },
	} {
		if _, err := DecodeShimParams(mutate(append([]byte(nil), good...))); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzDecodeShimParams(f *testing.F) {
	l, err := BuildFirmware(firmwareConfig(tee.SNP))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(regionByNameF(l, "shim-params"))
	f.Add(make([]byte, 4096))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodeShimParams(b)
		if err == nil && len(p.Ranges) > ParamMaxRanges {
			t.Fatalf("%d ranges", len(p.Ranges))
		}
	})
}

func regionByNameF(l *layout.Layout, name string) []byte {
	for _, r := range l.Regions {
		if r.Name == name {
			return r.Data
		}
	}
	return nil
}

func TestFirmwareE820(t *testing.T) {
	const mem = 128 << 20
	m := FirmwareE820Map(mem, 4096, tee.SNP)
	want := []E820Entry{
		{0, ShimParamsAddr, E820RAM},
		{ShimParamsAddr, 0x1000, E820Reserved},
		{SNPSecretsAddr, 0x2000, E820Reserved},
		{0x7000, EBDAStart - 0x7000, E820RAM},
		{EBDAStart, HighMemStart - EBDAStart, E820Reserved},
		{HighMemStart, mem - HighMemStart, E820RAM},
		{FirmwareWindowEnd - 4096, 4096, E820Reserved},
	}
	if len(m) != len(want) {
		t.Fatalf("e820 %+v, want %+v", m, want)
	}
	for i := range want {
		if m[i] != want[i] {
			t.Errorf("entry %d: %+v, want %+v", i, m[i], want[i])
		}
	}
	// No SNP pages reserved without SNP; RAM above 4 GiB follows the shim window.
	m = FirmwareE820Map(4<<30, 8192, tee.TDX)
	var sawWindow bool
	for i, e := range m {
		if i > 0 && e.Addr < m[i-1].Addr+m[i-1].Size {
			t.Errorf("entries %d and %d overlap or are unsorted: %+v", i-1, i, m)
		}
		if e.Addr == SNPSecretsAddr && e.Type == E820Reserved {
			t.Error("TDX map reserves the SNP secrets page")
		}
		if e.Addr == FirmwareWindowEnd-8192 && e.Type == E820Reserved {
			sawWindow = true
			if m[i+1].Addr != FirmwareWindowEnd || m[i+1].Type != E820RAM {
				t.Errorf("after the shim window: %+v", m[i+1])
			}
		}
	}
	if !sawWindow {
		t.Errorf("shim window not reserved: %+v", m)
	}
	// The zero page carries the firmware map.
	l, err := BuildFirmware(firmwareConfig(tee.SNP))
	if err != nil {
		t.Fatal(err)
	}
	zp := regionByName(t, l, "zero-page").Data
	fw := FirmwareE820Map(128<<20, 8192, tee.SNP)
	if int(zp[zpE820Entries]) != len(fw) {
		t.Fatalf("zero page has %d e820 entries, want %d", zp[zpE820Entries], len(fw))
	}
	for i, e := range fw {
		off := zpE820Table + i*e820EntrySize
		le := binary.LittleEndian
		if le.Uint64(zp[off:]) != e.Addr || le.Uint64(zp[off+8:]) != e.Size || le.Uint32(zp[off+16:]) != e.Type {
			t.Errorf("zero page e820 entry %d differs from %+v", i, e)
		}
	}
}

func TestBuildFirmwareRefuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(c *FirmwareConfig)
		reason string
	}{
		{"no-shim", func(c *FirmwareConfig) { c.Shim = nil }, "shim"},
		{"bad-shim", func(c *FirmwareConfig) { c.Shim = make([]byte, 4096) }, "magic"},
		{"tee", func(c *FirmwareConfig) { c.TEE = "sgx" }, "TEE"},
		{"cpuid-size", func(c *FirmwareConfig) { c.TEE = tee.SNP; c.CPUIDPage = make([]byte, 4097) }, "CPUID page"},
		{"cpuid-not-snp", func(c *FirmwareConfig) { c.CPUIDPage = make([]byte, 16) }, "only for SEV-SNP"},
		{"snp-high-ram", func(c *FirmwareConfig) { c.TEE = tee.SNP; c.MemorySize = 4 << 30 }, "at most"},
		{"no-kernel", func(c *FirmwareConfig) { c.Kernel = nil }, "kernel"},
		{"vcpus", func(c *FirmwareConfig) { c.VCPUs = 0 }, "vCPUs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := firmwareConfig(tee.None)
			tc.mutate(&c)
			_, err := BuildFirmware(c)
			if err == nil || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("got %v, want an error about %q", err, tc.reason)
			}
		})
	}
	// An SNP CPUID page is carried (the launch measures it as zero).
	c := firmwareConfig(tee.SNP)
	c.CPUIDPage = bytes.Repeat([]byte{1}, 64)
	l, err := BuildFirmware(c)
	if err != nil {
		t.Fatal(err)
	}
	if r := regionByName(t, l, "snp-cpuid"); !bytes.Equal(r.Data, c.CPUIDPage) || r.Type.Measured() {
		t.Errorf("cpuid region %+v", r)
	}
}

func TestUnlaunchedRAM(t *testing.T) {
	regions := []layout.Region{
		{Name: "a", GPA: 0x1000, Size: 0x1000},
		{Name: "b", GPA: 0x3000, Size: 0x2000},
		{Name: "hi", GPA: MMIOHoleEnd, Size: 0x1000},
		{Name: "shim", GPA: FirmwareWindowEnd - 0x1000, Size: 0x1000},
	}
	got := UnlaunchedRAM(MMIOHoleStart+0x10000, regions)
	want := []RAMRange{{0, 0x1000}, {0x2000, 0x1000}, {0x5000, MMIOHoleStart - 0x5000}, {MMIOHoleEnd + 0x1000, 0xf000}}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("range %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

// BenchmarkBuildFirmware builds the firmware-mode layout beside the
// direct-boot layout of the same inputs (the reference, measured in the same
// run); the ratio is what booting through the shim costs the host side.
func BenchmarkBuildFirmware(b *testing.B) {
	c := firmwareConfig(tee.SNP)
	c.Initrd = bytes.Repeat([]byte{0xab}, 4<<20)
	c.MemorySize = 1 << 30
	var ref, fw float64
	b.Run("direct-reference", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := Build(c.Config); err != nil {
				b.Fatal(err)
			}
		}
		ref = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	b.Run("firmware", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := BuildFirmware(c); err != nil {
				b.Fatal(err)
			}
		}
		fw = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		if ref > 0 {
			b.ReportMetric(fw/ref, "x-direct")
		}
	})
}
