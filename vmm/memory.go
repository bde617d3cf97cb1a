package vmm

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/krun-tee/krun-tee/layout"
	"github.com/krun-tee/krun-tee/vmm/boot"
)

// Memory is guest RAM: one anonymous shared mapping, exposed to the guest as
// the ranges of boot.MemoryMap (below the MMIO hole, and from 4 GiB), plus,
// for a firmware-mode layout, a second mapping for the firmware window just
// below 4 GiB (the boot shim). It implements virtio.GuestMemory.
type Memory struct {
	host   []byte
	ranges []memRange
	fw     []byte // firmware window, nil unless mapFirmware found one
	fwGPA  uint64
}

type memRange struct {
	boot.RAMRange
	hostOff uint64 // offset of GPA in host
}

// NewMemory maps size bytes of zeroed guest RAM.
func NewMemory(size uint64) (*Memory, error) {
	if size == 0 || size%layout.PageSize != 0 {
		return nil, fmt.Errorf("vmm: memory size %#x is not a positive multiple of the page size", size)
	}
	if uint64(int(size)) != size {
		return nil, fmt.Errorf("vmm: memory size %#x does not fit the address space", size)
	}
	// MAP_NORESERVE: guest RAM is touched lazily; the host commits pages as
	// the guest uses them.
	host, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("vmm: mapping %d MiB of guest RAM: %w", size>>20, err)
	}
	// Transparent huge pages cut EPT/NPT misses; a hint, so errors are fine
	// (shmem THP may be disabled).
	_ = unix.Madvise(host, unix.MADV_HUGEPAGE)
	m := &Memory{host: host}
	var off uint64
	for _, r := range boot.MemoryMap(size) {
		m.ranges = append(m.ranges, memRange{RAMRange: r, hostOff: off})
		off += r.Size
	}
	return m, nil
}

// Size returns the amount of guest RAM in bytes.
func (m *Memory) Size() uint64 { return uint64(len(m.host)) }

// Slice returns the host view of guest-physical [gpa, gpa+length). The range
// must lie inside one RAM range; the result aliases guest memory (the guest
// may change it at any time).
func (m *Memory) Slice(gpa, length uint64) ([]byte, error) {
	if gpa+length < gpa {
		return nil, fmt.Errorf("vmm: guest range %#x+%#x wraps", gpa, length)
	}
	for _, r := range m.ranges {
		if gpa >= r.GPA && gpa-r.GPA <= r.Size && length <= r.Size-(gpa-r.GPA) {
			off := r.hostOff + gpa - r.GPA
			return m.host[off : off+length : r.hostOff+r.Size], nil
		}
	}
	if fwLen := uint64(len(m.fw)); fwLen > 0 && gpa >= m.fwGPA && gpa-m.fwGPA <= fwLen && length <= fwLen-(gpa-m.fwGPA) {
		off := gpa - m.fwGPA
		return m.fw[off : off+length : fwLen], nil
	}
	return nil, fmt.Errorf("vmm: guest range [%#x,+%#x) is not guest RAM", gpa, length)
}

// mapFirmware maps the firmware window a layout needs: the span from its
// lowest region outside RAM up to 4 GiB, which must lie inside
// [boot.FirmwareWindowStart, boot.FirmwareWindowEnd). Layouts without such
// regions (boot.Build) need nothing.
func (m *Memory) mapFirmware(l *layout.Layout) error {
	low := uint64(boot.FirmwareWindowEnd)
	for _, r := range l.Regions {
		if _, err := m.Slice(r.GPA, r.Size); err == nil {
			continue
		}
		if r.GPA < boot.FirmwareWindowStart || r.End() > boot.FirmwareWindowEnd {
			return fmt.Errorf("vmm: region %s [%#x,%#x) is neither guest RAM nor in the firmware window [%#x,%#x)",
				r.Name, r.GPA, r.End(), uint64(boot.FirmwareWindowStart), uint64(boot.FirmwareWindowEnd))
		}
		low = min(low, r.GPA)
	}
	if low == boot.FirmwareWindowEnd {
		return nil
	}
	if m.fw != nil {
		return errors.New("vmm: firmware window already mapped")
	}
	fw, err := unix.Mmap(-1, 0, int(boot.FirmwareWindowEnd-low), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("vmm: mapping the firmware window: %w", err)
	}
	m.fw, m.fwGPA = fw, low
	return nil
}

// Load copies a launch layout's regions into guest RAM. Bytes beyond a
// region's Data are already zero (fresh anonymous memory).
func (m *Memory) Load(l *layout.Layout) error {
	if l.MemorySize != m.Size() {
		return fmt.Errorf("vmm: layout is for %d MiB of RAM, VM has %d MiB", l.MemorySize>>20, m.Size()>>20)
	}
	for _, r := range l.Regions {
		dst, err := m.Slice(r.GPA, r.Size)
		if err != nil {
			return fmt.Errorf("vmm: loading region %s: %w", r.Name, err)
		}
		copy(dst, r.Data)
	}
	return nil
}

// register tells KVM about every RAM range, one slot each.
func (m *Memory) register(setRegion func(slot uint32, gpa, size uint64, host uintptr) error) error {
	for i, r := range m.ranges {
		if err := setRegion(uint32(i), r.GPA, r.Size, uintptr(unsafe.Pointer(&m.host[r.hostOff]))); err != nil {
			return err
		}
	}
	if m.fw != nil {
		return setRegion(uint32(len(m.ranges)), m.fwGPA, uint64(len(m.fw)), uintptr(unsafe.Pointer(&m.fw[0])))
	}
	return nil
}

// Close unmaps guest RAM. Nothing may use slices from Slice afterwards.
func (m *Memory) Close() error {
	if m.host == nil {
		return errors.New("vmm: memory already closed")
	}
	err := unix.Munmap(m.host)
	m.host = nil
	if m.fw != nil {
		err = errors.Join(err, unix.Munmap(m.fw))
		m.fw = nil
	}
	return err
}
