//go:build amd64 || arm64 || riscv64 || loong64 || ppc64le || 386 || arm || mips64le || mipsle

// Package ringatomic performs the few 16-bit loads and stores of a split
// virtqueue that must be ordered against the other side (the guest driver):
// avail.idx, avail.flags and used_event are read by the device; used.idx,
// used.flags and avail_event are written by it.
//
// sync/atomic has no 16-bit operations, so each access is done on the
// naturally aligned 32-bit word that contains the field: a load extracts the
// half-word, a store is a compare-and-swap loop that leaves the other half
// (which may belong to the guest) untouched. Go's atomics are sequentially
// consistent, which gives the store-release/load-acquire ordering the virtio
// memory model requires (ring entries written before the index is published,
// index read before the entries). This is the only file in virtio/ that uses
// unsafe: it needs the host address of guest memory to find the aligned word.
//
// Byte order: virtio rings are little-endian and this package assumes a
// little-endian host (amd64, arm64, riscv64), which is enforced by the build
// constraint below.
package ringatomic

import (
	"encoding/binary"
	"sync/atomic"
	"unsafe"
)

// word returns a pointer to the aligned 32-bit word of b that contains the
// 16-bit field at b[off:off+2], and the bit shift of the field within it, or
// nil when that word is not entirely inside b or the field is misaligned.
func word(b []byte, off int) (*uint32, uint) {
	if off < 0 || off+2 > len(b) {
		return nil, 0
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	p := base + uintptr(off)
	if p%2 != 0 {
		return nil, 0
	}
	w := p &^ 3
	if w < base || w+4 > base+uintptr(len(b)) {
		return nil, 0
	}
	// The word lies inside b (checked above), so the pointer is valid Go memory
	// or valid guest memory mapped by the VMM.
	return (*uint32)(unsafe.Add(unsafe.Pointer(unsafe.SliceData(b)), w-base)), uint(p-w) * 8
}

// Load16 atomically reads the little-endian uint16 at b[off:]. The caller has
// checked off+2 <= len(b). When the containing aligned word is not inside b
// (a ring ending exactly at the end of guest RAM) it falls back to an ordinary
// load preceded by an atomic fence on a word that is.
func Load16(b []byte, off int) uint16 {
	if w, shift := word(b, off); w != nil {
		return uint16(atomic.LoadUint32(w) >> shift)
	}
	fence(b)
	return binary.LittleEndian.Uint16(b[off:])
}

// Store16 atomically writes v as a little-endian uint16 at b[off:] without
// disturbing the neighbouring bytes of its 32-bit word.
func Store16(b []byte, off int, v uint16) {
	if w, shift := word(b, off); w != nil {
		mask := uint32(0xffff) << shift
		for {
			old := atomic.LoadUint32(w)
			nw := old&^mask | uint32(v)<<shift
			if atomic.CompareAndSwapUint32(w, old, nw) {
				return
			}
		}
	}
	fence(b)
	binary.LittleEndian.PutUint16(b[off:], v)
	fence(b)
}

// fence issues a sequentially consistent atomic operation on the first
// aligned word of b, if there is one, to order the surrounding plain accesses.
func fence(b []byte) {
	for off := 0; off+4 <= len(b) && off < 4; off += 2 {
		if w, _ := word(b, off); w != nil {
			atomic.AddUint32(w, 0)
			return
		}
	}
}
