package devices

import (
	"io"
	"sync"
	"time"
)

// COM1's ISA resources.
const (
	COM1Port = 0x3f8
	COM1IRQ  = 4
	// SerialPorts is the width of a 16550's register window.
	SerialPorts = 8
)

// 16550A register offsets (DLAB = divisor latch access bit of LCR).
const (
	uartRBR = 0 // read, DLAB=0: receive buffer
	uartTHR = 0 // write, DLAB=0: transmit holding
	uartDLL = 0 // DLAB=1: divisor latch low
	uartIER = 1 // DLAB=0: interrupt enable
	uartDLM = 1 // DLAB=1: divisor latch high
	uartIIR = 2 // read: interrupt identification
	uartFCR = 2 // write: FIFO control
	uartLCR = 3
	uartMCR = 4
	uartLSR = 5
	uartMSR = 6
	uartSCR = 7
)

// Register bits.
const (
	ierRDI  = 0x01 // received data available
	ierTHRI = 0x02 // transmit holding register empty
	ierMask = 0x0f

	iirNoInt   = 0x01
	iirTHRI    = 0x02
	iirRDI     = 0x04
	iirFIFOs   = 0xc0 // FIFOs enabled (16550A)
	fcrEnable  = 0x01
	fcrClearRx = 0x02

	lcrDLAB = 0x80

	mcrDTR  = 0x01
	mcrRTS  = 0x02
	mcrOUT1 = 0x04
	mcrOUT2 = 0x08
	mcrLoop = 0x10
	mcrMask = 0x1f

	lsrDR   = 0x01 // data ready
	lsrTHRE = 0x20 // transmit holding register empty
	lsrTEMT = 0x40 // transmitter empty

	msrCTS = 0x10
	msrDSR = 0x20
	msrRI  = 0x40
	msrDCD = 0x80

	maxRxBuffered = 4096 // input beyond this is dropped, like an overrun
)

// Serial is a 16550A UART with enough behaviour for Linux's 8250 driver to
// probe it (scratch, loopback, FIFO detection) and drive it by interrupts.
// Transmitted bytes go to out; the transmitter never fills, so THR is always
// empty and a THRE interrupt is pending whenever the driver enables it or
// after each write while it is enabled.
type Serial struct {
	mu         sync.Mutex
	out        io.Writer
	interrupt  func() // raises the UART's IRQ (an edge)
	ier, lcr   uint8
	mcr, scr   uint8
	dll, dlm   uint8
	fifo       bool
	thrPending bool // THRE interrupt not yet acknowledged by an IIR read
	rx         []byte
}

// NewSerial returns a UART writing transmitted bytes to out and raising its
// interrupt with interrupt.
func NewSerial(out io.Writer, interrupt func()) *Serial {
	return &Serial{out: out, interrupt: interrupt, dll: 12 /* 9600 baud */, mcr: mcrOUT2}
}

// Input queues bytes for the guest to receive (console input) and returns
// how many fit; the receive buffer holds at most 4 KiB, so a caller with
// more waits and retries (see FeedInput).
func (s *Serial) Input(b []byte) int {
	s.mu.Lock()
	room := maxRxBuffered - len(s.rx)
	if len(b) > room {
		b = b[:room]
	}
	s.rx = append(s.rx, b...)
	raise := len(b) > 0 && s.ier&ierRDI != 0
	s.mu.Unlock()
	if raise {
		s.interrupt()
	}
	return len(b)
}

// FeedInput copies r to the guest's receive buffer until r ends or stop is
// closed, waiting while the buffer is full rather than dropping input.
func (s *Serial) FeedInput(r io.Reader, stop <-chan struct{}) {
	buf := make([]byte, 256)
	for {
		n, err := r.Read(buf)
		for data := buf[:n]; len(data) > 0; {
			data = data[s.Input(data):]
			if len(data) == 0 {
				break
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
		if err != nil {
			return
		}
		select {
		case <-stop:
			return
		default:
		}
	}
}

// Read handles a guest read of register offset.
func (s *Serial) Read(offset uint64, data []byte) {
	for i := range data {
		data[i] = 0
	}
	if len(data) != 1 || offset >= SerialPorts {
		return
	}
	s.mu.Lock()
	data[0] = s.readLocked(offset)
	s.mu.Unlock()
}

func (s *Serial) readLocked(offset uint64) uint8 {
	switch offset {
	case uartRBR:
		if s.lcr&lcrDLAB != 0 {
			return s.dll
		}
		if len(s.rx) == 0 {
			return 0
		}
		b := s.rx[0]
		s.rx = s.rx[1:]
		return b
	case uartIER:
		if s.lcr&lcrDLAB != 0 {
			return s.dlm
		}
		return s.ier
	case uartIIR:
		v := uint8(iirNoInt)
		switch {
		case s.ier&ierRDI != 0 && len(s.rx) > 0:
			v = iirRDI
		case s.thrPending:
			v = iirTHRI
			s.thrPending = false // reading IIR acknowledges THRE
		}
		if s.fifo {
			v |= iirFIFOs
		}
		return v
	case uartLCR:
		return s.lcr
	case uartMCR:
		return s.mcr
	case uartLSR:
		v := uint8(lsrTHRE | lsrTEMT)
		if len(s.rx) > 0 {
			v |= lsrDR
		}
		return v
	case uartMSR:
		if s.mcr&mcrLoop != 0 {
			// Loopback wires the modem outputs to the inputs.
			var v uint8
			if s.mcr&mcrRTS != 0 {
				v |= msrCTS
			}
			if s.mcr&mcrDTR != 0 {
				v |= msrDSR
			}
			if s.mcr&mcrOUT1 != 0 {
				v |= msrRI
			}
			if s.mcr&mcrOUT2 != 0 {
				v |= msrDCD
			}
			return v
		}
		return msrDCD | msrDSR | msrCTS
	case uartSCR:
		return s.scr
	}
	return 0
}

// Write handles a guest write of register offset.
func (s *Serial) Write(offset uint64, data []byte) {
	if len(data) != 1 || offset >= SerialPorts {
		return
	}
	v := data[0]
	s.mu.Lock()
	var out byte
	emit, raise := false, false
	switch offset {
	case uartTHR:
		if s.lcr&lcrDLAB != 0 {
			s.dll = v
			break
		}
		if s.mcr&mcrLoop != 0 {
			if len(s.rx) < maxRxBuffered {
				s.rx = append(s.rx, v)
			}
			raise = s.ier&ierRDI != 0
		} else {
			out, emit = v, true
		}
		if s.ier&ierTHRI != 0 {
			s.thrPending, raise = true, true
		}
	case uartIER:
		if s.lcr&lcrDLAB != 0 {
			s.dlm = v
			break
		}
		old := s.ier
		s.ier = v & ierMask
		// Enabling THRI with an empty transmitter interrupts at once: the
		// 8250 driver's THRE test and start_tx depend on it.
		if s.ier&ierTHRI != 0 && old&ierTHRI == 0 {
			s.thrPending, raise = true, true
		}
		if s.ier&ierTHRI == 0 {
			s.thrPending = false
		}
		if s.ier&ierRDI != 0 && len(s.rx) > 0 {
			raise = true
		}
	case uartFCR:
		s.fifo = v&fcrEnable != 0
		if v&fcrClearRx != 0 {
			s.rx = s.rx[:0]
		}
	case uartLCR:
		s.lcr = v
	case uartMCR:
		s.mcr = v & mcrMask
	case uartSCR:
		s.scr = v
	}
	s.mu.Unlock()
	if emit {
		// Console output errors (a closed stdout) must not stop the guest.
		_, _ = s.out.Write([]byte{out})
	}
	if raise {
		s.interrupt()
	}
}
