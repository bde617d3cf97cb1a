package snp

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/krun-tee/krun-tee/vmm/kvm"
	"golang.org/x/sys/unix"
)

// fakeKernel models KVM's SNP_LAUNCH_UPDATE: it processes at most perCall
// pages per call, fails calls as scripted, and validates CPUID pages like
// the firmware, writing its correction back into the source on rejection.
type fakeKernel struct {
	perCall uint64
	script  []error // errors for the next calls (nil: proceed)
	cpuid   func(page []byte) (corrected []byte, ok bool)
	loaded  map[uint64]loadedPage
	order   []uint64
	calls   int
}

type loadedPage struct {
	typ  uint8
	data string
}

func (k *fakeKernel) SNPLaunchUpdate(gfn, npages uint64, src []byte, pageType uint8) (uint64, error) {
	k.calls++
	if len(k.script) > 0 {
		err := k.script[0]
		k.script = k.script[1:]
		if err != nil {
			return 0, err
		}
	}
	n := min(npages, k.perCall)
	for i := range n {
		var data []byte
		if pageType != kvm.SNPPageZero {
			data = src[i*pageSize : (i+1)*pageSize]
		}
		if pageType == kvm.SNPPageCPUID && k.cpuid != nil {
			if fixed, ok := k.cpuid(data); !ok {
				copy(data, fixed)
				if i > 0 { // the kernel reports the pages before the bad one
					return i, nil
				}
				return 0, &kvm.SEVError{Step: "KVM_SEV_SNP_LAUNCH_UPDATE", Errno: unix.EIO, FWStatus: kvm.FWInvalidParam}
			}
		}
		if _, dup := k.loaded[gfn+i]; dup {
			return i, &kvm.SEVError{Step: "KVM_SEV_SNP_LAUNCH_UPDATE", Errno: unix.EEXIST, FWStatus: kvm.FWSuccess}
		}
		k.loaded[gfn+i] = loadedPage{pageType, string(data)}
		k.order = append(k.order, gfn+i)
	}
	return n, nil
}

func newFake(perCall uint64) *fakeKernel {
	return &fakeKernel{perCall: perCall, loaded: map[uint64]loadedPage{}}
}

func quiet() UpdateOptions {
	return UpdateOptions{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), sleep: func(time.Duration) {}}
}

func pages(n int) []byte {
	b := make([]byte, n*pageSize)
	for i := range b {
		b[i] = byte(i/pageSize + 1)
	}
	return b
}

func TestLaunchUpdatePartialAndRetries(t *testing.T) {
	k := newFake(3)
	k.script = []error{nil, unix.EAGAIN, unix.EINTR, nil, unix.EAGAIN}
	data := pages(10)
	if err := LaunchUpdate(k, 0x100000, 10, data, kvm.SNPPageNormal, quiet()); err != nil {
		t.Fatal(err)
	}
	if len(k.order) != 10 {
		t.Fatalf("%d pages loaded, want 10", len(k.order))
	}
	for i, gfn := range k.order {
		if gfn != 0x100+uint64(i) {
			t.Fatalf("page %d loaded at gfn %#x, want %#x (in order)", i, gfn, 0x100+i)
		}
		p := k.loaded[gfn]
		if p.typ != kvm.SNPPageNormal || p.data != string(data[i*pageSize:(i+1)*pageSize]) {
			t.Fatalf("page %d: type %d or contents wrong", i, p.typ)
		}
	}
	// Zero pages carry no data.
	z := newFake(2)
	if err := LaunchUpdate(z, 0x200000, 5, nil, kvm.SNPPageZero, quiet()); err != nil || len(z.order) != 5 {
		t.Fatalf("zero region: %v, %d pages", err, len(z.order))
	}
}

func TestLaunchUpdateBoundsRetries(t *testing.T) {
	k := newFake(1)
	for range 10 {
		k.script = append(k.script, unix.EAGAIN)
	}
	opts := quiet()
	opts.MaxRetries = 4
	err := LaunchUpdate(k, 0, 2, pages(2), kvm.SNPPageNormal, opts)
	if err == nil || !strings.Contains(err.Error(), "without progress") || k.calls != 5 {
		t.Fatalf("endless EAGAIN: %v after %d calls", err, k.calls)
	}
	// A kernel that reports no progress without an error is bounded too.
	stuck := newFake(0)
	if err := LaunchUpdate(stuck, 0, 1, pages(1), kvm.SNPPageNormal, opts); err == nil || stuck.calls != 5 {
		t.Fatalf("no progress: %v after %d calls", err, stuck.calls)
	}
	// Other errors stop at once, naming the step and the firmware status.
	k = newFake(4)
	k.script = []error{nil, &kvm.SEVError{Step: "KVM_SEV_SNP_LAUNCH_UPDATE", Errno: unix.EIO, FWStatus: kvm.FWInvalidPageState}}
	err = LaunchUpdate(k, 0, 8, pages(8), kvm.SNPPageNormal, quiet())
	var sevErr *kvm.SEVError
	if !errors.As(err, &sevErr) || !strings.Contains(err.Error(), "after 4 pages") || !strings.Contains(err.Error(), "INVALID_PAGE_STATE") {
		t.Fatalf("firmware failure: %v", err)
	}
}

func TestLaunchUpdateValidates(t *testing.T) {
	for name, call := range map[string]func() error{
		"unaligned":  func() error { return LaunchUpdate(newFake(1), 0x1001, 1, pages(1), kvm.SNPPageNormal, quiet()) },
		"no pages":   func() error { return LaunchUpdate(newFake(1), 0, 0, nil, kvm.SNPPageNormal, quiet()) },
		"short data": func() error { return LaunchUpdate(newFake(1), 0, 2, pages(1), kvm.SNPPageNormal, quiet()) },
		"zero data":  func() error { return LaunchUpdate(newFake(1), 0, 1, pages(1), kvm.SNPPageZero, quiet()) },
	} {
		if err := call(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// firmwareCPUID rejects leaf 7 EBX bits the "platform" lacks.
func firmwareCPUID(page []byte) ([]byte, bool) {
	fns, err := ParseCPUIDPage(page)
	if err != nil {
		return page, false
	}
	ok := true
	for i := range fns {
		if fns[i].EAXIn == 7 && fns[i].EBX&0x600 != 0 {
			fns[i].EBX &^= 0x600
			ok = false
		}
	}
	fixed, _ := MarshalCPUIDPage(fns)
	return fixed, ok
}

func TestLaunchUpdateCPUIDRejected(t *testing.T) {
	page, _ := MarshalCPUIDPage(testCPUIDFuncs())
	data := append([]byte(nil), page...)
	k := newFake(4)
	k.cpuid = firmwareCPUID
	err := LaunchUpdate(k, 0x7000, 1, data, kvm.SNPPageCPUID, quiet())
	var rej *CPUIDRejectedError
	if !errors.As(err, &rej) {
		t.Fatalf("want a CPUIDRejectedError, got %v", err)
	}
	if rej.GPA != 0x7000 || len(rej.Changes) != 1 || rej.Changes[0] != "leaf 0x7.0: ebx 0x219c07ab -> 0x219c01ab (cleared 0x600)" {
		t.Errorf("rejection: gpa %#x changes %q", rej.GPA, rej.Changes)
	}
	if !strings.Contains(err.Error(), "cleared 0x600") || !strings.Contains(err.Error(), "INVALID_PARAM") {
		t.Errorf("message: %v", err)
	}
	if !bytes.Equal(rej.Corrected, data) || bytes.Equal(rej.Corrected, page) {
		t.Error("Corrected is not the page the firmware wrote back")
	}
	if len(k.loaded) != 0 {
		t.Error("a rejected page was loaded")
	}

	// With AcceptCorrectedCPUID the corrected page is loaded, once.
	data = append([]byte(nil), page...)
	k = newFake(4)
	k.cpuid = firmwareCPUID
	var logBuf bytes.Buffer
	opts := quiet()
	opts.AcceptCorrectedCPUID = true
	opts.Log = slog.New(slog.NewTextHandler(&logBuf, nil))
	if err := LaunchUpdate(k, 0x7000, 1, data, kvm.SNPPageCPUID, opts); err != nil {
		t.Fatal(err)
	}
	if got := k.loaded[7]; got.typ != kvm.SNPPageCPUID || got.data == string(page) {
		t.Error("the corrected CPUID page was not the one loaded")
	}
	if !strings.Contains(logBuf.String(), "cleared 0x600") {
		t.Errorf("the correction was not logged: %s", logBuf.String())
	}

	// A firmware that keeps rejecting is not retried twice.
	k = newFake(4)
	k.cpuid = func(p []byte) ([]byte, bool) {
		fns, _ := ParseCPUIDPage(p)
		fns[0].EAX++
		fixed, _ := MarshalCPUIDPage(fns)
		return fixed, false
	}
	if err := LaunchUpdate(k, 0, 1, append([]byte(nil), page...), kvm.SNPPageCPUID, opts); !errors.As(err, &rej) || k.calls != 2 {
		t.Fatalf("repeated rejection: %v after %d calls", err, k.calls)
	}

	// A CPUID page that is the second of a range: the first loads, the
	// rejection names the second page's GPA.
	two := append(append([]byte(nil), page...), page...)
	k = newFake(4)
	calls := 0
	k.cpuid = func(p []byte) ([]byte, bool) {
		calls++
		if calls == 1 {
			return p, true
		}
		return firmwareCPUID(p)
	}
	err = LaunchUpdate(k, 0x10000, 2, two, kvm.SNPPageCPUID, quiet())
	if !errors.As(err, &rej) || rej.GPA != 0x11000 || len(k.loaded) != 1 {
		t.Fatalf("second page rejected: %v (gpa %#x, %d loaded)", err, rej.GPA, len(k.loaded))
	}
}
