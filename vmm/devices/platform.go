package devices

import "sync"

// i8042 keyboard controller ports and the commands the VMM implements.
const (
	I8042DataPort    = 0x60
	I8042CommandPort = 0x64
	// I8042Ports spans 0x60..0x64 (0x61, the PC speaker/NMI status port,
	// is served by KVM's in-kernel PIT when PIT2 has the dummy speaker).
	i8042CmdReadCTR    = 0x20
	i8042CmdWriteCTR   = 0x60
	i8042CmdSelfTest   = 0xaa
	i8042CmdPulseReset = 0xfe
	i8042SelfTestOK    = 0x55
	i8042StatusOBF     = 0x01 // output buffer full: data for the CPU at 0x60
	i8042StatusSys     = 0x04 // system flag: POST passed
)

// I8042 is the fraction of a PS/2 controller a guest needs: Linux's
// `reboot=k` pulses the CPU reset line with command 0xfe on port 0x64, and
// its keyboard probe reads the controller configuration byte. There is no
// keyboard or mouse behind it.
type I8042 struct {
	mu      sync.Mutex
	reset   func() // called once when the guest pulses reset
	ctr     uint8  // controller configuration byte
	out     []byte // bytes waiting at the data port
	pending uint8  // command awaiting a data byte (0 = none)
}

// NewI8042 returns a controller calling reset when the guest resets the CPU.
func NewI8042(reset func()) *I8042 { return &I8042{reset: reset} }

// Read handles reads of port 0x60 (offset 0) and 0x64 (offset 4).
func (k *I8042) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) != 1 {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	switch offset {
	case I8042DataPort - I8042DataPort:
		if len(k.out) > 0 {
			data[0] = k.out[0]
			k.out = k.out[1:]
		}
	case I8042CommandPort - I8042DataPort:
		data[0] = i8042StatusSys
		if len(k.out) > 0 {
			data[0] |= i8042StatusOBF
		}
	}
}

// Write handles writes of port 0x60 (offset 0) and 0x64 (offset 4).
func (k *I8042) Write(offset uint64, data []byte) {
	if len(data) != 1 {
		return
	}
	v := data[0]
	k.mu.Lock()
	reset := false
	switch offset {
	case I8042DataPort - I8042DataPort:
		if k.pending == i8042CmdWriteCTR {
			k.ctr = v
		}
		k.pending = 0
	case I8042CommandPort - I8042DataPort:
		k.pending = 0
		switch v {
		case i8042CmdReadCTR:
			k.out = append(k.out[:0], k.ctr)
		case i8042CmdWriteCTR:
			k.pending = v
		case i8042CmdSelfTest:
			k.out = append(k.out[:0], i8042SelfTestOK)
		case i8042CmdPulseReset:
			reset = true
		}
	}
	k.mu.Unlock()
	if reset {
		k.reset()
	}
}

// ExitPort is the port the guest's init writes the workload's exit status
// to (one byte; the contract with krun-tee's init).
const ExitPort = 0xf4

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
