// Package virtiotest is an in-process virtio driver for testing device models
// without KVM: fake guest memory (a []byte), a driver that performs the
// virtio-mmio initialisation sequence through MMIO register accesses, and
// split-queue helpers that post descriptor chains, kick, and read the used
// ring. It also exposes raw descriptor and ring writes so tests can play a
// malicious guest.
package virtiotest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/krun-tee/krun-tee/virtio"
	"github.com/krun-tee/krun-tee/virtio/internal/ringatomic"
)

// Memory is fake guest RAM: guest-physical addresses [0, len) map onto a
// byte slice. It implements virtio.GuestMemory.
type Memory struct {
	buf []byte
}

// NewMemory allocates size bytes of zeroed guest memory.
func NewMemory(size int) *Memory { return &Memory{buf: make([]byte, size)} }

// Slice implements virtio.GuestMemory with bounds checks.
func (m *Memory) Slice(gpa, length uint64) ([]byte, error) {
	end := gpa + length
	if end < gpa || end > uint64(len(m.buf)) {
		return nil, fmt.Errorf("virtiotest: range %#x+%#x outside guest memory of %#x bytes", gpa, length, len(m.buf))
	}
	return m.buf[gpa:end:end], nil
}

// Bytes returns the whole of guest memory.
func (m *Memory) Bytes() []byte { return m.buf }

// Driver drives one device through its MMIO transport.
type Driver struct {
	MMIO   *virtio.MMIO
	Mem    *Memory
	Queues []*Queue

	allocMu sync.Mutex
	next    uint64
	irqMu   sync.Mutex
	irqWake chan struct{} // closed and replaced on every interrupt
	irqs    int
	// Features are the features negotiated by Init.
	Features uint64
}

// DefaultTimeout bounds every wait in this package; it only turns a hung
// device into a test failure and never decides a result on its own.
const DefaultTimeout = 20 * time.Second

// New creates memSize bytes of guest memory and a transport for dev.
func New(dev virtio.Device, memSize int) *Driver {
	d := &Driver{Mem: NewMemory(memSize), next: 0x1000, irqWake: make(chan struct{})}
	d.MMIO = virtio.NewMMIO(dev, d.Mem, d.signal)
	return d
}

func (d *Driver) signal() {
	d.irqMu.Lock()
	d.irqs++
	close(d.irqWake)
	d.irqWake = make(chan struct{})
	d.irqMu.Unlock()
}

// interruptChan returns a channel that is closed by the next interrupt.
func (d *Driver) interruptChan() <-chan struct{} {
	d.irqMu.Lock()
	defer d.irqMu.Unlock()
	return d.irqWake
}

// Interrupts returns how many times the device raised its interrupt line.
func (d *Driver) Interrupts() int {
	d.irqMu.Lock()
	defer d.irqMu.Unlock()
	return d.irqs
}

// Alloc reserves n bytes of guest memory aligned to align (a power of two)
// and returns their guest-physical address. It panics when memory runs out,
// which is a bug in the test, not in the device.
func (d *Driver) Alloc(n, align uint64) uint64 {
	d.allocMu.Lock()
	defer d.allocMu.Unlock()
	if align == 0 {
		align = 1
	}
	a := (d.next + align - 1) &^ (align - 1)
	if a+n > uint64(len(d.Mem.buf)) {
		panic(fmt.Sprintf("virtiotest: out of guest memory allocating %d bytes", n))
	}
	d.next = a + n
	return a
}

// Read32 reads a 32-bit transport register.
func (d *Driver) Read32(off uint64) uint32 {
	var b [4]byte
	d.MMIO.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

// Write32 writes a 32-bit transport register.
func (d *Driver) Write32(off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	d.MMIO.Write(off, b[:])
}

// ReadConfig reads n bytes of device configuration space with accesses of
// the given width (1, 2 or 4).
func (d *Driver) ReadConfig(off uint64, n, width int) []byte {
	out := make([]byte, n)
	for i := 0; i < n; i += width {
		d.MMIO.Read(0x100+off+uint64(i), out[i:i+width])
	}
	return out
}

// Register offsets used by the driver (virtio 1.2 section 4.2.2).
const (
	RegMagic           = 0x000
	RegVersion         = 0x004
	RegDeviceID        = 0x008
	RegVendorID        = 0x00c
	RegDeviceFeatures  = 0x010
	RegDeviceFeatSel   = 0x014
	RegDriverFeatures  = 0x020
	RegDriverFeatSel   = 0x024
	RegQueueSel        = 0x030
	RegQueueNumMax     = 0x034
	RegQueueNum        = 0x038
	RegQueueReady      = 0x044
	RegQueueNotify     = 0x050
	RegInterruptStatus = 0x060
	RegInterruptACK    = 0x064
	RegStatus          = 0x070
	RegQueueDescLow    = 0x080
	RegQueueDescHigh   = 0x084
	RegQueueDriverLow  = 0x090
	RegQueueDriverHigh = 0x094
	RegQueueDeviceLow  = 0x0a0
	RegQueueDeviceHigh = 0x0a4
	RegConfigGen       = 0x0fc
)

// DeviceFeatures reads the 64-bit feature word the device offers.
func (d *Driver) DeviceFeatures() uint64 {
	d.Write32(RegDeviceFeatSel, 0)
	lo := d.Read32(RegDeviceFeatures)
	d.Write32(RegDeviceFeatSel, 1)
	hi := d.Read32(RegDeviceFeatures)
	return uint64(hi)<<32 | uint64(lo)
}

// Status reads the status register.
func (d *Driver) Status() uint8 { return uint8(d.Read32(RegStatus)) }

// Negotiate resets the device and runs ACKNOWLEDGE, DRIVER and feature
// negotiation, accepting want & offered. It returns an error when the device
// refuses FEATURES_OK.
func (d *Driver) Negotiate(want uint64) error {
	if m := d.Read32(RegMagic); m != 0x74726976 {
		return fmt.Errorf("virtiotest: bad magic %#x", m)
	}
	if v := d.Read32(RegVersion); v != 2 {
		return fmt.Errorf("virtiotest: version %d, want 2", v)
	}
	d.Write32(RegStatus, 0)
	d.Write32(RegStatus, virtio.StatusAcknowledge)
	d.Write32(RegStatus, virtio.StatusAcknowledge|virtio.StatusDriver)
	f := d.DeviceFeatures() & want
	d.Write32(RegDriverFeatSel, 0)
	d.Write32(RegDriverFeatures, uint32(f))
	d.Write32(RegDriverFeatSel, 1)
	d.Write32(RegDriverFeatures, uint32(f>>32))
	d.Write32(RegStatus, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
	if d.Status()&virtio.StatusFeaturesOK == 0 {
		return errors.New("virtiotest: device refused FEATURES_OK")
	}
	d.Features = f
	return nil
}

// QueueLayout places one queue in guest memory.
type QueueLayout struct {
	Size                 uint16
	Desc, Driver, Device uint64
}

// AllocQueue allocates a correctly aligned layout for a queue of size n.
func (d *Driver) AllocQueue(n uint16) QueueLayout {
	return QueueLayout{
		Size:   n,
		Desc:   d.Alloc(16*uint64(n), 16),
		Driver: d.Alloc(6+2*uint64(n), 2),
		Device: d.Alloc(6+8*uint64(n), 4),
	}
}

// SetupQueue programs queue index with layout l and marks it ready.
func (d *Driver) SetupQueue(index uint32, l QueueLayout) *Queue {
	d.Write32(RegQueueSel, index)
	d.Write32(RegQueueNum, uint32(l.Size))
	d.Write32(RegQueueDescLow, uint32(l.Desc))
	d.Write32(RegQueueDescHigh, uint32(l.Desc>>32))
	d.Write32(RegQueueDriverLow, uint32(l.Driver))
	d.Write32(RegQueueDriverHigh, uint32(l.Driver>>32))
	d.Write32(RegQueueDeviceLow, uint32(l.Device))
	d.Write32(RegQueueDeviceHigh, uint32(l.Device>>32))
	d.Write32(RegQueueReady, 1)
	q := &Queue{d: d, index: index, l: l, eventIdx: d.Features&virtio.FeatureEventIdx != 0, heads: map[uint16][]uint16{}}
	for i := int(l.Size) - 1; i >= 0; i-- {
		q.free = append(q.free, uint16(i))
	}
	for int(index) >= len(d.Queues) {
		d.Queues = append(d.Queues, nil)
	}
	d.Queues[index] = q
	return q
}

// DriverOK sets DRIVER_OK and reports whether the device accepted it
// (DEVICE_NEEDS_RESET clear).
func (d *Driver) DriverOK() error {
	d.Write32(RegStatus, uint32(d.Status())|virtio.StatusDriverOK)
	if s := d.Status(); s&virtio.StatusDeviceNeedsReset != 0 || s&virtio.StatusDriverOK == 0 {
		return fmt.Errorf("virtiotest: device status %#x after DRIVER_OK", s)
	}
	return nil
}

// Init negotiates want, sets up every queue with its maximum size capped at
// maxSize, and sets DRIVER_OK.
func (d *Driver) Init(want uint64, maxSize uint16) error {
	if err := d.Negotiate(want); err != nil {
		return err
	}
	for i := 0; i < d.MMIO.NumQueues(); i++ {
		d.Write32(RegQueueSel, uint32(i))
		n := uint16(d.Read32(RegQueueNumMax))
		if n > maxSize {
			n = maxSize
		}
		d.SetupQueue(uint32(i), d.AllocQueue(n))
	}
	return d.DriverOK()
}

// Buffer is one descriptor of a chain.
type Buffer struct {
	Addr     uint64
	Len      uint32
	Writable bool
}

// Used is one used-ring entry.
type Used struct {
	Head uint16
	Len  uint32
}

// Queue is the driver side of one split virtqueue.
type Queue struct {
	d        *Driver
	index    uint32
	l        QueueLayout
	eventIdx bool

	mu       sync.Mutex
	free     []uint16
	heads    map[uint16][]uint16 // head -> descriptors it holds
	availIdx uint16
	lastUsed uint16
}

// Layout returns the queue's guest-memory layout.
func (q *Queue) Layout() QueueLayout { return q.l }

// ring returns a ring's bytes plus two bytes of slack (when inside memory)
// so ringatomic finds a whole aligned word around its trailing event field.
func (q *Queue) ring(gpa, n uint64) []byte {
	if b, err := q.d.Mem.Slice(gpa, n+2); err == nil {
		return b
	}
	return q.mem(gpa, n)
}

func (q *Queue) mem(gpa, n uint64) []byte {
	b, err := q.d.Mem.Slice(gpa, n)
	if err != nil {
		panic(err)
	}
	return b
}

// WriteDesc writes descriptor i of the table at tableGPA (raw, for crafting
// malicious chains).
func (q *Queue) WriteDesc(tableGPA uint64, i uint16, addr uint64, length uint32, flags, next uint16) {
	b := q.mem(tableGPA+16*uint64(i), 16)
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], length)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
}

// PublishHead puts head into the available ring and publishes the new index
// (raw: head need not be a chain this Queue built).
func (q *Queue) PublishHead(head uint16) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.publishLocked(head)
}

func (q *Queue) publishLocked(head uint16) {
	ring := q.ring(q.l.Driver, 6+2*uint64(q.l.Size))
	binary.LittleEndian.PutUint16(ring[4+2*uint64(q.availIdx%q.l.Size):], head)
	q.availIdx++
	ringatomic.Store16(ring, 2, q.availIdx)
}

// SetAvailIdx stores a raw available index (malicious-guest tests).
func (q *Queue) SetAvailIdx(idx uint16) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.availIdx = idx
	ringatomic.Store16(q.mem(q.l.Driver, 4), 2, idx)
}

// Add posts bufs as one chain of direct descriptors and returns its head.
func (q *Queue) Add(bufs []Buffer) (uint16, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(bufs) == 0 || len(bufs) > len(q.free) {
		return 0, fmt.Errorf("virtiotest: queue %d: %d buffers, %d free descriptors", q.index, len(bufs), len(q.free))
	}
	ids := q.free[len(q.free)-len(bufs):]
	q.free = q.free[:len(q.free)-len(bufs)]
	ids = append([]uint16(nil), ids...)
	for i, b := range bufs {
		var flags, next uint16
		if b.Writable {
			flags |= virtio.DescFlagWrite
		}
		if i+1 < len(bufs) {
			flags |= virtio.DescFlagNext
			next = ids[i+1]
		}
		q.WriteDesc(q.l.Desc, ids[i], b.Addr, b.Len, flags, next)
	}
	q.heads[ids[0]] = ids
	q.publishLocked(ids[0])
	return ids[0], nil
}

// AddIndirect posts bufs through one indirect table allocated in guest
// memory and returns the head descriptor.
func (q *Queue) AddIndirect(bufs []Buffer) (uint16, error) {
	table := q.d.Alloc(16*uint64(len(bufs)), 16)
	for i, b := range bufs {
		var flags, next uint16
		if b.Writable {
			flags |= virtio.DescFlagWrite
		}
		if i+1 < len(bufs) {
			flags |= virtio.DescFlagNext
			next = uint16(i + 1)
		}
		q.WriteDesc(table, uint16(i), b.Addr, b.Len, flags, next)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.free) == 0 {
		return 0, fmt.Errorf("virtiotest: queue %d: no free descriptors", q.index)
	}
	id := q.free[len(q.free)-1]
	q.free = q.free[:len(q.free)-1]
	q.WriteDesc(q.l.Desc, id, table, uint32(16*len(bufs)), virtio.DescFlagIndirect, 0)
	q.heads[id] = []uint16{id}
	q.publishLocked(id)
	return id, nil
}

// Kick notifies the device unconditionally through the QueueNotify register.
func (q *Queue) Kick() { q.d.Write32(RegQueueNotify, q.index) }

// KickIfNeeded notifies the device only when it asked for it (avail_event
// with EVENT_IDX, the used ring's NO_NOTIFY flag otherwise), like Linux's
// virtqueue_kick_prepare. old is the available index before the additions.
func (q *Queue) KickIfNeeded(old uint16) bool {
	q.mu.Lock()
	cur := q.availIdx
	used := q.ring(q.l.Device, 6+8*uint64(q.l.Size))
	var need bool
	if q.eventIdx {
		ev := ringatomic.Load16(used, int(4+8*uint64(q.l.Size)))
		need = cur-ev-1 < cur-old
	} else {
		need = ringatomic.Load16(used, 0)&1 == 0
	}
	q.mu.Unlock()
	if need {
		q.Kick()
	}
	return need
}

// AvailIdx returns the driver's available index.
func (q *Queue) AvailIdx() uint16 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.availIdx
}

// PopUsed returns the next used entry if there is one, freeing its
// descriptors. With EVENT_IDX it asks for an interrupt on the next entry.
func (q *Queue) PopUsed() (Used, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	used := q.ring(q.l.Device, 6+8*uint64(q.l.Size))
	idx := ringatomic.Load16(used, 2)
	if idx == q.lastUsed {
		if q.eventIdx {
			avail := q.ring(q.l.Driver, 6+2*uint64(q.l.Size))
			ringatomic.Store16(avail, int(4+2*uint64(q.l.Size)), q.lastUsed)
		}
		idx = ringatomic.Load16(used, 2)
		if idx == q.lastUsed {
			return Used{}, false
		}
	}
	e := used[4+8*uint64(q.lastUsed%q.l.Size):]
	u := Used{Head: uint16(binary.LittleEndian.Uint32(e)), Len: binary.LittleEndian.Uint32(e[4:])}
	q.lastUsed++
	if ids, ok := q.heads[u.Head]; ok {
		q.free = append(q.free, ids...)
		delete(q.heads, u.Head)
	}
	return u, true
}

// WaitUsed waits for the next used entry, relying on the device's interrupt
// (and acknowledging it) rather than polling, so a device that forgets to
// interrupt makes the wait fail.
func (q *Queue) WaitUsed() (Used, error) {
	deadline := time.NewTimer(DefaultTimeout)
	defer deadline.Stop()
	for {
		wake := q.d.interruptChan()
		if u, ok := q.PopUsed(); ok {
			return u, nil
		}
		select {
		case <-wake:
			if st := q.d.Read32(RegInterruptStatus); st != 0 {
				q.d.Write32(RegInterruptACK, st)
			}
		case <-deadline.C:
			return Used{}, fmt.Errorf("virtiotest: queue %d: no used buffer within %v (status %#x)", q.index, DefaultTimeout, q.d.Status())
		}
	}
}
