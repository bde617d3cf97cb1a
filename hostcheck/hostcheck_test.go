package hostcheck

import (
	"errors"
	"strings"
	"testing"

	"github.com/krun-tee/krun-tee/vmm/kvm"
)

func noKVM() (*kvm.System, error) { return nil, errors.New("open /dev/kvm: no such file or directory") }

const invariantTSC = "processor\t: 0\nflags\t\t: fpu tsc constant_tsc nonstop_tsc svm\n"

func find(t *testing.T, r Report, name string) Finding {
	t.Helper()
	for _, f := range r.Findings {
		if f.Name == name {
			return f
		}
	}
	t.Fatalf("no finding %q in %+v", name, r.Findings)
	return Finding{}
}

// A host without /dev/kvm runs nothing, and Summary names the KVM first.
func TestCheckWithoutKVM(t *testing.T) {
	r := Check(Host{KernelRelease: "6.12.0", KVM: noKVM, CPUInfo: []byte(invariantTSC)})
	if f := find(t, r, "kvm"); f.Status != Missing || f.Fix == "" {
		t.Errorf("kvm finding %+v, want missing with a fix", f)
	}
	for _, name := range []string{"sev-snp", "tdx"} {
		if f := find(t, r, name); f.Status != Missing {
			t.Errorf("%s finding %+v, want missing", name, f)
		}
	}
	if len(r.CanRun) != 0 {
		t.Errorf("can run %v without KVM", r.CanRun)
	}
	if _, err := r.Summary(); !errors.Is(err, ErrNothingRuns) || !strings.Contains(err.Error(), "kvm: /dev/kvm") {
		t.Errorf("summary error %v, want ErrNothingRuns naming /dev/kvm", err)
	}
}

// The failure the nested harness hit: a kernel without a TSC frequency
// makes its KVM spin on every guest entry.
func TestCheckTSC(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cpuinfo string
		log     string
		want    Status
	}{
		{"invariant", invariantTSC, "", OK},
		{"no frequency", invariantTSC, "tsc: Marking TSC unstable due to could not calculate TSC khz\n", Missing},
		{"not invariant", "flags\t: fpu tsc svm\n", "", Warn},
		{"unreadable", "", "", Warn},
	} {
		f := checkTSC(Host{CPUInfo: []byte(tc.cpuinfo), KernelLog: []byte(tc.log)})
		if f.Status != tc.want {
			t.Errorf("%s: %+v, want %s", tc.name, f, tc.want)
		}
	}
}

// On this kind of machine (kvm-pvm or no /dev/kvm), the report says that
// nothing can run and why; on a real KVM host it lists at least --tee none.
func TestCheckThisHost(t *testing.T) {
	h := Probe()
	r := Check(h)
	f := find(t, r, "kvm")
	s, err := r.Summary()
	switch {
	case h.SoftwareKVM:
		if f.Status != Missing || !strings.Contains(f.Detail, "kvm-pvm") {
			t.Errorf("kvm-pvm host: kvm finding %+v", f)
		}
		if err == nil {
			t.Errorf("kvm-pvm host can run %q", s)
		}
	case f.Status == OK && find(t, r, "tsc").Status != Missing:
		if err != nil || !strings.Contains(s, "none") {
			t.Errorf("usable KVM: summary %q, %v", s, err)
		}
	}
	t.Logf("%s %v", s, err)
}
