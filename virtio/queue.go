package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/krun-tee/krun-tee/virtio/internal/ringatomic"
)

// Split virtqueue layout (virtio 1.2 section 2.7).
const (
	descSize       = 16 // struct virtq_desc: addr u64, len u32, flags u16, next u16
	descOffAddr    = 0
	descOffLen     = 8
	descOffFlags   = 12
	descOffNext    = 14
	descTableAlign = 16

	availOffFlags = 0 // struct virtq_avail: flags u16, idx u16, ring[N] u16, used_event u16
	availOffIdx   = 2
	availOffRing  = 4
	availAlign    = 2

	usedOffFlags  = 0 // struct virtq_used: flags u16, idx u16, ring[N] {id u32, len u32}, avail_event u16
	usedOffIdx    = 2
	usedOffRing   = 4
	usedElemSize  = 8
	usedAlign     = 4
	indirectAlign = 8 // Linux allocates indirect tables with kmalloc (8-byte minimum alignment)

	// MaxQueueSize is the largest split queue the spec allows.
	MaxQueueSize = 32768
)

// Descriptor flags.
const (
	DescFlagNext     = 1
	DescFlagWrite    = 2
	DescFlagIndirect = 4
)

const availFlagNoInterrupt = 1 // VIRTQ_AVAIL_F_NO_INTERRUPT

// QueueConfig is the driver-programmed configuration of a split virtqueue:
// its size and the guest-physical addresses of its three areas.
type QueueConfig struct {
	Size          uint16
	DescAddr      uint64 // descriptor table
	DriverAddr    uint64 // available ring
	DeviceAddr    uint64 // used ring
	EventIdx      bool   // VIRTIO_F_RING_EVENT_IDX negotiated
	IndirectDescs bool   // VIRTIO_F_INDIRECT_DESC negotiated
}

func availRingSize(n uint16) uint64 { return availOffRing + 2*uint64(n) + 2 }
func usedRingSize(n uint16) uint64  { return usedOffRing + usedElemSize*uint64(n) + 2 }

// Queue is the device side of one split virtqueue. Pop is safe to call from
// one goroutine at a time per queue (it serialises itself); AddUsed,
// NeedsInterrupt and Complete are safe from any number of goroutines, so
// completions may happen out of order from a worker pool.
type Queue struct {
	index     int
	size      uint16
	mem       GuestMemory
	desc      []byte // the descriptor table
	avail     []byte // the available ring (plus 2 bytes of slack when RAM allows)
	used      []byte // the used ring (plus 2 bytes of slack when RAM allows)
	eventIdx  bool
	indirect  bool
	interrupt func()      // raises the used-buffer interrupt
	fail      func(error) // reports a malformed queue to the transport
	broken    atomic.Bool

	popMu     sync.Mutex
	nextAvail uint16

	pushMu        sync.Mutex
	nextUsed      uint16
	signalledUsed uint16
}

// ErrQueueBroken is returned by Pop after the queue was found malformed; the
// device stays in DEVICE_NEEDS_RESET until the driver resets it.
var ErrQueueBroken = errors.New("virtio: queue is broken (device needs reset)")

// NewQueue validates cfg against guest memory and returns a queue for it.
// maxSize is the largest size the device accepts. interrupt is called when
// the driver must be notified of used buffers; fail when the guest corrupts
// the queue. Both may be nil (tests, fuzzing).
func NewQueue(index int, mem GuestMemory, cfg QueueConfig, maxSize uint16, interrupt func(), fail func(error)) (*Queue, error) {
	n := cfg.Size
	if n == 0 || n&(n-1) != 0 {
		return nil, fmt.Errorf("virtio: queue %d: size %d is not a power of two", index, n)
	}
	if n > maxSize || n > MaxQueueSize {
		return nil, fmt.Errorf("virtio: queue %d: size %d exceeds maximum %d", index, n, maxSize)
	}
	if cfg.DescAddr%descTableAlign != 0 {
		return nil, fmt.Errorf("virtio: queue %d: descriptor table address %#x not %d-byte aligned", index, cfg.DescAddr, descTableAlign)
	}
	if cfg.DriverAddr%availAlign != 0 {
		return nil, fmt.Errorf("virtio: queue %d: available ring address %#x not %d-byte aligned", index, cfg.DriverAddr, availAlign)
	}
	if cfg.DeviceAddr%usedAlign != 0 {
		return nil, fmt.Errorf("virtio: queue %d: used ring address %#x not %d-byte aligned", index, cfg.DeviceAddr, usedAlign)
	}
	q := &Queue{index: index, size: n, mem: mem, eventIdx: cfg.EventIdx, indirect: cfg.IndirectDescs, interrupt: interrupt, fail: fail}
	var err error
	if q.desc, err = sliceRange(mem, cfg.DescAddr, descSize*uint64(n)); err != nil {
		return nil, fmt.Errorf("virtio: queue %d: descriptor table: %w", index, err)
	}
	if q.avail, err = sliceWithSlack(mem, cfg.DriverAddr, availRingSize(n)); err != nil {
		return nil, fmt.Errorf("virtio: queue %d: available ring: %w", index, err)
	}
	if q.used, err = sliceWithSlack(mem, cfg.DeviceAddr, usedRingSize(n)); err != nil {
		return nil, fmt.Errorf("virtio: queue %d: used ring: %w", index, err)
	}
	// The device starts where the driver starts: both indexes at zero (a
	// fresh queue after reset). Reading them instead would let a guest start
	// us mid-ring, which is harmless but pointless.
	return q, nil
}

// sliceRange is GuestMemory.Slice with an explicit overflow check, so a
// GuestMemory implementation that forgets one cannot be tricked by wrapping.
func sliceRange(mem GuestMemory, gpa, length uint64) ([]byte, error) {
	if gpa+length < gpa {
		return nil, fmt.Errorf("range %#x+%#x wraps around", gpa, length)
	}
	b, err := mem.Slice(gpa, length)
	if err != nil {
		return nil, err
	}
	if uint64(len(b)) != length {
		return nil, fmt.Errorf("guest memory returned %d bytes for %#x+%#x", len(b), gpa, length)
	}
	return b, nil
}

// sliceWithSlack slices a ring with two extra bytes when they are inside
// guest RAM, so that its trailing 16-bit event field has a whole aligned
// 32-bit word for the atomic access (see ringatomic).
func sliceWithSlack(mem GuestMemory, gpa, length uint64) ([]byte, error) {
	if b, err := sliceRange(mem, gpa, length+2); err == nil {
		return b[: length : length+2], nil
	}
	return sliceRange(mem, gpa, length)
}

// full re-extends a ring slice over its slack bytes for ringatomic.
func full(b []byte) []byte { return b[:cap(b)] }

// Index is the queue's position in the device's queue list.
func (q *Queue) Index() int { return q.index }

// Size is the negotiated number of descriptors.
func (q *Queue) Size() uint16 { return q.size }

// Broken reports whether the queue was found malformed.
func (q *Queue) Broken() bool { return q.broken.Load() }

// Chain is one validated descriptor chain: device-readable buffers followed
// by device-writable buffers, each a view of guest memory.
type Chain struct {
	// Head is the index of the chain's first descriptor, returned in the used ring.
	Head uint16
	// Readable are the device-readable buffers in chain order.
	Readable [][]byte
	// Writable are the device-writable buffers in chain order.
	Writable [][]byte
}

// markBroken records a fatal queue error, logs it and tells the transport.
func (q *Queue) markBroken(err error) error {
	err = fmt.Errorf("virtio: queue %d: %w", q.index, err)
	if q.broken.CompareAndSwap(false, true) {
		slog.Warn("virtio: malformed queue from guest; device needs reset", "queue", q.index, "err", err)
		if q.fail != nil {
			q.fail(err)
		}
	}
	return err
}

// Pop returns the next available descriptor chain, or nil when the driver
// has made none available. When the ring is empty it publishes avail_event
// (EVENT_IDX) and re-checks, so a chain added concurrently is either
// returned now or announced by a kick. A malformed ring or chain returns an
// error, marks the queue broken and reports it through fail.
func (q *Queue) Pop() (*Chain, error) {
	if q.broken.Load() {
		return nil, ErrQueueBroken
	}
	q.popMu.Lock()
	defer q.popMu.Unlock()
	availIdx := ringatomic.Load16(full(q.avail), availOffIdx)
	if availIdx == q.nextAvail {
		if q.eventIdx {
			ringatomic.Store16(full(q.used), int(usedOffRing+usedElemSize*uint64(q.size)), q.nextAvail)
		}
		availIdx = ringatomic.Load16(full(q.avail), availOffIdx)
		if availIdx == q.nextAvail {
			return nil, nil
		}
	}
	if pending := availIdx - q.nextAvail; pending > q.size {
		return nil, q.markBroken(fmt.Errorf("available index %d is %d entries ahead of %d (size %d)", availIdx, pending, q.nextAvail, q.size))
	}
	slot := uint64(q.nextAvail % q.size)
	head := binary.LittleEndian.Uint16(q.avail[availOffRing+2*slot:])
	q.nextAvail++
	c, err := q.parseChain(head)
	if err != nil {
		return nil, q.markBroken(fmt.Errorf("chain at head %d: %w", head, err))
	}
	return c, nil
}

// parseChain walks and validates the chain starting at head.
func (q *Queue) parseChain(head uint16) (*Chain, error) {
	c := &Chain{Head: head}
	table := q.desc
	tableLen := uint32(q.size)
	idx := uint32(head)
	inIndirect := false
	seenWritable := false
	for count := uint32(1); ; count++ {
		if idx >= tableLen {
			return nil, fmt.Errorf("descriptor index %d outside table of %d", idx, tableLen)
		}
		if count > tableLen {
			return nil, fmt.Errorf("chain longer than its table of %d descriptors (loop)", tableLen)
		}
		d := table[idx*descSize : (idx+1)*descSize]
		addr := binary.LittleEndian.Uint64(d[descOffAddr:])
		length := binary.LittleEndian.Uint32(d[descOffLen:])
		flags := binary.LittleEndian.Uint16(d[descOffFlags:])
		next := binary.LittleEndian.Uint16(d[descOffNext:])
		if flags&DescFlagIndirect != 0 {
			switch {
			case inIndirect:
				return nil, fmt.Errorf("descriptor %d: nested indirect table", idx)
			case !q.indirect:
				return nil, fmt.Errorf("descriptor %d: indirect table without VIRTIO_F_INDIRECT_DESC", idx)
			case flags&DescFlagNext != 0:
				return nil, fmt.Errorf("descriptor %d: indirect descriptor with NEXT set", idx)
			case len(c.Readable)+len(c.Writable) != 0 || count != 1:
				return nil, fmt.Errorf("descriptor %d: indirect descriptor not alone in its chain", idx)
			case length == 0 || length%descSize != 0:
				return nil, fmt.Errorf("descriptor %d: indirect table length %d not a positive multiple of %d", idx, length, descSize)
			case length/descSize > uint32(q.size):
				return nil, fmt.Errorf("descriptor %d: indirect table of %d entries exceeds queue size %d", idx, length/descSize, q.size)
			case addr%indirectAlign != 0:
				return nil, fmt.Errorf("descriptor %d: indirect table address %#x not %d-byte aligned", idx, addr, indirectAlign)
			}
			t, err := sliceRange(q.mem, addr, uint64(length))
			if err != nil {
				return nil, fmt.Errorf("descriptor %d: indirect table: %w", idx, err)
			}
			table, tableLen, idx, inIndirect = t, length/descSize, 0, true
			count = 0
			continue
		}
		if length > 0 {
			buf, err := sliceRange(q.mem, addr, uint64(length))
			if err != nil {
				return nil, fmt.Errorf("descriptor %d: buffer: %w", idx, err)
			}
			if flags&DescFlagWrite != 0 {
				seenWritable = true
				c.Writable = append(c.Writable, buf)
			} else {
				if seenWritable {
					return nil, fmt.Errorf("descriptor %d: device-readable buffer after a device-writable one", idx)
				}
				c.Readable = append(c.Readable, buf)
			}
		} else if flags&DescFlagWrite != 0 {
			seenWritable = true
		} else if seenWritable {
			return nil, fmt.Errorf("descriptor %d: device-readable buffer after a device-writable one", idx)
		}
		if flags&DescFlagNext == 0 {
			return c, nil
		}
		idx = uint32(next)
	}
}

// AddUsed returns a chain to the driver with the number of bytes the device
// wrote into its writable buffers. It does not interrupt; see Complete.
func (q *Queue) AddUsed(head uint16, written uint32) {
	q.pushMu.Lock()
	defer q.pushMu.Unlock()
	slot := uint64(q.nextUsed % q.size)
	e := q.used[usedOffRing+usedElemSize*slot:]
	binary.LittleEndian.PutUint32(e[0:], uint32(head))
	binary.LittleEndian.PutUint32(e[4:], written)
	q.nextUsed++
	// Publishing the index after the element is the release the driver's
	// acquire load of used.idx pairs with.
	ringatomic.Store16(full(q.used), usedOffIdx, q.nextUsed)
}

// NeedsInterrupt reports whether the driver asked to be interrupted for the
// used buffers added since the last call (used_event with EVENT_IDX, the
// NO_INTERRUPT flag otherwise), and records them as signalled.
func (q *Queue) NeedsInterrupt() bool {
	q.pushMu.Lock()
	defer q.pushMu.Unlock()
	old, cur := q.signalledUsed, q.nextUsed
	if old == cur {
		return false
	}
	q.signalledUsed = cur
	if q.eventIdx {
		usedEvent := ringatomic.Load16(full(q.avail), int(availOffRing+2*uint64(q.size)))
		return needEvent(usedEvent, cur, old)
	}
	return ringatomic.Load16(full(q.avail), availOffFlags)&availFlagNoInterrupt == 0
}

// needEvent is vring_need_event: true when event lies in [old, new).
func needEvent(event, newIdx, old uint16) bool {
	return newIdx-event-1 < newIdx-old
}

// Complete is AddUsed followed by an interrupt when the driver wants one.
func (q *Queue) Complete(head uint16, written uint32) {
	q.AddUsed(head, written)
	q.Notify()
}

// Notify raises the used-buffer interrupt if NeedsInterrupt says so; devices
// that return several chains at once call AddUsed for each and Notify once.
func (q *Queue) Notify() {
	if q.NeedsInterrupt() && q.interrupt != nil {
		q.interrupt()
	}
}
