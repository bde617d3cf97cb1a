// Package guestabi is the contract between the host (the VMM and `krun-tee
// run`) and krun-tee's in-guest init: the I/O ports the init writes, the
// boot-stage and exit-status bytes it writes there, the vsock addresses it
// connects to and the krun.* kernel command-line parameters it reads.
//
// Both sides import this one package, so no value is spelled twice. Every
// value here is a wire contract with guests already built: never renumber,
// only append. The package is small and depends only on the launch
// configuration's validator and package verity's parameter parser, because
// the measured init links it.
package guestabi

// I/O ports the init writes to. Both sit in the legacy FPU range
// (0xf0-0xff) that Linux reserves and no x86-64 driver touches.
const (
	// ExitPort receives one byte, the guest's exit status (status.go); the
	// VMM ends the run with it.
	ExitPort = 0xf4
	// StagePort receives one byte per boot stage reached (stages.go). Not
	// 0xf5, next to the exit port: QEMU's isa-debug-exit, which the
	// reference runs and tests put at the exit port as
	// "iobase=0xf4,iosize=0x04" (the usual idiom), exits on a write
	// anywhere in 0xf4-0xf7, so a stage byte there would end every QEMU boot
	// of this init at its first stage. 0xf8 is the first port past that
	// window.
	StagePort = 0xf8
)

// Vsock addresses. The guest connects to fixed ports on the host; the host
// maps them to the KBS address and, for emulated TEEs, to the emulated quote
// provider, so the guest never learns host addresses.
const (
	HostCID  uint32 = 2 // VMADDR_CID_HOST: where the guest connects
	GuestCID uint32 = 3 // the CID the VMM gives the guest (the first one not reserved)

	KBSPort   uint32 = 1100 // relayed to the KBS (TLS runs end to end through it)
	QuotePort uint32 = 1101 // the emulated PSP / TDX quote provider (emulated TEEs only)
)
