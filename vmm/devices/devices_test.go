package devices

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// recorder is a Device logging accesses.
type recorder struct {
	reads, writes []uint64
	fill          byte
}

func (r *recorder) Read(off uint64, data []byte) {
	r.reads = append(r.reads, off)
	for i := range data {
		data[i] = r.fill
	}
}
func (r *recorder) Write(off uint64, data []byte) { r.writes = append(r.writes, off) }

func TestBusDispatch(t *testing.T) {
	b := NewBus("test")
	a, c := &recorder{fill: 0xaa}, &recorder{fill: 0xcc}
	if err := b.Insert(0x100, 0x10, "a", a); err != nil {
		t.Fatal(err)
	}
	if err := b.Insert(0x200, 0x8, "c", c); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		base, size uint64
	}{{0x10f, 1}, {0xf8, 0x10}, {0x100, 0x10}, {0x1f0, 0x20}, {0x180, 0}, {^uint64(0) - 1, 4}} {
		if err := b.Insert(tc.base, tc.size, "bad", &recorder{}); err == nil {
			t.Errorf("Insert [%#x,+%#x) accepted", tc.base, tc.size)
		}
	}
	if err := b.Insert(0x110, 0xf0, "between", &recorder{}); err != nil {
		t.Errorf("adjacent range refused: %v", err)
	}
	buf := make([]byte, 2)
	if !b.Read(0x105, buf) || !bytes.Equal(buf, []byte{0xaa, 0xaa}) || a.reads[0] != 5 {
		t.Errorf("read a: %x %v", buf, a.reads)
	}
	if !b.Write(0x207, buf[:1]) || c.writes[0] != 7 {
		t.Errorf("write c: %v", c.writes)
	}
	// An access straddling the end of a range is not the device's.
	if b.Write(0x207, buf) {
		t.Error("straddling write dispatched")
	}
	four := make([]byte, 4)
	if b.Read(0x300, four) || !bytes.Equal(four, []byte{0xff, 0xff, 0xff, 0xff}) {
		t.Errorf("unknown read = %x, want all ones", four)
	}
	if b.Read(0x50, four) || b.Write(0x50, four) {
		t.Error("access below every range dispatched")
	}
}

// uart wraps Serial with byte-register helpers.
type uart struct {
	*Serial
	out  bytes.Buffer
	irqs int
}

func newUART() *uart {
	u := &uart{}
	u.Serial = NewSerial(&u.out, func() { u.irqs++ })
	return u
}

func (u *uart) in(off uint64) byte {
	b := []byte{0}
	u.Read(off, b)
	return b[0]
}
func (u *uart) outb(off uint64, v byte) { u.Write(off, []byte{v}) }

func TestSerialProbe(t *testing.T) {
	u := newUART()
	// Scratch register.
	u.outb(uartSCR, 0xa5)
	if u.in(uartSCR) != 0xa5 {
		t.Error("scratch register lost its value")
	}
	// Divisor latch is separate from THR/IER under DLAB.
	u.outb(uartLCR, lcrDLAB|0x03)
	u.outb(uartDLL, 0x01)
	u.outb(uartDLM, 0x00)
	if u.in(uartDLL) != 1 || u.in(uartDLM) != 0 || u.out.Len() != 0 {
		t.Error("divisor latch writes leaked into THR/IER")
	}
	u.outb(uartLCR, 0x03)
	if u.in(uartLCR) != 0x03 {
		t.Error("LCR not readable")
	}
	// Loopback: MCR outputs appear on MSR (Linux's autoconfig check for 0x90).
	u.outb(uartMCR, mcrLoop|0x0a)
	if got := u.in(uartMSR) & 0xf0; got != 0x90 {
		t.Errorf("loopback MSR = %#x, want 0x90", got)
	}
	// Loopback also routes THR to RBR instead of the console.
	u.outb(uartTHR, 'L')
	if u.in(uartLSR)&lsrDR == 0 || u.in(uartRBR) != 'L' || u.out.Len() != 0 {
		t.Error("loopback byte not received")
	}
	u.outb(uartMCR, mcrOUT2|mcrDTR|mcrRTS)
	if got := u.in(uartMSR); got != msrDCD|msrDSR|msrCTS {
		t.Errorf("MSR = %#x", got)
	}
	// FIFO detection: IIR bits 7:6 = 11 once FCR enables the FIFOs.
	if u.in(uartIIR)&iirFIFOs != 0 {
		t.Error("FIFO bits set before FCR")
	}
	u.outb(uartFCR, fcrEnable)
	if u.in(uartIIR)&iirFIFOs != iirFIFOs {
		t.Error("FIFO bits missing after FCR")
	}
	if lsr := u.in(uartLSR); lsr&(lsrTHRE|lsrTEMT) != lsrTHRE|lsrTEMT || lsr&lsrDR != 0 {
		t.Errorf("idle LSR = %#x", lsr)
	}
}

func TestSerialTHREInterrupts(t *testing.T) {
	u := newUART()
	if u.in(uartIIR)&0x0f != iirNoInt {
		t.Error("interrupt pending at reset")
	}
	// Enabling THRI interrupts at once and IIR reports THRE, once.
	u.outb(uartIER, ierTHRI)
	if u.irqs != 1 {
		t.Errorf("%d interrupts after enabling THRI, want 1", u.irqs)
	}
	if u.in(uartIIR)&0x0f != iirTHRI {
		t.Error("IIR does not report THRE")
	}
	if u.in(uartIIR)&0x0f != iirNoInt {
		t.Error("reading IIR did not acknowledge THRE")
	}
	// The 8250 driver's THRE test: disable, re-enable, expect THRE again.
	u.outb(uartIER, 0)
	u.outb(uartIER, ierTHRI)
	if u.in(uartIIR)&0x0f != iirTHRI {
		t.Error("THRE not pending after re-enabling THRI")
	}
	// Each transmitted byte goes out and raises THRE again.
	before := u.irqs
	for _, c := range []byte("ok\n") {
		u.outb(uartTHR, c)
	}
	if u.out.String() != "ok\n" || u.irqs != before+3 {
		t.Errorf("output %q, %d interrupts", u.out.String(), u.irqs-before)
	}
	// With THRI off, writes raise nothing.
	u.outb(uartIER, 0)
	before = u.irqs
	u.outb(uartTHR, 'x')
	if u.irqs != before || u.in(uartIIR)&0x0f != iirNoInt {
		t.Error("interrupt with THRI disabled")
	}
}

func TestSerialInput(t *testing.T) {
	u := newUART()
	u.Input([]byte("hi"))
	if u.irqs != 0 {
		t.Error("interrupt with RDI disabled")
	}
	u.outb(uartIER, ierRDI)
	if u.irqs != 1 || u.in(uartIIR)&0x0f != iirRDI {
		t.Error("enabling RDI with data waiting did not interrupt")
	}
	if u.in(uartRBR) != 'h' || u.in(uartRBR) != 'i' || u.in(uartLSR)&lsrDR != 0 {
		t.Error("received bytes wrong")
	}
	if n := u.Input(bytes.Repeat([]byte{1}, 2*maxRxBuffered)); n != maxRxBuffered || len(u.rx) != maxRxBuffered {
		t.Errorf("accepted %d, rx buffer %d; want both %d", n, len(u.rx), maxRxBuffered)
	}
	// Wider accesses and offsets outside the window are ignored.
	wide := []byte{1, 2}
	u.Read(uartRBR, wide)
	if wide[0] != 0 || wide[1] != 0 || len(u.rx) != maxRxBuffered {
		t.Error("2-byte read consumed input")
	}
	u.Write(9, []byte{1})
}

func TestI8042(t *testing.T) {
	resets := 0
	k := NewI8042(func() { resets++ })
	rd := func(off uint64) byte { b := []byte{0xaa}; k.Read(off, b); return b[0] }
	wr := func(off uint64, v byte) { k.Write(off, []byte{v}) }
	const data, cmd = 0, 4
	// reboot=k's kb_wait needs IBF (bit 1) clear; Linux's i8042 driver gives
	// up on a controller whose OBF (bit 0) never clears.
	if st := rd(cmd); st&0x02 != 0 || st&0x01 == 0 {
		t.Errorf("status %#x, want OBF set and IBF clear", st)
	}
	if rd(data) != 0 {
		t.Error("data port not zero")
	}
	for _, v := range []byte{0x20, 0x60, 0xaa, 0xad} {
		wr(cmd, v)
	}
	wr(data, 0xfe) // 0xfe on the data port is not a reset
	if resets != 0 {
		t.Fatal("reset before 0xfe on the command port")
	}
	wr(cmd, i8042CmdPulseReset)
	wr(cmd, i8042CmdPulseReset) // kb reboot retries; report once
	if resets != 1 {
		t.Errorf("%d resets, want 1", resets)
	}
	k.Write(4, []byte{0xfe, 0}) // wide writes are ignored
}

func TestExitDevice(t *testing.T) {
	var got []uint8
	e := NewExitDevice(func(s uint8) { got = append(got, s) })
	e.Write(0, []byte{7})
	e.Write(0, []byte{1, 2}) // wider writes do not count
	e.Write(0, []byte{1, 2, 3, 4})
	if len(got) != 1 || got[0] != 7 {
		t.Errorf("statuses %v, want [7]", got)
	}
}

type lockedBuf struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writes++
	return l.b.Write(p)
}

func (l *lockedBuf) get() (string, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String(), l.writes
}

func TestConsoleWriter(t *testing.T) {
	var sink lockedBuf
	c := NewConsoleWriter(&sink, time.Millisecond)
	for _, b := range []byte("line one\n") {
		c.Write([]byte{b})
	}
	if s, n := sink.get(); s != "line one\n" || n != 1 {
		t.Errorf("after a line: %q in %d writes, want one write", s, n)
	}
	c.Write([]byte("prompt> "))
	// The partial line is flushed by the timer; wait for it (bounded).
	deadline := time.Now().Add(10 * time.Second)
	for {
		if s, _ := sink.get(); s == "line one\nprompt> " {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("partial line never flushed")
		}
		time.Sleep(time.Millisecond)
	}
}

// FuzzGuestPortAccesses drives the UART and the i8042 with arbitrary guest
// access sequences: (offset, size, value, direction) quadruples. Nothing may
// panic, input stays bounded and the UART's output is exactly the bytes
// written to THR outside loopback and DLAB.
func FuzzGuestPortAccesses(f *testing.F) {
	f.Add([]byte{1, 1, 2, 1, 0, 1, 'h', 1, 2, 1, 0, 0, 4, 1, 0x10, 1, 0, 1, 'x', 1, 5, 1, 0, 0})
	f.Add([]byte{4, 1, 0x60, 1, 0, 1, 0x47, 1, 4, 1, 0x20, 1, 0, 1, 0, 0, 4, 1, 0xfe, 1})
	f.Fuzz(func(t *testing.T, ops []byte) {
		var out bytes.Buffer
		s := NewSerial(&out, func() {})
		k := NewI8042(func() {})
		var want bytes.Buffer
		for len(ops) >= 4 {
			off, size, val, write := uint64(ops[0]%10), int(ops[1]%9), ops[2], ops[3]&1 == 1
			ops = ops[4:]
			data := bytes.Repeat([]byte{val}, size)
			if write {
				if off == uartTHR && size == 1 && s.lcr&lcrDLAB == 0 && s.mcr&mcrLoop == 0 {
					want.WriteByte(val)
				}
				s.Write(off, data)
				k.Write(off, data)
			} else {
				s.Read(off, data)
				k.Read(off, data)
			}
			if len(s.rx) > maxRxBuffered {
				t.Fatalf("uart input buffer grew to %d", len(s.rx))
			}
		}
		if !bytes.Equal(out.Bytes(), want.Bytes()) {
			t.Fatalf("output %q, want %q", out.Bytes(), want.Bytes())
		}
	})
}

func TestSerialFeedInput(t *testing.T) {
	u := newUART()
	u.outb(uartIER, ierRDI)
	in := bytes.Repeat([]byte("0123456789"), 1000) // more than the buffer holds
	done := make(chan struct{})
	go func() {
		u.FeedInput(bytes.NewReader(in), nil)
		close(done)
	}()
	var got []byte
	deadline := time.After(20 * time.Second)
	for len(got) < len(in) {
		u.mu.Lock()
		ready := len(u.rx) > 0
		u.mu.Unlock()
		if !ready {
			select {
			case <-deadline:
				t.Fatalf("received %d of %d bytes", len(got), len(in))
			case <-time.After(time.Millisecond):
			}
			continue
		}
		got = append(got, u.in(uartRBR))
	}
	<-done
	if !bytes.Equal(got, in) {
		t.Error("input reordered or lost")
	}
	// A closed stop channel ends a feed blocked on a full buffer.
	stop := make(chan struct{})
	close(stop)
	u.FeedInput(bytes.NewReader(bytes.Repeat([]byte{1}, 2*maxRxBuffered)), stop)
}
