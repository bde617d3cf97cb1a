package guestmem

import (
	"errors"
	"fmt"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/krun-tee/krun-tee/vmm/kvm"
)

type attrCall struct{ gpa, size, attrs uint64 }

type fakeVM struct {
	calls []attrCall
	fail  error
}

func (v *fakeVM) SetMemoryAttributes(gpa, size, attrs uint64) error {
	if v.fail != nil {
		return v.fail
	}
	v.calls = append(v.calls, attrCall{gpa, size, attrs})
	return nil
}

type punch struct{ off, length uint64 }

type fakeGmem struct{ punches []punch }

func (g *fakeGmem) Punch(off, length uint64) error {
	g.punches = append(g.punches, punch{off, length})
	return nil
}

// span records a discarded slice as (slot index, offset, length).
type span struct{ slot, off, length int }

func newTest(t *testing.T) (*Memory, *fakeVM, []*fakeGmem, *[]span) {
	t.Helper()
	vm := &fakeVM{}
	g := []*fakeGmem{{}, {}, {}}
	shared := [][]byte{make([]byte, 16*pageSize), make([]byte, 8*pageSize), make([]byte, 4*pageSize)}
	// Slots 0 and 1 are adjacent; slot 2 sits after a gap (like RAM above
	// the MMIO hole).
	m, err := New(vm, []Slot{
		{GPA: 0x100000 + 16*pageSize, Shared: shared[1], Private: g[1], PrivateOff: 16 * pageSize},
		{GPA: 0x100000, Shared: shared[0], Private: g[0]},
		{GPA: 0x100000000, Shared: shared[2], Private: g[2], PrivateOff: 0x2000},
	})
	if err != nil {
		t.Fatal(err)
	}
	var discarded []span
	m.discard = func(b []byte) error {
		for i, s := range shared {
			if len(b) > 0 && sameBacking(s, b) {
				discarded = append(discarded, span{i, offsetIn(s, b), len(b)})
				return nil
			}
		}
		return fmt.Errorf("discard of a slice outside every slot")
	}
	return m, vm, g, &discarded
}

func sameBacking(s, b []byte) bool {
	for i := range s {
		if &s[i] == &b[0] {
			return i+len(b) <= len(s)
		}
	}
	return false
}

func offsetIn(s, b []byte) int {
	for i := range s {
		if &s[i] == &b[0] {
			return i
		}
	}
	return -1
}

func TestConvertAcrossSlots(t *testing.T) {
	m, vm, g, discarded := newTest(t)
	// Private: the last 2 pages of slot 0 and the first 3 of slot 1.
	gpa := uint64(0x100000 + 14*pageSize)
	if err := m.Convert(gpa, 5*pageSize, true); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(vm.calls, []attrCall{{gpa, 5 * pageSize, kvm.MemoryAttributePrivate}}) {
		t.Errorf("attribute calls %+v", vm.calls)
	}
	if want := []span{{0, 14 * pageSize, 2 * pageSize}, {1, 0, 3 * pageSize}}; !reflect.DeepEqual(*discarded, want) {
		t.Errorf("shared pages released %+v, want %+v", *discarded, want)
	}
	if len(g[0].punches)+len(g[1].punches) != 0 {
		t.Error("private pages released on a conversion to private")
	}
	// Back to shared: the guest_memfd ranges (with the slot's offset) go.
	if err := m.Convert(gpa, 5*pageSize, false); err != nil {
		t.Fatal(err)
	}
	if vm.calls[1] != (attrCall{gpa, 5 * pageSize, 0}) {
		t.Errorf("shared conversion: %+v", vm.calls[1])
	}
	if !reflect.DeepEqual(g[0].punches, []punch{{14 * pageSize, 2 * pageSize}}) ||
		!reflect.DeepEqual(g[1].punches, []punch{{16 * pageSize, 3 * pageSize}}) {
		t.Errorf("punches %+v %+v", g[0].punches, g[1].punches)
	}
}

func TestConvertRejects(t *testing.T) {
	m, vm, _, _ := newTest(t)
	for name, r := range map[string][2]uint64{
		"unaligned gpa":     {0x100001, pageSize},
		"unaligned size":    {0x100000, 100},
		"empty":             {0x100000, 0},
		"into the gap":      {0x100000 + 20*pageSize, 8 * pageSize},
		"below RAM":         {0x0, pageSize},
		"past the last":     {0x100000000 + 3*pageSize, 2 * pageSize},
		"wraps":             {0xfffffffffffff000, 2 * pageSize},
		"gap in the middle": {0x100000, 0x100000000},
	} {
		if err := m.Convert(r[0], r[1], true); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if len(vm.calls) != 0 {
		t.Errorf("attributes changed for rejected ranges: %+v", vm.calls)
	}
	vm.fail = unix.EINVAL
	if err := m.Convert(0x100000, pageSize, true); !errors.Is(err, unix.EINVAL) {
		t.Errorf("KVM failure: %v", err)
	}
}

func TestNewRejects(t *testing.T) {
	g := &fakeGmem{}
	for name, slots := range map[string][]Slot{
		"overlap":    {{GPA: 0, Shared: make([]byte, 2*pageSize), Private: g}, {GPA: pageSize, Shared: make([]byte, pageSize), Private: g}},
		"unaligned":  {{GPA: 0x10, Shared: make([]byte, pageSize), Private: g}},
		"odd size":   {{GPA: 0, Shared: make([]byte, 100), Private: g}},
		"no private": {{GPA: 0, Shared: make([]byte, pageSize)}},
	} {
		if _, err := New(&fakeVM{}, slots); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestHandleMemoryFault(t *testing.T) {
	m, vm, g, _ := newTest(t)
	// A shared access to 3 bytes straddling a page boundary converts both pages.
	if err := m.HandleMemoryFault(kvm.MemoryFaultExit{GPA: 0x100000 + pageSize - 1, Size: 3}); err != nil {
		t.Fatal(err)
	}
	if vm.calls[0] != (attrCall{0x100000, 2 * pageSize, 0}) || len(g[0].punches) != 1 {
		t.Errorf("shared fault: %+v, punches %+v", vm.calls, g[0].punches)
	}
	if err := m.HandleMemoryFault(kvm.MemoryFaultExit{Flags: kvm.MemoryExitFlagPrivate, GPA: 0x100000000, Size: pageSize}); err != nil {
		t.Fatal(err)
	}
	if vm.calls[1] != (attrCall{0x100000000, pageSize, kvm.MemoryAttributePrivate}) {
		t.Errorf("private fault: %+v", vm.calls[1])
	}
	for name, f := range map[string]kvm.MemoryFaultExit{
		"unknown flag": {Flags: 1, GPA: 0x100000, Size: pageSize},
		"empty":        {GPA: 0x100000},
		"outside RAM":  {GPA: 0x1000, Size: pageSize},
		"wraps":        {GPA: 0xffffffffffffff00, Size: 0x200},
	} {
		if err := m.HandleMemoryFault(f); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestHandleMapGPARange(t *testing.T) {
	m, vm, _, _ := newTest(t)
	einval := uint64(0xffffffffffffffea) // -22
	hc := func(gpa, npages, attrs uint64) kvm.HypercallExit {
		return kvm.HypercallExit{Nr: kvm.HypercallMapGPARange, Args: [6]uint64{gpa, npages, attrs}}
	}
	ret, err := m.HandleMapGPARange(hc(0x100000, 4, kvm.MapGPARangeEncrypted|kvm.MapGPARangePageSz4K))
	if ret != 0 || err != nil || vm.calls[0] != (attrCall{0x100000, 4 * pageSize, kvm.MemoryAttributePrivate}) {
		t.Fatalf("to private: ret %#x err %v calls %+v", ret, err, vm.calls)
	}
	// A 2M hint is only a hint.
	ret, err = m.HandleMapGPARange(hc(0x100000+pageSize, 2, kvm.MapGPARangeDecrypted|kvm.MapGPARangePageSz2M))
	if ret != 0 || err != nil || vm.calls[1] != (attrCall{0x100000 + pageSize, 2 * pageSize, 0}) {
		t.Fatalf("to shared: ret %#x err %v calls %+v", ret, err, vm.calls)
	}
	for name, h := range map[string]kvm.HypercallExit{
		"no pages":       hc(0x100000, 0, 0),
		"unaligned":      hc(0x100800, 1, 0),
		"outside RAM":    hc(0x1000, 1, 0),
		"unknown attrs":  hc(0x100000, 1, 1<<5),
		"too many pages": hc(0x100000, 1<<41, 0),
		"spans the gap":  hc(0x100000+20*pageSize, 8, 0),
	} {
		if ret, err := m.HandleMapGPARange(h); ret != einval || err != nil {
			t.Errorf("%s: ret %#x err %v, want -EINVAL and no host error", name, ret, err)
		}
	}
	if len(vm.calls) != 2 {
		t.Errorf("invalid requests changed attributes: %+v", vm.calls[2:])
	}
	if _, err := m.HandleMapGPARange(kvm.HypercallExit{Nr: 11}); err == nil {
		t.Error("another hypercall was handled")
	}
	vm.fail = unix.ENOMEM
	if ret, err := m.HandleMapGPARange(hc(0x100000, 1, 0)); ret != einval || !errors.Is(err, unix.ENOMEM) {
		t.Errorf("host failure: ret %#x err %v", ret, err)
	}
}

// The default discard really frees shared pages of a shared mapping, as
// guest RAM is mapped: their contents read back as zero.
func TestDiscardFreesSharedPages(t *testing.T) {
	shared, err := unix.Mmap(-1, 0, 4*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(shared)
	for i := range shared {
		shared[i] = 0xaa
	}
	m, err := New(&fakeVM{}, []Slot{{GPA: 0x100000, Shared: shared, Private: &fakeGmem{}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Convert(0x100000+pageSize, 2*pageSize, true); err != nil {
		t.Fatal(err)
	}
	for i, b := range shared {
		want := byte(0xaa)
		if i >= pageSize && i < 3*pageSize {
			want = 0
		}
		if b != want {
			t.Fatalf("byte %d = %#x after the conversion, want %#x", i, b, want)
		}
	}
}
