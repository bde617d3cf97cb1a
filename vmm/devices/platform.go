package devices

import (
	"sync"

	"github.com/krun-tee/krun-tee/guestabi"
)

// i8042 keyboard controller ports.
const (
	I8042DataPort    = 0x60
	I8042CommandPort = 0x64
	// i8042CmdPulseReset pulses the CPU reset line (what `reboot=k` sends).
	i8042CmdPulseReset = 0xfe
	// i8042Status is what the status port always reads: output buffer full
	// (bit 0), input buffer empty (bit 1 clear).
	i8042Status = 0x01
)

// I8042 is the reset line of a PC's keyboard controller and nothing else:
// Linux's `reboot=k` writes 0xfe to port 0x64 after waiting for the input
// buffer to drain. The status port always shows an empty input buffer (so
// that wait ends at once) and a full output buffer that never empties, which
// makes Linux's i8042 driver report "No controller found" after a few reads
// instead of probing for a keyboard, which would cost seconds of timeouts.
type I8042 struct {
	once  sync.Once
	reset func() // called once when the guest pulses reset
}

// NewI8042 returns a controller calling reset when the guest resets the CPU.
func NewI8042(reset func()) *I8042 { return &I8042{reset: reset} }

// Read handles reads of port 0x60 (offset 0) and 0x64 (offset 4).
func (k *I8042) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) == 1 && offset == I8042CommandPort-I8042DataPort {
		data[0] = i8042Status
	}
}

// Write handles writes of port 0x60 (offset 0) and 0x64 (offset 4); only
// the reset command on 0x64 has an effect.
func (k *I8042) Write(offset uint64, data []byte) {
	if len(data) == 1 && offset == I8042CommandPort-I8042DataPort && data[0] == i8042CmdPulseReset {
		k.once.Do(k.reset)
	}
}

// ExitPort is the port the guest's init writes the workload's exit status
// to (one byte; the contract with krun-tee's init, package guestabi).
const ExitPort = guestabi.ExitPort

// ExitDevice reports a one-byte OUT to ExitPort as the guest's exit status.
// Other sizes are ignored so a stray wider write cannot end the VM with a
// truncated value; reads return zero.
type ExitDevice struct{ exit func(status uint8) }

// NewExitDevice returns the exit port device.
func NewExitDevice(exit func(status uint8)) *ExitDevice { return &ExitDevice{exit: exit} }

// Read returns zero.
func (e *ExitDevice) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
}

// Write reports the status byte.
func (e *ExitDevice) Write(offset uint64, data []byte) {
	if offset == 0 && len(data) == 1 {
		e.exit(data[0])
	}
}

// Sink ignores writes and reads as zero: for ports a guest pokes routinely
// (POST code 0x80, the other UARTs' probes) that need no behaviour and
// should not be logged as unknown.
type Sink struct{}

// Read returns zero.
func (Sink) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
}

// Write does nothing.
func (Sink) Write(offset uint64, data []byte) {}
