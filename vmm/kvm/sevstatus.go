package kvm

import "fmt"

// SEV firmware status codes (SEV API and SEV-SNP firmware ABI specifications,
// "Status Codes"; include/uapi/linux/psp-sev.h SEV_RET_*). KVM copies the
// firmware's code into kvm_sev_cmd.error.
const (
	FWSuccess          = 0x00
	FWInvalidParam     = 0x16
	FWPolicyFailure    = 0x07
	FWInvalidPageState = 0x1a
	FWNoFirmwareCall   = 0xffffffff // SEV_RET_NO_FW_CALL (-1): the kernel failed before calling the firmware
)

// fwStatus is one status code: the kernel's SEV_RET_ suffix and its meaning.
type fwStatus struct {
	code    uint32
	name    string
	meaning string
}

// fwStatuses lists every code psp-sev.h names (6.12), in code order.
var fwStatuses = []fwStatus{
	{0x00, "SUCCESS", "success (the failure happened in the kernel, not the firmware)"},
	{0x01, "INVALID_PLATFORM_STATE", "the platform is in the wrong state for this command (SNP not initialised?)"},
	{0x02, "INVALID_GUEST_STATE", "the guest is in the wrong state for this command"},
	{0x03, "INVALID_CONFIG", "the platform configuration is invalid"},
	{0x04, "INVALID_LEN", "a buffer is too small"},
	{0x05, "ALREADY_OWNED", "the platform is already owned"},
	{0x06, "INVALID_CERTIFICATE", "a certificate is invalid"},
	{0x07, "POLICY_FAILURE", "the guest policy does not allow this (or the platform cannot meet it)"},
	{0x08, "INACTIVE", "the guest is not active"},
	{0x09, "INVALID_ADDRESS", "an address is invalid"},
	{0x0a, "BAD_SIGNATURE", "a signature is invalid"},
	{0x0b, "BAD_MEASUREMENT", "a measurement is invalid"},
	{0x0c, "ASID_OWNED", "the ASID is already owned"},
	{0x0d, "INVALID_ASID", "the ASID is invalid"},
	{0x0e, "WBINVD_REQUIRED", "WBINVD must be run on all cores first"},
	{0x0f, "DFFLUSH_REQUIRED", "DF_FLUSH must be issued first"},
	{0x10, "INVALID_GUEST", "the guest handle is invalid"},
	{0x11, "INVALID_COMMAND", "the command is invalid"},
	{0x12, "ACTIVE", "the guest is active"},
	{0x13, "HWSEV_RET_PLATFORM", "a hardware error occurred on the platform"},
	{0x14, "HWSEV_RET_UNSAFE", "a hardware error left the platform unsafe"},
	{0x15, "UNSUPPORTED", "the feature is not supported by this firmware"},
	{0x16, "INVALID_PARAM", "a parameter is invalid (for a CPUID page: leaves failed validation, the corrected page is written back)"},
	{0x17, "RESOURCE_LIMIT", "the firmware ran out of a resource"},
	{0x18, "SECURE_DATA_INVALID", "the part-specific integrity check failed"},
	{0x19, "INVALID_PAGE_SIZE", "the RMP page size is wrong"},
	{0x1a, "INVALID_PAGE_STATE", "the RMP page state is wrong (page not private, or already validated)"},
	{0x1b, "INVALID_MDATA_ENTRY", "the metadata entry is invalid"},
	{0x1c, "INVALID_PAGE_OWNER", "the page belongs to another guest or the hypervisor"},
	{0x1d, "AEAD_OFLOW", "the AEAD nonce would overflow"},
	{0x1f, "EXIT_RING_BUFFER", "the ring-buffer mode was exited"},
	{0x20, "RMP_INIT_REQUIRED", "the RMP must be initialised first"},
	{0x21, "BAD_SVN", "the image's security version is below the committed one"},
	{0x22, "BAD_VERSION", "the firmware version is not allowed (anti-rollback)"},
	{0x23, "SHUTDOWN_REQUIRED", "the firmware must be shut down first"},
	{0x24, "UPDATE_FAILED", "the firmware update failed"},
	{0x25, "RESTORE_REQUIRED", "the firmware must be restored first"},
	{0x26, "RMP_INITIALIZATION_FAILED", "RMP initialisation failed"},
	{0x27, "INVALID_KEY", "the requested key is invalid"},
}

// FWStatusName returns the name of a firmware status code ("INVALID_PARAM"),
// or "" for a code psp-sev.h does not name.
func FWStatusName(code uint32) string {
	if code == FWNoFirmwareCall {
		return "NO_FW_CALL"
	}
	for _, s := range fwStatuses {
		if s.code == code {
			return s.name
		}
	}
	return ""
}

// FWStatusString formats a status code as "0x16 (INVALID_PARAM: meaning)".
func FWStatusString(code uint32) string {
	if code == FWNoFirmwareCall {
		return "-1 (NO_FW_CALL: the kernel failed before calling the firmware)"
	}
	for _, s := range fwStatuses {
		if s.code == code {
			return fmt.Sprintf("%#x (%s: %s)", code, s.name, s.meaning)
		}
	}
	return fmt.Sprintf("%#x (unknown to the 6.12 headers)", code)
}
