package kvm

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// VM types for KVM_CREATE_VM (arch/x86/include/uapi/asm/kvm.h); the set a
// host supports is the bitmask KVM_CHECK_EXTENSION(KVM_CAP_VM_TYPES) returns.
const (
	VMTypeDefault     = 0 // KVM_X86_DEFAULT_VM
	VMTypeSWProtected = 1 // KVM_X86_SW_PROTECTED_VM: guest_memfd without hardware protection (testing)
	VMTypeSEV         = 2 // KVM_X86_SEV_VM (Linux 6.10+)
	VMTypeSEVES       = 3 // KVM_X86_SEV_ES_VM (Linux 6.10+)
	VMTypeSNP         = 4 // KVM_X86_SNP_VM (Linux 6.11+)
	VMTypeTDX         = 5 // KVM_X86_TDX_VM (Linux 6.16+; not in the 6.12 headers)
)

// Capabilities of confidential VMs (KVM_CHECK_EXTENSION).
const (
	CapVMTypes          = 235 // bitmask of the VM types KVM_CREATE_VM accepts
	CapUserMemory2      = 231 // KVM_SET_USER_MEMORY_REGION2
	CapMemoryFaultInfo  = 232 // KVM_EXIT_MEMORY_FAULT details
	CapMemoryAttributes = 233 // bitmask of the attributes KVM_SET_MEMORY_ATTRIBUTES accepts
	CapGuestMemfd       = 234 // KVM_CREATE_GUEST_MEMFD
	CapExitHypercall    = 201 // bitmask of the hypercalls KVM can forward as KVM_EXIT_HYPERCALL
)

// VMTypeName names a KVM_X86_*_VM value.
func VMTypeName(t uint64) string {
	switch t {
	case VMTypeDefault:
		return "KVM_X86_DEFAULT_VM"
	case VMTypeSWProtected:
		return "KVM_X86_SW_PROTECTED_VM"
	case VMTypeSEV:
		return "KVM_X86_SEV_VM"
	case VMTypeSEVES:
		return "KVM_X86_SEV_ES_VM"
	case VMTypeSNP:
		return "KVM_X86_SNP_VM"
	case VMTypeTDX:
		return "KVM_X86_TDX_VM"
	}
	return fmt.Sprintf("vm-type-%d", t)
}

// CreateVMType creates a VM of the given KVM_X86_*_VM type.
func (s *System) CreateVMType(t uint64) (*VM, error) {
	fd, err := ioctl(s.fd, ioCreateVM, uintptr(t))
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_CREATE_VM type %s: %w", VMTypeName(t), err)
	}
	return &VM{fd: int(fd)}, nil
}

// CheckExtension returns KVM_CHECK_EXTENSION on the VM fd: some answers
// (memory attributes, guest_memfd) depend on the VM's type.
func (vm *VM) CheckExtension(c int) int {
	r, err := ioctl(vm.fd, ioCheckExtension, uintptr(c))
	if err != nil {
		return 0
	}
	return int(r)
}

// SEV commands of KVM_MEMORY_ENCRYPT_OP (kvm_sev_cmd.id).
const (
	SEVCmdInit2           = 22  // KVM_SEV_INIT2
	SEVCmdSNPLaunchStart  = 100 // KVM_SEV_SNP_LAUNCH_START
	SEVCmdSNPLaunchUpdate = 101 // KVM_SEV_SNP_LAUNCH_UPDATE
	SEVCmdSNPLaunchFinish = 102 // KVM_SEV_SNP_LAUNCH_FINISH
)

// SNP page types of SNP_LAUNCH_UPDATE (KVM_SEV_SNP_PAGE_TYPE_*, equal to
// the firmware's).
const (
	SNPPageNormal     = 1
	SNPPageZero       = 3
	SNPPageUnmeasured = 4
	SNPPageSecrets    = 5
	SNPPageCPUID      = 6
)

// SNPPageTypeName names a KVM_SEV_SNP_PAGE_TYPE_* value.
func SNPPageTypeName(t uint8) string {
	switch t {
	case SNPPageNormal:
		return "normal"
	case SNPPageZero:
		return "zero"
	case SNPPageUnmeasured:
		return "unmeasured"
	case SNPPageSecrets:
		return "secrets"
	case SNPPageCPUID:
		return "cpuid"
	}
	return fmt.Sprintf("page-type-%d", t)
}

// Sizes of SNP_LAUNCH_FINISH's inputs (KVM_SEV_SNP_*_SIZE).
const (
	SNPIDBlockSize    = 96
	SNPIDAuthSize     = 4096
	SNPHostDataSize   = 32
	snpPageSize       = 4096
	sizeofSEVCmd      = 24
	sizeofSEVInit     = 48
	sizeofSNPStart    = 64
	sizeofSNPUpdate   = 64
	sizeofSNPFinish   = 88
	sizeofDeviceAttr  = 24
	sizeofEnableCap   = 104
	sizeofMemRegion2  = 160
	sizeofGuestMemfd  = 64
	sizeofMemoryAttrs = 32
)

// System device attributes (KVM_GET_DEVICE_ATTR on /dev/kvm).
const (
	DevAttrGroupSEV        = 1 // KVM_X86_GRP_SEV
	DevAttrSEVVMSAFeatures = 0 // KVM_X86_SEV_VMSA_FEATURES: the SEV_FEATURES bits KVM_SEV_INIT2 accepts
)

var (
	ioMemoryEncryptOp      = iowr(0xba, 8) // KVM_MEMORY_ENCRYPT_OP: _IOWR(KVMIO, 0xba, unsigned long)
	ioGetDeviceAttr        = iow(0xe2, sizeofDeviceAttr)
	ioHasDeviceAttr        = iow(0xe3, sizeofDeviceAttr)
	ioEnableCap            = iow(0xa3, sizeofEnableCap)
	ioSetUserMemoryRegion2 = iow(0x49, sizeofMemRegion2)
	ioSetMemoryAttributes  = iow(0xd2, sizeofMemoryAttrs)
	ioCreateGuestMemfd     = iowr(0xd4, sizeofGuestMemfd)
)

// SEVCmd is struct kvm_sev_cmd, the argument of KVM_MEMORY_ENCRYPT_OP.
type SEVCmd struct {
	ID    uint32
	_     uint32
	Data  uint64
	Error uint32 // the firmware's status code (SEV_RET_*)
	SEVFD uint32
}

// SEVInit is struct kvm_sev_init (KVM_SEV_INIT2). For an SNP VM, KVM adds
// SNP_ACTIVE (bit 0) to VMSAFeatures itself: the measured VMSAs carry
// VMSAFeatures|1 in SEV_FEATURES. GHCBVersion 0 means KVM's default (2);
// Flags must be 0.
type SEVInit struct {
	VMSAFeatures uint64 // subset of System.SEVVMSAFeatures
	Flags        uint32
	GHCBVersion  uint16 // 1 or 2; 0 = KVM's default, 2
	_            uint16
	_            [8]uint32
}

// SNPLaunchStart is struct kvm_sev_snp_launch_start.
type SNPLaunchStart struct {
	Policy uint64
	GOSVW  [16]uint8
	Flags  uint16
	_      [6]uint8
	_      [4]uint64
}

// SNPLaunchUpdate is struct kvm_sev_snp_launch_update. The kernel advances
// GFNStart, UAddr and Len over the pages it processed.
type SNPLaunchUpdate struct {
	GFNStart uint64
	UAddr    uint64
	Len      uint64
	Type     uint8
	_        uint8
	Flags    uint16
	_        uint32
	_        [4]uint64
}

// SNPLaunchFinish is struct kvm_sev_snp_launch_finish.
type SNPLaunchFinish struct {
	IDBlockUAddr uint64
	IDAuthUAddr  uint64
	IDBlockEn    uint8
	AuthKeyEn    uint8
	VCEKDisabled uint8
	HostData     [SNPHostDataSize]uint8
	_            [3]uint8
	Flags        uint16
	_            [4]uint64
}

// SEVDevicePath is the PSP device whose fd every SEV command carries.
const SEVDevicePath = "/dev/sev"

// SEV is an open /dev/sev: KVM passes its fd to the PSP driver to prove the
// caller may issue firmware commands.
type SEV struct{ fd int }

// OpenSEV opens /dev/sev.
func OpenSEV() (*SEV, error) {
	fd, err := unix.Open(SEVDevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("kvm: open %s: %w", SEVDevicePath, err)
	}
	return &SEV{fd: fd}, nil
}

// Close closes /dev/sev.
func (s *SEV) Close() error { return unix.Close(s.fd) }

// SEVError is a failed KVM_MEMORY_ENCRYPT_OP: the step, the errno and the
// firmware status code KVM reported (kvm_sev_cmd.error).
type SEVError struct {
	Step     string // e.g. "KVM_SEV_SNP_LAUNCH_UPDATE gfn 0x100"
	Errno    unix.Errno
	FWStatus uint32
}

// Error formats "kvm: step: errno, firmware status 0x16 (INVALID_PARAM: meaning)".
func (e *SEVError) Error() string {
	return fmt.Sprintf("kvm: %s: %v, firmware status %s", e.Step, e.Errno, FWStatusString(e.FWStatus))
}

// Unwrap returns the errno, so errors.Is(err, unix.EAGAIN) works.
func (e *SEVError) Unwrap() error { return e.Errno }

// encryptOp issues one KVM_MEMORY_ENCRYPT_OP with data pointing at arg.
func (vm *VM) encryptOp(step string, sev *SEV, id uint32, arg unsafe.Pointer) error {
	if sev == nil {
		return fmt.Errorf("kvm: %s: no /dev/sev handle", step)
	}
	cmd := SEVCmd{ID: id, Data: uint64(uintptr(arg)), SEVFD: uint32(sev.fd)}
	var pin runtime.Pinner
	pin.Pin(arg)
	defer pin.Unpin()
	_, err := ioctlPtr(vm.fd, ioMemoryEncryptOp, unsafe.Pointer(&cmd))
	if err != nil {
		var errno unix.Errno
		if !errors.As(err, &errno) {
			return fmt.Errorf("kvm: %s: %w", step, err)
		}
		return &SEVError{Step: step, Errno: errno, FWStatus: cmd.Error}
	}
	return nil
}

// SEVInit2 issues KVM_SEV_INIT2 on a VM of type SEV, SEV-ES or SNP: the
// VMSA features (a subset of System.SEVVMSAFeatures) and GHCB version.
func (vm *VM) SEVInit2(sev *SEV, init SEVInit) error {
	return vm.encryptOp("KVM_SEV_INIT2", sev, SEVCmdInit2, unsafe.Pointer(&init))
}

// SNPLaunchStart issues KVM_SEV_SNP_LAUNCH_START with the guest policy.
func (vm *VM) SNPLaunchStart(sev *SEV, start SNPLaunchStart) error {
	step := fmt.Sprintf("KVM_SEV_SNP_LAUNCH_START policy %#x", start.Policy)
	return vm.encryptOp(step, sev, SEVCmdSNPLaunchStart, unsafe.Pointer(&start))
}

// SNPLaunchUpdate issues one KVM_SEV_SNP_LAUNCH_UPDATE of npages pages from
// guest frame gfn with the given page type, reading src (nil for
// SNPPageZero, else at least npages*4096 bytes). It returns how many pages
// the kernel processed, which may be fewer than npages; the caller loops.
// When the firmware rejects a CPUID page, the kernel writes the corrected
// page back into src.
func (vm *VM) SNPLaunchUpdate(sev *SEV, gfn, npages uint64, src []byte, pageType uint8) (uint64, error) {
	step := fmt.Sprintf("KVM_SEV_SNP_LAUNCH_UPDATE gfn %#x pages %d type %s", gfn, npages, SNPPageTypeName(pageType))
	if npages == 0 {
		return 0, fmt.Errorf("kvm: %s: no pages", step)
	}
	if npages > (1<<63)/snpPageSize {
		return 0, fmt.Errorf("kvm: %s: too many pages", step)
	}
	u := SNPLaunchUpdate{GFNStart: gfn, Len: npages * snpPageSize, Type: pageType}
	var pin runtime.Pinner
	defer pin.Unpin()
	if pageType != SNPPageZero {
		if uint64(len(src)) < u.Len {
			return 0, fmt.Errorf("kvm: %s: source is %d bytes, want %d", step, len(src), u.Len)
		}
		pin.Pin(unsafe.SliceData(src))
		u.UAddr = uint64(uintptr(unsafe.Pointer(unsafe.SliceData(src))))
	}
	if err := vm.encryptOp(step, sev, SEVCmdSNPLaunchUpdate, unsafe.Pointer(&u)); err != nil {
		return 0, err
	}
	if u.Len > npages*snpPageSize || u.Len%snpPageSize != 0 {
		return 0, fmt.Errorf("kvm: %s: kernel left len %#x of %#x", step, u.Len, npages*snpPageSize)
	}
	done := npages - u.Len/snpPageSize
	if u.GFNStart != gfn+done {
		return 0, fmt.Errorf("kvm: %s: kernel advanced gfn to %#x after %d pages", step, u.GFNStart, done)
	}
	return done, nil
}

// SNPLaunchFinish issues KVM_SEV_SNP_LAUNCH_FINISH: the firmware measures
// every vCPU's VMSA and seals the launch digest with HOST_DATA. idBlock
// (SNPIDBlockSize bytes) and idAuth (SNPIDAuthSize bytes) are optional;
// authKey marks idAuth as carrying an author key.
func (vm *VM) SNPLaunchFinish(sev *SEV, hostData [SNPHostDataSize]byte, idBlock, idAuth []byte, authKey bool) error {
	f := SNPLaunchFinish{HostData: hostData}
	var pin runtime.Pinner
	defer pin.Unpin()
	if idBlock != nil {
		if len(idBlock) != SNPIDBlockSize || len(idAuth) != SNPIDAuthSize {
			return fmt.Errorf("kvm: KVM_SEV_SNP_LAUNCH_FINISH: ID block %d bytes and auth %d bytes, want %d and %d",
				len(idBlock), len(idAuth), SNPIDBlockSize, SNPIDAuthSize)
		}
		pin.Pin(&idBlock[0])
		pin.Pin(&idAuth[0])
		f.IDBlockUAddr = uint64(uintptr(unsafe.Pointer(&idBlock[0])))
		f.IDAuthUAddr = uint64(uintptr(unsafe.Pointer(&idAuth[0])))
		f.IDBlockEn = 1
		if authKey {
			f.AuthKeyEn = 1
		}
	} else if idAuth != nil || authKey {
		return errors.New("kvm: KVM_SEV_SNP_LAUNCH_FINISH: ID auth without an ID block")
	}
	step := fmt.Sprintf("KVM_SEV_SNP_LAUNCH_FINISH host_data %x", hostData)
	return vm.encryptOp(step, sev, SEVCmdSNPLaunchFinish, unsafe.Pointer(&f))
}

// DeviceAttr is struct kvm_device_attr.
type DeviceAttr struct {
	Flags uint32
	Group uint32
	Attr  uint64
	Addr  uint64
}

// SEVVMSAFeatures returns the VMSA SEV_FEATURES bits KVM_SEV_INIT2 accepts
// (KVM_GET_DEVICE_ATTR KVM_X86_GRP_SEV/KVM_X86_SEV_VMSA_FEATURES on
// /dev/kvm, Linux 6.10+). ENXIO means KVM has SEV disabled.
func (s *System) SEVVMSAFeatures() (uint64, error) {
	var v uint64
	a := DeviceAttr{Group: DevAttrGroupSEV, Attr: DevAttrSEVVMSAFeatures, Addr: uint64(uintptr(unsafe.Pointer(&v)))}
	var pin runtime.Pinner
	pin.Pin(&v)
	defer pin.Unpin()
	if _, err := ioctlPtr(s.fd, ioHasDeviceAttr, unsafe.Pointer(&a)); err != nil {
		return 0, fmt.Errorf("kvm: KVM_HAS_DEVICE_ATTR KVM_X86_GRP_SEV/KVM_X86_SEV_VMSA_FEATURES: %w", err)
	}
	if _, err := ioctlPtr(s.fd, ioGetDeviceAttr, unsafe.Pointer(&a)); err != nil {
		return 0, fmt.Errorf("kvm: KVM_GET_DEVICE_ATTR KVM_X86_GRP_SEV/KVM_X86_SEV_VMSA_FEATURES: %w", err)
	}
	return v, nil
}
