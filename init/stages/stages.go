// Package stages is the table of boot stages the in-guest init reports to
// the VMM through I/O port 0xf8 (the "stage port"), shared with the host so
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
package stages

import "fmt"

// Stage is one boot stage; its value is the byte written to Port.
type Stage uint8

// Port is the I/O port init writes stage bytes to. Not 0xf5, next to the
// exit port: QEMU's isa-debug-exit, which the reference runs and tests put
// at the exit port as "iobase=0xf4,iosize=0x04" (the usual idiom), exits on
// a write anywhere in 0xf4-0xf7, so a stage byte there would end every QEMU
// boot of this init at its first stage. 0xf8 is the first port past that
// window and, like 0xf4, inside the legacy FPU range (0xf0-0xff) that Linux
// reserves and no x86-64 driver touches.
const Port = 0xf8

// The stages, in the order init reaches them.
const (
	InitStarted  Stage = 1
	RootDevice   Stage = 2
	Evidence     Stage = 3
	KeyReceived  Stage = 4
	DiskUnlocked Stage = 5
	RootMounted  Stage = 6
	WorkloadExec Stage = 7
)

// names are the stable names the VMM logs and the benchmark parses.
var names = [...]string{
	InitStarted:  "init-started",
	RootDevice:   "root-device",
	Evidence:     "evidence",
	KeyReceived:  "key-received",
	DiskUnlocked: "disk-unlocked",
	RootMounted:  "root-mounted",
	WorkloadExec: "workload-exec",
}

// All lists the stages in order.
func All() []Stage {
	all := make([]Stage, 0, len(names)-1)
	for s := InitStarted; int(s) < len(names); s++ {
		all = append(all, s)
	}
	return all
}

// Known reports whether s is in the table.
func (s Stage) Known() bool { return s != 0 && int(s) < len(names) }

// String is the stage's name, or "unknown-N" for a byte not in the table
// (a newer guest, or a misbehaving one).
func (s Stage) String() string {
	if s.Known() {
		return names[s]
	}
	return fmt.Sprintf("unknown-%d", uint8(s))
}
