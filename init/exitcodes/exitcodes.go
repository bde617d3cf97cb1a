// Package exitcodes is the table of exit statuses the in-guest init reports
// to the VMM through I/O port 0xf4, shared with the host so `krun-tee run`
// can print why a guest stopped without duplicating the table.
//
// One byte carries either the workload's own exit status or one of init's
// failure statuses:
//
//	0-99, 125      the workload's own exit status
//	100-111        confidential stage (attestation, key, disk) failures
//	112-118        reserved for later init steps; a workload may use them
//	119            set by the host, never by init: the VMM stopped a stalled guest
//	120-124        plain-path failures (setup, root, config, switch-root, exec)
//	126, 127       the command could not be executed / was not found
//	128+N          the workload was killed by signal N
//
// A workload may itself exit with any of init's values; the one-line
// "krun-init: <step>: <reason>" console diagnostic tells the two apart.
package exitcodes

import "fmt"

// Confidential-stage failures (only when the kernel command line carries
// krun.* launch parameters). The range starts at ConfidentialFirst.
const (
	// LaunchParams: the krun.* launch parameters are malformed or incomplete.
	LaunchParams = 100
	// Evidence: no usable evidence provider (no TEE interface, a TEE other
	// than the one announced, tee=none, or the quote provider failed).
	Evidence = 101
	// Clock: the guest's wall clock is implausible, so TLS certificate
	// validity cannot be checked.
	Clock = 102
	// KBSUnreachable: the KBS did not answer within the retry budget.
	KBSUnreachable = 103
	// AttestationRefused: the KBS answered 401/403 to auth, attest or the
	// resource request (measurement not registered, policy, untrusted root).
	AttestationRefused = 104
	// KBSIdentity: the KBS's TLS chain does not match the pinned CA.
	KBSIdentity = 105
	// KBSProtocol: the KBS answered, but not with a usable key (missing
	// resource, server error, malformed or undecryptable answer).
	KBSProtocol = 106
	// LUKSHeader: the disk is not a valid, supported LUKS2 volume.
	LUKSHeader = 107
	// WrongKey: the released passphrase opens no keyslot of the disk.
	WrongKey = 108
	// DMCrypt: activating the dm-crypt mapping failed.
	DMCrypt = 109
	// Mount: the decrypted root would not mount.
	Mount = 110
	// ConfidentialInternal: the confidential stage failed for a reason of
	// its own (for example no memory for the key derivation).
	ConfidentialInternal = 111

	// Stalled is reported by `krun-tee run` itself, never by init: a vCPU
	// made no progress for the stall timeout and the VMM stopped the guest.
	Stalled = 119

	// ConfidentialFirst and ConfidentialLast bound the confidential range.
	ConfidentialFirst = 100
	ConfidentialLast  = 119
)

// Plain-path failures of init's own steps.
const (
	Setup      = 120 // mounting /proc, /sys, /dev, /run or reading /proc/cmdline
	Root       = 121 // the root disk did not appear in time or would not mount
	Config     = 122 // /.krun_config.json missing or invalid
	SwitchRoot = 123 // moving the mounts or chroot into the root
	Exec       = 124 // the workload could not be started, or init itself failed
)

// Shell-convention statuses.
const (
	NotExecutable = 126 // the command was found but could not be executed
	NotFound      = 127 // the command was not found
	SignalBase    = 128 // added to the number of the signal that killed the workload
)

// entry is one row of the table.
type entry struct {
	step, text string
}

// table maps init's own statuses to the step name printed on the console and
// a sentence for the host.
var table = map[int]entry{
	LaunchParams:         {"launch", "the krun.* launch parameters on the kernel command line are invalid"},
	Evidence:             {"evidence", "no attestation evidence could be produced (TEE interface missing, mismatched or failing)"},
	Clock:                {"clock", "the guest wall clock is implausible, so the KBS certificate cannot be checked"},
	KBSUnreachable:       {"kbs", "the KBS could not be reached (after bounded retries)"},
	AttestationRefused:   {"attest", "the KBS refused the attestation (measurement not registered or policy not met)"},
	KBSIdentity:          {"kbs-identity", "the KBS's TLS certificate does not chain to the pinned CA"},
	KBSProtocol:          {"kbs", "the KBS answered without a usable key (missing resource, server error or malformed answer)"},
	LUKSHeader:           {"luks", "the disk is not a valid LUKS2 volume this init supports"},
	WrongKey:             {"luks", "the key released by the KBS does not open the disk"},
	DMCrypt:              {"dm-crypt", "activating the dm-crypt mapping failed"},
	Mount:                {"mount", "the decrypted root filesystem would not mount"},
	ConfidentialInternal: {"confidential", "the confidential boot stage failed internally"},
	Stalled:              {"stall", "the VMM stopped the guest because a vCPU made no progress"},
	Setup:                {"setup", "mounting /proc, /sys, /dev, /run or reading /proc/cmdline failed"},
	Root:                 {"root", "the root disk did not appear in time or would not mount"},
	Config:               {"config", "/.krun_config.json is missing or invalid"},
	SwitchRoot:           {"switch-root", "moving the mounts or chroot into the root failed"},
	Exec:                 {"exec", "the workload could not be started, or init itself failed"},
	NotExecutable:        {"exec", "the command was found but could not be executed"},
	NotFound:             {"exec", "the command was not found"},
}

// Step returns the console step name of one of init's failure statuses and
// whether code is one.
func Step(code int) (string, bool) {
	e, ok := table[code]
	return e.step, ok
}

// Describe returns a one-line explanation of an exit status as the host
// should print it. Statuses init never uses for itself are described as the
// workload's (a workload may also exit with init's values; the guest
// console says which).
func Describe(code int) string {
	if e, ok := table[code]; ok {
		return fmt.Sprintf("guest init: %s (status %d)", e.text, code)
	}
	switch {
	case code < 0 || code > 255:
		return fmt.Sprintf("invalid exit status %d", code)
	case code > SignalBase:
		return fmt.Sprintf("the workload was killed by signal %d", code-SignalBase)
	default:
		return fmt.Sprintf("the workload exited with status %d", code)
	}
}

// IsInit reports whether code is one of init's own failure statuses.
func IsInit(code int) bool { _, ok := table[code]; return ok }
