// Package devices holds the VMM's emulated platform devices — the 8250 UART,
// the i8042 reset line, the exit-status and boot-stage ports — and the bus
// that routes guest port and MMIO accesses to them. Every access comes from
// the guest and is handled without trusting its size or offset.
package devices

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"
)

// Device handles accesses to its address range. offset is relative to the
// range's base; len(data) is the access size (1, 2, 4 or 8 bytes for
// CPU-initiated accesses). Read fills data; Write consumes it.
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

// Bus maps address ranges to devices: one Bus for port I/O, one for MMIO.
// Ranges are fixed before the vCPUs start; lookups take no lock.
type Bus struct {
	name    string
	ranges  []busRange // sorted by base, non-overlapping
	unknown rateLimiter
}

type busRange struct {
	base, size uint64
	name       string
	dev        Device
}

// NewBus returns an empty bus; name ("pio", "mmio") labels its log lines.
func NewBus(name string) *Bus { return &Bus{name: name, unknown: rateLimiter{every: time.Second}} }

// Insert adds dev at [base, base+size). It fails on an empty, wrapping or
// overlapping range.
func (b *Bus) Insert(base, size uint64, name string, dev Device) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("devices: %s bus: bad range %#x+%#x for %s", b.name, base, size, name)
	}
	i := sort.Search(len(b.ranges), func(i int) bool { return b.ranges[i].base >= base })
	if i > 0 && b.ranges[i-1].base+b.ranges[i-1].size > base {
		p := b.ranges[i-1]
		return fmt.Errorf("devices: %s bus: %s [%#x,+%#x) overlaps %s [%#x,+%#x)", b.name, name, base, size, p.name, p.base, p.size)
	}
	if i < len(b.ranges) && base+size > b.ranges[i].base {
		n := b.ranges[i]
		return fmt.Errorf("devices: %s bus: %s [%#x,+%#x) overlaps %s [%#x,+%#x)", b.name, name, base, size, n.name, n.base, n.size)
	}
	b.ranges = append(b.ranges, busRange{})
	copy(b.ranges[i+1:], b.ranges[i:])
	b.ranges[i] = busRange{base: base, size: size, name: name, dev: dev}
	return nil
}

// lookup finds the range holding [addr, addr+n).
func (b *Bus) lookup(addr uint64, n int) (Device, uint64, bool) {
	i := sort.Search(len(b.ranges), func(i int) bool { return b.ranges[i].base > addr }) - 1
	if i < 0 {
		return nil, 0, false
	}
	r := b.ranges[i]
	off := addr - r.base
	if off >= r.size || uint64(n) > r.size-off {
		return nil, 0, false
	}
	return r.dev, off, true
}

// Read dispatches a guest read. Reads nobody claims return all ones, as on
// an empty ISA or PCI bus; it reports whether a device handled it.
func (b *Bus) Read(addr uint64, data []byte) bool {
	if dev, off, ok := b.lookup(addr, len(data)); ok {
		dev.Read(off, data)
		return true
	}
	for i := range data {
		data[i] = 0xff
	}
	b.logUnknown("read", addr, len(data), 0)
	return false
}

// Write dispatches a guest write; writes nobody claims are dropped.
func (b *Bus) Write(addr uint64, data []byte) bool {
	if dev, off, ok := b.lookup(addr, len(data)); ok {
		dev.Write(off, data)
		return true
	}
	var v uint64
	for i := len(data) - 1; i >= 0; i-- {
		v = v<<8 | uint64(data[i])
	}
	b.logUnknown("write", addr, len(data), v)
	return false
}

func (b *Bus) logUnknown(op string, addr uint64, n int, v uint64) {
	if suppressed, ok := b.unknown.allow(); ok {
		slog.Debug("unhandled guest access", "bus", b.name, "op", op, "addr", fmt.Sprintf("%#x", addr), "size", n,
			"value", fmt.Sprintf("%#x", v), "suppressed", suppressed)
	}
}

// rateLimiter lets one event through per interval and counts the rest, so a
// guest hammering an unknown port cannot flood the log.
type rateLimiter struct {
	mu         sync.Mutex
	every      time.Duration
	last       time.Time
	suppressed int
}

func (r *rateLimiter) allow() (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if !r.last.IsZero() && now.Sub(r.last) < r.every {
		r.suppressed++
		return 0, false
	}
	n := r.suppressed
	r.last, r.suppressed = now, 0
	return n, true
}
