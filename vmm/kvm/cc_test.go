package kvm

import (
	"errors"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func addrOf(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&b[0]))) }

func TestParseSNPStatus(t *testing.T) {
	b := make([]byte, sizeofSNPStatus)
	b[0], b[1], b[2], b[3] = 1, 55, 1, 0x81
	b[4] = 0x16 // build 22
	b[12] = 3
	b[16], b[23] = 0x04, 0xdb
	b[31] = 0x11
	s := parseSNPStatus(b)
	want := SNPPlatformStatus{APIMajor: 1, APIMinor: 55, State: 1, RMPInitialized: true, BuildID: 0x16,
		GuestCount: 3, CurrentTCB: 0xdb00000000000004, ReportedTCB: 0x1100000000000000}
	if s != want {
		t.Fatalf("got %+v, want %+v", s, want)
	}
	for _, tc := range []struct {
		maj, min uint8
		ok       bool
	}{{1, 51, true}, {1, 55, true}, {1, 56, false}, {0, 99, true}, {2, 0, false}} {
		if s.AtLeast(tc.maj, tc.min) != tc.ok {
			t.Errorf("1.55 AtLeast(%d.%d) = %v", tc.maj, tc.min, !tc.ok)
		}
	}
}

// On a host with /dev/kvm, the confidential-computing ioctls work as far as
// the host's KVM allows; the capabilities decide what is expected.
func TestConfidentialIoctlsOnHost(t *testing.T) {
	sys, err := Open()
	if err != nil {
		t.Skipf("no KVM here: %v", err)
	}
	defer sys.Close()
	types := uint64(sys.CheckExtension(CapVMTypes))
	if types&(1<<VMTypeSNP) == 0 {
		if _, err := sys.CreateVMType(VMTypeSNP); !errors.Is(err, unix.EINVAL) {
			t.Errorf("KVM_CREATE_VM of an unsupported SNP VM: %v, want EINVAL", err)
		}
	}
	vm, err := sys.CreateVMType(VMTypeDefault)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()

	if sys.CheckExtension(CapUserMemory2) > 0 {
		mem, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Munmap(mem)
		r := UserspaceMemoryRegion2{Slot: 0, GuestPhysAddr: 0x100000, MemorySize: 1 << 20, UserspaceAddr: addrOf(mem)}
		if err := vm.SetUserMemoryRegion2(r); err != nil {
			t.Errorf("KVM_SET_USER_MEMORY_REGION2: %v", err)
		}
		// A guest_memfd slot is refused on a VM type without private memory.
		r.Slot, r.GuestPhysAddr, r.Flags, r.GuestMemfd = 1, 0x400000, MemGuestMemfd, 0
		if err := vm.SetUserMemoryRegion2(r); err == nil {
			t.Error("a guest_memfd slot on a default VM was accepted")
		}
	}
	if mask := uint64(vm.CheckExtension(CapExitHypercall)); mask&(1<<HypercallMapGPARange) != 0 {
		if err := vm.EnableExitHypercall(1 << HypercallMapGPARange); err != nil {
			t.Errorf("enabling the MAP_GPA_RANGE exit: %v", err)
		}
	}
	if err := vm.EnableExitHypercall(1 << 63); err == nil {
		t.Error("an unsupported hypercall exit was enabled")
	}
	if vm.CheckExtension(CapGuestMemfd) == 0 {
		if _, err := vm.CreateGuestMemfd(1 << 20); err == nil {
			t.Error("KVM_CREATE_GUEST_MEMFD succeeded on a VM without private memory")
		}
	}
	if _, err := vm.CreateGuestMemfd(4095); err == nil {
		t.Error("an unaligned guest_memfd size was accepted")
	}
	if vm.CheckExtension(CapMemoryAttributes)&MemoryAttributePrivate == 0 {
		if err := vm.SetMemoryAttributes(0x100000, 4096, MemoryAttributePrivate); err == nil {
			t.Error("KVM_SET_MEMORY_ATTRIBUTES PRIVATE succeeded on a VM without private memory")
		}
	}
	// A plain VM refuses SEV commands before any firmware call.
	err = vm.SEVInit2(&SEV{fd: -1}, SEVInit{})
	var sevErr *SEVError
	if !errors.As(err, &sevErr) {
		t.Errorf("KVM_SEV_INIT2 on a plain VM: %v, want a SEVError", err)
	}
	if _, err := sys.SEVVMSAFeatures(); err != nil {
		t.Logf("VMSA features: %v", err)
	}
}
