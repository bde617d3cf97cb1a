package guestabi

import "fmt"

// The boot stages: the table of boot stages the in-guest init reports to
// the VMM through StagePort, shared with the host so
// the VMM can name them without duplicating the table. It exists for timing
// (tests/bench/confidential.sh): the host cannot see the guest-side stages
// otherwise, and printing them on the console would mix them into the
// workload's output.
//
// One byte per stage, written once when the stage is reached:
//
//	1  init-started     init runs as PID 1 and has mounted /proc, /sys, /dev, /run
//	                    (the first moment the port device exists)
//	2  root-device      the root disk's block device appeared
//	3  evidence         the quote provider returned evidence (confidential only)
//	4  key-received     attested and the KBS released the passphrase (confidential only)
//	5  disk-unlocked    the LUKS2 keyslot opened and dm-crypt is active (confidential only)
//	6  root-mounted     the root filesystem is mounted
//	7  workload-exec    the workload's exec succeeded
//
// The plain path (--tee none) reports 1, 2, 6 and 7. The values are a
// contract with the host: never renumber them, only append. 0 is not a
// stage, so a zeroed or stray write reads as unknown.
//
// The guest is untrusted: the host treats a stage byte as a hint for
// timing, never as evidence that a stage happened.

// Stage is one boot stage; its value is the byte written to StagePort.
type Stage uint8

// The stages, in the order init reaches them.
const (
	StageInitStarted  Stage = 1
	StageRootDevice   Stage = 2
	StageEvidence     Stage = 3
	StageKeyReceived  Stage = 4
	StageDiskUnlocked Stage = 5
	StageRootMounted  Stage = 6
	StageWorkloadExec Stage = 7
)

// stageNames are the stable stageNames the VMM logs and the benchmark parses.
var stageNames = [...]string{
	StageInitStarted:  "init-started",
	StageRootDevice:   "root-device",
	StageEvidence:     "evidence",
	StageKeyReceived:  "key-received",
	StageDiskUnlocked: "disk-unlocked",
	StageRootMounted:  "root-mounted",
	StageWorkloadExec: "workload-exec",
}

// Stages lists the stages in order.
func Stages() []Stage {
	all := make([]Stage, 0, len(stageNames)-1)
	for s := StageInitStarted; int(s) < len(stageNames); s++ {
		all = append(all, s)
	}
	return all
}

// Known reports whether s is in the table.
func (s Stage) Known() bool { return s != 0 && int(s) < len(stageNames) }

// String is the stage's name, or "unknown-N" for a byte not in the table
// (a newer guest, or a misbehaving one).
func (s Stage) String() string {
	if s.Known() {
		return stageNames[s]
	}
	return fmt.Sprintf("unknown-%d", uint8(s))
}
