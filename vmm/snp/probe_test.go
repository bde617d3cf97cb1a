package snp

import (
	"fmt"
	"io/fs"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/vmm/kvm"
	"golang.org/x/sys/unix"
)

// fakeHost answers Probe from tables.
func fakeHost(caps map[int]int, vmsaErr, statusErr error, st kvm.SNPPlatformStatus) Host {
	return Host{
		CheckExtension: func(c int) int { return caps[c] },
		VMSAFeatures:   func() (uint64, error) { return 0x1, vmsaErr },
		PlatformStatus: func() (kvm.SNPPlatformStatus, error) { return st, statusErr },
	}
}

func snpCaps() map[int]int {
	return map[int]int{
		kvm.CapVMTypes:          1<<kvm.VMTypeDefault | 1<<kvm.VMTypeSEV | 1<<kvm.VMTypeSEVES | 1<<kvm.VMTypeSNP,
		kvm.CapUserMemory2:      1,
		kvm.CapGuestMemfd:       1,
		kvm.CapMemoryAttributes: kvm.MemoryAttributePrivate,
		kvm.CapExitHypercall:    1 << kvm.HypercallMapGPARange,
	}
}

var goodStatus = kvm.SNPPlatformStatus{APIMajor: 1, APIMinor: 55, State: 1, BuildID: 21}

func TestProbeReady(t *testing.T) {
	if err := Probe(fakeHost(snpCaps(), nil, nil, goodStatus)); err != nil {
		t.Fatalf("a complete SNP host: %v", err)
	}
}

func TestProbeMissing(t *testing.T) {
	enxio := fmt.Errorf("kvm: KVM_HAS_DEVICE_ATTR: %w", unix.ENXIO)
	notExist := fmt.Errorf("kvm: open /dev/sev: %w", fs.ErrNotExist)
	for _, tc := range []struct {
		name   string
		mutate func(caps map[int]int)
		vmsa   error
		stErr  error
		st     kvm.SNPPlatformStatus
		want   []string
		n      int // problems listed
	}{
		{"plain host like this one", func(c map[int]int) {
			c[kvm.CapVMTypes] = 1 << kvm.VMTypeDefault
			c[kvm.CapGuestMemfd], c[kvm.CapMemoryAttributes] = 0, 0
			c[kvm.CapExitHypercall] = 1 << 12
		}, enxio, notExist, goodStatus, []string{
			"no KVM_X86_SNP_VM in KVM_CAP_VM_TYPES (KVM offers KVM_X86_DEFAULT_VM:",
			"no guest_memfd", "no private memory attribute", "no SEV VMSA features", "no /dev/sev"}, 5},
		{"old kernel", func(c map[int]int) {
			clear(c)
		}, enxio, nil, goodStatus, []string{"no KVM_CAP_VM_TYPES", "no KVM_CAP_USER_MEMORY2",
			"no KVM_HC_MAP_GPA_RANGE exit"}, 6},
		{"old firmware", func(map[int]int) {}, nil, nil, kvm.SNPPlatformStatus{APIMajor: 1, APIMinor: 49, State: 1},
			[]string{"SNP firmware ABI 1.49 below the needed 1.51"}, 1},
		{"firmware not initialised", func(map[int]int) {}, nil, nil, kvm.SNPPlatformStatus{APIMajor: 1, APIMinor: 55, BuildID: 3},
			[]string{"SNP firmware 1.55 (build 3) is not initialised"}, 1},
		{"status refused", func(map[int]int) {}, nil,
			&kvm.SEVError{Step: "SEV_ISSUE_CMD SNP_PLATFORM_STATUS", Errno: unix.EIO, FWStatus: 0x01}, goodStatus,
			[]string{"SNP platform status unreadable", "INVALID_PLATFORM_STATE"}, 1},
	} {
		caps := snpCaps()
		tc.mutate(caps)
		err := Probe(fakeHost(caps, tc.vmsa, tc.stErr, tc.st))
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		msg := err.Error()
		if strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "SEV-SNP launch not possible on this host: ") {
			t.Errorf("%s: not one line: %q", tc.name, msg)
		}
		for _, w := range tc.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: %q lacks %q", tc.name, msg, w)
			}
		}
		if n := strings.Count(msg, ";") + 1; n != tc.n {
			t.Errorf("%s: %d problems reported, want %d: %q", tc.name, n, tc.n, msg)
		}
	}
}

// On this machine the probe runs against the real /dev/kvm: it must return
// a one-line answer, never panic.
func TestProbeThisHost(t *testing.T) {
	sys, err := kvm.Open()
	if err != nil {
		t.Skipf("no KVM here: %v", err)
	}
	defer sys.Close()
	err = Probe(HostOf(sys))
	t.Logf("this host: %v", err)
	if err != nil && strings.Contains(err.Error(), "\n") {
		t.Errorf("multi-line answer: %q", err)
	}
}
