package kvm

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unsafe"
)

// uapiValue is one number krun-tee hard-codes, with the C expression that
// computes it from the kernel's UAPI headers.
type uapiValue struct {
	cexpr string
	got   uint64
}

// uapiStruct is a Go mirror of a kernel structure: its size and the offset
// of every named field are compared. cfield overrides the snake_case name
// derived from a Go field name.
type uapiStruct struct {
	cname  string
	value  any
	cfield map[string]string
}

// uapiStructs lists every structure this package passes to the kernel by
// address (TDX structures, Linux 6.16+, are not in the 6.12 headers).
var uapiStructs = []uapiStruct{
	{"kvm_userspace_memory_region", UserspaceMemoryRegion{}, nil},
	{"kvm_userspace_memory_region2", UserspaceMemoryRegion2{}, nil},
	{"kvm_create_guest_memfd", CreateGuestMemfd{}, nil},
	{"kvm_memory_attributes", MemoryAttributes{}, nil},
	{"kvm_regs", Regs{}, nil},
	{"kvm_segment", Segment{}, nil},
	{"kvm_dtable", Dtable{}, nil},
	{"kvm_sregs", Sregs{}, nil},
	{"kvm_fpu", FPU{}, nil},
	{"kvm_lapic_state", LAPICState{}, nil},
	{"kvm_cpuid_entry2", CPUIDEntry{}, nil},
	{"kvm_msr_entry", MSREntry{}, nil},
	{"kvm_pit_config", PITConfig{}, nil},
	{"kvm_irqfd", IRQFD{}, map[string]string{"ResampleFD": "resamplefd"}},
	{"kvm_ioeventfd", IOEventFD{}, map[string]string{"DataMatch": "datamatch"}},
	{"kvm_irq_level", IRQLevel{}, nil},
	{"kvm_xcr", XCR{}, nil},
	{"kvm_xcrs", XCRS{}, nil},
	{"kvm_enable_cap", EnableCap{}, nil},
	{"kvm_device_attr", DeviceAttr{}, nil},
	{"kvm_sev_cmd", SEVCmd{}, map[string]string{"SEVFD": "sev_fd"}},
	{"kvm_sev_init", SEVInit{}, nil},
	{"kvm_sev_snp_launch_start", SNPLaunchStart{}, nil},
	{"kvm_sev_snp_launch_update", SNPLaunchUpdate{}, map[string]string{"UAddr": "uaddr"}},
	{"kvm_sev_snp_launch_finish", SNPLaunchFinish{}, map[string]string{"IDBlockUAddr": "id_block_uaddr", "IDAuthUAddr": "id_auth_uaddr"}},
}

// uapiValues lists ioctl numbers, size constants, kvm_run offsets and
// constants, keyed by a name for the report.
func uapiValues() map[string]uapiValue {
	v := map[string]uapiValue{}
	add := func(name, cexpr string, got uint64) {
		if _, dup := v[name]; dup {
			panic("duplicate UAPI check " + name)
		}
		v[name] = uapiValue{cexpr, got}
	}
	macro := func(name string, got uint64) { add(name, name, got) }

	// ioctl numbers.
	for name, got := range map[string]uintptr{
		"KVM_GET_API_VERSION": ioGetAPIVersion, "KVM_CREATE_VM": ioCreateVM, "KVM_CHECK_EXTENSION": ioCheckExtension,
		"KVM_GET_VCPU_MMAP_SIZE": ioGetVCPUMmapSize, "KVM_GET_SUPPORTED_CPUID": ioGetSupportedCPUID,
		"KVM_SET_USER_MEMORY_REGION": ioSetUserMemoryRegion, "KVM_SET_TSS_ADDR": ioSetTSSAddr,
		"KVM_SET_IDENTITY_MAP_ADDR": ioSetIdentityMapAddr, "KVM_CREATE_IRQCHIP": ioCreateIRQChip,
		"KVM_IRQ_LINE": ioIRQLine, "KVM_IRQFD": ioIRQFD, "KVM_CREATE_PIT2": ioCreatePIT2, "KVM_IOEVENTFD": ioIOEventFD,
		"KVM_CREATE_VCPU": ioCreateVCPU, "KVM_RUN": ioRun, "KVM_GET_REGS": ioGetRegs, "KVM_SET_REGS": ioSetRegs,
		"KVM_GET_SREGS": ioGetSregs, "KVM_SET_SREGS": ioSetSregs, "KVM_SET_MSRS": ioSetMSRs, "KVM_GET_FPU": ioGetFPU,
		"KVM_SET_FPU": ioSetFPU, "KVM_GET_LAPIC": ioGetLAPIC, "KVM_SET_LAPIC": ioSetLAPIC, "KVM_SET_CPUID2": ioSetCPUID2,
		"KVM_SET_XCRS": ioSetXCRS, "KVM_GET_MP_STATE": ioGetMPState, "KVM_GET_STATS_FD": ioGetStatsFD,
		"KVM_MEMORY_ENCRYPT_OP": ioMemoryEncryptOp, "KVM_GET_DEVICE_ATTR": ioGetDeviceAttr,
		"KVM_HAS_DEVICE_ATTR": ioHasDeviceAttr, "KVM_ENABLE_CAP": ioEnableCap,
		"KVM_SET_USER_MEMORY_REGION2": ioSetUserMemoryRegion2, "KVM_SET_MEMORY_ATTRIBUTES": ioSetMemoryAttributes,
		"KVM_CREATE_GUEST_MEMFD": ioCreateGuestMemfd,
	} {
		macro(name, uint64(got))
	}

	// Size constants used in ioctl numbers and buffer layouts.
	for c, got := range map[string]uint64{
		"kvm_userspace_memory_region": sizeofUserspaceMemoryRegion, "kvm_regs": sizeofRegs, "kvm_segment": sizeofSegment,
		"kvm_dtable": sizeofDtable, "kvm_sregs": sizeofSregs, "kvm_fpu": sizeofFPU, "kvm_lapic_state": sizeofLAPICState,
		"kvm_cpuid2": sizeofCPUID2, "kvm_cpuid_entry2": sizeofCPUIDEntry2, "kvm_msrs": sizeofMSRsHeader,
		"kvm_msr_entry": sizeofMSREntry, "kvm_pit_config": sizeofPITConfig, "kvm_irqfd": sizeofIRQFD,
		"kvm_ioeventfd": sizeofIOEventFD, "kvm_irq_level": sizeofIRQLevel, "kvm_xcrs": sizeofXCRS,
		"kvm_sev_cmd": sizeofSEVCmd, "kvm_sev_init": sizeofSEVInit, "kvm_sev_snp_launch_start": sizeofSNPStart,
		"kvm_sev_snp_launch_update": sizeofSNPUpdate, "kvm_sev_snp_launch_finish": sizeofSNPFinish,
		"kvm_device_attr": sizeofDeviceAttr, "kvm_enable_cap": sizeofEnableCap,
		"kvm_userspace_memory_region2": sizeofMemRegion2, "kvm_create_guest_memfd": sizeofGuestMemfd,
		"kvm_memory_attributes": sizeofMemoryAttrs, "kvm_stats_header": statsHeaderSize, "kvm_stats_desc": statsDescSize,
		"kvm_mp_state": 4,
	} {
		add("sizeof constant "+c, "sizeof(struct "+c+")", got)
	}

	// kvm_run offsets.
	for field, got := range map[string]uint64{
		"immediate_exit": runImmediateExit, "exit_reason": runExitReason, "hw": runUnion,
		"io.direction": runIODirection, "io.size": runIOSize, "io.port": runIOPort, "io.count": runIOCount,
		"io.data_offset": runIODataOffset, "mmio.phys_addr": runMMIOPhysAddr, "mmio.data": runMMIOData,
		"mmio.len": runMMIOLen, "mmio.is_write": runMMIOIsWrite,
		"fail_entry.hardware_entry_failure_reason": runFailEntryReason, "fail_entry.cpu": runFailEntryCPU,
		"internal.suberror": runInternalSuberror, "internal.ndata": runInternalNData, "internal.data": runInternalData,
		"system_event.type": runSystemEventType, "hypercall.nr": runHypercallNr, "hypercall.args": runHypercallArgs,
		"hypercall.ret": runHypercallRet, "hypercall.flags": runHypercallFlags,
		"memory_fault.flags": runMemFaultFlags, "memory_fault.gpa": runMemFaultGPA, "memory_fault.size": runMemFaultSize,
	} {
		add("kvm_run."+field, "offsetof(struct kvm_run, "+field+")", got)
	}
	add("kvm_run.hypercall.args[] size", "sizeof(((struct kvm_run *)0)->hypercall.args)", 6*8)
	add("kvm_run.internal.data[] size", "sizeof(((struct kvm_run *)0)->internal.data)", 16*8)
	add("kvm_run.mmio.data[] size", "sizeof(((struct kvm_run *)0)->mmio.data)", 8)

	// Constants.
	for name, got := range map[string]uint64{
		"KVM_API_VERSION": APIVersion,
		"KVM_CAP_IRQCHIP": CapIRQChip, "KVM_CAP_USER_MEMORY": CapUserMemory, "KVM_CAP_SET_TSS_ADDR": CapSetTSSAddr,
		"KVM_CAP_IRQFD": CapIRQFD, "KVM_CAP_PIT2": CapPIT2, "KVM_CAP_IOEVENTFD": CapIOEventFD, "KVM_CAP_XCRS": CapXCRS,
		"KVM_CAP_TSC_DEADLINE_TIMER": CapTSCDeadlineTimer, "KVM_CAP_IMMEDIATE_EXIT": CapImmediateExit,
		"KVM_CAP_BINARY_STATS_FD": CapBinaryStatsFD, "KVM_CAP_VM_TYPES": CapVMTypes,
		"KVM_CAP_USER_MEMORY2": CapUserMemory2, "KVM_CAP_MEMORY_FAULT_INFO": CapMemoryFaultInfo,
		"KVM_CAP_MEMORY_ATTRIBUTES": CapMemoryAttributes, "KVM_CAP_GUEST_MEMFD": CapGuestMemfd,
		"KVM_CAP_EXIT_HYPERCALL": CapExitHypercall,
		"KVM_EXIT_UNKNOWN":       ExitUnknown, "KVM_EXIT_EXCEPTION": ExitException, "KVM_EXIT_IO": ExitIO,
		"KVM_EXIT_HYPERCALL": ExitHypercall, "KVM_EXIT_DEBUG": ExitDebug, "KVM_EXIT_HLT": ExitHLT,
		"KVM_EXIT_MMIO": ExitMMIO, "KVM_EXIT_IRQ_WINDOW_OPEN": ExitIRQWindowOpen, "KVM_EXIT_SHUTDOWN": ExitShutdown,
		"KVM_EXIT_FAIL_ENTRY": ExitFailEntry, "KVM_EXIT_INTR": ExitIntr, "KVM_EXIT_NMI": ExitNMI,
		"KVM_EXIT_INTERNAL_ERROR": ExitInternalError, "KVM_EXIT_SYSTEM_EVENT": ExitSystemEvent,
		"KVM_EXIT_MEMORY_FAULT": ExitMemoryFault, "KVM_MEMORY_EXIT_FLAG_PRIVATE": MemoryExitFlagPrivate,
		"KVM_EXIT_IO_IN": IOIn, "KVM_EXIT_IO_OUT": IOOut,
		"KVM_SYSTEM_EVENT_SHUTDOWN": SystemEventShutdown, "KVM_SYSTEM_EVENT_RESET": SystemEventReset,
		"KVM_SYSTEM_EVENT_CRASH":       SystemEventCrash,
		"KVM_INTERNAL_ERROR_EMULATION": InternalErrorEmulation, "KVM_INTERNAL_ERROR_SIMUL_EX": InternalErrorSimulEx,
		"KVM_INTERNAL_ERROR_DELIVERY_EV":            InternalErrorDeliveryEv,
		"KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON": InternalErrorUnexpectedExit,
		"KVM_PIT_SPEAKER_DUMMY":                     PITSpeakerDummy, "KVM_IOEVENTFD_FLAG_DATAMATCH": IOEventFDDataMatch,
		"KVM_IOEVENTFD_FLAG_PIO": IOEventFDPIO, "KVM_IOEVENTFD_FLAG_DEASSIGN": IOEventFDDeassign,
		"KVM_IRQFD_FLAG_DEASSIGN": IRQFDDeassign, "KVM_CPUID_FLAG_SIGNIFCANT_INDEX": CPUIDFlagSignificantIndex,
		"KVM_MP_STATE_RUNNABLE": MPStateRunnable, "KVM_MP_STATE_UNINITIALIZED": MPStateUninitialized,
		"KVM_MP_STATE_INIT_RECEIVED": MPStateInitReceived, "KVM_MP_STATE_HALTED": MPStateHalted,
		"KVM_MP_STATE_SIPI_RECEIVED": MPStateSIPIReceived,
		"KVM_STATS_TYPE_MASK":        statsTypeMask, "KVM_STATS_TYPE_CUMULATIVE": statsTypeCumul,
		"KVM_STATS_TYPE_INSTANT": statsTypeInst, "KVM_STATS_TYPE_PEAK": statsTypePeak,
		"KVM_X86_DEFAULT_VM": VMTypeDefault, "KVM_X86_SW_PROTECTED_VM": VMTypeSWProtected,
		"KVM_X86_SEV_VM": VMTypeSEV, "KVM_X86_SEV_ES_VM": VMTypeSEVES, "KVM_X86_SNP_VM": VMTypeSNP,
		"KVM_MEM_GUEST_MEMFD": MemGuestMemfd, "KVM_MEMORY_ATTRIBUTE_PRIVATE": MemoryAttributePrivate,
		"KVM_SEV_INIT2": SEVCmdInit2, "KVM_SEV_SNP_LAUNCH_START": SEVCmdSNPLaunchStart,
		"KVM_SEV_SNP_LAUNCH_UPDATE": SEVCmdSNPLaunchUpdate, "KVM_SEV_SNP_LAUNCH_FINISH": SEVCmdSNPLaunchFinish,
		"KVM_SEV_SNP_PAGE_TYPE_NORMAL": SNPPageNormal, "KVM_SEV_SNP_PAGE_TYPE_ZERO": SNPPageZero,
		"KVM_SEV_SNP_PAGE_TYPE_UNMEASURED": SNPPageUnmeasured, "KVM_SEV_SNP_PAGE_TYPE_SECRETS": SNPPageSecrets,
		"KVM_SEV_SNP_PAGE_TYPE_CPUID": SNPPageCPUID, "KVM_SEV_SNP_ID_BLOCK_SIZE": SNPIDBlockSize,
		"KVM_SEV_SNP_ID_AUTH_SIZE": SNPIDAuthSize, "KVM_SEV_SNP_FINISH_DATA_SIZE": SNPHostDataSize,
		"KVM_X86_GRP_SEV": DevAttrGroupSEV, "KVM_X86_SEV_VMSA_FEATURES": DevAttrSEVVMSAFeatures,
		"KVM_HC_MAP_GPA_RANGE": HypercallMapGPARange, "KVM_MAP_GPA_RANGE_PAGE_SZ_4K": MapGPARangePageSz4K,
		"KVM_MAP_GPA_RANGE_PAGE_SZ_2M": MapGPARangePageSz2M, "KVM_MAP_GPA_RANGE_PAGE_SZ_1G": MapGPARangePageSz1G,
		"KVM_MAP_GPA_RANGE_ENCRYPTED": MapGPARangeEncrypted, "KVM_MAP_GPA_RANGE_DECRYPTED": MapGPARangeDecrypted,
		"KVM_EXIT_HYPERCALL_LONG_MODE": HypercallFlagLongMode,
	} {
		macro(name, got)
	}
	// /dev/sev: SEV_ISSUE_CMD and the packed SNP status it returns.
	macro("SEV_ISSUE_CMD", uint64(ioSEVIssueCmd))
	macro("SNP_PLATFORM_STATUS", sevCmdSNPPlatformStatus)
	for cexpr, got := range map[string]uint64{
		"sizeof(struct sev_issue_cmd)":                                    sizeofSEVIssueCmd,
		"offsetof(struct sev_issue_cmd, data)":                            sevIssueOffData,
		"offsetof(struct sev_issue_cmd, error)":                           sevIssueOffError,
		"sizeof(struct sev_user_data_snp_status)":                         sizeofSNPStatus,
		"offsetof(struct sev_user_data_snp_status, api_major)":            snpStatusOffAPIMajor,
		"offsetof(struct sev_user_data_snp_status, api_minor)":            snpStatusOffAPIMinor,
		"offsetof(struct sev_user_data_snp_status, state)":                snpStatusOffState,
		"offsetof(struct sev_user_data_snp_status, build_id)":             snpStatusOffBuildID,
		"offsetof(struct sev_user_data_snp_status, guest_count)":          snpStatusOffGuests,
		"offsetof(struct sev_user_data_snp_status, current_tcb_version)":  snpStatusOffCurTCB,
		"offsetof(struct sev_user_data_snp_status, reported_tcb_version)": snpStatusOffReportTCB,
	} {
		add(cexpr, cexpr, got)
	}
	add("SEV_RET_NO_FW_CALL", "(__u32)SEV_RET_NO_FW_CALL", FWNoFirmwareCall)
	for _, s := range fwStatuses {
		macro("SEV_RET_"+s.name, uint64(s.code))
	}
	for name, code := range map[string]uint64{"FWSuccess": FWSuccess, "FWInvalidParam": FWInvalidParam,
		"FWPolicyFailure": FWPolicyFailure, "FWInvalidPageState": FWInvalidPageState} {
		add(name, "SEV_RET_"+FWStatusName(uint32(code)), code)
	}

	// Structures: size and every named field's offset.
	for _, s := range uapiStructs {
		t := reflect.TypeOf(s.value)
		add("sizeof(struct "+s.cname+")", "sizeof(struct "+s.cname+")", uint64(t.Size()))
		for i := range t.NumField() {
			f := t.Field(i)
			if f.Name == "_" {
				continue
			}
			cf, ok := s.cfield[f.Name]
			if !ok {
				cf = snakeCase(f.Name)
			}
			add(s.cname+"."+cf, "offsetof(struct "+s.cname+", "+cf+")", uint64(f.Offset))
			add(s.cname+"."+cf+" size", "sizeof(((struct "+s.cname+" *)0)->"+cf+")", uint64(f.Type.Size()))
		}
	}
	return v
}

// snakeCase turns a Go field name into the kernel's: GuestPhysAddr ->
// guest_phys_addr, APICBase -> apic_base, CR0 -> cr0, NrXCRS -> nr_xcrs.
func snakeCase(s string) string {
	r := []rune(s)
	var b strings.Builder
	for i, c := range r {
		if i > 0 && unicode.IsUpper(c) {
			prevLower := unicode.IsLower(r[i-1]) || unicode.IsDigit(r[i-1])
			nextLower := i+1 < len(r) && unicode.IsLower(r[i+1])
			if prevLower || (unicode.IsUpper(r[i-1]) && nextLower) {
				b.WriteByte('_')
			}
		}
		b.WriteRune(unicode.ToLower(c))
	}
	return b.String()
}

func TestSnakeCase(t *testing.T) {
	for in, want := range map[string]string{"GuestPhysAddr": "guest_phys_addr", "APICBase": "apic_base", "CR0": "cr0",
		"NrXCRS": "nr_xcrs", "GFNStart": "gfn_start", "VMSAFeatures": "vmsa_features", "R15": "r15", "SEVFD": "sevfd",
		"HostData": "host_data", "VCEKDisabled": "vcek_disabled"} {
		if got := snakeCase(in); got != want {
			t.Errorf("snakeCase(%q) = %q, want %q", in, got, want)
		}
	}
}

// kernelSource finds an unpacked 6.12 kernel tree with its UAPI headers:
// $KRUN_TEE_KERNEL_SRC, else the kernel build's cache (the src directory
// beside the vmlinux fw-sev/build-kernel.sh --print-path names), else the
// two UAPI directories extracted from the linux-source tarball. It returns
// the tree and, when there is none, why.
func kernelSource(t *testing.T) (string, string) {
	const uapi = "include/uapi/linux/kvm.h"
	if d := os.Getenv("KRUN_TEE_KERNEL_SRC"); d != "" {
		if _, err := os.Stat(filepath.Join(d, uapi)); err != nil {
			return "", fmt.Sprintf("KRUN_TEE_KERNEL_SRC=%s has no %s", d, uapi)
		}
		return d, ""
	}
	var reasons []string
	script, _ := filepath.Abs("../../fw-sev/build-kernel.sh")
	out, err := exec.Command(script, "--print-path").Output()
	if err == nil {
		d := filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "src")
		if _, err := os.Stat(filepath.Join(d, uapi)); err == nil {
			return d, ""
		}
		reasons = append(reasons, "the kernel build's cache has no "+filepath.Join(d, uapi))
	} else {
		reasons = append(reasons, fmt.Sprintf("%s --print-path: %v (kernel not built)", script, err))
	}
	tarball := os.Getenv("KRUN_TEE_KERNEL_TARBALL")
	if tarball == "" {
		tarball = "/usr/src/linux-source-6.12.tar.xz"
	}
	if _, err := os.Stat(tarball); err != nil {
		return "", strings.Join(append(reasons, fmt.Sprintf("no tarball %s (apt-get install linux-source-6.12)", tarball)), "; ")
	}
	if _, err := exec.LookPath("tar"); err != nil {
		return "", strings.Join(append(reasons, "tar not found to unpack "+tarball), "; ")
	}
	dir := t.TempDir()
	cmd := exec.Command("tar", "-xJf", tarball, "-C", dir, "--strip-components=1", "--wildcards",
		"*/include/uapi/*") // include/uapi and every arch/*/include/uapi
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("unpacking the UAPI headers of %s: %v\n%s", tarball, err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, uapi)); err != nil {
		t.Fatalf("%s has no %s", tarball, uapi)
	}
	return dir, ""
}

// TestUAPIAgainstKernelHeaders compiles a C program against the 6.12 UAPI
// headers that prints every ioctl number, constant, structure size and field
// offset this package hard-codes, and compares them with the Go values.
func TestUAPIAgainstKernelHeaders(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not found in PATH: cannot compile against the kernel's UAPI headers")
	}
	src, why := kernelSource(t)
	if src == "" {
		t.Skip("no unpacked 6.12 kernel source: " + why)
	}
	if b, err := os.ReadFile(filepath.Join(src, "Makefile")); err == nil && !bytes.Contains(b, []byte("PATCHLEVEL = 12")) {
		t.Logf("warning: %s is not a 6.12 tree", src)
	}

	// headers_install rewrites the UAPI headers before installing them: it
	// drops the compiler.h includes and the __user/__force/__iomem
	// annotations and spells __packed out, and asm/types.h and asm/ioctl.h
	// are generated asm-generic wrappers on x86. The shim directory, searched
	// after the kernel's, supplies exactly those.
	dir := t.TempDir()
	shim := map[string]string{
		"linux/compiler.h":       "#define __user\n#define __force\n#define __iomem\n#define __packed __attribute__((packed))\n",
		"linux/compiler_types.h": "",
		"asm/types.h":            "#include <asm-generic/types.h>\n",
		"asm/ioctl.h":            "#include <asm-generic/ioctl.h>\n",
	}
	for name, text := range shim {
		p := filepath.Join(dir, "shim", name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	values := uapiValues()
	var c strings.Builder
	c.WriteString("#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\n#include <linux/kvm_para.h>\n#include <linux/psp-sev.h>\n")
	c.WriteString("int main(void) {\n")
	for name, v := range values {
		fmt.Fprintf(&c, "\tprintf(\"%%s\\t%%llu\\n\", %q, (unsigned long long)(%s));\n", name, v.cexpr)
	}
	c.WriteString("\treturn 0;\n}\n")
	cfile := filepath.Join(dir, "uapi.c")
	if err := os.WriteFile(cfile, []byte(c.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "uapi")
	cmd := exec.Command(gcc, "-H", "-Wall", "-Werror", "-D__EXPORTED_HEADERS__",
		"-I", filepath.Join(src, "include/uapi"), "-I", filepath.Join(src, "arch/x86/include/uapi"),
		"-I", filepath.Join(dir, "shim"), "-o", bin, cfile)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("compiling against %s: %v\n%s", src, err, stderr.String())
	}
	// -H lists every header used: the kernel's own must come from src, not
	// from the host's linux-libc-dev.
	for _, line := range strings.Split(stderr.String(), "\n") {
		path := strings.TrimSpace(strings.TrimLeft(line, "."))
		if !strings.HasPrefix(line, ".") || strings.HasPrefix(path, src) || strings.HasPrefix(path, dir) {
			continue
		}
		for _, kdir := range []string{"/linux/", "/asm/", "/asm-generic/"} {
			if strings.Contains(path, kdir) {
				t.Errorf("kernel header %s came from outside %s", path, src)
			}
		}
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatalf("running the UAPI probe: %v", err)
	}
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		name, num, ok := strings.Cut(sc.Text(), "\t")
		want, perr := strconv.ParseUint(num, 10, 64)
		v, known := values[name]
		if !ok || perr != nil || !known {
			t.Fatalf("unexpected probe line %q", sc.Text())
		}
		seen[name] = true
		if v.got != want {
			t.Errorf("%s: Go has %d (%#x), the kernel headers %d (%#x)", name, v.got, v.got, want, want)
		}
	}
	if len(seen) != len(values) {
		t.Fatalf("probe printed %d of %d values", len(seen), len(values))
	}
	t.Logf("%d values checked against %s", len(values), src)
}

// The SNP structures' sizes also hold without the kernel source.
func TestSEVStructSizes(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"kvm_sev_cmd", unsafe.Sizeof(SEVCmd{}), sizeofSEVCmd},
		{"kvm_sev_init", unsafe.Sizeof(SEVInit{}), sizeofSEVInit},
		{"kvm_sev_snp_launch_start", unsafe.Sizeof(SNPLaunchStart{}), sizeofSNPStart},
		{"kvm_sev_snp_launch_update", unsafe.Sizeof(SNPLaunchUpdate{}), sizeofSNPUpdate},
		{"kvm_sev_snp_launch_finish", unsafe.Sizeof(SNPLaunchFinish{}), sizeofSNPFinish},
		{"kvm_device_attr", unsafe.Sizeof(DeviceAttr{}), sizeofDeviceAttr},
		{"kvm_enable_cap", unsafe.Sizeof(EnableCap{}), sizeofEnableCap},
		{"kvm_userspace_memory_region2", unsafe.Sizeof(UserspaceMemoryRegion2{}), sizeofMemRegion2},
		{"kvm_create_guest_memfd", unsafe.Sizeof(CreateGuestMemfd{}), sizeofGuestMemfd},
		{"kvm_memory_attributes", unsafe.Sizeof(MemoryAttributes{}), sizeofMemoryAttrs},
		{"kvm_sev_snp_launch_finish.host_data", unsafe.Offsetof(SNPLaunchFinish{}.HostData), 19},
		{"kvm_sev_snp_launch_finish.flags", unsafe.Offsetof(SNPLaunchFinish{}.Flags), 54},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

func TestSEVErrorFormat(t *testing.T) {
	e := &SEVError{Step: "KVM_SEV_SNP_LAUNCH_UPDATE gfn 0x10", Errno: 5, FWStatus: FWInvalidParam}
	msg := e.Error()
	for _, want := range []string{"KVM_SEV_SNP_LAUNCH_UPDATE gfn 0x10", "input/output error", "0x16", "INVALID_PARAM", "CPUID"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q lacks %q", msg, want)
		}
	}
	if !errors.Is(e, e.Errno) {
		t.Error("SEVError does not unwrap to its errno")
	}
	if s := FWStatusString(0x99); !strings.Contains(s, "0x99") || !strings.Contains(s, "unknown") {
		t.Errorf("unknown code formats as %q", s)
	}
	if s := FWStatusString(FWNoFirmwareCall); !strings.Contains(s, "NO_FW_CALL") {
		t.Errorf("-1 formats as %q", s)
	}
	prev := int64(-1)
	for _, s := range fwStatuses {
		if int64(s.code) <= prev || s.name == "" || s.meaning == "" {
			t.Errorf("status table out of order or incomplete at %#x", s.code)
		}
		prev = int64(s.code)
	}
}
