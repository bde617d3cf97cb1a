package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DevicePath is the KVM device node.
const DevicePath = "/dev/kvm"

// ioctl issues one ioctl and returns its result. Pointers passed as arg point
// to Go values that stay reachable for the call (runtime.KeepAlive in callers
// is unnecessary: the uintptr conversion happens in the call expression).
func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if e != 0 {
		return r, e
	}
	return r, nil
}

// ioctlPtr is ioctl with a pointer argument.
func ioctlPtr(fd int, req uintptr, p unsafe.Pointer) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(p))
	if e != 0 {
		return r, e
	}
	return r, nil
}

// System is an open /dev/kvm.
type System struct{ fd int }

// Open opens /dev/kvm and checks the API version.
func Open() (*System, error) {
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("kvm: open %s: %w", DevicePath, err)
	}
	s := &System{fd: fd}
	v, err := ioctl(fd, ioGetAPIVersion, 0)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("kvm: KVM_GET_API_VERSION: %w", err)
	}
	if v != APIVersion {
		s.Close()
		return nil, fmt.Errorf("kvm: API version %d, want %d", v, APIVersion)
	}
	return s, nil
}

// Close closes /dev/kvm; VMs created from it stay usable.
func (s *System) Close() error { return unix.Close(s.fd) }

// CheckExtension returns KVM_CHECK_EXTENSION's answer for capability c (0 =
// unsupported).
func (s *System) CheckExtension(c int) int {
	r, err := ioctl(s.fd, ioCheckExtension, uintptr(c))
	if err != nil {
		return 0
	}
	return int(r)
}

// VCPUMmapSize returns the size of each vCPU's kvm_run mapping.
func (s *System) VCPUMmapSize() (int, error) {
	r, err := ioctl(s.fd, ioGetVCPUMmapSize, 0)
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	if r < runMinSize {
		return 0, fmt.Errorf("kvm: kvm_run size %d is smaller than %d", r, runMinSize)
	}
	return int(r), nil
}

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID: the CPUID leaves KVM can
// present to a guest.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	for n := 64; n <= MaxCPUIDEntries; n *= 2 {
		buf := make([]byte, sizeofCPUID2+n*sizeofCPUIDEntry2)
		binary.LittleEndian.PutUint32(buf, uint32(n))
		_, err := ioctlPtr(s.fd, ioGetSupportedCPUID, unsafe.Pointer(&buf[0]))
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("kvm: KVM_GET_SUPPORTED_CPUID: %w", err)
		}
		got := int(binary.LittleEndian.Uint32(buf))
		if got > n {
			return nil, fmt.Errorf("kvm: KVM_GET_SUPPORTED_CPUID returned %d entries for room for %d", got, n)
		}
		entries := make([]CPUIDEntry, got)
		copy(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(entries))), got*sizeofCPUIDEntry2), buf[sizeofCPUID2:])
		return entries, nil
	}
	return nil, fmt.Errorf("kvm: KVM_GET_SUPPORTED_CPUID needs more than %d entries", MaxCPUIDEntries)
}

// CreateVM creates a plain (type 0) VM.
func (s *System) CreateVM() (*VM, error) {
	fd, err := ioctl(s.fd, ioCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_CREATE_VM: %w", err)
	}
	return &VM{fd: int(fd)}, nil
}

// VM is a KVM virtual machine.
type VM struct{ fd int }

// Close closes the VM fd; the VM is destroyed once its vCPUs are closed too.
func (vm *VM) Close() error { return unix.Close(vm.fd) }

// SetTSSAddr places the three pages KVM needs for real-mode emulation on
// Intel (KVM_SET_TSS_ADDR); the address must not be guest RAM.
func (vm *VM) SetTSSAddr(addr uint64) error {
	if _, err := ioctl(vm.fd, ioSetTSSAddr, uintptr(addr)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_TSS_ADDR %#x: %w", addr, err)
	}
	return nil
}

// SetIdentityMapAddr places KVM's one-page EPT identity map (Intel).
func (vm *VM) SetIdentityMapAddr(addr uint64) error {
	if _, err := ioctlPtr(vm.fd, ioSetIdentityMapAddr, unsafe.Pointer(&addr)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_IDENTITY_MAP_ADDR %#x: %w", addr, err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel PIC, IOAPIC and local APICs.
func (vm *VM) CreateIRQChip() error {
	if _, err := ioctl(vm.fd, ioCreateIRQChip, 0); err != nil {
		return fmt.Errorf("kvm: KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// CreatePIT2 creates the in-kernel i8254 timer.
func (vm *VM) CreatePIT2(flags uint32) error {
	cfg := PITConfig{Flags: flags}
	if _, err := ioctlPtr(vm.fd, ioCreatePIT2, unsafe.Pointer(&cfg)); err != nil {
		return fmt.Errorf("kvm: KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// SetUserMemoryRegion maps host memory at hostAddr as guest-physical
// [gpa, gpa+size) in the given slot.
func (vm *VM) SetUserMemoryRegion(slot uint32, gpa, size uint64, hostAddr uintptr) error {
	r := UserspaceMemoryRegion{Slot: slot, GuestPhysAddr: gpa, MemorySize: size, UserspaceAddr: uint64(hostAddr)}
	if _, err := ioctlPtr(vm.fd, ioSetUserMemoryRegion, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_USER_MEMORY_REGION slot %d [%#x,+%#x): %w", slot, gpa, size, err)
	}
	return nil
}

// IRQLine sets the level of an interrupt line of the in-kernel irqchip.
func (vm *VM) IRQLine(irq uint32, level bool) error {
	l := IRQLevel{IRQ: irq}
	if level {
		l.Level = 1
	}
	if _, err := ioctlPtr(vm.fd, ioIRQLine, unsafe.Pointer(&l)); err != nil {
		return fmt.Errorf("kvm: KVM_IRQ_LINE %d: %w", irq, err)
	}
	return nil
}

// IRQFD makes a write to eventfd fd inject an edge on gsi.
func (vm *VM) IRQFD(fd int, gsi uint32, deassign bool) error {
	r := IRQFD{FD: uint32(fd), GSI: gsi}
	if deassign {
		r.Flags = IRQFDDeassign
	}
	if _, err := ioctlPtr(vm.fd, ioIRQFD, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("kvm: KVM_IRQFD gsi %d: %w", gsi, err)
	}
	return nil
}

// IOEventFD makes a guest MMIO write of length bytes equal to datamatch at
// addr signal eventfd fd inside the kernel, without an exit.
func (vm *VM) IOEventFD(fd int, addr uint64, length uint32, datamatch uint64, deassign bool) error {
	r := IOEventFD{DataMatch: datamatch, Addr: addr, Len: length, FD: int32(fd), Flags: IOEventFDDataMatch}
	if deassign {
		r.Flags |= IOEventFDDeassign
	}
	if _, err := ioctlPtr(vm.fd, ioIOEventFD, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("kvm: KVM_IOEVENTFD %#x=%d: %w", addr, datamatch, err)
	}
	return nil
}

// CreateVCPU creates vCPU id and maps its kvm_run structure.
func (vm *VM) CreateVCPU(id int, mmapSize int) (*VCPU, error) {
	fd, err := ioctl(vm.fd, ioCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_CREATE_VCPU %d: %w", id, err)
	}
	run, err := unix.Mmap(int(fd), 0, mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("kvm: mmap kvm_run of vCPU %d: %w", id, err)
	}
	return &VCPU{ID: id, fd: int(fd), run: run}, nil
}

// VCPU is one virtual CPU and its shared kvm_run page.
type VCPU struct {
	ID  int
	fd  int
	run []byte
}

// Close unmaps kvm_run and closes the vCPU.
func (c *VCPU) Close() error {
	err := unix.Munmap(c.run)
	return errors.Join(err, unix.Close(c.fd))
}

// Run enters the guest until the next exit. It returns unix.EINTR when a
// signal (or ImmediateExit) interrupted it.
func (c *VCPU) Run() error {
	_, err := ioctl(c.fd, ioRun, 0)
	return err
}

// SetImmediateExit sets kvm_run.immediate_exit: while it is set, Run returns
// EINTR at once. Together with a signal it stops a vCPU whatever it is doing.
func (c *VCPU) SetImmediateExit(on bool) {
	var v byte
	if on {
		v = 1
	}
	// A plain byte store: the kernel reads the field on each KVM_RUN entry.
	c.run[runImmediateExit] = v
}

// GetRegs reads the general purpose registers.
func (c *VCPU) GetRegs() (Regs, error) {
	var r Regs
	_, err := ioctlPtr(c.fd, ioGetRegs, unsafe.Pointer(&r))
	if err != nil {
		return r, fmt.Errorf("kvm: vCPU %d KVM_GET_REGS: %w", c.ID, err)
	}
	return r, nil
}

// SetRegs writes the general purpose registers.
func (c *VCPU) SetRegs(r Regs) error {
	if _, err := ioctlPtr(c.fd, ioSetRegs, unsafe.Pointer(&r)); err != nil {
		return fmt.Errorf("kvm: vCPU %d KVM_SET_REGS: %w", c.ID, err)
	}
	return nil
}

// GetSregs reads segment and control registers.
func (c *VCPU) GetSregs() (Sregs, error) {
	var s Sregs
	if _, err := ioctlPtr(c.fd, ioGetSregs, unsafe.Pointer(&s)); err != nil {
		return s, fmt.Errorf("kvm: vCPU %d KVM_GET_SREGS: %w", c.ID, err)
	}
	return s, nil
}

// SetSregs writes segment and control registers.
func (c *VCPU) SetSregs(s Sregs) error {
	if _, err := ioctlPtr(c.fd, ioSetSregs, unsafe.Pointer(&s)); err != nil {
		return fmt.Errorf("kvm: vCPU %d KVM_SET_SREGS: %w", c.ID, err)
	}
	return nil
}

// GetFPU reads the x87/SSE state.
func (c *VCPU) GetFPU() (FPU, error) {
	var f FPU
	if _, err := ioctlPtr(c.fd, ioGetFPU, unsafe.Pointer(&f)); err != nil {
		return f, fmt.Errorf("kvm: vCPU %d KVM_GET_FPU: %w", c.ID, err)
	}
	return f, nil
}

// SetFPU writes the x87/SSE state.
func (c *VCPU) SetFPU(f FPU) error {
	if _, err := ioctlPtr(c.fd, ioSetFPU, unsafe.Pointer(&f)); err != nil {
		return fmt.Errorf("kvm: vCPU %d KVM_SET_FPU: %w", c.ID, err)
	}
	return nil
}

// SetXCR0 sets extended control register 0.
func (c *VCPU) SetXCR0(v uint64) error {
	x := XCRS{NrXCRS: 1}
	x.XCRS[0] = XCR{XCR: 0, Value: v}
	if _, err := ioctlPtr(c.fd, ioSetXCRS, unsafe.Pointer(&x)); err != nil {
		return fmt.Errorf("kvm: vCPU %d KVM_SET_XCRS: %w", c.ID, err)
	}
	return nil
}

// GetLAPIC reads the local APIC register page.
func (c *VCPU) GetLAPIC() (*LAPICState, error) {
	l := new(LAPICState)
	if _, err := ioctlPtr(c.fd, ioGetLAPIC, unsafe.Pointer(l)); err != nil {
		return nil, fmt.Errorf("kvm: vCPU %d KVM_GET_LAPIC: %w", c.ID, err)
	}
	return l, nil
}

// SetLAPIC writes the local APIC register page.
func (c *VCPU) SetLAPIC(l *LAPICState) error {
	if _, err := ioctlPtr(c.fd, ioSetLAPIC, unsafe.Pointer(l)); err != nil {
		return fmt.Errorf("kvm: vCPU %d KVM_SET_LAPIC: %w", c.ID, err)
	}
	return nil
}

// SetCPUID sets the CPUID leaves the guest sees.
func (c *VCPU) SetCPUID(entries []CPUIDEntry) error {
	if len(entries) == 0 || len(entries) > MaxCPUIDEntries {
		return fmt.Errorf("kvm: vCPU %d: %d CPUID entries, want 1..%d", c.ID, len(entries), MaxCPUIDEntries)
	}
	buf := make([]byte, sizeofCPUID2+len(entries)*sizeofCPUIDEntry2)
	binary.LittleEndian.PutUint32(buf, uint32(len(entries)))
	copy(buf[sizeofCPUID2:], unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(entries))), len(entries)*sizeofCPUIDEntry2))
	if _, err := ioctlPtr(c.fd, ioSetCPUID2, unsafe.Pointer(&buf[0])); err != nil {
		return fmt.Errorf("kvm: vCPU %d KVM_SET_CPUID2: %w", c.ID, err)
	}
	return nil
}

// SetMSRs writes model-specific registers; KVM stops at the first one it
// refuses, which the error names.
func (c *VCPU) SetMSRs(entries []MSREntry) error {
	if len(entries) == 0 {
		return nil
	}
	buf := make([]byte, sizeofMSRsHeader+len(entries)*sizeofMSREntry)
	binary.LittleEndian.PutUint32(buf, uint32(len(entries)))
	copy(buf[sizeofMSRsHeader:], unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(entries))), len(entries)*sizeofMSREntry))
	n, err := ioctlPtr(c.fd, ioSetMSRs, unsafe.Pointer(&buf[0]))
	if err != nil {
		return fmt.Errorf("kvm: vCPU %d KVM_SET_MSRS: %w", c.ID, err)
	}
	if int(n) < len(entries) {
		return fmt.Errorf("kvm: vCPU %d KVM_SET_MSRS: KVM refused MSR %#x", c.ID, entries[n].Index)
	}
	return nil
}

// ExitReason returns kvm_run.exit_reason.
func (c *VCPU) ExitReason() uint32 { return binary.LittleEndian.Uint32(c.run[runExitReason:]) }

// IOExit describes a port I/O exit. Data aliases kvm_run: for OUT it holds
// the bytes written, for IN the handler fills it; Count repetitions of Size
// bytes (REP INS/OUTS).
type IOExit struct {
	Direction uint8
	Size      uint8
	Port      uint16
	Count     uint32
	Data      []byte
}

// IO returns the current port I/O exit, validating KVM's offsets against the
// mapping so a confused kernel cannot make us index out of range.
func (c *VCPU) IO() (IOExit, error) {
	e := IOExit{
		Direction: c.run[runIODirection],
		Size:      c.run[runIOSize],
		Port:      binary.LittleEndian.Uint16(c.run[runIOPort:]),
		Count:     binary.LittleEndian.Uint32(c.run[runIOCount:]),
	}
	off := binary.LittleEndian.Uint64(c.run[runIODataOffset:])
	n := uint64(e.Size) * uint64(e.Count)
	if off > uint64(len(c.run)) || n > uint64(len(c.run))-off {
		return e, fmt.Errorf("kvm: I/O exit data [%#x,+%d) outside kvm_run", off, n)
	}
	e.Data = c.run[off : off+n]
	return e, nil
}

// MMIOExit describes an MMIO exit; Data aliases kvm_run's 8-byte buffer.
type MMIOExit struct {
	Addr    uint64
	Data    []byte
	IsWrite bool
}

// MMIO returns the current MMIO exit.
func (c *VCPU) MMIO() MMIOExit {
	n := binary.LittleEndian.Uint32(c.run[runMMIOLen:])
	if n > 8 {
		n = 8
	}
	return MMIOExit{
		Addr:    binary.LittleEndian.Uint64(c.run[runMMIOPhysAddr:]),
		Data:    c.run[runMMIOData : runMMIOData+n],
		IsWrite: c.run[runMMIOIsWrite] != 0,
	}
}

// FailEntryReason returns kvm_run.fail_entry.hardware_entry_failure_reason.
func (c *VCPU) FailEntryReason() uint64 {
	return binary.LittleEndian.Uint64(c.run[runFailEntryReason:])
}

// InternalError returns kvm_run.internal: the suberror and its data words.
func (c *VCPU) InternalError() (suberror uint32, data []uint64) {
	suberror = binary.LittleEndian.Uint32(c.run[runInternalSuberror:])
	n := min(binary.LittleEndian.Uint32(c.run[runInternalNData:]), 16)
	for i := uint32(0); i < n; i++ {
		data = append(data, binary.LittleEndian.Uint64(c.run[runInternalData+8*i:]))
	}
	return suberror, data
}

// SystemEventType returns kvm_run.system_event.type.
func (c *VCPU) SystemEventType() uint32 {
	return binary.LittleEndian.Uint32(c.run[runSystemEventType:])
}

// EventFD is a Linux eventfd, used for irqfd and ioeventfd. It is
// non-blocking underneath and read through Go's poller, so Close wakes a
// blocked Wait.
type EventFD struct {
	f  *os.File
	fd int
}

// NewEventFD creates an eventfd.
func NewEventFD() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("kvm: eventfd: %w", err)
	}
	return &EventFD{f: os.NewFile(uintptr(fd), "eventfd"), fd: fd}, nil
}

// FD returns the descriptor to hand to KVM.
func (e *EventFD) FD() int { return e.fd }

// Signal adds one to the counter, waking a reader (or KVM, for an irqfd).
func (e *EventFD) Signal() error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 1)
	_, err := e.f.Write(b[:])
	return err
}

// Wait blocks until the counter is non-zero, resets it and returns its value.
func (e *EventFD) Wait() (uint64, error) {
	var b [8]byte
	if _, err := e.f.Read(b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// Kick interrupts thread tid of this process (a vCPU thread inside KVM_RUN)
// with SIGURG, which the Go runtime tolerates as a spurious preemption
// request; KVM_RUN then returns EINTR.
func Kick(tid int) error { return unix.Tgkill(unix.Getpid(), tid, unix.SIGURG) }

// Gettid returns the calling OS thread's id (stable under runtime.LockOSThread).
func Gettid() int { return unix.Gettid() }

// Close closes the eventfd, making a pending Wait return an error.
func (e *EventFD) Close() error { return e.f.Close() }
