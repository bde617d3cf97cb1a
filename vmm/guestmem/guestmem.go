// Package guestmem converts a confidential guest's RAM between private and
// shared at the guest's request. Each RAM slot has two backings: a
// guest_memfd for private pages and a host mapping for shared ones; KVM's
// per-page PRIVATE attribute says which the guest uses. A conversion sets
// the attribute and releases the backing the page no longer uses, so guest
// RAM costs the host once, not twice.
package guestmem

import (
	"errors"
	"fmt"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/krun-tee/krun-tee/vmm/kvm"
)

const pageSize = 4096

// AttributeSetter sets KVM memory attributes; *kvm.VM is one.
type AttributeSetter interface {
	SetMemoryAttributes(gpa, size, attrs uint64) error
}

// Puncher releases a byte range of private memory; *kvm.GuestMemfd is one.
type Puncher interface {
	Punch(off, length uint64) error
}

// Slot is one RAM slot with both backings.
type Slot struct {
	GPA        uint64
	Shared     []byte  // host mapping of the shared backing (len = slot size)
	Private    Puncher // guest_memfd
	PrivateOff uint64  // offset of GPA in Private
}

// Memory is a confidential guest's RAM.
type Memory struct {
	attrs AttributeSetter
	slots []Slot // sorted by GPA, disjoint
	// discard releases shared pages the guest made private; the default
	// MADV_REMOVE frees the pages of a shared (shmem) mapping.
	discard func(b []byte) error
}

// New checks slots (page-aligned, disjoint) and returns their Memory.
func New(attrs AttributeSetter, slots []Slot) (*Memory, error) {
	s := append([]Slot(nil), slots...)
	sort.Slice(s, func(i, j int) bool { return s[i].GPA < s[j].GPA })
	for i, sl := range s {
		size := uint64(len(sl.Shared))
		if size == 0 || size%pageSize != 0 || sl.GPA%pageSize != 0 || sl.PrivateOff%pageSize != 0 || sl.Private == nil {
			return nil, fmt.Errorf("guestmem: slot at %#x (%#x bytes): not page-aligned or without private backing", sl.GPA, size)
		}
		if sl.GPA+size < sl.GPA {
			return nil, fmt.Errorf("guestmem: slot at %#x wraps", sl.GPA)
		}
		if i > 0 && s[i-1].GPA+uint64(len(s[i-1].Shared)) > sl.GPA {
			return nil, fmt.Errorf("guestmem: slots at %#x and %#x overlap", s[i-1].GPA, sl.GPA)
		}
	}
	return &Memory{attrs: attrs, slots: s, discard: func(b []byte) error { return unix.Madvise(b, unix.MADV_REMOVE) }}, nil
}

// piece is the part of a range inside one slot.
type piece struct {
	slot *Slot
	off  uint64 // offset in the slot
	size uint64
}

// split maps [gpa, gpa+size) onto slots; every byte must be RAM.
func (m *Memory) split(gpa, size uint64) ([]piece, error) {
	if gpa%pageSize != 0 || size%pageSize != 0 || size == 0 || gpa+size < gpa {
		return nil, fmt.Errorf("guestmem: range [%#x,+%#x) is not a page-aligned non-empty range", gpa, size)
	}
	var out []piece
	cur, end := gpa, gpa+size
	for i := range m.slots {
		sl := &m.slots[i]
		slEnd := sl.GPA + uint64(len(sl.Shared))
		if slEnd <= cur {
			continue
		}
		if sl.GPA > cur {
			break // a gap
		}
		n := min(end, slEnd) - cur
		out = append(out, piece{slot: sl, off: cur - sl.GPA, size: n})
		cur += n
		if cur == end {
			return out, nil
		}
	}
	return nil, fmt.Errorf("guestmem: [%#x,+%#x) is not all guest RAM (first gap at %#x)", gpa, size, cur)
}

// Convert makes [gpa, gpa+size) private or shared and releases the other
// backing of those pages: their old contents are gone, as the SEV-SNP and
// TDX page-state protocols expect.
func (m *Memory) Convert(gpa, size uint64, private bool) error {
	pieces, err := m.split(gpa, size)
	if err != nil {
		return err
	}
	var attrs uint64
	if private {
		attrs = kvm.MemoryAttributePrivate
	}
	if err := m.attrs.SetMemoryAttributes(gpa, size, attrs); err != nil {
		return fmt.Errorf("guestmem: converting [%#x,+%#x): %w", gpa, size, err)
	}
	var errs []error
	for _, p := range pieces {
		if private {
			if err := m.discard(p.slot.Shared[p.off : p.off+p.size]); err != nil {
				errs = append(errs, fmt.Errorf("guestmem: releasing shared pages [%#x,+%#x): %w", p.slot.GPA+p.off, p.size, err))
			}
		} else if err := p.slot.Private.Punch(p.slot.PrivateOff+p.off, p.size); err != nil {
			errs = append(errs, fmt.Errorf("guestmem: releasing private pages [%#x,+%#x): %w", p.slot.GPA+p.off, p.size, err))
		}
	}
	return errors.Join(errs...)
}

// HandleMemoryFault resolves a KVM_EXIT_MEMORY_FAULT: the guest accessed
// [GPA, GPA+Size) as private or shared while the attribute said otherwise,
// so the range is converted to the kind of the access.
func (m *Memory) HandleMemoryFault(f kvm.MemoryFaultExit) error {
	if f.Flags&^kvm.MemoryExitFlagPrivate != 0 {
		return fmt.Errorf("guestmem: memory fault at %#x with unknown flags %#x", f.GPA, f.Flags)
	}
	start := f.GPA &^ (pageSize - 1)
	end := f.GPA + f.Size
	if f.Size == 0 || end < f.GPA {
		return fmt.Errorf("guestmem: memory fault at %#x of %#x bytes", f.GPA, f.Size)
	}
	end = (end + pageSize - 1) &^ (pageSize - 1)
	return m.Convert(start, end-start, f.Private())
}

// Guest-visible errors of KVM_HC_MAP_GPA_RANGE (include/uapi/linux/kvm_para.h
// KVM_EINVAL; the guest gets the negated value in RAX).
const kvmEINVAL = 22

// HandleMapGPARange serves a KVM_HC_MAP_GPA_RANGE exit (also how KVM
// forwards SEV-SNP page-state changes): it converts args[0] (GPA) for
// args[1] pages as args[2] says, and returns the value for
// kvm_run.hypercall.ret. A request that is not valid guest RAM gets
// -EINVAL; err is set only when the host failed to convert, which should
// stop the VM.
func (m *Memory) HandleMapGPARange(h kvm.HypercallExit) (ret uint64, err error) {
	if h.Nr != kvm.HypercallMapGPARange {
		return negErrno(kvmEINVAL), fmt.Errorf("guestmem: hypercall %d is not MAP_GPA_RANGE", h.Nr)
	}
	gpa, npages, attrs := h.Args[0], h.Args[1], h.Args[2]
	// Bits 3:0 are the guest's preferred page size, a hint; bit 4 says
	// private. Other bits mean something this VMM does not implement.
	if attrs&^uint64(0xf|kvm.MapGPARangeEncrypted) != 0 || npages == 0 || npages > 1<<40 {
		return negErrno(kvmEINVAL), nil
	}
	size := npages * pageSize
	if _, serr := m.split(gpa, size); serr != nil {
		return negErrno(kvmEINVAL), nil
	}
	if err := m.Convert(gpa, size, attrs&kvm.MapGPARangeEncrypted != 0); err != nil {
		return negErrno(kvmEINVAL), err
	}
	return 0, nil
}

func negErrno(e uint64) uint64 { return -e }
