package vmm

import (
	"encoding/binary"
	"testing"

	"github.com/krun-tee/krun-tee/layout"
	"github.com/krun-tee/krun-tee/vmm/kvm"
)

func TestNormalizeCPUID(t *testing.T) {
	supported := []kvm.CPUIDEntry{
		{Function: 0x1, EAX: 0x830f10, EBX: 0xff0a0800, ECX: 0x7ed8320b, EDX: 0x178bfbff},
		{Function: 0xa, EAX: 0x8300805, EBX: 1, EDX: 0x603},
		{Function: 0xb, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 1, EBX: 2, ECX: 0x100, EDX: 9},
		{Function: 0xb, Index: 1, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 7, EBX: 64, ECX: 0x201, EDX: 9},
		{Function: 0xb, Index: 2, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 0, EBX: 0, ECX: 2, EDX: 9},
		{Function: 0xd, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 7, EBX: 0x240, ECX: 0x340},
		{Function: 0xd, Index: 2, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 0x100, EBX: 0x240},
		{Function: 0x80000008, EAX: 0x3030, ECX: 0x400f},
	}
	orig := append([]kvm.CPUIDEntry(nil), supported...)
	for _, tc := range []struct{ id, n int }{{0, 1}, {1, 2}, {5, 8}} {
		out := NormalizeCPUID(supported, tc.id, tc.n)
		if len(out) != len(supported) {
			t.Fatalf("%d entries", len(out))
		}
		get := func(fn, idx uint32) kvm.CPUIDEntry {
			for _, e := range out {
				if e.Function == fn && e.Index == idx {
					return e
				}
			}
			t.Fatalf("leaf %#x.%d missing", fn, idx)
			return kvm.CPUIDEntry{}
		}
		l1 := get(1, 0)
		if int(l1.EBX>>24) != tc.id || int(l1.EBX>>16&0xff) != tc.n || l1.EBX&0xffff != 0x0800 {
			t.Errorf("vcpu %d/%d: leaf 1 EBX %#x", tc.id, tc.n, l1.EBX)
		}
		if l1.ECX&(1<<31) == 0 {
			t.Error("hypervisor bit clear")
		}
		if (l1.EDX&(1<<28) != 0) != (tc.n > 1) {
			t.Errorf("HTT %v with %d vCPUs", l1.EDX&(1<<28) != 0, tc.n)
		}
		if e := get(0xa, 0); e.EAX|e.EBX|e.ECX|e.EDX != 0 {
			t.Errorf("PMU leaf not cleared: %+v", e)
		}
		smt, core, other := get(0xb, 0), get(0xb, 1), get(0xb, 2)
		if smt.EBX != 1 || smt.ECX != 0x100 || int(smt.EDX) != tc.id || core.EBX != uint32(tc.n) || core.ECX != 0x201 || int(core.EDX) != tc.id || other.EBX != 0 || other.ECX != 2 {
			t.Errorf("topology %+v %+v %+v", smt, core, other)
		}
		if 1<<core.EAX < tc.n {
			t.Errorf("core shift %d cannot hold %d ids", core.EAX, tc.n)
		}
		if x := get(0xd, 0); x.EBX != 0x340 || x.ECX != 0x340 {
			t.Errorf("XSAVE leaf EBX %#x ECX %#x, want both the full size 0x340", x.EBX, x.ECX)
		}
		if a := get(0x80000008, 0); a.ECX&0xff != uint32(tc.n-1) {
			t.Errorf("AMD NC %d, want %d", a.ECX&0xff, tc.n-1)
		}
	}
	for i := range orig {
		if supported[i] != orig[i] {
			t.Fatal("NormalizeCPUID modified its input")
		}
	}
}

func TestSetLINT(t *testing.T) {
	var l kvm.LAPICState
	binary.LittleEndian.PutUint32(l.Regs[0x350:], 0x10000|0x700) // masked, ExtINT already
	binary.LittleEndian.PutUint32(l.Regs[0x360:], 0x10000)
	setLINT(&l)
	if v := binary.LittleEndian.Uint32(l.Regs[0x350:]); v != 0x10700 {
		t.Errorf("LVT0 %#x", v)
	}
	if v := binary.LittleEndian.Uint32(l.Regs[0x360:]); v != 0x10400 {
		t.Errorf("LVT1 %#x", v)
	}
}

func TestKVMSegment(t *testing.T) {
	s := kvmSegment(layout.Segment{Selector: 0x10, Attrib: 0xa9b, Limit: 0xffffffff})
	want := kvm.Segment{Selector: 0x10, Limit: 0xffffffff, Type: 0xb, S: 1, Present: 1, L: 1, G: 1}
	if s != want {
		t.Errorf("code segment %+v, want %+v", s, want)
	}
	if u := kvmSegment(layout.Segment{}); u.Unusable != 1 {
		t.Error("non-present segment not marked unusable")
	}
	d := kvmSegment(layout.Segment{Selector: 0x18, Attrib: 0xc93, Limit: 0xffffffff})
	if d.DB != 1 || d.L != 0 || d.Type != 3 || d.G != 1 {
		t.Errorf("data segment %+v", d)
	}
}

func TestEnableTSCDeadline(t *testing.T) {
	entries := []kvm.CPUIDEntry{{Function: 0}, {Function: leafFeatures, ECX: ecxHypervisor}, {Function: leafXSAVE}}
	EnableTSCDeadline(entries)
	if entries[1].ECX != ecxHypervisor|ecxTSCDeadline {
		t.Errorf("leaf 1 ECX %#x, want hypervisor and TSC deadline", entries[1].ECX)
	}
	if entries[0].ECX != 0 || entries[2].ECX != 0 {
		t.Error("other leaves changed")
	}
}
