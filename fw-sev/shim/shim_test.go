package shim

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/layout"
	"github.com/krun-tee/krun-tee/tee"
	"github.com/krun-tee/krun-tee/vmm"
	"github.com/krun-tee/krun-tee/vmm/boot"
	"github.com/krun-tee/krun-tee/vmm/kvm"
)

func needBinutils(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"as", "ld"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s (binutils) not installed: %v", tool, err)
		}
	}
}

var (
	shimOnce sync.Once
	shimBin  []byte
	shimErr  error
)

// builtShim assembles the shim once per test binary.
func builtShim(t *testing.T) []byte {
	t.Helper()
	needBinutils(t)
	shimOnce.Do(func() {
		dir, err := SourceDir()
		if err != nil {
			shimErr = err
			return
		}
		shimBin, shimErr = Assemble(dir)
	})
	if shimErr != nil {
		t.Fatal(shimErr)
	}
	return shimBin
}

// assembleELF links shim.asm (or another source) as an ELF, for symbols.
func assembleELF(t *testing.T, src, script string, extra ...string) (*elf.File, string) {
	t.Helper()
	needBinutils(t)
	tmp := t.TempDir()
	obj, out := filepath.Join(tmp, "x.o"), filepath.Join(tmp, "x.elf")
	run := func(argv ...string) {
		cmd := exec.Command(argv[0], argv[1:]...)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", argv, err, b)
		}
	}
	run("as", "--64", "-o", obj, src)
	args := []string{"ld", "-o", out}
	if script != "" {
		args = append(args, "-T", script)
	}
	run(append(append(args, extra...), obj)...)
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, out
}

func symbol(t *testing.T, f *elf.File, name string) uint64 {
	t.Helper()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range syms {
		if s.Name == name {
			return s.Value
		}
	}
	t.Fatalf("symbol %s not in the ELF", name)
	return 0
}

// TestShimHeaderMatchesGo: the assembled binary's header carries the
// addresses vmm/boot uses, the reset vector is at 4 GiB - 16 and jumps to
// entry32.
func TestShimHeaderMatchesGo(t *testing.T) {
	bin := builtShim(t)
	info, err := boot.ParseShim(bin)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != uint64(len(bin)) || info.GPA+info.Size != boot.FirmwareWindowEnd {
		t.Errorf("shim at %#x size %#x does not end at 4 GiB", info.GPA, info.Size)
	}
	if info.ParamsGPA != boot.ShimParamsAddr || info.PageTablesGPA != boot.ShimPageTablesAddr ||
		info.ScratchGPA != boot.ShimScratchAddr || info.MaxRanges != boot.ParamMaxRanges {
		t.Errorf("header %+v disagrees with vmm/boot", info)
	}
	dir, _ := SourceDir()
	f, _ := assembleELF(t, filepath.Join(dir, SourceFile), filepath.Join(dir, LinkerFile))
	if got := symbol(t, f, "reset_vector"); got != boot.ResetVector {
		t.Errorf("reset_vector at %#x, want %#x", got, boot.ResetVector)
	}
	if got := symbol(t, f, "entry32"); got != info.Entry {
		t.Errorf("reset vector jumps to %#x, entry32 is at %#x", info.Entry, got)
	}
	if got := symbol(t, f, "shim_start"); got != info.GPA {
		t.Errorf("shim_start at %#x, want %#x", got, info.GPA)
	}
}

// TestShimConstantsMatchGo compares the shim.asm .set constants marked as
// shared with their vmm/boot counterparts.
func TestShimConstantsMatchGo(t *testing.T) {
	dir, err := SourceDir()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(dir, SourceFile))
	if err != nil {
		t.Fatal(err)
	}
	sets := map[string]uint64{}
	re := regexp.MustCompile(`^\s*\.set\s+(\w+),\s*(0x[0-9a-fA-F]+|[0-9]+)\s*(#.*)?$`)
	sc := bufio.NewScanner(bytes.NewReader(src))
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			v, err := strconv.ParseUint(m[2], 0, 64)
			if err != nil {
				t.Fatal(err)
			}
			sets[m[1]] = v
		}
	}
	magic := []byte(boot.ParamMagic)
	want := map[string]uint64{
		"SHIM_VERSION": boot.ShimVersion, "PARAMS": boot.ShimParamsAddr, "SCRATCH": boot.ShimScratchAddr,
		"STACK_TOP": boot.ShimStackTop, "PT_BASE": boot.ShimPageTablesAddr, "MAX_RANGES": boot.ParamMaxRanges,
		"P_MAGIC_LO": uint64(binary.LittleEndian.Uint32(magic)), "P_MAGIC_HI": uint64(binary.LittleEndian.Uint32(magic[4:])),
		"P_VERSION_VAL": boot.ParamVersion, "P_MAGIC": boot.ParamOffMagic, "P_VERSION": boot.ParamOffVersion,
		"P_TEE": boot.ParamOffTEE, "P_FLAGS": boot.ParamOffFlags, "P_COUNT": boot.ParamOffRangeCount,
		"P_ENTRY": boot.ParamOffKernelEntry, "P_ZEROPAGE": boot.ParamOffZeroPage, "P_PAGETABLES": boot.ParamOffPageTables,
		"P_RANGES": boot.ParamOffRanges, "P_RANGE_SIZE": boot.ParamRangeSize,
		"TEE_NONE": boot.ParamTEENone, "TEE_SNP": boot.ParamTEESNP, "TEE_TDX": boot.ParamTEETDX,
		"SEL_CODE32": boot.SelectorCode32, "SEL_CODE64": boot.SelectorCode, "SEL_DATA": boot.SelectorData,
		"SHIM_SIZE": uint64(len(builtShim(t))), "ZP_CC_BLOB": 0x13c,
	}
	for name, w := range want {
		got, ok := sets[name]
		if !ok {
			t.Errorf("shim.asm has no .set %s", name)
			continue
		}
		if got != w {
			t.Errorf("shim.asm %s = %#x, vmm/boot has %#x", name, got, w)
		}
	}
	// The exit codes are distinct and documented.
	readme, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]string{}
	for name, v := range sets {
		if !strings.HasPrefix(name, "EXIT_") || name == "EXIT_PORT" {
			continue
		}
		if other, dup := seen[v]; dup {
			t.Errorf("exit codes %s and %s are both %#x", name, other, v)
		}
		seen[v] = name
		if v < 0xe0 || v > 0xef {
			t.Errorf("%s = %#x outside 0xE0..0xEF", name, v)
		}
		if !bytes.Contains(readme, []byte("0x"+strings.ToUpper(strconv.FormatUint(v, 16)))) {
			t.Errorf("README.md does not document %s (0x%X)", name, v)
		}
	}
	if len(seen) < 10 {
		t.Errorf("found %d exit codes, want 10", len(seen))
	}
}

// fakeKernel assembles a tiny 64-bit "kernel" at 2 MiB as an ELF executable.
func fakeKernel(t *testing.T, body string) []byte {
	t.Helper()
	needBinutils(t)
	tmp := t.TempDir()
	src := filepath.Join(tmp, "k.asm")
	text := "\t.intel_syntax noprefix\n\t.section .note.GNU-stack,\"\",@progbits\n\t.text\n\t.code64\n\t.globl _start\n_start:\n" + body + "\n"
	if err := os.WriteFile(src, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	_, path := assembleELF(t, src, "", "-N", "-Ttext=0x200000", "-e", "_start", "--build-id=none", "-z", "noexecstack")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// probeKernel checks the Linux 64-bit boot protocol state the shim hands
// over and reports RSI >> 8 (0x70 for the zero page at 0x7000) on the exit
// port, or the number of the first failed check.
const probeKernel = `
	mov eax, cs
	cmp eax, 0x10
	jne f1
	mov eax, ds
	cmp eax, 0x18
	jne f2
	mov eax, ss
	cmp eax, 0x18
	jne f2
	cmp rsi, 0x7000
	jne f3
	cmp word ptr [rsi + 0x1fe], 0xaa55      # boot_params.hdr.boot_flag
	jne f4
	cmp dword ptr [rsi + 0x13c], 0          # no CC blob without active SNP
	jne f11
	pushfq
	pop rax
	test eax, 0x200                         # IF clear
	jnz f5
	mov rax, cr0
	bt eax, 31                              # paging on
	jnc f6
	mov ecx, 0xc0000080
	rdmsr
	bt eax, 10                              # EFER.LMA
	jnc f7
	mov rax, cr3
	cmp rax, 0x9000
	jne f8
	mov rax, qword ptr [0x9000]             # PML4[0] -> PDPT, present+writable
	and eax, ~0x60                          # the CPU may set accessed/dirty
	cmp rax, 0xa003
	jne f9
	mov rax, 0x3000000                      # identity map: write and read back at 48 MiB
	mov qword ptr [rax], 0x5a5a
	cmp qword ptr [rax], 0x5a5a
	jne f10
	mov rax, 0x100000000                    # 64-bit operand size
	shr rax, 32
	cmp eax, 1
	jne f10
	mov rax, rsi
	shr rax, 8
	out 0xf4, al
	jmp .
f1:	mov al, 1
	jmp fail
f2:	mov al, 2
	jmp fail
f3:	mov al, 3
	jmp fail
f4:	mov al, 4
	jmp fail
f5:	mov al, 5
	jmp fail
f6:	mov al, 6
	jmp fail
f7:	mov al, 7
	jmp fail
f8:	mov al, 8
	jmp fail
f9:	mov al, 9
	jmp fail
f10:	mov al, 10
	jmp fail
f11:	mov al, 11
fail:	out 0xf4, al
	jmp .
`

func needKVM(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(kvm.DevicePath, os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no usable %s: %v", kvm.DevicePath, err)
	}
	f.Close()
}

func firmwareLayout(t *testing.T, kernel []byte, kind tee.TEE, vcpus int) *layout.Layout {
	t.Helper()
	l, err := boot.BuildFirmware(boot.FirmwareConfig{
		Config: boot.Config{Kernel: kernel, Initrd: bytes.Repeat([]byte("initrd"), 1000), Cmdline: "console=ttyS0", MemorySize: 64 << 20, VCPUs: vcpus},
		Shim:   builtShim(t),
		TEE:    kind,
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func runLayout(t *testing.T, l *layout.Layout) vmm.Exit {
	t.Helper()
	needKVM(t)
	m, err := vmm.New(vmm.Config{Layout: l, AllowSoftwareKVM: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	exit, err := m.Run(ctx)
	if err != nil {
		t.Fatalf("Run: %v (exit %v)", err, exit)
	}
	return exit
}

// TestShimBootsFakeKernel runs the real shim on this host's KVM: reset
// vector in 32-bit mode, GDT, page tables, long mode, parameter block,
// jump with RSI = zero page. The emulated TEE layouts run too: on plain
// hardware the shim detects no TEE and skips validation.
func TestShimBootsFakeKernel(t *testing.T) {
	k := fakeKernel(t, probeKernel)
	for _, tc := range []struct {
		name  string
		tee   tee.TEE
		vcpus int
	}{
		{"none", tee.None, 1},
		{"none-2vcpus", tee.None, 2},
		{"snp-layout", tee.SNP, 1},
		{"tdx-layout", tee.TDX, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exit := runLayout(t, firmwareLayout(t, k, tc.tee, tc.vcpus))
			if exit.Kind != vmm.ExitWorkload || exit.Status != 0x70 {
				t.Fatalf("exit %v (kind %d status %#x), want status 0x70 from the fake kernel", exit, exit.Kind, exit.Status)
			}
		})
	}
}

// TestShimFailureCodes corrupts the parameter block and expects the shim's
// documented exit codes on the exit port.
func TestShimFailureCodes(t *testing.T) {
	k := fakeKernel(t, "\tmov al, 0x42\n\tout 0xf4, al\n\tjmp .")
	le := binary.LittleEndian
	for _, tc := range []struct {
		name   string
		mutate func(p []byte)
		want   uint8
		kernel []byte
	}{
		{"intact", func(p []byte) {}, 0x42, nil},
		{"magic", func(p []byte) { p[boot.ParamOffMagic] ^= 1 }, 0xe0, nil},
		{"magic-high", func(p []byte) { p[boot.ParamOffMagic+7] ^= 1 }, 0xe0, nil},
		{"version", func(p []byte) { le.PutUint32(p[boot.ParamOffVersion:], 2) }, 0xe1, nil},
		{"range-count", func(p []byte) { le.PutUint32(p[boot.ParamOffRangeCount:], boot.ParamMaxRanges+1) }, 0xe2, nil},
		{"page-tables", func(p []byte) { le.PutUint64(p[boot.ParamOffPageTables:], 0xa000) }, 0xe2, nil},
		{"entry-zero", func(p []byte) { le.PutUint64(p[boot.ParamOffKernelEntry:], 0) }, 0xe2, nil},
		{"entry-in-shim", func(p []byte) { le.PutUint64(p[boot.ParamOffKernelEntry:], 0xfffff000) }, 0xe2, nil},
		{"zero-page-high", func(p []byte) { le.PutUint64(p[boot.ParamOffZeroPage:], 1<<40) }, 0xe2, nil},
		{"tee-unknown", func(p []byte) { le.PutUint32(p[boot.ParamOffTEE:], 3) }, 0xe3, nil},
		// A kernel that faults before loading its own IDT lands in the
		// shim's 64-bit IDT.
		{"exception", func(p []byte) {}, 0xe9, fakeKernel(t, "\tud2")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kernel := k
			if tc.kernel != nil {
				kernel = tc.kernel
			}
			l := firmwareLayout(t, kernel, tee.None, 1)
			for i := range l.Regions {
				if l.Regions[i].Name == "shim-params" {
					p := append([]byte(nil), l.Regions[i].Data...)
					tc.mutate(p)
					l.Regions[i].Data = p
				}
			}
			exit := runLayout(t, l)
			if exit.Kind != vmm.ExitWorkload || exit.Status != tc.want {
				t.Fatalf("exit %v (kind %d status %#x), want status %#x", exit, exit.Kind, exit.Status, tc.want)
			}
		})
	}
}

// TestVMMRefusesRegionsOutsideWindow: vmm.New maps only the firmware window
// below 4 GiB besides RAM; a region elsewhere in the MMIO hole is refused.
func TestVMMRefusesRegionsOutsideWindow(t *testing.T) {
	needKVM(t)
	l := firmwareLayout(t, fakeKernel(t, "\tjmp ."), tee.None, 1)
	if err := l.Add(layout.Region{Name: "stray", GPA: boot.FirmwareWindowStart - 0x10000, Type: layout.PageNormal, Data: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	m, err := vmm.New(vmm.Config{Layout: l, AllowSoftwareKVM: true})
	if err == nil {
		m.Close()
		t.Fatal("vmm.New loaded a region outside RAM and the firmware window")
	}
	if !strings.Contains(err.Error(), "stray") || !strings.Contains(err.Error(), "firmware window") {
		t.Fatalf("error %q does not name the region and the window", err)
	}
}

// TestFirmwareWindowLoaded: the shim's bytes are readable at their GPA
// through the VM's memory (the second KVM slot).
func TestFirmwareWindowLoaded(t *testing.T) {
	needKVM(t)
	shim := builtShim(t)
	l := firmwareLayout(t, fakeKernel(t, "\tjmp ."), tee.None, 1)
	m, err := vmm.New(vmm.Config{Layout: l, AllowSoftwareKVM: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got, err := m.Memory().Slice(boot.FirmwareWindowEnd-uint64(len(shim)), uint64(len(shim)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, shim) {
		t.Fatal("firmware window does not hold the shim")
	}
	if _, err := m.Memory().Slice(boot.FirmwareWindowEnd-16, 32); err == nil {
		t.Fatal("Slice crossed 4 GiB out of the firmware window")
	}
}
