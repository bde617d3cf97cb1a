// Package hostcheck says what this host can run: a usable hardware KVM, a
// TSC whose frequency the kernel knows (KVM needs it on every guest entry),
// the KVM private-memory interfaces, SEV-SNP and TDX. Each finding carries
// the fix, so `krun-tee host check` is one table an operator can act on and
// `run` can point to when it refuses.
package hostcheck

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/krun-tee/krun-tee/vmm/kvm"
	"github.com/krun-tee/krun-tee/vmm/snp"
)

// Status is one finding's verdict.
type Status string

// Verdicts.
const (
	OK      Status = "ok"
	Missing Status = "missing" // the capability is absent: what needs it cannot run
	Warn    Status = "warn"    // present, with a caveat
)

// Finding is one row of the report.
type Finding struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Report is the whole check, in table order, with what the host can run.
type Report struct {
	Findings []Finding `json:"findings"`
	// CanRun lists the `run --tee` modes this host supports.
	CanRun []string `json:"can_run"`
}

// Host is what the checks read; Probe fills it from the running system,
// tests from fakes.
type Host struct {
	KernelRelease string
	KVM           func() (*kvm.System, error) // nil error: a usable /dev/kvm
	SoftwareKVM   bool                        // kvm-pvm is loaded
	CPUInfo       []byte                      // /proc/cpuinfo
	KernelLog     []byte                      // dmesg, if readable (may be empty)
	SNP           func(*kvm.System) error     // snp.Probe on this host
	TDXModule     string                      // /sys/module/kvm_intel/parameters/tdx ("" if absent)
	QGSSocket     string                      // the Quote Generation Service socket path
	QGSExists     bool
}

// DefaultQGSSocket is where Intel's Quote Generation Service listens on a TDX
// host (qgsd's default unix socket).
const DefaultQGSSocket = "/var/run/tdx-qgs/qgs.socket"

// Probe reads the running system.
func Probe() Host {
	h := Host{
		KVM:         kvm.Open,
		SNP:         func(sys *kvm.System) error { return snp.Probe(snp.HostOf(sys)) },
		SoftwareKVM: exists("/sys/module/kvm_pvm"),
		QGSSocket:   DefaultQGSSocket,
		QGSExists:   exists(DefaultQGSSocket),
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		h.KernelRelease = unix.ByteSliceToString(u.Release[:])
	}
	h.CPUInfo, _ = os.ReadFile("/proc/cpuinfo")
	if b, err := os.ReadFile("/sys/module/kvm_intel/parameters/tdx"); err == nil {
		h.TDXModule = strings.TrimSpace(string(b))
	}
	h.KernelLog = kernelLog()
	return h
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// kernelLog reads the kernel ring buffer (SYSLOG_ACTION_READ_ALL); it needs
// CAP_SYSLOG where dmesg_restrict is set, and is empty otherwise.
func kernelLog() []byte {
	n, err := unix.Klogctl(unix.SYSLOG_ACTION_SIZE_BUFFER, nil)
	if err != nil || n <= 0 || n > 64<<20 {
		return nil
	}
	buf := make([]byte, n)
	m, err := unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf)
	if err != nil || m < 0 {
		return nil
	}
	return buf[:m]
}

// Check runs every check against h.
func Check(h Host) Report {
	var r Report
	add := func(f Finding) { r.Findings = append(r.Findings, f) }
	add(Finding{Name: "kernel", Status: OK, Detail: "Linux " + orUnknown(h.KernelRelease)})

	sys, kvmErr := h.KVM()
	switch {
	case kvmErr != nil:
		add(Finding{Name: "kvm", Status: Missing, Detail: "/dev/kvm: " + kvmErr.Error(),
			Fix: "enable virtualisation in the firmware, load kvm_amd or kvm_intel, and give this user access to /dev/kvm"})
	case h.SoftwareKVM:
		add(Finding{Name: "kvm", Status: Missing, Detail: "/dev/kvm is kvm-pvm, the software-assisted KVM: it cannot run a Linux guest kernel",
			Fix: "use a host with hardware virtualisation, or the nested harness (tests/e2e/run.sh)"})
	default:
		add(Finding{Name: "kvm", Status: OK, Detail: "/dev/kvm usable"})
	}
	if sys != nil {
		defer sys.Close()
	}
	add(checkTSC(h))
	usable := kvmErr == nil && !h.SoftwareKVM && r.Findings[len(r.Findings)-1].Status != Missing
	if usable {
		r.CanRun = append(r.CanRun, "none", "emulated-snp", "emulated-tdx")
	}
	if sys != nil {
		add(checkPrivateMemory(sys))
		add(checkSNP(h, sys, &r, usable))
		add(checkTDX(h, sys, &r, usable))
	} else {
		add(Finding{Name: "sev-snp", Status: Missing, Detail: "no KVM"})
		add(Finding{Name: "tdx", Status: Missing, Detail: "no KVM"})
	}
	return r
}

// checkTSC: without an invariant TSC (constant_tsc), KVM reads the per-CPU
// TSC frequency on every guest entry and retries the entry for as long as
// it is zero — a guest that never runs. The kernel says so in its log.
func checkTSC(h Host) Finding {
	if bytes.Contains(h.KernelLog, []byte("could not calculate TSC khz")) {
		return Finding{Name: "tsc", Status: Missing,
			Detail: "the kernel could not determine its TSC frequency (could not calculate TSC khz): its KVM cannot enter guests",
			Fix:    "boot the host kernel with tsc_early_khz=<TSC kHz> (a VM host: give it an invariant TSC, or the frequency)"}
	}
	flags := cpuFlags(h.CPUInfo)
	switch {
	case flags["constant_tsc"] && flags["nonstop_tsc"]:
		return Finding{Name: "tsc", Status: OK, Detail: "invariant TSC"}
	case len(flags) == 0:
		return Finding{Name: "tsc", Status: Warn, Detail: "/proc/cpuinfo unreadable"}
	default:
		return Finding{Name: "tsc", Status: Warn, Detail: "no invariant TSC: KVM depends on the kernel's per-CPU TSC frequency",
			Fix: "if guests stall before their first instruction, check dmesg for the TSC calibration"}
	}
}

func cpuFlags(cpuinfo []byte) map[string]bool {
	flags := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(cpuinfo))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "flags" {
			for _, f := range strings.Fields(v) {
				flags[f] = true
			}
			break
		}
	}
	return flags
}

func checkPrivateMemory(sys *kvm.System) Finding {
	var missing []string
	if sys.CheckExtension(kvm.CapGuestMemfd) == 0 {
		missing = append(missing, "guest_memfd")
	}
	if uint64(sys.CheckExtension(kvm.CapMemoryAttributes))&kvm.MemoryAttributePrivate == 0 {
		missing = append(missing, "private memory attribute")
	}
	if sys.CheckExtension(kvm.CapUserMemory2) == 0 {
		missing = append(missing, "KVM_SET_USER_MEMORY_REGION2")
	}
	types := uint64(sys.CheckExtension(kvm.CapVMTypes))
	detail := "VM types: " + vmTypes(types)
	if len(missing) > 0 {
		return Finding{Name: "private-memory", Status: Missing, Detail: detail + "; no " + strings.Join(missing, ", "),
			Fix: "a host kernel >= 6.11 with KVM_PRIVATE_MEM (SEV-SNP) or >= 6.16 (TDX)"}
	}
	return Finding{Name: "private-memory", Status: OK, Detail: detail + "; guest_memfd and private attributes"}
}

func vmTypes(mask uint64) string {
	var names []string
	for t := uint64(0); t < 64; t++ {
		if mask&(1<<t) != 0 {
			names = append(names, kvm.VMTypeName(t))
		}
	}
	if len(names) == 0 {
		return "default only (no KVM_CAP_VM_TYPES)"
	}
	return strings.Join(names, ", ")
}

func checkSNP(h Host, sys *kvm.System, r *Report, usable bool) Finding {
	if err := h.SNP(sys); err != nil {
		return Finding{Name: "sev-snp", Status: Missing, Detail: strings.TrimPrefix(err.Error(), "SEV-SNP launch not possible on this host: "),
			Fix: "an AMD EPYC host with SEV-SNP enabled in the firmware, kernel >= 6.11, kvm_amd sev_snp=1"}
	}
	if usable {
		r.CanRun = append(r.CanRun, "snp")
	}
	return Finding{Name: "sev-snp", Status: OK, Detail: "KVM_X86_SNP_VM, /dev/sev and the SNP firmware are ready"}
}

func checkTDX(h Host, sys *kvm.System, r *Report, usable bool) Finding {
	var missing []string
	if uint64(sys.CheckExtension(kvm.CapVMTypes))&(1<<kvm.VMTypeTDX) == 0 {
		missing = append(missing, "no KVM_X86_TDX_VM in KVM_CAP_VM_TYPES")
	}
	if h.TDXModule != "Y" && h.TDXModule != "1" {
		missing = append(missing, "kvm_intel tdx parameter "+orUnknown(h.TDXModule))
	}
	if len(missing) > 0 {
		return Finding{Name: "tdx", Status: Missing, Detail: strings.Join(missing, "; "),
			Fix: "an Intel host with TDX enabled in the firmware, kernel >= 6.16, kvm_intel tdx=1"}
	}
	if !h.QGSExists {
		return Finding{Name: "tdx", Status: Warn, Detail: "TDX VMs possible, but no Quote Generation Service at " + h.QGSSocket,
			Fix: "install and start Intel's QGS (qgsd): guests cannot get quotes without it"}
	}
	if usable {
		r.CanRun = append(r.CanRun, "tdx")
	}
	return Finding{Name: "tdx", Status: OK, Detail: "KVM_X86_TDX_VM and a QGS at " + h.QGSSocket}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// ErrNothingRuns is what Summary returns when the host can run no mode.
var ErrNothingRuns = errors.New("this host can run no krun-tee VM")

// Summary is one line: the modes this host can run, or ErrNothingRuns with
// the first missing piece.
func (r Report) Summary() (string, error) {
	if len(r.CanRun) == 0 {
		for _, f := range r.Findings {
			if f.Status == Missing {
				return "", fmt.Errorf("%w: %s: %s", ErrNothingRuns, f.Name, f.Detail)
			}
		}
		return "", ErrNothingRuns
	}
	return "can run: --tee " + strings.Join(r.CanRun, ", "), nil
}
