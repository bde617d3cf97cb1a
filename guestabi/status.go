package guestabi

import "fmt"

// Exit statuses: the table of exit statuses the in-guest init reports
// to the VMM through ExitPort, shared with the host so `krun-tee run`
// can print why a guest stopped without duplicating the table.
//
// One byte carries either the workload's own exit status or one of init's
// failure statuses:
//
//	0-99, 125      the workload's own exit status
//	100-112        confidential stage (attestation, key, disk) failures
//	113-118        reserved for later init steps; a workload may use them
//	119            set by the host, never by init: the VMM stopped a stalled guest
//	120-124        plain-path failures (setup, root, config, switch-root, exec)
//	126, 127       the command could not be executed / was not found
//	128+N          the workload was killed by signal N
//
// A workload may itself exit with any of init's values; the one-line
// "krun-init: <step>: <reason>" console diagnostic tells the two apart.

// Confidential-stage failures (only when the kernel command line carries
// krun.* launch parameters). The range starts at StatusConfidentialFirst.
const (
	// StatusLaunchParams: the krun.* launch parameters are malformed or incomplete.
	StatusLaunchParams = 100
	// StatusEvidence: no usable evidence provider (no TEE interface, a TEE other
	// than the one announced, tee=none, or the quote provider failed).
	StatusEvidence = 101
	// StatusClock: the guest's wall clock is implausible, so TLS certificate
	// validity cannot be checked.
	StatusClock = 102
	// StatusKBSUnreachable: the KBS did not answer within the retry budget.
	StatusKBSUnreachable = 103
	// StatusAttestationRefused: the KBS answered 401/403 to auth, attest or the
	// resource request (measurement not registered, policy, untrusted root).
	StatusAttestationRefused = 104
	// StatusKBSIdentity: the KBS's TLS chain does not match the pinned CA.
	StatusKBSIdentity = 105
	// StatusKBSProtocol: the KBS answered, but not with a usable key (missing
	// resource, server error, malformed or undecryptable answer).
	StatusKBSProtocol = 106
	// StatusLUKSHeader: the disk is not a valid, supported LUKS2 volume.
	StatusLUKSHeader = 107
	// StatusWrongKey: the released passphrase opens no keyslot of the disk.
	StatusWrongKey = 108
	// StatusDMCrypt: activating the dm-crypt mapping failed.
	StatusDMCrypt = 109
	// StatusMount: the decrypted root would not mount.
	StatusMount = 110
	// StatusConfidentialInternal: the confidential stage failed for a reason of
	// its own (for example no memory for the key derivation).
	StatusConfidentialInternal = 111
	// StatusVerity: the disk failed verification: the dm-verity root of the
	// measured launch configuration does not match what the disk holds (a
	// corrupted or rolled-back block, or a tree of another image).
	StatusVerity = 112

	// StatusStalled is reported by `krun-tee run` itself, never by init: a
	// vCPU made no progress for the stall timeout and the VMM stopped the
	// guest.
	StatusStalled = 119

	// StatusConfidentialFirst and StatusConfidentialLast bound the confidential range.
	StatusConfidentialFirst = 100
	StatusConfidentialLast  = 119
)

// Plain-path failures of init's own steps.
const (
	StatusSetup      = 120 // mounting /proc, /sys, /dev, /run or reading /proc/cmdline
	StatusRoot       = 121 // the root disk did not appear in time or would not mount
	StatusConfig     = 122 // /.krun_config.json missing or invalid
	StatusSwitchRoot = 123 // moving the mounts or chroot into the root
	StatusExec       = 124 // the workload could not be started, or init itself failed
)

// Shell-convention statuses.
const (
	StatusNotExecutable = 126 // the command was found but could not be executed
	StatusNotFound      = 127 // the command was not found
	StatusSignalBase    = 128 // added to the number of the signal that killed the workload
)

// statusEntry is one row of the statusTable.
type statusEntry struct {
	step, text string
}

// statusTable maps init's own statuses to the step name printed on the console and
// a sentence for the host.
var statusTable = map[int]statusEntry{
	StatusLaunchParams:         {"launch", "the krun.* launch parameters on the kernel command line are invalid"},
	StatusEvidence:             {"evidence", "no attestation evidence could be produced (TEE interface missing, mismatched or failing)"},
	StatusClock:                {"clock", "the guest wall clock is implausible, so the KBS certificate cannot be checked"},
	StatusKBSUnreachable:       {"kbs", "the KBS could not be reached (after bounded retries)"},
	StatusAttestationRefused:   {"attest", "the KBS refused the attestation (measurement not registered or policy not met)"},
	StatusKBSIdentity:          {"kbs-identity", "the KBS's TLS certificate does not chain to the pinned CA"},
	StatusKBSProtocol:          {"kbs", "the KBS answered without a usable key (missing resource, server error or malformed answer)"},
	StatusLUKSHeader:           {"luks", "the disk is not a valid LUKS2 volume this init supports"},
	StatusWrongKey:             {"luks", "the key released by the KBS does not open the disk"},
	StatusDMCrypt:              {"dm-crypt", "activating the dm-crypt mapping failed"},
	StatusMount:                {"mount", "the decrypted root filesystem would not mount"},
	StatusConfidentialInternal: {"confidential", "the confidential boot stage failed internally"},
	StatusVerity:               {"verity", "disk verification failed: the root disk does not match the measured dm-verity root (a corrupted or rolled-back block)"},
	StatusStalled:              {"stall", "the VMM stopped the guest because a vCPU made no progress"},
	StatusSetup:                {"setup", "mounting /proc, /sys, /dev, /run or reading /proc/cmdline failed"},
	StatusRoot:                 {"root", "the root disk did not appear in time or would not mount"},
	StatusConfig:               {"config", "/.krun_config.json is missing or invalid"},
	StatusSwitchRoot:           {"switch-root", "moving the mounts or chroot into the root failed"},
	StatusExec:                 {"exec", "the workload could not be started, or init itself failed"},
	StatusNotExecutable:        {"exec", "the command was found but could not be executed"},
	StatusNotFound:             {"exec", "the command was not found"},
}

// StatusStep returns the console step name of one of init's failure statuses and
// whether code is one.
func StatusStep(code int) (string, bool) {
	e, ok := statusTable[code]
	return e.step, ok
}

// DescribeStatus returns a one-line explanation of an exit status as the host
// should print it. Statuses init never uses for itself are described as the
// workload's (a workload may also exit with init's values; the guest
// console says which).
func DescribeStatus(code int) string {
	if e, ok := statusTable[code]; ok {
		return fmt.Sprintf("guest init: %s (status %d)", e.text, code)
	}
	switch {
	case code < 0 || code > 255:
		return fmt.Sprintf("invalid exit status %d", code)
	case code > StatusSignalBase:
		return fmt.Sprintf("the workload was killed by signal %d", code-StatusSignalBase)
	default:
		return fmt.Sprintf("the workload exited with status %d", code)
	}
}

// IsInitStatus reports whether code is one of init's own failure statuses.
func IsInitStatus(code int) bool { _, ok := statusTable[code]; return ok }
