package kvm

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Private guest memory (Linux 6.8+): guest_memfd holds the pages the host
// cannot map; a memory slot pairs it with a shared (userspace) backing, and
// the per-page PRIVATE attribute says which of the two the guest uses.
const (
	MemGuestMemfd          = 1 << 2 // KVM_MEM_GUEST_MEMFD: the slot has a guest_memfd
	MemoryAttributePrivate = 1 << 3 // KVM_MEMORY_ATTRIBUTE_PRIVATE
)

// UserspaceMemoryRegion2 is struct kvm_userspace_memory_region2.
type UserspaceMemoryRegion2 struct {
	Slot             uint32
	Flags            uint32
	GuestPhysAddr    uint64
	MemorySize       uint64
	UserspaceAddr    uint64
	GuestMemfdOffset uint64
	GuestMemfd       uint32
	_                uint32
	_                [14]uint64
}

// CreateGuestMemfd is struct kvm_create_guest_memfd.
type CreateGuestMemfd struct {
	Size  uint64
	Flags uint64
	_     [6]uint64
}

// MemoryAttributes is struct kvm_memory_attributes.
type MemoryAttributes struct {
	Address    uint64
	Size       uint64
	Attributes uint64
	Flags      uint64
}

// SetUserMemoryRegion2 installs a memory slot, optionally backed by a
// guest_memfd (Flags MemGuestMemfd, GuestMemfd, GuestMemfdOffset).
func (vm *VM) SetUserMemoryRegion2(r UserspaceMemoryRegion2) error {
	if _, err := ioctlPtr(vm.fd, ioSetUserMemoryRegion2, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_USER_MEMORY_REGION2 slot %d [%#x,+%#x) flags %#x guest_memfd %d+%#x: %w",
			r.Slot, r.GuestPhysAddr, r.MemorySize, r.Flags, int32(r.GuestMemfd), r.GuestMemfdOffset, err)
	}
	return nil
}

// GuestMemfd is a guest_memfd file: private guest memory the host cannot map.
type GuestMemfd struct {
	f    *os.File
	size uint64
}

// CreateGuestMemfd creates a guest_memfd of size bytes (a multiple of the
// page size) for this VM.
func (vm *VM) CreateGuestMemfd(size uint64) (*GuestMemfd, error) {
	if size == 0 || size%snpPageSize != 0 {
		return nil, fmt.Errorf("kvm: KVM_CREATE_GUEST_MEMFD: size %#x is not a positive multiple of 4 KiB", size)
	}
	a := CreateGuestMemfd{Size: size}
	fd, err := ioctlPtr(vm.fd, ioCreateGuestMemfd, unsafe.Pointer(&a))
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_CREATE_GUEST_MEMFD size %#x: %w", size, err)
	}
	return &GuestMemfd{f: os.NewFile(fd, "guest_memfd"), size: size}, nil
}

// FD returns the descriptor for UserspaceMemoryRegion2.GuestMemfd.
func (g *GuestMemfd) FD() uint32 { return uint32(g.f.Fd()) }

// Size returns the file's size in bytes.
func (g *GuestMemfd) Size() uint64 { return g.size }

// Punch releases the private pages of [off, off+length): the memory goes
// back to the host, and a later private access faults in zeroed pages.
func (g *GuestMemfd) Punch(off, length uint64) error {
	if off%snpPageSize != 0 || length%snpPageSize != 0 || off > g.size || length > g.size-off {
		return fmt.Errorf("kvm: guest_memfd punch [%#x,+%#x): not page-aligned inside %#x bytes", off, length, g.size)
	}
	if length == 0 {
		return nil
	}
	if err := unix.Fallocate(int(g.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(off), int64(length)); err != nil {
		return fmt.Errorf("kvm: guest_memfd punch [%#x,+%#x): %w", off, length, err)
	}
	return nil
}

// Close closes the guest_memfd; slots using it keep it alive.
func (g *GuestMemfd) Close() error { return g.f.Close() }

// SetMemoryAttributes sets the attributes of guest-physical [gpa, gpa+size)
// (page-aligned): MemoryAttributePrivate makes the guest use the slot's
// guest_memfd there, 0 its shared backing.
func (vm *VM) SetMemoryAttributes(gpa, size, attrs uint64) error {
	a := MemoryAttributes{Address: gpa, Size: size, Attributes: attrs}
	if _, err := ioctlPtr(vm.fd, ioSetMemoryAttributes, unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_MEMORY_ATTRIBUTES [%#x,+%#x) attributes %#x: %w", gpa, size, attrs, err)
	}
	return nil
}

// SetPrivateMemorySlot installs memory slot slot at gpa with both backings:
// shared (the host mapping the guest uses for shared pages) and g from
// offset gOff (the guest's private pages). Attributes start shared.
func (vm *VM) SetPrivateMemorySlot(slot uint32, gpa uint64, shared []byte, g *GuestMemfd, gOff uint64) error {
	size := uint64(len(shared))
	if size == 0 || size%snpPageSize != 0 || gpa%snpPageSize != 0 || gOff%snpPageSize != 0 {
		return fmt.Errorf("kvm: private memory slot %d at %#x: %#x bytes at guest_memfd offset %#x are not page-aligned", slot, gpa, size, gOff)
	}
	if gOff > g.size || size > g.size-gOff {
		return fmt.Errorf("kvm: private memory slot %d at %#x: [%#x,+%#x) exceeds the %#x-byte guest_memfd", slot, gpa, gOff, size, g.size)
	}
	return vm.SetUserMemoryRegion2(UserspaceMemoryRegion2{
		Slot:             slot,
		Flags:            MemGuestMemfd,
		GuestPhysAddr:    gpa,
		MemorySize:       size,
		UserspaceAddr:    uint64(uintptr(unsafe.Pointer(unsafe.SliceData(shared)))),
		GuestMemfdOffset: gOff,
		GuestMemfd:       g.FD(),
	})
}
