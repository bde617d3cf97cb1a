package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// /dev/sev commands (include/uapi/linux/psp-sev.h): SEV_ISSUE_CMD with a
// packed struct sev_issue_cmd {u32 cmd; u64 data; u32 error}.
const (
	sevIOCType              = 'S'
	sizeofSEVIssueCmd       = 16
	sizeofSNPStatus         = 32
	sevCmdSNPPlatformStatus = 9 // SNP_PLATFORM_STATUS

	// Field offsets of the packed structures.
	sevIssueOffData       = 4
	sevIssueOffError      = 12
	snpStatusOffAPIMajor  = 0
	snpStatusOffAPIMinor  = 1
	snpStatusOffState     = 2
	snpStatusOffFlags     = 3 // is_rmp_initialized:1
	snpStatusOffBuildID   = 4
	snpStatusOffGuests    = 12
	snpStatusOffCurTCB    = 16
	snpStatusOffReportTCB = 24

	// SNPMinAPIMajor and SNPMinAPIMinor are the oldest SNP firmware ABI
	// Linux 6.12 initialises SNP on (SNP_MIN_API_MAJOR/MINOR in
	// drivers/crypto/ccp/sev-dev.c).
	SNPMinAPIMajor = 1
	SNPMinAPIMinor = 51
)

var ioSEVIssueCmd = iocType(iocRead|iocWrite, sevIOCType, 0x0, sizeofSEVIssueCmd)

// iocType is ioc for an ioctl type other than KVM's.
func iocType(dir, typ, nr, size uintptr) uintptr { return dir<<30 | size<<16 | typ<<8 | nr }

// SNPPlatformStatus is the decoded struct sev_user_data_snp_status.
type SNPPlatformStatus struct {
	APIMajor, APIMinor uint8
	State              uint8 // 0 uninitialised, 1 initialised
	RMPInitialized     bool
	BuildID            uint32
	GuestCount         uint32
	CurrentTCB         uint64
	ReportedTCB        uint64
}

// AtLeast reports whether the firmware's SNP ABI is major.minor or newer.
func (s SNPPlatformStatus) AtLeast(major, minor uint8) bool {
	return s.APIMajor > major || s.APIMajor == major && s.APIMinor >= minor
}

// SNPPlatformStatus asks the PSP for its SNP state (SEV_ISSUE_CMD
// SNP_PLATFORM_STATUS on /dev/sev).
func (s *SEV) SNPPlatformStatus() (SNPPlatformStatus, error) {
	var out [sizeofSNPStatus]byte
	var cmd [sizeofSEVIssueCmd]byte
	var pin runtime.Pinner
	pin.Pin(&out)
	defer pin.Unpin()
	binary.LittleEndian.PutUint32(cmd[0:], sevCmdSNPPlatformStatus)
	binary.LittleEndian.PutUint64(cmd[sevIssueOffData:], uint64(uintptr(unsafe.Pointer(&out))))
	if _, err := ioctlPtr(s.fd, ioSEVIssueCmd, unsafe.Pointer(&cmd)); err != nil {
		var errno unix.Errno
		if !errors.As(err, &errno) {
			return SNPPlatformStatus{}, fmt.Errorf("kvm: SEV_ISSUE_CMD SNP_PLATFORM_STATUS: %w", err)
		}
		return SNPPlatformStatus{}, &SEVError{Step: "SEV_ISSUE_CMD SNP_PLATFORM_STATUS", Errno: errno,
			FWStatus: binary.LittleEndian.Uint32(cmd[sevIssueOffError:])}
	}
	return parseSNPStatus(out[:]), nil
}

// parseSNPStatus decodes the packed sev_user_data_snp_status.
func parseSNPStatus(b []byte) SNPPlatformStatus {
	return SNPPlatformStatus{
		APIMajor:       b[snpStatusOffAPIMajor],
		APIMinor:       b[snpStatusOffAPIMinor],
		State:          b[snpStatusOffState],
		RMPInitialized: b[snpStatusOffFlags]&1 != 0,
		BuildID:        binary.LittleEndian.Uint32(b[snpStatusOffBuildID:]),
		GuestCount:     binary.LittleEndian.Uint32(b[snpStatusOffGuests:]),
		CurrentTCB:     binary.LittleEndian.Uint64(b[snpStatusOffCurTCB:]),
		ReportedTCB:    binary.LittleEndian.Uint64(b[snpStatusOffReportTCB:]),
	}
}
